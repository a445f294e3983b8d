"""The orchestrator: one benchmark at a time, each in fresh worker processes.

Method (pyperf's): every benchmark (a series at one message size) runs in `runs` separate
worker processes (each a fresh interpreter that forks its peer); the first calibrates the
number of messages per value so that a value lasts at least `min_time`, the others reuse it;
each worker discards `warmups` values and keeps `values`. The result is the median of all
kept values with their spread; a spread above 10% or a value shorter than half of `min_time`
is flagged. Sizes are the outer loop and memcpy runs first at each size, so every ratio to
memcpy compares figures measured minutes apart at most.

One benchmark at a time on the host: a blocking flock on /run/lock/shmkit-bench.lock ($TMPDIR
when /run/lock is not writable; a second `shmkit bench` waits for the first).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field

from shmkit import __version__, interrupt
from shmkit.procfs import read_text
from shmkit.bench import FORMAT, cleanup, stats
from shmkit.bench.matrix import SHM, Series, slots_for


@dataclass
class Settings:
    quick: bool
    sizes: list[int]
    series: list[Series]
    runs: int
    values: int
    warmups: int
    min_time: float
    timeout: float = 300.0
    cpus: list[int] | None = None
    spin_limit: int = 20000
    command: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"quick": self.quick, "sizes": self.sizes, "runs": self.runs, "values": self.values,
                "warmups": self.warmups, "min_time": self.min_time, "timeout": self.timeout,
                "cpus": self.cpus, "spin_limit": self.spin_limit,
                "series": [s.key for s in self.series]}


def lock_path() -> str:
    """The host-wide lock file: /run/lock (the FHS place for lock files, a tmpfs emptied at
    boot) when it is writable, else $TMPDIR. It outlives runs on purpose: an flock is held on
    the open file, and unlinking it could let two runs lock two different files."""
    import tempfile
    base = "/run/lock" if os.access("/run/lock", os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, "shmkit-bench.lock")


def open_own_file(path: str, what: str) -> int:
    """Opens (creating it 0644 if absent) a file in a directory anyone can write, such as
    /run/lock, only if it is ours: O_NOFOLLOW (a planted symbolic link to /etc/shadow would
    otherwise be truncated by root: fs.protected_symlinks may be 0), O_NONBLOCK (a planted
    FIFO would block the open), then fstat: a regular file owned by the effective uid that no
    group or other user can write. Otherwise one line naming the file, exit 2 (BadInput)."""
    from shmkit.bench.cli import BadInput

    accepted = (f"accepted: a regular file owned by uid {os.geteuid()} that no group or other "
                "user can write (remove it)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise BadInput(f"shmkit bench: {path}: cannot open the {what} safely ({e.strerror}); {accepted}") from None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by uid {os.geteuid()} (you)"
    elif st.st_mode & 0o022:
        why = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        os.close(fd)
        raise BadInput(f"shmkit bench: {path}: the {what} {why}; refusing to use it; {accepted}")
    return fd


class Lock:
    """A blocking flock: a second benchmark (another process) waits until the first ends."""

    def __init__(self, say):
        self.say = say
        self.fd = None

    def __enter__(self):
        self.fd = open_own_file(lock_path(), "lock file")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(self.fd, 32, 0).decode().strip() or "?"
            except OSError:
                holder = "?"
            self.say(f"waiting for another shmkit bench (pid {holder}) to finish ...")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc):
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def metadata(cpus: list[int] | None) -> dict:
    """What pyperf records about the system, plus the settings that shape IPC."""
    cpu_model = None
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    cache = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    if os.path.isdir(base):
        for idx in sorted(os.listdir(base)):
            if idx.startswith("index"):
                lvl, typ, size = (read_text(f"{base}/{idx}/{k}") for k in ("level", "type", "size"))
                cache[f"L{lvl} {typ}"] = size
    gov = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    mem_kb = None
    for line in (read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    flags = (next((ln for ln in (read_text("/proc/cpuinfo") or "").splitlines() if ln.startswith("flags")), "")
             .split(":", 1)[-1].split())
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "hypervisor": "hypervisor" in flags,
        "cache": cache,
        "cpu_governor": gov or "not readable (no cpufreq in this VM)",
        "isolated_cpus": read_text("/sys/devices/system/cpu/isolated") or "",
        "thp_enabled": read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_shmem_enabled": read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "aslr": read_text("/proc/sys/kernel/randomize_va_space"),
        "mem_total_kb": mem_kb,
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "pipe_max_size": read_text("/proc/sys/fs/pipe-max-size"),
        "wmem_max": read_text("/proc/sys/net/core/wmem_max"),
        "dirty_expire_centisecs": read_text("/proc/sys/vm/dirty_expire_centisecs"),
        "loadavg_start": read_text("/proc/loadavg"),
        "boot_id": read_text("/proc/sys/kernel/random/boot_id"),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "shmkit": __version__,
        "pinning": (f"worker on CPU {cpus[0]}, peer on CPU {cpus[1]} (placement 'same': both on CPU {cpus[0]})"
                    if cpus else "not pinned (fewer than 2 CPUs)"),
        "tmpdir_fs": _fs_type(),
    }


def _fs_type() -> str | None:
    import tempfile
    tmp = os.path.realpath(tempfile.gettempdir())
    best, fs = "", None
    for line in (read_text("/proc/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) > 2 and tmp.startswith(parts[1]) and len(parts[1]) > len(best):
            best, fs = parts[1], f"{parts[2]} on {parts[0]} ({parts[1]})"
    return fs


def _cpu_busy() -> float:
    """Seconds of CPU time the whole host spent busy (or stolen by the hypervisor)."""
    line = (read_text("/proc/stat") or "cpu 0").splitlines()[0].split()
    v = [int(x) for x in line[1:9]] + [0] * 8
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


class Interrupted(Exception):
    pass


class Orchestrator:
    def __init__(self, settings: Settings, say=lambda s: None, progress=None):
        self.s = settings
        self.say = say
        self.progress = progress
        self.pid = os.getpid()
        self.dir = cleanup.rundir(self.pid)
        self.pids: set[int] = set()
        self.swept: list[str] = []
        self.job = 0
        self.current = None

    # ----- one worker -------------------------------------------------------------------------
    def spawn(self, job: dict) -> dict:
        env = dict(os.environ)
        env.setdefault("PYTHONHASHSEED", "0")
        proc = None
        try:
            with interrupt.deferred():      # a worker that runs is one the except below kills
                proc = subprocess.Popen([sys.executable, "-m", "shmkit.bench.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                        env=env, text=True)
                self.current = proc
                self.pids.add(proc.pid)
                with open(job["pidfile"], "a") as f:
                    f.write(f"{proc.pid}\n")
            out, err = proc.communicate(json.dumps(job), timeout=self.s.timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return {"error": f"timed out after {self.s.timeout:.0f} s (the pair was killed)"}
        except BaseException:
            if proc is not None:
                self._kill(proc)
            raise
        finally:
            with interrupt.deferred():
                self.current = None
                self.pids |= cleanup._pids(self.dir)
                self.swept += cleanup.sweep(self.pid, self.pids)
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"worker exited with status {proc.returncode}: {(err or out).strip()[-400:]}"}
        if proc.returncode and "error" not in res:
            res["error"] = f"worker exited with status {proc.returncode}"
        return res

    def _kill(self, proc) -> None:
        """Kills the pair (the worker's session: it and its peer) and waits until both are dead:
        a dying process keeps its SysV attachments until it has exited (exit_mm), and the sweep
        that follows must find the segments unattached."""
        with interrupt.deferred():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=10)
            except Exception:
                pass
            cleanup.wait_dead(self._pair(proc.pid), timeout=10)

    def _pair(self, pid: int) -> set[int]:
        """The worker `pid` and the pids written to the run's pids file after it (its peer)."""
        try:
            with open(os.path.join(self.dir, "pids")) as f:
                pids = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return {pid}
        return {pid, *pids[pids.index(pid) + 1:]} if pid in pids else {pid}

    # ----- one benchmark ----------------------------------------------------------------------
    def benchmark(self, s: Series, size: int) -> dict:
        slots = slots_for(s, size)
        cpus = self.s.cpus
        if cpus and s.placement == "same":
            cpus = [cpus[0], cpus[0]]
        b = {"id": f"{s.key}/{size}", "series": s.key, "label": s.label, **s.as_dict(), "size": size,
             "slots": slots, "unit": "B/s" if s.pattern == "throughput" else "s",
             "metric": "throughput" if s.pattern == "throughput" else "round trip",
             "loops": None, "runs": [], "values": [], "errors": 0, "error": None}
        loops = None
        t0 = time.perf_counter()
        busy0 = _cpu_busy()
        kids0 = _children_cpu()
        for r in range(self.s.runs):
            self.job += 1
            job = {**s.as_dict(), "size": size, "slots": slots, "loops": loops, "min_time": self.s.min_time,
                   "warmups": self.s.warmups, "values": self.s.values,
                   "prefix": f"{cleanup.prefix(self.pid)}{self.job}-", "rundir": self.dir,
                   "pidfile": os.path.join(self.dir, "pids"), "cpus": cpus, "spin_limit": self.s.spin_limit}
            res = self.spawn(job)
            if "error" in res:
                b["error"] = res["error"]
                break
            loops = res["loops"]
            b["runs"].append(res)
        b["loops"] = loops
        b["wall_seconds"] = time.perf_counter() - t0
        others = _cpu_busy() - busy0 - (_children_cpu() - kids0)
        ncpu = len(os.sched_getaffinity(0)) or 1
        b["others_cpu"] = max(0.0, others / (b["wall_seconds"] * ncpu))
        b["loadavg"] = read_text("/proc/loadavg")
        vals, secs = [], []
        for res in b["runs"]:
            for v in res["values"]:
                secs.append(v["seconds"])
                vals.append(size * v["n"] / v["seconds"] if s.pattern == "throughput" else v["seconds"] / v["n"])
                b["errors"] += v["errors"]
            b["errors"] += sum(v["errors"] for v in res["warmups"] + res["calibration"])
        b["values"] = vals
        b.update(stats.summarise(vals, secs, self.s.min_time) if vals else
                 {"median": None, "warnings": []})
        if b["others_cpu"] > 0.10:
            b["warnings"].append(f"other processes (or the hypervisor) used {b['others_cpu'] * 100:.0f}% of the "
                                 "CPUs during this benchmark: the host was not quiet")
        if b["errors"]:
            b["warnings"].append(f"{b['errors']} message(s) arrived with a wrong stamp: the hand-off is broken")
        b["faults"] = self._faults(b)
        b["model"] = None
        if s.transport in SHM and vals:
            try:
                from shmkit.bench.model import predict
                last = b["runs"][-1]
                live = {"a": last["values"][-1]["a"], "b": last["values"][-1].get("b", {}),
                        "ring": last.get("ring")}
                b["model"] = predict(s, size, slots, live)
            except Exception as e:           # the model is a library: report, do not fail the run
                b["model"] = {"error": f"{type(e).__name__}: {e}"}
        return b

    @staticmethod
    def _faults(b: dict) -> dict | None:
        """Faults per message (throughput) or per round trip (latency) of each process: the
        median over the measured values."""
        import statistics
        per = {"a": {"minor": [], "major": []}, "b": {"minor": [], "major": []}}
        for res in b["runs"]:
            for v in res["values"]:
                for p in ("a", "b"):
                    if p in v:
                        for k in ("minor", "major"):
                            per[p][k].append(v[p][k] / v["n"])
        out = {}
        for p in ("a", "b"):
            if per[p]["minor"]:
                out[p] = {k: statistics.median(per[p][k]) for k in ("minor", "major")}
        return out or None

    # ----- the whole run ----------------------------------------------------------------------
    def run(self) -> dict:
        s = self.s
        doc = {"format": FORMAT, "kind": "shmkit-bench", "shmkit": __version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": s.command, "quick": s.quick, "settings": s.as_dict(),
               "metadata": metadata(s.cpus), "benchmarks": [], "status": "ok"}
        t0 = time.perf_counter()
        cleanup.make_rundir(self.dir)
        stale = cleanup.sweep_stale()
        if stale:
            self.say(f"removed {len(stale)} object(s) left by a killed benchmark")
        try:
            for size in s.sizes:
                if not s.quick:
                    self.say(f"{human_size(size)}: {sum(x.applies(size) for x in s.series)} benchmark(s) "
                             f"({len(doc['benchmarks'])} done, {time.perf_counter() - t0:.0f} s)")
                for ser in s.series:
                    if not ser.applies(size):
                        continue
                    if self.progress:
                        self.progress(f"{ser.label} {human_size(size)}")
                    b = self.benchmark(ser, size)
                    doc["benchmarks"].append(b)
                    if b["error"]:
                        self.say(f"{b['id']}: {b['error']}")
        except KeyboardInterrupt:
            doc["status"] = "interrupted"
            raise
        finally:
            with interrupt.deferred():      # a signal here must not cut the sweep short
                self.swept += cleanup.sweep(self.pid, self.pids, keep_dir=False)
            doc["cleanup"] = {"swept": self.swept, "leftovers": cleanup.leftovers(self.pid, self.pids)}
            doc["seconds"] = time.perf_counter() - t0
            doc["metadata"]["loadavg_end"] = read_text("/proc/loadavg")
        ratios(doc)
        if any(b["error"] or b["errors"] for b in doc["benchmarks"]):
            doc["status"] = "failed"
        return doc


def ratios(doc: dict) -> None:
    """Every throughput as a ratio to the same run's memcpy at the same size."""
    mem = {b["size"]: b["median"] for b in doc["benchmarks"]
           if b["transport"] == "memcpy" and b["median"]}
    for b in doc["benchmarks"]:
        b["ratio_memcpy"] = (b["median"] / mem[b["size"]]
                             if b["pattern"] == "throughput" and b["median"] and mem.get(b["size"]) else None)


def human_size(n: int) -> str:
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def default_cpus() -> list[int] | None:
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:2] if len(cpus) >= 2 else None
