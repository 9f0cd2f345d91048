//! One inotify instance for every file supd follows.
//!
//! A `daemon = false` program writes its own log file, and supd follows
//! that file to feed the ring and `logs -f` ([`crate::logs`]). An inotify
//! instance per followed file would run into the per-user limit on
//! instances (`fs.inotify.max_user_instances`, 128 by default; inotify(7)),
//! long before the limit on watches (`fs.inotify.max_user_watches`, many
//! thousands), and cost a registered descriptor each. So all of them share
//! one instance: [`watch`] adds a watch to it and hands back a [`Watch`],
//! whose [`Watch::changed`] wakes when the file is modified. One task reads
//! the instance's events and wakes the watches by their watch descriptor.
//!
//! inotify gives the same watch descriptor to two watches of one inode, so
//! a descriptor maps to every [`Watch`] on it, and is removed from the
//! instance when the last of them is dropped. A queue overflow
//! (`IN_Q_OVERFLOW`) wakes every watch: each then reads its file as it is.
//!
//! The instance lives in a process-wide slot, made on first use inside the
//! tokio runtime. If that runtime goes away (its reading task is dropped),
//! the slot is emptied and the next [`watch`] makes a new instance.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Each watch descriptor's watches: their ids and wakers.
type Watches = HashMap<WatchDescriptor, Vec<(u64, Arc<Notify>)>>;

/// The shared instance and who watches what on it.
struct Shared {
    inotify: Inotify,
    watches: Mutex<Watches>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Watches> {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's instance, and the next watch's id.
struct Slot {
    shared: Option<Arc<Shared>>,
    next_id: u64,
}

static SLOT: Mutex<Slot> = Mutex::new(Slot {
    shared: None,
    next_id: 0,
});

fn slot() -> MutexGuard<'static, Slot> {
    SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A watch on one file: wakes when the file is written to (`IN_MODIFY`).
/// Dropping it removes the watch.
pub struct Watch {
    shared: Arc<Shared>,
    wd: WatchDescriptor,
    id: u64,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("wd", &self.wd)
            .field("id", &self.id)
            .finish()
    }
}

/// Watches `path` for writes. Must be called inside the tokio runtime.
///
/// Errors: making the instance (`EMFILE` when the per-user limit on
/// instances is reached, the first time only), or adding the watch
/// (`ENOENT` for a missing file, `ENOSPC` when `fs.inotify.max_user_watches`
/// is reached).
pub fn watch(path: &Path) -> io::Result<Watch> {
    let (shared, id) = {
        let mut slot = slot();
        let shared = match &slot.shared {
            Some(s) => s.clone(),
            None => {
                let s = start()?;
                slot.shared = Some(s.clone());
                s
            }
        };
        slot.next_id += 1;
        (shared, slot.next_id)
    };
    let notify = Arc::new(Notify::new());
    let mut watches = shared.lock();
    // Under the map's lock, so the reading task cannot see an event for
    // this descriptor before the watch is in the map.
    let wd = shared.inotify.add_watch(path, AddWatchFlags::IN_MODIFY)?;
    watches.entry(wd).or_default().push((id, notify.clone()));
    drop(watches);
    Ok(Watch {
        shared,
        wd,
        id,
        notify,
    })
}

impl Watch {
    /// Waits until the file was modified since the last call (or since
    /// the watch was made). A write that came before the call counts: it
    /// returns at once.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watches = self.shared.lock();
        if let Some(list) = watches.get_mut(&self.wd) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                watches.remove(&self.wd);
                // Fails when the kernel already dropped it (the file was
                // deleted: IN_IGNORED); nothing to do then.
                let _ = self.shared.inotify.rm_watch(self.wd);
            }
        }
    }
}

/// A raw descriptor the reading task registers with tokio; the `Inotify`
/// in [`Shared`] owns it and outlives the task's registration.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Makes the instance and starts the task that reads its events.
fn start() -> io::Result<Arc<Shared>> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    let raw = inotify.as_fd().as_raw_fd();
    let shared = Arc::new(Shared {
        inotify,
        watches: Mutex::new(HashMap::new()),
    });
    // SAFETY: `raw` is owned by `shared.inotify`. The AsyncFd goes into a
    // `Reader` beside a clone of `shared`, and a Reader drops its `fd`
    // (deregistering it) before its `shared`, so the descriptor stays open
    // and names this instance for the registration's whole life.
    let fd = unsafe { AsyncFd::register_with_interest(Fd(raw), tokio::io::Interest::READABLE) }?;
    tokio::spawn(read_events(Reader {
        fd,
        shared: shared.clone(),
    }));
    Ok(shared)
}

/// What the reading task owns. Fields drop in order: `fd` first.
struct Reader {
    fd: AsyncFd<Fd>,
    shared: Arc<Shared>,
}

/// Empties the slot when the reading task ends or is dropped with its
/// runtime, so that a later [`watch`] starts again.
struct ClearSlot(Arc<Shared>);

impl Drop for ClearSlot {
    fn drop(&mut self) {
        let mut slot = slot();
        if slot
            .shared
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &self.0))
        {
            slot.shared = None;
        }
    }
}

/// Reads the instance's events and wakes the watches they name.
async fn read_events(reader: Reader) {
    let _clear = ClearSlot(reader.shared.clone());
    let (fd, shared) = (&reader.fd, &reader.shared);
    loop {
        let Ok(mut guard) = fd.readable().await else {
            tracing::error!("the inotify instance failed; followed log files are no longer read");
            return;
        };
        let events = match shared.inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN) => {
                guard.clear_ready();
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading inotify events failed; followed log files are no longer read");
                return;
            }
        };
        let mut watches = shared.lock();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                for list in watches.values() {
                    for (_, n) in list {
                        n.notify_one();
                    }
                }
                continue;
            }
            if let Some(list) = watches.get(&event.wd) {
                for (_, n) in list {
                    n.notify_one();
                }
            }
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The kernel dropped the watch (the file is gone); its
                // descriptor may be handed out again.
                watches.remove(&event.wd);
            }
        }
    }
}
