"""Names of everything a benchmark creates, and the sweep that removes what a killed pair left.

Every object carries the orchestrator's prefix `shmkit-bench-<pid>-`: POSIX shm names in
/dev/shm, memfd names, files under the run directory `$TMPDIR/shmkit-bench-<pid>/`. SysV
segments have no name: the run directory's `pids` file lists every process of the run (each
worker writes its peer's pid there before either creates anything), and a segment whose creator
is one of them is the run's. Workers remove their own objects on every path they survive; the
orchestrator sweeps after every worker (and the next benchmark sweeps the leftovers of an
orchestrator that was itself SIGKILLed).
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile

from shmkit.procfs import alive  # a zombie counts as dead

PREFIX = "shmkit-bench-"


def prefix(pid: int) -> str:
    return f"{PREFIX}{pid}-"


def rundir(pid: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"{PREFIX}{pid}")


def trusted_dir(d: str) -> bool:
    """A run directory in $TMPDIR is believed (its `pids` file, its entries) only if it is
    ours: a directory, not a symbolic link, owned by the effective uid, no group/other write.
    Anyone can create $TMPDIR/shmkit-bench-<pid> first (CWE-377)."""
    try:
        st = os.lstat(d)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def make_rundir(d: str) -> None:
    """mkdir 0700; an existing one is kept only if it is ours (a leftover of a killed run
    whose pid this one reuses), otherwise one line, exit 2 (BadInput)."""
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        if not trusted_dir(d):
            from shmkit.bench.cli import BadInput
            raise BadInput(f"shmkit bench: {d}: exists and is not this user's own directory (or is a "
                           "symbolic link); refusing to use it; accepted: remove it, or set TMPDIR") from None


def wait_dead(pids: set[int], timeout: float) -> None:
    """Waits until none of `pids` runs: each is gone or a zombie (an orphaned peer is reaped by
    init, whenever that comes; a zombie has released its memory and attachments)."""
    import time

    deadline = time.monotonic() + timeout
    for pid in pids:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.002)


def sysv_segments() -> list[dict]:
    out = []
    try:
        with open("/proc/sysvipc/shm") as f:
            head = f.readline().split()
            for line in f:
                row = dict(zip(head, line.split()))
                out.append({"key": int(row["key"]), "shmid": int(row["shmid"]), "cpid": int(row["cpid"]),
                            "nattch": int(row["nattch"])})
    except OSError:
        pass
    return out


def _rmid(shmid: int) -> bool:
    import sysv_ipc
    try:
        sysv_ipc.remove_shared_memory(shmid)
        return True
    except Exception:       # already gone, or not ours to remove
        return False


def _pids(run_dir: str) -> set[int]:
    try:
        with open(os.path.join(run_dir, "pids")) as f:
            return {int(x) for x in f.read().split()}
    except (OSError, ValueError):
        return set()


def sweep(pid: int, pids: set[int] | None = None, keep_dir: bool = True) -> list[str]:
    """Remove the objects of orchestrator `pid`: /dev/shm names, files of its run directory,
    SysV segments made by one of its processes (private keys only). Returns what was removed."""
    removed = []
    mark = prefix(pid)
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        names = []
    for n in names:
        if n.startswith(mark):
            try:
                os.unlink(os.path.join("/dev/shm", n))
                removed.append(f"/dev/shm/{n}")
            except OSError:
                pass
    d = rundir(pid)
    trusted = trusted_dir(d)      # someone else's directory of that name says nothing
    pids = set(pids or ()) | (_pids(d) if trusted else set())
    for seg in sysv_segments():
        if seg["cpid"] in pids and seg["key"] == 0 and _rmid(seg["shmid"]):
            removed.append(f"SysV shmid {seg['shmid']} (creator {seg['cpid']})")
    if trusted:
        for n in os.listdir(d):
            if n.startswith(mark):
                try:
                    os.unlink(os.path.join(d, n))
                    removed.append(os.path.join(d, n))
                except OSError:
                    pass
        if not keep_dir:
            shutil.rmtree(d, ignore_errors=True)
    return removed


def sweep_stale() -> list[str]:
    """Leftovers of benchmark orchestrators that are gone (SIGKILLed)."""
    removed = []
    owners = set()
    try:
        for n in os.listdir("/dev/shm"):
            if n.startswith(PREFIX):
                owners.add(n[len(PREFIX):].split("-", 1)[0])
    except OSError:
        pass
    tmp = tempfile.gettempdir()
    for n in os.listdir(tmp):
        if n.startswith(PREFIX) and n[len(PREFIX):].isdigit():
            owners.add(n[len(PREFIX):])
    for o in owners:
        if o.isdigit() and not alive(int(o)):
            removed += sweep(int(o), keep_dir=False)
    return removed


def leftovers(pid: int, pids: set[int]) -> list[str]:
    """What of this run still exists (for the end-of-run check)."""
    out = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith(prefix(pid))]
    out += [f"SysV shmid {s['shmid']}" for s in sysv_segments() if s["cpid"] in pids and s["key"] == 0]
    d = rundir(pid)
    if os.path.isdir(d):
        out += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(prefix(pid))]
    return out
