"""A modelled process (the parts of struct task_struct and struct mm_struct the model needs:
rlimits, credentials, its address space) and the harness's regions inside it. Shared by
model.kernel, its system call files and model.ipc.

Kernel sources: include/linux/sched.h (task_struct), include/linux/resource.h and
kernel/sys.c (rlimits), include/uapi/linux/capability.h (capability numbers)."""
from __future__ import annotations

from model.mm import AddressSpace
from model.vma import OpenFile

RLIM_INFINITY = None
# include/uapi/linux/capability.h
CAP_IPC_LOCK, CAP_SYS_RESOURCE = 14, 24


class Region:
    __slots__ = ("addr", "length", "mapped", "kind")

    def __init__(self, addr, length, kind):
        self.addr, self.length, self.mapped, self.kind = addr, length, True, kind

    def copy(self):
        r = Region(self.addr, self.length, self.kind)
        r.mapped = self.mapped
        return r


class Process:
    def __init__(self, name: str, pid: int, mm: AddressSpace, rlimits: dict, privileged: bool, uid: int):
        self.name, self.pid, self.mm = name, pid, mm
        self.rlimits = dict(rlimits)          # name -> [soft, hard] in bytes, None = unlimited
        self.privileged = privileged          # CAP_IPC_LOCK, CAP_SYS_RESOURCE, CAP_IPC_OWNER...
        self.uid = uid
        self.fds: dict[str, OpenFile] = {}
        self.regions: dict[str, Region] = {}
        self.alive = True

    def rlimit(self, name: str):
        return self.rlimits.get(name, [None, None])[0]
