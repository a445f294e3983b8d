"""ctypes access to the memory system calls that Python's mmap module hides.

Python's mmap module chooses addresses, flags and error handling for us; an
experiment needs the raw call: any length, offset, address, flag combination,
and the errno the kernel returns. The mm calls go through syscall(2) so that
what the experiment file says reaches the kernel as is (glibc's mmap wrapper,
for one, refuses an unaligned offset itself before the kernel sees it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)

# asm/unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64, riscv64).
_SYSCALLS = {
    "x86_64": dict(mmap=9, mprotect=10, munmap=11, mremap=25, msync=26, madvise=28,
                   mlock=149, munlock=150, mlock2=325, personality=135),
    "aarch64": dict(mmap=222, mprotect=226, munmap=215, mremap=216, msync=227, madvise=233,
                    mlock=228, munlock=229, mlock2=284, personality=92),
}
_NR = _SYSCALLS.get(platform.machine())

PROT = {"r": 0x1, "w": 0x2, "x": 0x4}

# uapi/asm-generic/mman-common.h, mman.h and linux/mman.h (x86_64 values).
MAP = {
    "SHARED": 0x01, "PRIVATE": 0x02, "SHARED_VALIDATE": 0x03, "FIXED": 0x10,
    "ANONYMOUS": 0x20, "32BIT": 0x40, "GROWSDOWN": 0x0100, "DENYWRITE": 0x0800,
    "EXECUTABLE": 0x1000, "LOCKED": 0x2000, "NORESERVE": 0x4000, "POPULATE": 0x8000,
    "NONBLOCK": 0x10000, "STACK": 0x20000, "HUGETLB": 0x40000, "SYNC": 0x80000,
    "FIXED_NOREPLACE": 0x100000, "UNINITIALIZED": 0x4000000,
    # asm-generic/hugetlb_encode.h: log2 of the huge page size << MAP_HUGE_SHIFT (26)
    "HUGE_2MB": 21 << 26, "HUGE_1GB": 30 << 26,
}

MADV = {
    "normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4,
    "free": 8, "remove": 9, "dontfork": 10, "dofork": 11, "mergeable": 12,
    "unmergeable": 13, "hugepage": 14, "nohugepage": 15, "dontdump": 16, "dodump": 17,
    "wipeonfork": 18, "keeponfork": 19, "cold": 20, "pageout": 21,
    "populate_read": 22, "populate_write": 23, "dontneed_locked": 24, "collapse": 25,
    # 6.13+: guard regions (mm/madvise.c madvise_guard_install/remove). Not exposed:
    # MADV_HWPOISON (100) and MADV_SOFT_OFFLINE (101) take pages out of the host's memory.
    "guard_install": 102, "guard_remove": 103,
}

# uapi/linux/fadvise.h (POSIX_FADV_DONTNEED/NOREUSE are 4/5 on every arch but s390)
FADV = {"normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4, "noreuse": 5}
# asm-generic/mman-common.h
MCL = {"current": 1, "future": 2, "onfault": 4}
# uapi/linux/fcntl.h
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL = {"seal": 0x1, "shrink": 0x2, "grow": 0x4, "write": 0x8, "future_write": 0x10}

MS = {"async": 1, "invalidate": 2, "sync": 4}
MREMAP = {"maymove": 1, "fixed": 2, "dontunmap": 4}
MLOCK_ONFAULT = 1

# uapi/linux/personality.h
ADDR_NO_RANDOMIZE = 0x0040000
ADDR_COMPAT_LAYOUT = 0x0200000

# uapi/linux/ipc.h, shm.h
IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
SHM_LOCK = 11
SHM_UNLOCK = 12
SHM_RDONLY = 0o10000
SHM_RND = 0o20000
SHM_REMAP = 0o40000
SHM_EXEC = 0o100000

# linux/prctl.h
PR_SET_PDEATHSIG = 1

# malloc.h (glibc mallopt parameters)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class CallError(OSError):
    """A failed call, carrying the errno name the kernel gave."""


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"E{code}")


def _u64(value: int) -> ctypes.c_ulong:
    return ctypes.c_ulong(value & 0xFFFFFFFFFFFFFFFF)


def _call(name: str, *args: int) -> int:
    if _NR is None:
        raise OSError(errno.ENOSYS, f"shmkit has no syscall table for {platform.machine()}")
    ctypes.set_errno(0)
    res = _syscall(ctypes.c_long(_NR[name]), *[_u64(a) for a in args])
    if res == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"{name}: {os.strerror(code)}")
    return res


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mm/mmap.c: ksys_mmap_pgoff(); returns the address or raises CallError."""
    return _call("mmap", addr, length, prot, flags, fd, offset) & 0xFFFFFFFFFFFFFFFF


def munmap(addr: int, length: int) -> None:
    _call("munmap", addr, length)


def mprotect(addr: int, length: int, prot: int) -> None:
    _call("mprotect", addr, length, prot)


def madvise(addr: int, length: int, advice: int) -> None:
    _call("madvise", addr, length, advice)


def msync(addr: int, length: int, flags: int) -> None:
    _call("msync", addr, length, flags)


def mlock(addr: int, length: int, onfault: bool = False) -> None:
    if onfault:
        _call("mlock2", addr, length, MLOCK_ONFAULT)
    else:
        _call("mlock", addr, length)


def munlock(addr: int, length: int) -> None:
    _call("munlock", addr, length)


def mremap(addr: int, old_len: int, new_len: int, flags: int, new_addr: int = 0) -> int:
    return _call("mremap", addr, old_len, new_len, flags, new_addr) & 0xFFFFFFFFFFFFFFFF


def personality(persona: int) -> int:
    """kernel/exec_domain.c: personality(0xffffffff) only reads the current value."""
    return _call("personality", persona)


def shmget(key: int, size: int, flags: int) -> int:
    """ipc/shm.c: ksys_shmget(). sysv_ipc cannot do this alone: its SharedMemory()
    attaches at once and, on IPC_CREX, writes every byte of the segment."""
    f = _libc.shmget
    f.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
    f.restype = ctypes.c_int
    ctypes.set_errno(0)
    res = f(key, size & 0xFFFFFFFFFFFFFFFF, flags)
    if res == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"shmget: {os.strerror(code)}")
    return res


class ShmidDs(ctypes.Structure):
    """struct shmid_ds as glibc lays it out on 64-bit Linux (bits/shm.h)."""

    _fields_ = [
        ("key", ctypes.c_int), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint),
        ("cuid", ctypes.c_uint), ("cgid", ctypes.c_uint), ("mode", ctypes.c_ushort),
        ("_pad1", ctypes.c_ushort), ("seq", ctypes.c_ushort), ("_pad2", ctypes.c_ushort),
        ("_unused1", ctypes.c_ulong), ("_unused2", ctypes.c_ulong),
        ("segsz", ctypes.c_size_t), ("atime", ctypes.c_long), ("dtime", ctypes.c_long),
        ("ctime", ctypes.c_long), ("cpid", ctypes.c_int), ("lpid", ctypes.c_int),
        ("nattch", ctypes.c_ulong), ("_unused4", ctypes.c_ulong), ("_unused5", ctypes.c_ulong),
    ]


def shmctl(shmid: int, cmd: int, ds: ShmidDs | None = None) -> ShmidDs:
    """shmctl(2); ds is what IPC_SET reads (uid, gid, mode)."""
    f = _libc.shmctl
    f.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
    f.restype = ctypes.c_int
    ds = ds if ds is not None else ShmidDs()
    ctypes.set_errno(0)
    if f(shmid, cmd, ctypes.byref(ds)) == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"shmctl: {os.strerror(code)}")
    return ds


def shmdt(addr: int) -> None:
    f = _libc.shmdt
    f.argtypes = (ctypes.c_void_p,)
    f.restype = ctypes.c_int
    ctypes.set_errno(0)
    if f(ctypes.c_void_p(addr)) == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"shmdt: {os.strerror(code)}")


def mlockall(flags: int) -> None:
    _plain("mlockall", flags)


def munlockall() -> None:
    _plain("munlockall")


def _plain(name: str, *args: int) -> None:
    """A libc wrapper that takes ints and returns 0 or -1 with errno."""
    f = getattr(_libc, name)
    f.argtypes = (ctypes.c_int,) * len(args)
    f.restype = ctypes.c_int
    ctypes.set_errno(0)
    if f(*args) == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"{name}: {os.strerror(code)}")


def mallopt(param: int, value: int) -> bool:
    f = _libc.mallopt
    f.argtypes = (ctypes.c_int, ctypes.c_int)
    f.restype = ctypes.c_int
    return bool(f(param, value))


def prctl(option: int, arg2: int) -> None:
    f = _libc.prctl
    f.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    f.restype = ctypes.c_int
    if f(option, arg2, 0, 0, 0) == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"prctl: {os.strerror(code)}")
