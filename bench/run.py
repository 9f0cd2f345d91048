#!/usr/bin/env python3
"""Benchmarks supd side by side with supervisord, s6 and runit.

    python3 bench/run.py            # the full run (several minutes)
    python3 bench/run.py --quick    # smaller N, fewer iterations (about 2 minutes)

It builds supd and supctl (`cargo build --release`), installs the peers it
compares against by itself (supervisord from PyPI into bench/.venv; s6 and
runit from Debian's packages with apt-get when run as root), runs the same
workloads against each, and prints one table: each figure, its ratio to
supd's, and PASS/MISS against supd's performance targets. bench/README.md
explains every workload and how to read the table.

Standard library only. Everything it starts lives in temporary folders
(sockets, configs, service directories), never in system-wide places, and
is killed on the way out, on failure and Ctrl-C too: the script makes
itself a child subreaper, so whatever its supervisors leave behind is
re-parented to it and swept with SIGKILL.
"""

import argparse
import ctypes
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SUPD = None  # set by build_supd: TARGET/release/supd, or --bin-dir's
SUPCTL = None
VENV = os.path.join(BENCH, ".venv")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEER_NAMES = ["supd", "supervisord", "s6", "runit"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- settings

FULL = dict(
    start_ns=[100, 500, 1000],
    start_repeats=3,  # the median is shown: other load on the machine makes single runs noisy
    status_ns=[500, 1000],
    status_iters=200,
    status_budget=60.0,  # seconds per (peer, N): slow peers run fewer calls
    rpc_iters=1000,
    rps_secs=3.0,
    idle_n=1000,
    idle_secs=30.0,
    stop_n=500,
    restart_secs=5.0,
    capture_secs=5.0,
    run_iters=200,
)
QUICK = dict(
    start_ns=[100, 500, 1000],
    start_repeats=1,
    status_ns=[500],
    status_iters=50,
    status_budget=4.0,
    rpc_iters=300,
    rps_secs=1.0,
    idle_n=1000,
    idle_secs=5.0,
    stop_n=500,
    restart_secs=2.0,
    capture_secs=2.0,
    run_iters=50,
)

# A check that every workload still runs (CI): tiny N, short runs, supd
# alone. Its figures mean nothing.
SMOKE = dict(
    start_ns=[20],
    start_repeats=1,
    status_ns=[20],
    status_iters=5,
    status_budget=2.0,
    rpc_iters=20,
    rps_secs=0.3,
    idle_n=20,
    idle_secs=0.5,
    stop_n=20,
    restart_secs=0.5,
    capture_secs=0.5,
    run_iters=3,
)


# ---------------------------------------------------------------- /proc


def proc_table():
    """pid -> (ppid, comm, state, starttime) for every process; starttime is
    in clock ticks since boot (field 22 of /proc/PID/stat)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                data = f.read()
        except OSError:
            continue
        r = data.rfind(b")")
        comm = data[data.find(b"(") + 1 : r].decode("utf-8", "replace")
        fields = data[r + 2 :].split()
        table[int(name)] = (int(fields[1]), comm, fields[0].decode(), int(fields[19]))
    return table


def descendants(root, table):
    children = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


def count_live(root, comm="sleep", table=None):
    table = table if table is not None else proc_table()
    return sum(
        1
        for p in descendants(root, table)
        if table[p][1] == comm and table[p][2] not in ("Z", "X")
    )


def live_start_ticks(root, comm="sleep"):
    """(count, latest starttime) of the live `comm` descendants of root."""
    table = proc_table()
    ticks = [
        table[p][3]
        for p in descendants(root, table)
        if table[p][1] == comm and table[p][2] not in ("Z", "X")
    ]
    return len(ticks), max(ticks, default=None), table.get(root, (0, "", "", None))[3]


def threads_total():
    """How many threads the system has (/proc/loadavg's fourth field): one
    read, cheap enough to poll while a supervisor starts."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return 0


def wait_all_live(root, n, base, timeout):
    """Waits until n live `sleep`s descend from root; returns (count, latest
    starttime, root's starttime). A full /proc scan costs tens of ms of CPU,
    and on 2 cores a scanning loop slows the supervisor it watches (a 5 ms
    loop made supd take twice as long, and even a 100 ms one shows). So the
    loop polls the system's thread count, which is one read, and scans only
    once it has grown by n since `base` (at most every 0.2 s), or every
    second whatever it says (others on the machine move that count too)."""
    deadline = time.perf_counter() + timeout
    last_scan = time.perf_counter()
    while True:
        now = time.perf_counter()
        since = now - last_scan
        if (threads_total() - base >= n and since >= 0.2) or since >= 1.0:
            got = live_start_ticks(root)
            last_scan = time.perf_counter()
            if got[0] >= n:
                return got
        if now > deadline:
            return live_start_ticks(root)
        time.sleep(0.01)


def wait_none_live(root, n, base, t0, timeout):
    """Waits until no live `sleep` descends from root; returns the seconds
    from t0 to the scan that found none (None on a timeout). Polls the
    thread count as wait_all_live does: a scan only once it has dropped by
    n from `base` (at most every 0.1 s), or every second."""
    deadline = time.perf_counter() + timeout
    last_scan = -1.0
    while True:
        now = time.perf_counter()
        if (base - threads_total() >= n and now - last_scan >= 0.1) or now - last_scan >= 1.0:
            last_scan = now
            if count_live(root) == 0:
                return now - t0
        if now > deadline:
            return None
        time.sleep(0.005)


def cpu_ticks(pids):
    """utime + stime (clock ticks, all threads) from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


def ctx_switches(pids):
    """(voluntary, involuntary) context switches summed over every thread."""
    vol = invol = 0
    for pid in pids:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
            except OSError:
                pass
    return vol, invol


def memory_kib(pids):
    """(VmRSS, Pss) in KiB, summed over pids."""
    rss = pss = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def wchar(pid):
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- processes

_children_pgids = set()


def become_subreaper():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log("note: prctl(PR_SET_CHILD_SUBREAPER) failed; orphans may escape cleanup")
    except OSError:
        log("note: no libc prctl; orphans may escape cleanup")


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_everything(timeout=20.0):
    """SIGKILL every process group we started and every descendant of ours
    (orphans come to us: we are a subreaper), until none is left."""
    for pgid in list(_children_pgids):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        _children_pgids.discard(pgid)
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        table = proc_table()
        desc = descendants(me, table)
        live = [p for p in desc if table[p][2] not in ("Z", "X")]
        for p in live:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        reap()
        if not desc or time.monotonic() > deadline:
            if desc:
                log("warning: %d processes left after cleanup" % len(desc))
            return
        time.sleep(0.02)


def spawn(argv, cwd, stdout=None, stderr=None, env=None):
    p = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    _children_pgids.add(p.pid)
    return p


def timed_spawns(argv, iters, budget, warmup=3):
    """Runs argv (stdout/stderr to /dev/null) up to `iters` times within
    `budget` seconds; returns the wall times in seconds. posix_spawn + waitpid,
    so the measuring side adds as little as it can."""
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
    ]
    env = dict(os.environ)
    times = []
    start = time.perf_counter()
    for i in range(iters + warmup):
        t0 = time.perf_counter()
        pid = os.posix_spawn(path, argv, env, file_actions=actions)
        os.waitpid(pid, 0)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
        if t1 - start > budget and len(times) >= 5:
            break
    return times


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def p99(xs):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[max(0, math.ceil(0.99 * len(xs)) - 1)]


def wait_for(pred, timeout, interval=0.005):
    deadline = time.perf_counter() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.perf_counter() > deadline:
            return None
        time.sleep(interval)


# ---------------------------------------------------------------- supd's protocol


class Rpc:
    """A raw JSON-RPC connection to supd: one message a line."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb", buffering=1 << 16)
        self.next_id = 1

    def raw(self, method, params=None):
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.next_id += 1
        return (json.dumps(msg, separators=(",", ":")) + "\n").encode()

    def call(self, method, params=None):
        self.sock.sendall(self.raw(method, params))
        answer = json.loads(self.reader.readline())
        if "error" in answer:
            raise RuntimeError("%s: %s" % (method, answer["error"].get("message")))
        return answer["result"]

    def close(self):
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass


def rpc_round_trips(path, method, params, iters):
    c = Rpc(path)
    try:
        line = c.raw(method, params)
        for _ in range(5):
            c.sock.sendall(line)
            c.reader.readline()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            c.sock.sendall(line)
            if not c.reader.readline():
                raise RuntimeError("supd closed the connection")
            times.append(time.perf_counter() - t0)
        return times
    finally:
        c.close()


def requests_per_sec(path, method, params, clients, secs):
    """`clients` forked processes, one connection each, one request in flight
    each, for `secs` seconds; returns the total answers per second."""
    line = (
        json.dumps(
            dict(jsonrpc="2.0", id=1, method=method, **({"params": params} if params else {})),
            separators=(",", ":"),
        )
        + "\n"
    ).encode()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for _ in range(clients):
        pid = os.fork()
        if pid == 0:  # the client
            code = 0
            try:
                os.close(go_w)
                os.close(res_r)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                rd = s.makefile("rb", buffering=1 << 16)
                os.read(go_r, 1)
                n = 0
                t0 = time.perf_counter()
                end = t0 + secs
                send, readline, now = s.sendall, rd.readline, time.perf_counter
                while True:
                    send(line)
                    if not readline():
                        break
                    n += 1
                    if n & 15 == 0 and now() >= end:
                        break
                el = time.perf_counter() - t0
                os.write(res_w, ("%d %f\n" % (n, el)).encode())
            except BaseException:
                os.write(res_w, b"0 1\n")
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(res_w)
    time.sleep(0.2 + clients * 0.005)  # let every client connect
    os.write(go_w, b"x" * clients)
    data = b""
    with os.fdopen(res_r, "rb") as f:
        data = f.read()
    os.close(go_w)
    for pid in pids:
        os.waitpid(pid, 0)
    rate = 0.0
    for ln in data.decode().split("\n"):
        if ln.strip():
            n, el = ln.split()
            rate += int(n) / float(el)
    return rate


def parse_rfc3339(t):
    """'2026-11-21T08:36:21.351359923Z' -> seconds (float), ns kept."""
    date, clock = t.rstrip("Z").split("T")
    y, mo, d = (int(x) for x in date.split("-"))
    import datetime

    days = datetime.date(y, mo, d).toordinal()
    hh, mm, ss = clock.split(":")
    if "." in ss:
        whole, frac = ss.split(".")
    else:
        whole, frac = ss, "0"
    ns = int((frac + "000000000")[:9])
    return days * 86400 + int(hh) * 3600 + int(mm) * 60 + int(whole) + ns / 1e9


# ---------------------------------------------------------------- the supervisors


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


class Peer:
    name = "?"
    note = None  # why it was skipped

    def __init__(self, d):
        self.d = d  # its instance folder
        self.proc = None

    # What to supervise: a workload writes the configuration for one of these.
    def write_sleep(self, n):
        raise NotImplementedError

    def write_restart(self):
        raise NotImplementedError

    def write_capture(self):
        raise NotImplementedError

    def argv(self):
        raise NotImplementedError

    def launch(self, stdout_path=None):
        out = open(stdout_path or os.path.join(self.d, "stdout.log"), "ab")
        err = open(os.path.join(self.d, "stderr.log"), "ab")
        try:
            self.proc = spawn(self.argv(), self.d, stdout=out, stderr=err)
        finally:
            out.close()
            err.close()
        return self.proc

    @property
    def pid(self):
        return self.proc.pid

    def supervisor_pids(self, table=None):
        """The supervisor's own processes (for CPU, wake-ups, memory)."""
        return [self.pid]

    def ready(self):
        return True

    def all_up(self, n):
        """Every program counts as up by the supervisor's own rules."""
        return True

    def status_argv(self, n):
        return None

    def stop_all_argv(self):
        return None

    def restart_count(self):
        try:
            with open(os.path.join(self.d, "count"), "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0

    def capture_pids(self, table):
        """The processes on the output path besides the program itself."""
        return self.supervisor_pids(table)


def names(n):
    return ["p%04d" % i for i in range(n)]


class Supd(Peer):
    name = "supd"

    @property
    def sock(self):
        return os.path.join(self.d, "supd.sock")

    def _head(self):
        return '[supd]\nsocket = "%s"\nstate_dir = "%s"\nshutdown_timeout = "5s"\n\n' % (
            self.sock,
            self.d,
        )

    def write_sleep(self, n):
        body = "".join(
            '[program.%s]\ncommand = ["sleep", "100000"]\nstop_timeout = "5s"\n\n' % nm
            for nm in names(n)
        )
        write(os.path.join(self.d, "supd.toml"), self._head() + body)

    def write_restart(self):
        write(
            os.path.join(self.d, "supd.toml"),
            self._head()
            + '[program.r]\ncommand = ["true"]\nrestart = "always"\nstart_secs = "0s"\n'
            'backoff_initial = "0s"\nbackoff_max = "0s"\nstart_retries = "infinite"\n',
        )

    def write_capture(self, daemon=True):
        """`daemon = true`: the output comes through pipes that supd drains
        into the log file. `daemon = false`: the program's stdout is its log
        file (opened for appending), and supd follows the file (inotify)."""
        write(
            os.path.join(self.d, "supd.toml"),
            self._head().replace("\n\n", '\nlog_dir = "%s/logs"\n\n' % self.d, 1)
            + '[program.y]\ncommand = ["yes"]\ndaemon = %s\nlog_max_bytes = "64MiB"\n'
            'log_backups = 1\nstop_timeout = "1s"\n' % ("true" if daemon else "false"),
        )

    def argv(self):
        return [SUPD, "--config", os.path.join(self.d, "supd.toml")]

    def ready(self):
        if not os.path.exists(self.sock):
            return False
        try:
            c = Rpc(self.sock)
            try:
                c.call("version")
            finally:
                c.close()
            return True
        except (OSError, RuntimeError, ValueError):
            return False

    def statuses(self):
        c = Rpc(self.sock)
        try:
            return c.call("status")["programs"]
        finally:
            c.close()

    def all_up(self, n):
        progs = self.statuses()
        return len(progs) == n and all(p["state"] == "running" for p in progs)

    def sentinel_pids(self, table=None):
        """supd's sentinel: supd run again as `/proc/self/exe --sentinel MARKER`."""
        table = table or proc_table()
        out = []
        for p in descendants(self.pid, table):
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    if b"--sentinel" in f.read().split(b"\0"):
                        out.append(p)
            except OSError:
                pass
        return out

    def status_argv(self, n):
        return [SUPCTL, "--socket", self.sock, "status"]

    def stop_all_argv(self):
        return [SUPCTL, "--socket", self.sock, "stop", "--all"]

    def restart_count(self):
        return sum(p["restarts"] for p in self.statuses())


class Supervisord(Peer):
    name = "supervisord"
    bin = os.path.join(VENV, "bin", "supervisord")
    ctl = os.path.join(VENV, "bin", "supervisorctl")

    @property
    def conf(self):
        return os.path.join(self.d, "supervisord.conf")

    def _head(self):
        return (
            "[unix_http_server]\nfile=%(d)s/supervisor.sock\n\n"
            "[supervisord]\nlogfile=%(d)s/supervisord.log\npidfile=%(d)s/supervisord.pid\n"
            "childlogdir=%(d)s\nnodaemon=true\nminfds=8192\nminprocs=4096\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            "[supervisorctl]\nserverurl=unix://%(d)s/supervisor.sock\n\n" % {"d": self.d}
        )

    def write_sleep(self, n):
        body = "".join(
            "[program:%s]\ncommand=sleep 100000\nstdout_logfile=NONE\nstderr_logfile=NONE\n\n"
            % nm
            for nm in names(n)
        )
        write(self.conf, self._head() + body)

    def write_restart(self):
        write(
            self.conf,
            self._head()
            + "[program:r]\ncommand=/bin/sh -c 'echo >> %s/count'\nautorestart=true\n"
            "startsecs=0\nstartretries=1000000\nstdout_logfile=NONE\nstderr_logfile=NONE\n"
            % self.d,
        )

    def write_capture(self):
        write(
            self.conf,
            self._head()
            + "[program:y]\ncommand=yes\nstdout_logfile=%s/y.log\n"
            "stdout_logfile_maxbytes=64MB\nstdout_logfile_backups=1\nstderr_logfile=NONE\n"
            % self.d,
        )

    def argv(self):
        return [self.bin, "-n", "-c", self.conf]

    def ready(self):
        if not os.path.exists(os.path.join(self.d, "supervisor.sock")):
            return False
        r = subprocess.run(
            [self.ctl, "-c", self.conf, "pid"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return r.stdout.strip().isdigit()

    def all_up(self, n):
        r = subprocess.run(
            [self.ctl, "-c", self.conf, "status"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        lines = r.stdout.decode().splitlines()
        return len(lines) == n and all(" RUNNING " in ln for ln in lines)

    def status_argv(self, n):
        return [self.ctl, "-c", self.conf, "status"]

    def stop_all_argv(self):
        return [self.ctl, "-c", self.conf, "stop", "all"]


class S6(Peer):
    name = "s6"

    @property
    def scan(self):
        return os.path.join(self.d, "scan")

    def _service(self, nm, run, log_run=None):
        sd = os.path.join(self.scan, nm)
        os.makedirs(sd)
        write(os.path.join(sd, "run"), run, 0o755)
        if log_run:
            os.makedirs(os.path.join(sd, "log"))
            write(os.path.join(sd, "log", "run"), log_run, 0o755)

    def write_sleep(self, n):
        os.makedirs(self.scan)
        for nm in names(n):
            self._service(nm, "#!/bin/sh\nexec sleep 100000\n")

    def write_restart(self):
        os.makedirs(self.scan)
        self._service("r", "#!/bin/sh\necho >> %s/count\n" % self.d)

    def write_capture(self):
        os.makedirs(self.scan)
        os.makedirs(os.path.join(self.d, "logdir"))
        self._service(
            "y",
            "#!/bin/sh\nexec yes\n",
            "#!/bin/sh\nexec s6-log n2 s16777215 %s/logdir\n" % self.d,
        )

    def argv(self):
        return ["s6-svscan", "-c", "5000", self.scan]

    def supervisor_pids(self, table=None):
        table = table or proc_table()
        return [self.pid] + [
            p for p in descendants(self.pid, table) if table[p][1] == "s6-supervise"
        ]

    def capture_pids(self, table):
        return [p for p in descendants(self.pid, table) if table[p][1] == "s6-log"]

    def _dirs(self):
        return sorted(
            os.path.join(self.scan, x) for x in os.listdir(self.scan) if not x.startswith(".")
        )

    def status_argv(self, n):
        # s6-svstat takes one service directory: a full status is one call a service.
        return ["/bin/sh", "-c", 'for d in %s/*/; do s6-svstat "$d"; done' % self.scan]

    def stop_all_argv(self):
        return ["/bin/sh", "-c", 'for d in %s/*/; do s6-svc -d "$d"; done' % self.scan]


class Runit(Peer):
    name = "runit"

    @property
    def scan(self):
        return os.path.join(self.d, "service")

    def _service(self, nm, run, log_run=None):
        sd = os.path.join(self.scan, nm)
        os.makedirs(sd)
        write(os.path.join(sd, "run"), run, 0o755)
        if log_run:
            os.makedirs(os.path.join(sd, "log"))
            write(os.path.join(sd, "log", "run"), log_run, 0o755)

    def write_sleep(self, n):
        os.makedirs(self.scan)
        for nm in names(n):
            self._service(nm, "#!/bin/sh\nexec sleep 100000\n")

    def write_restart(self):
        os.makedirs(self.scan)
        self._service("r", "#!/bin/sh\necho >> %s/count\n" % self.d)

    def write_capture(self):
        os.makedirs(self.scan)
        logdir = os.path.join(self.d, "logdir")
        os.makedirs(logdir)
        write(os.path.join(logdir, "config"), "s16777215\nn2\n")
        self._service("y", "#!/bin/sh\nexec yes\n", "#!/bin/sh\nexec svlogd %s\n" % logdir)

    def argv(self):
        return ["runsvdir", self.scan]

    def supervisor_pids(self, table=None):
        table = table or proc_table()
        return [self.pid] + [p for p in descendants(self.pid, table) if table[p][1] == "runsv"]

    def capture_pids(self, table):
        return [p for p in descendants(self.pid, table) if table[p][1] == "svlogd"]

    def _dirs(self):
        return sorted(os.path.join(self.scan, x) for x in os.listdir(self.scan))

    def status_argv(self, n):
        return ["sv", "status"] + self._dirs()  # sv takes every service in one call

    def stop_all_argv(self):
        return ["sv", "down"] + self._dirs()


PEERS = {"supd": Supd, "supervisord": Supervisord, "s6": S6, "runit": Runit}


# ---------------------------------------------------------------- installing


def cargo_env():
    """The environment for cargo: ours, with a relative CARGO_TARGET_DIR made
    absolute from our working folder (cargo runs in ROOT, where it would
    otherwise be taken from)."""
    env = dict(os.environ)
    if env.get("CARGO_TARGET_DIR"):
        env["CARGO_TARGET_DIR"] = os.path.abspath(env["CARGO_TARGET_DIR"])
    return env


def target_dir():
    """Where cargo puts the builds, as `cargo metadata` says: CARGO_TARGET_DIR,
    else `build.target-dir` of a cargo config, else target/ in ROOT. Without
    cargo: CARGO_TARGET_DIR, else ROOT/target."""
    try:
        out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                             cwd=ROOT, env=cargo_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, check=True).stdout
        return json.loads(out)["target_directory"]
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return cargo_env().get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def build_supd(skip, tmp, bin_dir=None):
    """Builds the release binaries and copies them into tmp, so that a
    rebuild of TARGET/release during the run cannot swap them halfway
    (TARGET is cargo's target folder: CARGO_TARGET_DIR is honoured).
    Returns what was built: the commit, and whether the tree differed."""
    global SUPD, SUPCTL
    src = ROOT
    release = os.path.join(target_dir(), "release")
    SUPD, SUPCTL = os.path.join(release, "supd"), os.path.join(release, "supctl")
    if bin_dir:
        SUPD, SUPCTL = os.path.join(bin_dir, "supd"), os.path.join(bin_dir, "supctl")
        skip = True
        src = os.path.abspath(bin_dir)
    if not skip:
        log("building supd and supctl (cargo build --release) ...")
        build = subprocess.Popen(["cargo", "build", "--release", "--bins"], cwd=ROOT, env=cargo_env())
        try:
            rc = build.wait()
        except KeyboardInterrupt:
            build.kill()
            build.wait()
            raise
        if rc != 0:
            sys.exit("cargo build --release failed")
    for b in (SUPD, SUPCTL):
        if not os.access(b, os.X_OK):
            sys.exit("%s is missing: run cargo build --release --bins" % b)
    bindir = os.path.join(tmp, "bin")
    os.makedirs(bindir)
    SUPD = shutil.copy2(SUPD, os.path.join(bindir, "supd"))
    SUPCTL = shutil.copy2(SUPCTL, os.path.join(bindir, "supctl"))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "ctl", "Cargo.toml", "Cargo.lock"],
                               cwd=src, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.strip()
    except OSError:
        return "unknown commit"
    if not rev:
        return "unknown commit"
    return "commit %s%s%s" % (
        rev, " + local changes" if dirty else "", "" if not skip else " (%s)" % SUPD if bin_dir else " (--no-build)")


def install_supervisord():
    if os.access(Supervisord.bin, os.X_OK) and os.access(Supervisord.ctl, os.X_OK):
        return None
    log("installing supervisord from PyPI into %s ..." % VENV)
    try:
        if not os.path.exists(os.path.join(VENV, "bin", "python")):
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [os.path.join(VENV, "bin", "python"), "-m", "pip", "install", "-q", "supervisor"],
            check=True,
        )
    except (subprocess.CalledProcessError, OSError) as e:
        return "skipped: cannot install supervisord from PyPI (%s)" % e
    if not os.access(Supervisord.bin, os.X_OK):
        return "skipped: supervisord did not install"
    return None


def install_deb(package, binary):
    if shutil.which(binary):
        return None
    if os.geteuid() != 0:
        return "skipped: %s is not installed and apt-get needs root" % package
    if not shutil.which("apt-get"):
        return "skipped: %s is not installed and there is no apt-get" % package
    log("installing %s from Debian's packages (apt-get) ..." % package)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    if r.returncode != 0 or not shutil.which(binary):
        return "skipped: apt-get install %s failed" % package
    return None


# ---------------------------------------------------------------- workloads


class Bench:
    def __init__(self, cfg, peers, tmp):
        self.cfg = cfg
        self.peers = peers
        self.tmp = tmp
        self.results = {p: {} for p in peers}
        self.notes = []
        self.seq = 0
        self.floor = {}

    def instance(self, cls, tag):
        self.seq += 1
        d = os.path.join(self.tmp, "%02d-%s-%s" % (self.seq, cls.name, tag))
        os.makedirs(d)
        return cls(d)

    def finish(self, peer):
        kill_everything()
        shutil.rmtree(peer.d, ignore_errors=True)

    def put(self, peer, key, value):
        self.results[peer][key] = value

    # -- start N, and what is measured on the same instance

    def start(self, cls, n):
        """Launches the supervisor with n sleep programs; returns the peer and
        the seconds until all n sleeps are live, or None on a timeout.

        The time is the kernel's: the start time (/proc/PID/stat field 22,
        10 ms ticks) of the last program process minus the supervisor's,
        so the observer may scan /proc seldom (see wait_all_live)."""
        peer = self.instance(cls, "sleep%d" % n)
        peer.write_sleep(n)
        base = threads_total()
        t0 = time.perf_counter()
        peer.launch()
        timeout = 30 + n * 0.1
        count, last, first = wait_all_live(peer.pid, n, base, timeout)
        polled = time.perf_counter() - t0
        if count < n:
            self.notes.append("%s: only %d of %d sleeps after %.0f s" % (cls.name, count, n, timeout))
            return peer, None
        elapsed = (last - first) / CLK_TCK
        self.put(cls.name, "start_%d_polled" % n, polled)
        if not wait_for(peer.ready, 30, 0.05):
            self.notes.append("%s: its control interface never answered" % cls.name)
            return peer, None
        # The other workloads measure a supervisor at rest: every program
        # up by its own rules (supd and supervisord count a program as
        # running once it has stayed up for start_secs/startsecs, 1 s).
        if not wait_for(lambda: peer.all_up(n), 30, 0.1):
            self.notes.append("%s: not every program was up 30 s after the start" % cls.name)
        return peer, elapsed

    def status_cli(self, peer, n):
        argv = peer.status_argv(n)
        times = timed_spawns(argv, self.cfg["status_iters"], self.cfg["status_budget"])
        self.put(peer.name, "status_cli_%d_med" % n, median(times) * 1e3)
        self.put(peer.name, "status_cli_%d_p99" % n, p99(times) * 1e3)
        if len(times) < self.cfg["status_iters"]:
            self.notes.append(
                "%s: full status with %d ran %d times, not %d (%.0f s budget)"
                % (peer.name, n, len(times), self.cfg["status_iters"], self.cfg["status_budget"])
            )
        # A sanity check: the status lists every program.
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lines = [ln for ln in r.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
        if len(lines) < n:
            self.notes.append("%s: status printed %d lines for %d programs" % (peer.name, len(lines), n))

    def supd_protocol(self, peer, n):
        times = rpc_round_trips(peer.sock, "status", None, self.cfg["rpc_iters"])
        self.put("supd", "status_rpc_%d_med" % n, median(times) * 1e3)
        self.put("supd", "status_rpc_%d_p99" % n, p99(times) * 1e3)

    def supd_rps(self, peer):
        secs = self.cfg["rps_secs"]
        for k in (1, 8, 64):
            self.put("supd", "rps_version_%d" % k, requests_per_sec(peer.sock, "version", None, k, secs))
        self.put(
            "supd",
            "rps_status1_8",
            requests_per_sec(peer.sock, "status", {"names": ["p0000"]}, 8, secs),
        )

    def stop_all(self, peer, n):
        argv = peer.stop_all_argv()
        base = threads_total()
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        elapsed = wait_none_live(peer.pid, n, base, t0, 60)
        if elapsed is None:
            self.notes.append("%s: stop all left sleeps running after 60 s" % peer.name)
            return
        if r.returncode != 0:
            self.notes.append(
                "%s: stop all exited %d: %s" % (peer.name, r.returncode, r.stderr.decode()[:200])
            )
        self.put(peer.name, "stop_all_%d" % n, elapsed)

    def idle(self, peer, n):
        if not wait_for(lambda: peer.all_up(n), 60, 0.25):
            self.notes.append("%s: not every program was up before the idle measurement" % peer.name)
        time.sleep(2.0)  # let start-up timers (start_secs, ...) finish
        table = proc_table()
        pids = peer.supervisor_pids(table)
        secs = self.cfg["idle_secs"]
        v0, i0 = ctx_switches(pids)
        c0 = cpu_ticks(pids)
        time.sleep(secs)
        v1, i1 = ctx_switches(pids)
        c1 = cpu_ticks(pids)
        self.put(peer.name, "idle_wakeups", v1 - v0)
        self.put(peer.name, "idle_invol", i1 - i0)
        self.put(peer.name, "idle_cpu_ms", (c1 - c0) * 1000.0 / CLK_TCK)
        self.put(peer.name, "supervisor_processes", len(pids))

    def memory(self, peer):
        table = proc_table()
        pids = peer.supervisor_pids(table)
        rss, pss = memory_kib(pids)
        self.put(peer.name, "mem_rss", rss / 1024.0)
        self.put(peer.name, "mem_pss", pss / 1024.0)
        if isinstance(peer, Supd):
            srss, _ = memory_kib(peer.sentinel_pids(table))
            self.put("supd", "sentinel_rss", srss / 1024.0)

    def restart(self, cls):
        peer = self.instance(cls, "restart")
        peer.write_restart()
        try:
            peer.launch()
            if not wait_for(peer.ready, 30, 0.05):
                self.notes.append("%s: restart workload: control interface never answered" % cls.name)
                return
            time.sleep(0.5)
            secs = self.cfg["restart_secs"]
            c0, t0 = peer.restart_count(), time.perf_counter()
            time.sleep(secs)
            c1, t1 = peer.restart_count(), time.perf_counter()
            self.put(cls.name, "restart_rate", (c1 - c0) / (t1 - t0))
            if isinstance(peer, Supd):
                self.restart_latency(peer)
        finally:
            self.finish(peer)

    def restart_latency(self, peer):
        ev = spawn(
            [SUPCTL, "--socket", peer.sock, "--json", "events"],
            peer.d,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        lines = []

        def read():
            for ln in ev.stdout:
                lines.append(ln)

        th = threading.Thread(target=read, daemon=True)
        th.start()
        time.sleep(self.cfg["restart_secs"])
        ev.kill()
        ev.wait()
        th.join(2)
        lat, pending = [], {}
        for ln in lines:
            try:
                e = json.loads(ln)
            except ValueError:
                continue
            if e.get("to") == "backoff":
                pending[e["name"]] = parse_rfc3339(e["time"])
            elif e.get("to") == "running" and e["name"] in pending:
                lat.append(parse_rfc3339(e["time"]) - pending.pop(e["name"]))
        if lat:
            self.put("supd", "restart_lat_med", median(lat) * 1e3)
            self.put("supd", "restart_lat_p99", p99(lat) * 1e3)
            self.put("supd", "restart_lat_samples", len(lat))
        else:
            self.notes.append("supd: no backoff -> running pairs in %d events" % len(lines))

    def capture(self, cls, key="capture", daemon=True):
        peer = self.instance(cls, key)
        if isinstance(peer, Supd):
            peer.write_capture(daemon)
        else:
            peer.write_capture()
        try:
            peer.launch()
            def find_yes():
                t = proc_table()
                return [p for p in descendants(peer.pid, t) if t[p][1] == "yes" and t[p][2] != "Z"]

            yes = wait_for(find_yes, 30, 0.05)
            if not yes:
                self.notes.append("%s: capture workload: yes never started" % cls.name)
                return
            yes = yes[0]
            time.sleep(0.5)
            table = proc_table()
            pids = peer.capture_pids(table)
            secs = self.cfg["capture_secs"]
            w0, c0, t0 = wchar(yes), cpu_ticks(pids), time.perf_counter()
            time.sleep(secs)
            w1, c1, t1 = wchar(yes), cpu_ticks(pids), time.perf_counter()
            if w0 is None or w1 is None:
                self.notes.append("%s: capture workload: cannot read yes's /proc io" % cls.name)
                return
            self.put(cls.name, key + "_mbs", (w1 - w0) / (t1 - t0) / 1e6)
            self.put(cls.name, key + "_cpu", (c1 - c0) / CLK_TCK / (t1 - t0) * 100.0)
            logs = os.path.join(peer.d, "logs")
            if isinstance(peer, Supd) and not any(
                os.path.getsize(os.path.join(logs, f)) for f in (os.listdir(logs) if os.path.isdir(logs) else [])
            ):
                self.notes.append("supd: capture workload (%s): no log file was written" % key)
        finally:
            self.finish(peer)

    def supctl_run(self, peer):
        r = subprocess.run(
            [SUPCTL, "--socket", peer.sock, "run", "--", "true"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=30,
        )
        if r.returncode != 0:
            self.put("supd", "run_true", "n/a (supctl run not implemented)")
            return
        times = timed_spawns([SUPCTL, "--socket", peer.sock, "run", "--", "true"], self.cfg["run_iters"], 30)
        self.put("supd", "run_true", median(times) * 1e3)
        self.put("supd", "run_true_p99", p99(times) * 1e3)

    def spawn_floor(self, n):
        """The machine's floor for starting n sleeps: posix_spawn (vfork)
        in a loop from this process, timed like `start`."""
        os.makedirs(os.path.join(self.tmp, "floor"), exist_ok=True)
        base = threads_total()
        pid = os.fork()
        if pid == 0:  # a spawner of our own, so its sleeps are its children
            try:
                for _ in range(n):
                    os.posix_spawn("/usr/bin/sleep" if os.path.exists("/usr/bin/sleep") else shutil.which("sleep"),
                                   ["sleep", "100000"], os.environ)
                while True:
                    time.sleep(1)
            finally:
                os._exit(0)
        try:
            count, last, first = wait_all_live(pid, n, base, 30 + n * 0.1)
            if count >= n:
                self.floor[n] = (last - first) / CLK_TCK
        finally:
            kill_everything()

    # -- one supervisor, every workload

    def run_peer(self, cls):
        cfg = self.cfg
        name = cls.name
        log("== %s" % name)
        ns = sorted(set(cfg["start_ns"]) | set(cfg["status_ns"]) | {cfg["idle_n"], cfg["stop_n"]})
        for n in ns:
            log("   %s: %d programs" % (name, n))
            peer, elapsed = self.start(cls, n)
            try:
                if elapsed is None:
                    continue
                if n in cfg["start_ns"]:
                    self.put(name, "start_%d_runs" % n, [elapsed])
                if n == cfg["idle_n"]:
                    self.idle(peer, n)
                if n in cfg["status_ns"]:
                    self.status_cli(peer, n)
                    if name == "supd":
                        self.supd_protocol(peer, n)
                if n == cfg["idle_n"]:
                    self.memory(peer)
                if name == "supd" and n == cfg["stop_n"]:
                    self.supd_rps(peer)
                if name == "supd" and n == min(ns):
                    self.supctl_run(peer)
                    self.put("supd", "cli_floor", median(timed_spawns(["/bin/true"], 200, 5)) * 1e3)
                    self.put(
                        "supd",
                        "version_cli",
                        median(timed_spawns([SUPCTL, "--socket", peer.sock, "version"], 100, 5)) * 1e3,
                    )
                if n == cfg["stop_n"]:
                    self.stop_all(peer, n)
            finally:
                self.finish(peer)
            runs = self.results[name].get("start_%d_runs" % n)
            if runs is None:
                continue
            for _ in range(cfg["start_repeats"] - 1):
                peer, elapsed = self.start(cls, n)
                self.finish(peer)
                if elapsed is not None:
                    runs.append(elapsed)
            self.put(name, "start_%d" % n, median(runs))
        log("   %s: restarts" % name)
        self.restart(cls)
        log("   %s: output" % name)
        self.capture(cls)
        if name == "supd":
            self.capture(cls, "capture_file", daemon=False)


# ---------------------------------------------------------------- the table

# key, label, unit, better, target (supd only): (op, value, text)
def rows(cfg):
    idle = "%g s" % cfg["idle_secs"]
    r = []
    for n in cfg["start_ns"]:
        r.append(("start_%d" % n, "start %d sleeps, until all live in /proc" % n, "s", "lower",
                  ("<=", 0.4, "<= 0.4 s") if n == 500 else None))
    for n in cfg["status_ns"]:
        r.append(("status_cli_%d_med" % n, "full status, whole CLI, N=%d: median" % n, "ms", "lower",
                  ("<=", 2.0, "<= 2 ms") if n == 500 else None))
        r.append(("status_cli_%d_p99" % n, "full status, whole CLI, N=%d: p99" % n, "ms", "lower", None))
    for n in cfg["status_ns"]:
        r.append(("status_rpc_%d_med" % n, "status in-protocol round trip, N=%d: median" % n, "ms", "lower",
                  ("<=", 0.3, "<= 0.3 ms") if n == 500 else None))
        r.append(("status_rpc_%d_p99" % n, "status in-protocol round trip, N=%d: p99" % n, "ms", "lower", None))
    r += [
        ("rps_version_1", "requests/s, `version`, 1 client", "/s", "higher", None),
        ("rps_version_8", "requests/s, `version`, 8 clients", "/s", "higher", (">=", 20000, ">= 20,000/s")),
        ("rps_version_64", "requests/s, `version`, 64 clients", "/s", "higher", None),
        ("rps_status1_8", "requests/s, `status` of 1 program, 8 clients", "/s", "higher", None),
        ("stop_all_%d" % cfg["stop_n"], "stop all %d, until no sleep is left" % cfg["stop_n"], "s", "lower",
         ("<=", 0.3, "<= 0.3 s") if cfg["stop_n"] == 500 else None),
        ("restart_rate", "restarts/s, program exits at once, zero backoff", "/s", "higher", (">=", 300, ">= 300/s")),
        ("restart_lat_med", "restart latency (backoff -> running): median", "ms", "lower", ("<=", 3.0, "<= 3 ms")),
        ("restart_lat_p99", "restart latency (backoff -> running): p99", "ms", "lower", None),
        ("idle_wakeups", "idle wake-ups over %s, N=%d (voluntary ctx switches)" % (idle, cfg["idle_n"]), "", "lower",
         ("<=", 0, "0")),
        ("idle_cpu_ms", "idle CPU over %s, N=%d" % (idle, cfg["idle_n"]), "ms", "lower", None),
        ("mem_rss", "supervisor RSS, N=%d" % cfg["idle_n"], "MiB", "lower", ("<=", 10.0, "<= 10 MiB")),
        ("mem_pss", "supervisor PSS, N=%d" % cfg["idle_n"], "MiB", "lower", None),
        ("capture_mbs", "output of `yes` (2-byte lines) captured to a log file *", "MB/s", "higher",
         (">=", 1000, ">= 1,000 MB/s")),
        ("capture_cpu", "CPU of the capturing process(es) meanwhile *", "%", "lower", ("<", 100, "< 100 % (one core)")),
        ("capture_file_mbs", "same, supd `daemon = false`: `yes` writes its log file, supd follows *", "MB/s",
         "higher", None),
        ("capture_file_cpu", "supd's CPU meanwhile *", "%", "lower", None),
        ("run_true", "`supctl run -- true` round trip: median", "ms", "lower", None),
    ]
    return r


def fmt(v, unit):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit == "s":
        s = "%.3f" % v
    elif unit == "ms":
        s = "%.3f" % v if v < 10 else "%.1f" % v if v < 1000 else "%.0f" % v
    elif unit in ("/s", "MB/s"):
        s = "{:,.0f}".format(v)
    elif unit == "MiB":
        s = "%.1f" % v
    elif unit == "%":
        s = "%.0f" % v
    else:
        s = "{:,}".format(int(v)) if float(v).is_integer() else "%.1f" % v
    return s + ("" if unit in ("", "%") else " " + unit) + ("%" if unit == "%" else "")


def check(op, v, target):
    return {"<=": v <= target, ">=": v >= target, "<": v < target}[op]


def table(bench, peers, quick):
    res = bench.results
    sup = res.get("supd", {})
    head = ["workload", "supd", "target", ""] + [p + " (÷ supd)" for p in peers if p != "supd"]
    body = []
    misses = []
    for key, label, unit, better, target in rows(bench.cfg):
        v = sup.get(key)
        cells = [label, fmt(v, unit)]
        if target:
            op, t, text = target
            if isinstance(v, (int, float)):
                ok = check(op, v, t)
                if key == "capture_mbs" and isinstance(sup.get("capture_cpu"), (int, float)):
                    ok = ok and sup["capture_cpu"] < 100
                verdict = "PASS" if ok else "MISS"
                if not ok:
                    misses.append(label)
            else:
                verdict = "n/a"
            cells += [text, verdict]
        else:
            cells += ["", ""]
        for p in peers:
            if p == "supd":
                continue
            pv = res.get(p, {}).get(key)
            s = fmt(pv, unit)
            if isinstance(pv, (int, float)) and isinstance(v, (int, float)):
                if v:
                    ratio = pv / v
                    s += " (%s×)" % ("%#.2g" % ratio if ratio < 10 else "{:,.0f}".format(ratio))
                elif pv:
                    s += " (∞)"
            elif pv is None and bench.peer_notes.get(p):
                s = "skipped"
            cells.append(s)
        body.append(cells)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in body]
    return "\n".join(out), misses


# ---------------------------------------------------------------- main


def raise_limits():
    """1,000 programs need well over 1,000 fds (supervisord: 2 pipes each) and
    processes (s6 and runit: 2 each); children inherit these limits."""
    want = 65536
    for res in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC):
        soft, hard = resource.getrlimit(res)
        inf = resource.RLIM_INFINITY
        if hard == inf or hard >= want:
            new = (want if soft != inf and soft < want else soft, hard)
        elif os.geteuid() == 0:
            new = (want, want)
        else:
            new = (hard, hard)
        try:
            resource.setrlimit(res, new)
        except (ValueError, OSError):
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        log("note: only %d file descriptors allowed; 1,000 programs may fail" % soft)


def on_signal(signum, frame):
    raise KeyboardInterrupt()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller N, fewer iterations (about 2 minutes)")
    ap.add_argument(
        "--peers",
        default="supd,supervisord,s6,runit",
        help="comma-separated supervisors to run (default: all four; supd always runs)",
    )
    ap.add_argument("--no-peers", action="store_true", help="supd alone")
    ap.add_argument("--smoke", action="store_true",
                    help="check that every workload still runs (tiny N, supd alone; exits 1 if one gave no figure)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the release binaries in cargo's target folder (CARGO_TARGET_DIR too) as they are")
    ap.add_argument("--bin-dir", metavar="DIR",
                    help="use supd and supctl from DIR (say, another checkout's target/release); implies --no-build")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    args = ap.parse_args()

    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    wanted = ["supd"] if args.no_peers or args.smoke else ["supd"] + [
        p for p in PEER_NAMES if p != "supd" and p in args.peers.split(",")
    ]

    raise_limits()
    become_subreaper()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (in the background)

    tmp = tempfile.mkdtemp(prefix="supbench-")
    try:
        built = build_supd(args.no_build, tmp, args.bin_dir)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        log("interrupted")
        sys.exit(130)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    peer_notes = {}
    for p in wanted:
        if p == "supervisord":
            peer_notes[p] = install_supervisord()
        elif p == "s6":
            peer_notes[p] = install_deb("s6", "s6-svscan")
        elif p == "runit":
            peer_notes[p] = install_deb("runit", "runsvdir")
    for p, note in peer_notes.items():
        if note:
            log("%s: %s" % (p, note))
    peers = [p for p in wanted if not peer_notes.get(p)]

    load_before = os.getloadavg()[0]
    bench = Bench(cfg, peers, tmp)
    bench.peer_notes = peer_notes
    started = time.monotonic()
    interrupted = False
    try:
        for n in cfg["start_ns"]:
            bench.spawn_floor(n)
        for p in peers:
            try:
                bench.run_peer(PEERS[p])
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a broken peer must not hide the others
                bench.notes.append("%s: failed: %r" % (p, e))
                log("%s failed: %r" % (p, e))
                kill_everything()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        kill_everything()
        shutil.rmtree(tmp, ignore_errors=True)

    shown = [p for p in wanted]
    text, misses = table(bench, shown, args.quick)
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    sup = bench.results.get("supd", {})
    print()
    print(
        "sup benchmark (%s mode) of supd at %s: %s, %d cores%s, kernel %s, %.0f s; load average %.2f before, %.2f after"
        % (mode, built, platform.machine(), os.cpu_count(), ", " + cpu if cpu else "",
           platform.release(), time.monotonic() - started, load_before, os.getloadavg()[0])
    )
    if load_before > 0.5:
        print("(the machine was busy before the run started: figures are noisier than usual)")
    print()
    print(text)
    print()
    print("Ratios are the peer's figure divided by supd's (for times >1× means supd is faster;")
    print("for rates <1× means supd is faster). Targets apply to supd only.")
    print("* Output: bytes `yes` wrote (/proc/PID/io wchar) a second. supd: `daemon = true`, its stdout a pipe that")
    print("  supd drains into NAME.out.log (the target's row); `daemon = false`, its stdout is the log file itself and")
    print("  supd follows the file for `logs -f`. supervisord: pipe -> log file; s6: pipe -> s6-log; runit: pipe -> svlogd.")
    floor = sup.get("cli_floor")
    if floor is not None:
        print("Floor of every whole-CLI figure: spawning and waiting for /bin/true takes %.3f ms here;" % floor)
        if sup.get("version_cli") is not None:
            print("`supctl version` (connect + one tiny request) takes %.3f ms." % sup["version_cli"])
    if bench.floor:
        print("Floor of the start rows: this script's own posix_spawn loop starts %s here."
              % ", ".join("%d sleeps in %.2f s" % (n, t) for n, t in sorted(bench.floor.items())))
    if "sentinel_rss" in sup:
        print("supd's RSS is the daemon alone; its sentinel process (supd --sentinel) adds %.1f MiB RSS." % sup["sentinel_rss"])
    if "s6" in shown:
        print("s6: a full status is one s6-svstat per service (it takes one service directory), run by one sh loop;")
        print("    stop all is one s6-svc -d per service; RSS/CPU/wake-ups sum s6-svscan and every s6-supervise.")
    if "runit" in shown:
        print("runit: `sv status`/`sv down` take every service in one call; RSS/CPU/wake-ups sum runsvdir and every runsv.")
    if any(p in shown for p in ("s6", "runit", "supervisord")):
        print("Peers' restart programs are `sh -c 'echo >> count'` (counted by lines); supd's is `true` (counted by")
        print("`restarts` in status). s6-supervise and runsv wait 1 s between restarts by design.")
    for p, note in peer_notes.items():
        if note:
            print("%s: %s" % (p, note))
    for n in bench.notes:
        print("note: " + n)
    if misses:
        print()
        print("supd missed %d target(s): %s" % (len(misses), "; ".join(misses)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": mode, "supd": built, "config": cfg, "results": bench.results,
                       "notes": bench.notes, "peer_notes": peer_notes,
                       "spawn_floor": bench.floor}, f, indent=2, sort_keys=True)
    if interrupted:
        sys.exit(130)
    if args.smoke:
        missing = [label for key, label, _, _, _ in rows(cfg) if not isinstance(sup.get(key), (int, float))]
        if missing:
            print("smoke run: no figure for: %s" % "; ".join(missing))
            sys.exit(1)
        print("smoke run: every workload gave a figure")


if __name__ == "__main__":
    main()
