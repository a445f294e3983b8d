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
                   mlock=149, munlock=150, mlock2=325, personality=135, shmctl=31),
    "aarch64": dict(mmap=222, mprotect=226, munmap=215, mremap=216, msync=227, madvise=233,
                    mlock=228, munlock=229, mlock2=284, personality=92, shmctl=195),
}
_NR = _SYSCALLS.get(platform.machine())

# uapi/asm-generic/mman-common.h, mman.h, linux/mman.h, ipc.h, shm.h, fadvise.h, fcntl.h (x86_64
# values): one table, model/flags.py, for the live calls, the experiment files and the model.
from model.flags import (F_ADD_SEALS, F_GET_SEALS, F_SEAL, FADV, IPC_CREAT,  # noqa: E402,F401
                         IPC_EXCL, IPC_PRIVATE, IPC_RMID, IPC_SET, IPC_STAT, MAP, MCL,
                         MLOCK_ONFAULT, PROT, SHM_EXEC, SHM_LOCK, SHM_RDONLY, SHM_REMAP, SHM_RND,
                         SHM_UNLOCK)

# uapi/linux/personality.h
ADDR_NO_RANDOMIZE = 0x0040000
ADDR_COMPAT_LAYOUT = 0x0200000

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


def _checked(res: int, what: str) -> int:
    """A call's result; -1 (the call failed) raises CallError with its errno, "WHAT: strerror"."""
    if res == -1:
        code = ctypes.get_errno()
        raise CallError(code, f"{what}: {os.strerror(code)}")
    return res


def _function(name: str, *argtypes, check: bool = True):
    """The caller of libc's NAME, an int-returning function of `argtypes`: its ctypes prototype
    set at the first call (a symbol this libc lacks fails then, not at import), errno cleared
    before each call, and with `check` a result of -1 raised by _checked (as NAME, or as the
    caller's `what`)."""

    def call(*args, what: str = name) -> int:
        f = getattr(_libc, name)
        f.argtypes = argtypes
        f.restype = ctypes.c_int
        ctypes.set_errno(0)
        res = f(*args)
        return _checked(res, what) if check else res

    return call


# libc's functions shmkit calls, each with its prototype (see _function)
_shmget = _function("shmget", ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_shmdt = _function("shmdt", ctypes.c_void_p)
_mlockall = _function("mlockall", ctypes.c_int)
_munlockall = _function("munlockall")
_mallopt = _function("mallopt", ctypes.c_int, ctypes.c_int, check=False)   # 1 done, 0 not
_prctl = _function("prctl", ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_shm_open = _function("shm_open", ctypes.c_char_p, ctypes.c_int, ctypes.c_uint)
_shm_unlink = _function("shm_unlink", ctypes.c_char_p)
_unshare = _function("unshare", ctypes.c_int)
_setns = _function("setns", ctypes.c_int, ctypes.c_int)
_mount = _function("mount", ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def _call(name: str, *args: int) -> int:
    if _NR is None:
        raise OSError(errno.ENOSYS, f"shmkit has no syscall table for {platform.machine()}")
    ctypes.set_errno(0)
    return _checked(_syscall(ctypes.c_long(_NR[name]), *[_u64(a) for a in args]), name)


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


def mlock(addr: int, length: int, flags: int = 0) -> None:
    """mlock(2), or mlock2(2) when flags are given (MLOCK_ONFAULT or raw bits)."""
    if flags:
        _call("mlock2", addr, length, flags)
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
    return _shmget(key, size & 0xFFFFFFFFFFFFFFFF, flags)


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
    """ipc/shm.c ksys_shmctl() through syscall(2): shmid and cmd reach the kernel as given
    (glibc's wrapper may judge a cmd itself). The buffer is struct shmid64_ds, which is
    glibc's struct shmid_ds on 64-bit Linux (no IPC_64 bit is needed: x86-64 and arm64 do
    not select ARCH_WANT_IPC_PARSE_VERSION); ds: what IPC_SET reads (uid, gid, mode)."""
    ds = ds if ds is not None else ShmidDs()
    _call("shmctl", shmid, cmd, ctypes.addressof(ds))
    return ds


def shmdt(addr: int) -> None:
    _shmdt(ctypes.c_void_p(addr))


def mlockall(flags: int) -> None:
    _mlockall(flags)


def munlockall() -> None:
    _munlockall()


def mallopt(param: int, value: int) -> bool:
    return bool(_mallopt(param, value))


def prctl(option: int, arg2: int) -> None:
    _prctl(option, arg2, 0, 0, 0)


def shm_open(name: str, oflag: int, mode: int) -> int:
    """glibc shm_open(3) as is (posix/shm_open.c, posix/shm-directory.c): its own name rules
    and errno, which posix_ipc folds into a few exception classes. The name's bytes are the
    experiment's (surrogateescape: odd bytes pass through)."""
    return _shm_open(name.encode("utf-8", "surrogateescape"), oflag, mode)


def shm_unlink(name: str) -> None:
    _shm_unlink(name.encode("utf-8", "surrogateescape"))


# uapi/linux/sched.h, uapi/linux/mount.h
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000


def unshare(flags: int) -> None:
    """kernel/fork.c ksys_unshare() (Python 3.11 has no os.unshare)."""
    _unshare(flags)


def setns(fd: int, nstype: int) -> None:
    """kernel/nsproxy.c setns(): the calling thread joins the namespace fd refers to."""
    _setns(fd, nstype)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _mount(enc(source), enc(target), enc(fstype), flags, enc(data), what=f"mount {target}")
