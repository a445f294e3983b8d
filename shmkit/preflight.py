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


def check(exp) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    shm = os.statvfs("/dev/shm")
    shm_free = shm.f_bavail * shm.f_frsize
    tmp = os.statvfs(tempfile.gettempdir())
    disk_free = tmp.f_bavail * tmp.f_frsize - (1 << 30)  # keep 1 GiB for everybody else
    mem_avail = read_meminfo().get("MemAvailable", 0) * 1024
    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
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
                if sysv_pages + sysv_used > shmall:
                    fail(step, "size", f"{sysv_pages} pages in all exceed what SHMALL leaves "
                         f"({shmall} pages, {sysv_used} in use)", "a smaller size")
                if sysv_count + len(segments) > shmmni:
                    fail(step, "size", f"{sysv_count} more segments exceed SHMMNI ({shmmni}, "
                         f"{len(segments)} in use)", "fewer segments")
                if sysv_pages * page > mem_avail:
                    fail(step, "size", f"{_fmt(sysv_pages * page)} exceeds MemAvailable ({_fmt(mem_avail)})",
                         "a smaller size")
