"""Refuse, before anything is created, an experiment whose objects cannot fit on
this host: the /dev/shm and temp-dir free space, SysV SHMMAX/SHMALL/SHMMNI,
RLIMIT_FSIZE, memory. Errors use the spec's one-line format and exit status 2.

Calls meant to fail stay possible: a shmget larger than SHMMAX fails in the
kernel without creating anything, so only sizes that would really be
*allocated* are checked against free space.
"""
from __future__ import annotations

import os
import resource
import tempfile

from model.pages import pages_of
from shmkit.procfs import read_meminfo, read_sysvipc_shm
from shmkit.spec import SpecError


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


# ipc/shm.c shm_init_ns: a fresh IPC namespace's limits (include/uapi/linux/shm.h SHMMAX,
# SHMALL = ULONG_MAX - (1 << 24), SHMMNI = 4096)
NS_DEFAULTS = {"shmmax": (1 << 64) - 1 - (1 << 24), "shmall": (1 << 64) - 1 - (1 << 24), "shmmni": 4096}


def check(exp, mode: str | None = None) -> None:
    """Refuses what cannot fit. In the hermetic mode (shmkit.isolation) the SysV limits are the
    run's own namespace's (its [setup], else a fresh namespace's defaults) and no segment of
    the host counts: reaching them is a result (EINVAL, ENOSPC), not a harm to the host; the
    memory the segments take still must fit."""
    from shmkit import isolation

    mode = mode or isolation.choose(isolation.asked())
    page = os.sysconf("SC_PAGE_SIZE")
    shm = os.statvfs("/dev/shm")
    shm_free = shm.f_bavail * shm.f_frsize
    tmp = os.statvfs(tempfile.gettempdir())
    disk_free = tmp.f_bavail * tmp.f_frsize - (1 << 30)  # keep 1 GiB for everybody else
    mem_avail = read_meminfo().get("MemAvailable", 0) * 1024
    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if mode == isolation.HERMETIC:
        shmmax = exp.setup.shmmax if exp.setup.shmmax is not None else NS_DEFAULTS["shmmax"]
        shmall = shmmni = None          # the namespace's own: reaching them is the experiment's result
        segments = []
    else:
        shmmax = _read_int("/proc/sys/kernel/shmmax")
        shmall = _read_int("/proc/sys/kernel/shmall")
        shmmni = _read_int("/proc/sys/kernel/shmmni")
        segments = read_sysvipc_shm()
    sysv_used = sum(pages_of(s.size, page) for s in segments)

    def fail(step, field, problem, accepted):
        raise SpecError(exp.path, step.index, step.do, field, problem, accepted)

    on_shm = on_disk = sysv_pages = 0
    sysv_count = 0
    for step in exp.steps:
        g = step.get
        if step.do == "file":
            size = g("size")
            if fsize != resource.RLIM_INFINITY and size > fsize:
                fail(step, "size", f"{_fmt(size)} exceeds RLIMIT_FSIZE ({_fmt(fsize)})", "a smaller size")
            if (g("on") or "disk") == "tmpfs":
                on_shm += size
                if on_shm > shm_free:
                    fail(step, "size", f"{_fmt(on_shm)} in all does not fit in /dev/shm "
                         f"(free: {_fmt(shm_free)})", "at most the free space of /dev/shm")
            else:
                on_disk += size
                if on_disk > disk_free:
                    fail(step, "size", f"{_fmt(on_disk)} in all does not fit in {tempfile.gettempdir()} "
                         f"(free beyond a 1 GiB reserve: {_fmt(max(disk_free, 0))})", "a smaller size")
        elif step.do == "shm_open" and g("size"):
            on_shm += g("size")
            if on_shm > shm_free:
                fail(step, "size", f"{_fmt(on_shm)} in all does not fit in /dev/shm (free: {_fmt(shm_free)})",
                     "at most the free space of /dev/shm")
        elif step.do == "memfd" and g("size"):
            if g("size") > mem_avail:
                fail(step, "size", f"{_fmt(g('size'))} exceeds MemAvailable ({_fmt(mem_avail)})", "a smaller size")
        elif step.do == "shmget" and g("create"):
            size = g("size")
            if size <= shmmax:
                sysv_pages += pages_of(size, page)      # ipc/shm.c newseg(): numpages
                sysv_count += 1
                if shmall is not None and sysv_pages + sysv_used > shmall:
                    fail(step, "size", f"{sysv_pages} pages in all exceed what SHMALL leaves "
                         f"({shmall} pages, {sysv_used} in use)", "a smaller size")
                if shmmni is not None and sysv_count + len(segments) > shmmni:
                    fail(step, "size", f"{sysv_count} more segments exceed SHMMNI ({shmmni}, "
                         f"{len(segments)} in use)", "fewer segments")
                if sysv_pages * page > mem_avail:
                    fail(step, "size", f"{_fmt(sysv_pages * page)} exceeds MemAvailable ({_fmt(mem_avail)})",
                         "a smaller size")
