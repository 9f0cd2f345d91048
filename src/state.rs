//! supd's state file: what users asked for that must outlive supd itself.
//! A program stopped by hand stays stopped across a restart of supd; one
//! started by hand stays started; a pool keeps the size `scale` gave it.
//!
//! The file is JSON, written atomically (a temporary file in the same
//! folder, fsync, rename, fsync of the folder), so a crash leaves the old
//! file or the new one, never half of one. A missing file is an empty
//! state; a corrupt one is logged and ignored (it changes nothing).
//!
//! It also records every live process supd started (pid, start time, boot
//! id, the daemon flag), so that a supd started after a crash adopts the
//! `daemon = false` programs that survived instead of starting them twice,
//! and finishes off what is left of `daemon = true` ones.
//!
//! ```json
//! {"version": 1, "desired": {"web": "stopped", "worker:2": "started"}, "scale": {"worker": 3},
//!  "boot_id": "9ea2...", "processes": {"db": {"pid": 4242, "start_time": 81234, "daemon": false,
//!  "marker": "4100.80010"}}}
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name inside the state folder.
pub const FILE_NAME: &str = "supd-state.json";

/// What a user last asked of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// `supctl start` (or restart): start it when supd starts, even with `autostart = false`.
    Started,
    /// `supctl stop` or `kill`: leave it stopped when supd starts.
    Stopped,
}

/// The content of the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The format's version (1).
    #[serde(default)]
    pub version: u32,
    /// By program name (pool members as `NAME:i`).
    #[serde(default)]
    pub desired: BTreeMap<String, Desired>,
    /// Pool sizes set by `supctl scale`, by pool name.
    #[serde(default)]
    pub scale: BTreeMap<String, u32>,
    /// The boot the `processes` belong to; after a reboot none is adopted.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The live main process of each program, by program name.
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessRecord>,
}

/// A process supd started, as recorded for the next supd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Its pid.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat` field 22): a pid whose start time
    /// differs is another process, never adopted or signalled.
    pub start_time: u64,
    /// Its `daemon` flag when it was started.
    pub daemon: bool,
    /// `SUP_SUPD` of the supd that started it, inherited by all its
    /// descendants: how a later supd finds what a daemon program left.
    pub marker: String,
}

/// The state folder for a daemon: `state_dir` from the config, else
/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else the socket's folder.
pub fn state_dir(configured: Option<&Path>, socket: &Path) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY") {
        if let Some(first) = dirs.to_string_lossy().split(':').find(|d| !d.is_empty()) {
            return PathBuf::from(first);
        }
    }
    socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl StateFile {
    /// Reads the file at `path`; missing or unreadable means empty.
    pub fn load(path: &Path) -> StateFile {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "state file is corrupt; ignoring it");
                    StateFile::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; ignoring it");
                StateFile::default()
            }
        }
    }

    /// Writes the file atomically: a temporary file in the same folder,
    /// then a rename, so a crash of supd leaves the old file or the new one.
    /// With `durable`, the data and the folder are also fsync'ed, so the
    /// change survives a power loss too: that is for what users asked
    /// (desired states, pool sizes). Process records alone need not be:
    /// after a reboot they are discarded anyway (the boot id).
    ///
    /// # Errors
    /// The I/O error (a full disk, a read-only folder); the old file is then intact.
    pub fn save(&self, path: &Path, durable: bool) -> io::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            if durable {
                file.sync_all()?;
            }
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        assert_eq!(StateFile::load(&path), StateFile::default());
        let mut s = StateFile::default();
        s.desired.insert("web".into(), Desired::Stopped);
        s.scale.insert("worker".into(), 4);
        s.version = 1;
        s.save(&path, true).expect("save");
        let back = StateFile::load(&path);
        assert_eq!(back.desired["web"], Desired::Stopped);
        assert_eq!(back.scale["worker"], 4);
        assert_eq!(back.version, 1);
        std::fs::write(&path, b"{not json").expect("write");
        assert_eq!(StateFile::load(&path), StateFile::default());
    }
}
