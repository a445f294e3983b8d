"""Flag values the model reasons with: vm_flags (include/linux/mm.h), mmap flags and prot
bits (include/uapi/asm-generic/mman*.h, x86-64 values), and the page-table entry bits of
the model's per-page arrays (model.pagetable).

Experiment files say "private", "rw" or give raw numbers; model.resolve turns a step into the
numbers of the system call (with these tables), the worker passes them to the kernel and the
model's rules below read them as the kernel does."""
from __future__ import annotations

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PMD_SIZE = 2 << 20            # one page table covers 2 MiB of address (x86-64, 4 KiB pages)
PTRS_PER_PTE = PMD_SIZE // PAGE_SIZE

# include/linux/mm.h
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 0x1, 0x2, 0x4, 0x8
VM_MAYREAD, VM_MAYWRITE, VM_MAYEXEC, VM_MAYSHARE = 0x10, 0x20, 0x40, 0x80
VM_GROWSDOWN = 0x100
VM_MAYBE_GUARD = 0x800   # 6.18+: a guard region was installed in the VMA (smaps "gu")
VM_LOCKED = 0x2000
VM_SEQ_READ, VM_RAND_READ = 0x8000, 0x10000
VM_DONTCOPY, VM_DONTEXPAND, VM_LOCKONFAULT = 0x20000, 0x40000, 0x80000
VM_ACCOUNT, VM_NORESERVE = 0x100000, 0x200000
VM_HUGETLB, VM_SYNC = 0x400000, 0x800000
VM_WIPEONFORK, VM_DONTDUMP = 0x02000000, 0x04000000
VM_HUGEPAGE, VM_NOHUGEPAGE, VM_MERGEABLE = 0x20000000, 0x40000000, 0x80000000
# include/linux/mm.h: VM_SOFTDIRTY is 0x08000000 with CONFIG_MEM_SOFT_DIRTY, VM_NONE without
# (the kernel profile's soft_dirty says which; Kernel.vm_softdirty holds the bit or 0).
VM_SOFTDIRTY = 0x08000000
VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_STACK_FLAGS = VM_GROWSDOWN        # VM_STACK on x86-64 (is_stack_mapping)
# x86-64 protection keys live in VM_HIGH_ARCH_0.. (VM_PKEY_SHIFT = 32; no VmFlags mnemonic).
# The only key the model hands out is the execute-only one (arch/x86/mm/pkeys.c
# execute_only_pkey): mm_pkey_alloc() gives the lowest free key, 1, so VM_PKEY_BIT0.
VM_PKEY_BIT0 = 1 << 32
VM_PKEY_MASK = 0xF << 32

# smaps "VmFlags" mnemonics (fs/proc/task_mmu.c show_smap_vma_flags: one per set bit, in bit
# order; model.proc.vmflags renders them). "sd" (VM_SOFTDIRTY) can be set only with
# CONFIG_MEM_SOFT_DIRTY (Debian's kernels have it; this host's does not).
VMFLAG_NAMES = {VM_READ: "rd", VM_WRITE: "wr", VM_EXEC: "ex", VM_SHARED: "sh", VM_MAYREAD: "mr",
                VM_MAYWRITE: "mw", VM_MAYEXEC: "me", VM_MAYSHARE: "ms", VM_GROWSDOWN: "gd", VM_MAYBE_GUARD: "gu",
                VM_LOCKED: "lo", VM_SEQ_READ: "sr", VM_RAND_READ: "rr", VM_DONTCOPY: "dc",
                VM_DONTEXPAND: "de", VM_LOCKONFAULT: "lf", VM_ACCOUNT: "ac", VM_NORESERVE: "nr",
                VM_WIPEONFORK: "wf", VM_DONTDUMP: "dd", VM_SOFTDIRTY: "sd", VM_HUGEPAGE: "hg", VM_NOHUGEPAGE: "nh",
                VM_MERGEABLE: "mg", VM_HUGETLB: "ht", VM_SYNC: "sf"}

PROT_READ, PROT_WRITE, PROT_EXEC = 0x1, 0x2, 0x4
PROT_SEM = 0x8                                   # asm-generic/mman-common.h (ignored on x86)
PROT_GROWSDOWN, PROT_GROWSUP = 0x01000000, 0x02000000
ULONG_MASK = (1 << 64) - 1

# include/uapi/linux/mman.h, asm-generic/mman-common.h (x86-64). The one table of these numbers:
# shmkit.libc (the live calls) and shmkit.spec (the names an experiment file accepts, in this
# order) import it.
MAP = {"SHARED": 0x01, "PRIVATE": 0x02, "SHARED_VALIDATE": 0x03, "ANONYMOUS": 0x20, "FIXED": 0x10,
       "FIXED_NOREPLACE": 0x100000, "POPULATE": 0x8000, "LOCKED": 0x2000, "NORESERVE": 0x4000,
       "GROWSDOWN": 0x0100, "STACK": 0x20000, "HUGETLB": 0x40000, "32BIT": 0x40,
       "UNINITIALIZED": 0x4000000, "SYNC": 0x80000, "NONBLOCK": 0x10000, "DENYWRITE": 0x0800,
       "EXECUTABLE": 0x1000,
       # include/uapi/asm-generic/hugetlb_encode.h: log2(huge page size) << MAP_HUGE_SHIFT
       "HUGE_2MB": 21 << 26, "HUGE_1GB": 30 << 26}
MAP_HUGE_SHIFT, MAP_HUGE_MASK = 26, 0x3f
MAP_ALIASES = {"ANON": "ANONYMOUS"}
PROT = {"r": PROT_READ, "w": PROT_WRITE, "x": PROT_EXEC}
# asm-generic/mman-common.h MADV_* (the advices mm/madvise.c madvise_behavior_valid() knows
# on 6.x; a number outside them is EINVAL there)
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
MADV_NAME = {v: k for k, v in MADV.items()}
MS = {"SYNC": 4, "ASYNC": 1, "INVALIDATE": 2}            # asm-generic/mman-common.h MS_*
MREMAP = {"MAYMOVE": 1, "FIXED": 2, "DONTUNMAP": 4}      # uapi/linux/mman.h MREMAP_*
MLOCK_ONFAULT = 1                                        # uapi/asm-generic/mman-common.h
# uapi/asm-generic/fcntl.h
O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC = 0, 1, 2, 0o100, 0o200, 0o1000
O_ACCMODE = 3
# uapi/linux/ipc.h, shm.h
IPC_PRIVATE, IPC_CREAT, IPC_EXCL = 0, 0o1000, 0o2000
IPC_RMID, IPC_SET, IPC_STAT = 0, 1, 2
SHM_LOCK, SHM_UNLOCK = 11, 12
SHM_RDONLY, SHM_RND, SHM_REMAP, SHM_EXEC = 0o10000, 0o20000, 0o40000, 0o100000
SHMCTL_CMD = {"rmid": IPC_RMID, "stat": IPC_STAT, "lock": SHM_LOCK, "unlock": SHM_UNLOCK,
              "set": IPC_SET}
# uapi/linux/fadvise.h POSIX_FADV_* (DONTNEED/NOREUSE are 4/5 on every arch but s390)
FADV = {"normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4, "noreuse": 5}
FADV_NAME = {v: k for k, v in FADV.items()}
MAP_TYPE = 0x0f
# include/linux/mman.h LEGACY_MAP_MASK: what MAP_SHARED_VALIDATE accepts on a file whose f_op
# has no FOP_MMAP_SYNC, MAP_HUGE_2MB and MAP_HUGE_1GB included. Neither MAP_FIXED_NOREPLACE nor
# MAP_SYNC is in it.
def _or(values) -> int:
    out = 0
    for v in values:
        out |= v
    return out


# (an OR, not a sum: MAP_HUGE_2MB, MAP_HUGE_1GB and MAP_UNINITIALIZED share bits)
LEGACY_MAP_MASK = _or(MAP[n] for n in (
    "SHARED", "PRIVATE", "FIXED", "ANONYMOUS", "DENYWRITE", "EXECUTABLE", "UNINITIALIZED",
    "GROWSDOWN", "LOCKED", "NORESERVE", "POPULATE", "NONBLOCK", "STACK", "HUGETLB", "32BIT",
    "HUGE_2MB", "HUGE_1GB"))

# include/uapi/linux/fcntl.h F_SEAL_*
F_SEAL = {"SEAL": 0x1, "SHRINK": 0x2, "GROW": 0x4, "WRITE": 0x8, "FUTURE_WRITE": 0x10}
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE = 0x1, 0x2, 0x4, 0x8, 0x10
# include/uapi/asm-generic/mman-common.h MCL_*
MCL = {"CURRENT": 1, "FUTURE": 2, "ONFAULT": 4}
# uapi/linux/fcntl.h
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
# uapi/linux/memfd.h (MFD_CLOEXEC is the worker's own, not the step's)
MFD_CLOEXEC, MFD_ALLOW_SEALING = 0x1, 0x2


def seal_names(value: int) -> list[str]:
    """F_GET_SEALS as the step's value: the lower-case F_SEAL_* names of the bits set."""
    return [name.lower() for name, bit in F_SEAL.items() if value & bit]

# Page-table entry bits of one byte per page (model.pagetable)
PTE_NONE, PTE_ZERO, PTE_FILE, PTE_ANON = 0, 1, 2, 3   # what the entry maps (low two bits)
PTE_KIND = 0x3
PTE_WRITE = 0x4      # pte_write
PTE_DIRTY = 0x8      # pte_dirty
PTE_YOUNG = 0x10     # pte_young (accessed)
# a guard-region PTE marker (mm/madvise.c madvise_guard_install, 6.13+): no page (kind
# PTE_NONE), and any access is SIGSEGV (mm/memory.c handle_pte_marker)
PTE_GUARD = 0x80


def c_int(value: int) -> int:
    """A raw number as a system call's `int` argument reads it: the low 32 bits of the
    register, sign-extended (madvise's behavior, shmat's and shmctl's shmid and cmd are int in
    their SYSCALL_DEFINEs; a raw advice of 2**32 + 4 is MADV_DONTNEED to the kernel)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def prot_of(text) -> int:
    """"rw" -> PROT_READ|PROT_WRITE; "none" -> 0; an integer is a raw prot, as given."""
    if isinstance(text, int):
        return text
    if text == "none":
        return 0
    return (PROT_READ if "r" in text else 0) | (PROT_WRITE if "w" in text else 0) \
        | (PROT_EXEC if "x" in text else 0)


def calc_vm_prot_bits(prot: int) -> int:
    """include/linux/mman.h calc_vm_prot_bits()."""
    return (VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0) \
        | (VM_EXEC if prot & PROT_EXEC else 0)


def calc_vm_flag_bits(flags: int, stack_nohugepage: bool = True) -> int:
    """include/linux/mman.h calc_vm_flag_bits(): MAP_GROWSDOWN -> VM_GROWSDOWN, MAP_LOCKED ->
    VM_LOCKED, MAP_SYNC -> VM_SYNC, MAP_STACK -> VM_NOHUGEPAGE (x86 adds nothing; the last one
    from 6.7 on: model.versions MAP_STACK_NOHUGEPAGE_SINCE, the kernel says which)."""
    return (VM_GROWSDOWN if flags & MAP["GROWSDOWN"] else 0) | (VM_LOCKED if flags & MAP["LOCKED"] else 0) \
        | (VM_SYNC if flags & MAP["SYNC"] else 0) \
        | (VM_NOHUGEPAGE if flags & MAP["STACK"] and stack_nohugepage else 0)


def bits(table: dict, items) -> int:
    """The OR of a flag list as an experiment file gives it: names of `table` (any case) and raw
    integers (passed on as given)."""
    out = 0
    for item in items:
        out |= item if isinstance(item, int) else table[item.upper()]
    return out


def map_flags(items) -> int:
    return bits(MAP, items)
