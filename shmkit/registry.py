"""Run-unique names for every kernel object shmkit creates, and the registry that
makes `shmkit clean` possible after a killed run.

Every object (POSIX name, SysV key/segment, file, memfd) gets a name carrying the
run's prefix ``shmkit-<owner pid>-<6 hex>-`` and is written to the run's
registry file *before* it is created. A run's registry names its owner (pid and
start time, so a recycled pid is not mistaken for it); `clean` acts only on runs
whose owner is gone, and only on the objects their registry lists (psutil's
TESTFN_PREFIX habit, with a record). SysV segments carry no name: a segment is
removed only if its creator pid (cpid) is one of the run's workers and its key
is one of the run's keys, or it is private (or removed: key 0) with a recorded
shmid or a registered private shmget.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import posix_ipc

from shmkit import libc
from shmkit.procfs import read_sysvipc_shm

PREFIX = "shmkit-"
NAME_MAX = 255  # include/uapi/linux/limits.h; a /dev/shm name is one path component


def registry_path() -> Path:
    """Where registries go ($SHMKIT_STATE, else $TMPDIR/shmkit-registry); nothing is made."""
    return Path(os.environ.get("SHMKIT_STATE") or os.path.join(tempfile.gettempdir(), "shmkit-registry"))


def registry_dir() -> Path:
    """The registry directory, made if absent (only a run that registers objects makes it)."""
    p = registry_path()
    p.mkdir(mode=0o700, exist_ok=True)
    return p


def process_start(pid: int) -> int | None:
    """Start time in clock ticks (/proc/PID/stat field 22), None if the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    now = process_start(pid)
    return now is not None and (start is None or now == start)


@dataclass
class Run:
    """One run of one experiment: its prefix, its temp dir, its registry file."""

    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(3)}")
    user: str | None = None

    def __post_init__(self) -> None:
        self.prefix = f"{PREFIX}{self.run_id}-"
        self.reg_path = registry_path() / f"{self.run_id}.jsonl"
        self.dir = Path(tempfile.gettempdir()) / f"{PREFIX}{self.run_id}"
        self._reg = None
        self.posix: dict[str, str] = {}    # real name -> handle
        self.files: dict[str, str] = {}    # path -> handle
        self.keys: dict[int, str] = {}     # real key -> handle
        self.memfds: dict[str, str] = {}   # real memfd name -> handle
        self.shmids: dict[int, str] = {}   # shmid -> handle

    # ----- naming -------------------------------------------------------------------------
    def posix_name(self, name: str) -> str:
        """The real shm_open name for an experiment's name: '/' + prefix + name.
        A name the C library refuses ('a/b') is passed on: its errno is the result."""
        return "/" + self.prefix + name.lstrip("/")

    def file_path(self, name: str, on: str) -> str:
        if on == "tmpfs":
            return f"/dev/shm/{self.prefix}f-{name}"
        return str(self.dir / name)

    def memfd_name(self, name: str) -> str:
        return self.prefix + name

    def sysv_key(self, key: int | str) -> int:
        """A run-unique key for an experiment's integer key: 0x53 ('S') in the top
        byte, 24 bits from the run id and the key. IPC_PRIVATE stays 0."""
        if key == "private":
            return libc.IPC_PRIVATE
        h = zlib.crc32(f"{self.run_id}:{key}".encode()) & 0xFFFFFF
        k = 0x53000000 | h
        return k if k < 0x80000000 else k - (1 << 32)

    # ----- registry --------------------------------------------------------------------------
    def open(self) -> None:
        self.dir.mkdir(mode=0o700)
        if self.user:
            import pwd

            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        registry_dir()
        for attempt in range(10):
            try:
                self._reg = open(self.reg_path, "a", buffering=1)
                break
            except FileNotFoundError:   # another run removed the empty default directory
                registry_dir()
        else:
            raise FileNotFoundError(self.reg_path)
        self.note({"kind": "run", "run": self.run_id, "owner": os.getpid(),
                   "owner_start": process_start(os.getpid()), "dir": str(self.dir)})

    def note(self, entry: dict) -> None:
        """Appends one entry and flushes it to the file before the object exists."""
        self._reg.write(json.dumps(entry) + "\n")
        self._reg.flush()
        os.fsync(self._reg.fileno())

    def cleanup(self) -> list[str]:
        """Removes everything of this run (called by the owner at the end, on every path)."""
        removed = clean_run(read_registry(self.reg_path), own=True)
        if self._reg is not None:
            self._reg.close()
            self._reg = None
        try:
            self.reg_path.unlink()
        except FileNotFoundError:
            pass
        if not os.environ.get("SHMKIT_STATE"):
            try:   # the default directory in $TMPDIR goes with the last run that used it
                self.reg_path.parent.rmdir()
            except OSError:
                pass   # other runs' registries are in it (or it is gone already)
        return removed


def read_registry(path: Path) -> list[dict]:
    entries = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line cut by a kill mid-write: ignore it
    except FileNotFoundError:
        pass
    return entries


def clean_run(entries: list[dict], own: bool = False) -> list[str]:
    """Removes the objects a registry lists. Returns what it removed."""
    removed: list[str] = []
    workers = {(e["pid"], e.get("start")) for e in entries if e.get("kind") == "worker"}
    for pid, start in workers:
        if alive(pid, start) and not own:
            try:
                os.kill(pid, signal.SIGKILL)
                removed.append(f"worker pid {pid}")
            except ProcessLookupError:
                pass
    worker_pids = {pid for pid, _ in workers}
    for e in entries:
        kind = e.get("kind")
        if kind == "posix":
            try:
                posix_ipc.unlink_shared_memory(e["name"])
                removed.append(f"POSIX shm {e['name']}")
            except (posix_ipc.ExistentialError, ValueError, posix_ipc.PermissionsError, OSError):
                pass
        elif kind == "file":
            try:
                os.unlink(e["path"])
                removed.append(f"file {e['path']}")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass
    shmids = {e["shmid"] for e in entries if e.get("kind") == "sysv" and "shmid" in e}
    keys = {e["key"] for e in entries if e.get("kind") == "sysv" and e.get("key")}
    private = any(e.get("kind") == "sysv" and not e.get("key") for e in entries)
    try:
        segments = read_sysvipc_shm()
    except OSError:
        segments = []
    for seg in segments:
        # created by one of the run's workers, under one of its keys, or private
        # (or IPC_RMID'd: key 0) with a recorded shmid or a registered private shmget
        ours = seg.cpid in worker_pids and (
            seg.key in keys or (seg.key == 0 and (seg.shmid in shmids or private)))
        if ours:
            try:
                libc.shmctl(seg.shmid, libc.IPC_RMID)
                removed.append(f"SysV shmid {seg.shmid} key {seg.key:#x}")
            except OSError:
                pass
    for e in entries:
        if e.get("kind") == "run" and e.get("dir"):
            d = Path(e["dir"])
            if d.name.startswith(PREFIX) and d.exists():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"dir {d}")
    return removed


def clean() -> tuple[list[str], list[str]]:
    """`shmkit clean`: every registry whose owner is gone. Returns (removed, skipped)."""
    removed: list[str] = []
    skipped: list[str] = []
    base = os.environ.get("SHMKIT_STATE") or os.path.join(tempfile.gettempdir(), "shmkit-registry")
    d = Path(base)
    if not d.is_dir():
        return removed, skipped      # no run ever registered here: nothing to clean, nothing made
    for path in sorted(d.glob("*.jsonl")):
        entries = read_registry(path)
        run = next((e for e in entries if e.get("kind") == "run"), None)
        if run and alive(run["owner"], run.get("owner_start")):
            skipped.append(f"run {run['run']} (owner pid {run['owner']} is alive)")
            continue
        removed.extend(clean_run(entries))
        path.unlink(missing_ok=True)
    if not os.environ.get("SHMKIT_STATE"):
        try:
            d.rmdir()                # only when empty: a live run's registry keeps it
        except OSError:
            pass
    return removed, skipped
