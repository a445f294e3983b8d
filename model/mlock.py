"""mlock(2), mlock2(2) and munlock(2). Methods of Kernel (MlockOps).

Kernel sources: mm/mlock.c (can_do_mlock, do_mlock, apply_vma_lock_flags, mlock_fixup),
mm/gup.c __mm_populate. The RLIMIT_MEMLOCK check of a new mapping (mlock_future_ok) is in
model.mmap.
"""
from __future__ import annotations

from model.flags import MLOCK_ONFAULT  # model.resolve's numbers

from model.errors import errno
from model.flags import (PAGE_SHIFT, PAGE_SIZE, VM_EXEC, VM_LOCKED, VM_LOCKONFAULT, VM_PKEY_MASK,
                         VM_READ, VM_WRITE)
from model.mm import AddressSpace
from model.pages import page_align
from model.process import CAP_IPC_LOCK, Process


class MlockOps:
    """mlock and munlock (model.mlock)."""

    def can_do_mlock(self, proc: Process) -> bool:
        """mm/mlock.c can_do_mlock()."""
        limit = proc.rlimit("memlock")
        return limit != 0 or self.capable(proc, CAP_IPC_LOCK)

    def sys_mlock(self, proc: Process, args: dict):
        """mm/mlock.c do_mlock()."""
        f0 = self._faults()
        start, length = args["addr"], args["length"]
        if args["flags"] & ~MLOCK_ONFAULT:   # mm/mlock.c mlock2: unknown flags
            raise errno("EINVAL", f0)
        if not self.can_do_mlock(proc):
            raise errno("EPERM", f0)
        length = page_align(length + (start & (PAGE_SIZE - 1)))
        start &= ~(PAGE_SIZE - 1)
        end = start + length
        mm = proc.mm
        limit = proc.rlimit("memlock")
        locked = (length >> PAGE_SHIFT) + mm.locked_vm
        lock_cap = self.capable(proc, CAP_IPC_LOCK)
        if not lock_cap and limit is not None and locked > limit >> PAGE_SHIFT:
            locked -= mm.locked_pages_in(start, end)
        if not (lock_cap or limit is None or locked <= limit >> PAGE_SHIFT):
            raise errno("ENOMEM", f0)
        onfault = bool(args["flags"] & MLOCK_ONFAULT)
        upto = self.lock_walk_end(mm, start, end)
        for v in mm.overlapping(start, upto):
            if v.opaque is not None:
                raise errno("ENOMEM", f0)
        before = mm.locked_pages_in(start, upto)
        # apply_vma_lock_flags(): newflags = (vm_flags & ~VM_LOCKED_MASK) | flags, so a plain
        # mlock over a VM_LOCKONFAULT range clears it (measured: that part splits off and
        # is populated)
        if upto > start:
            self.modify_flags(proc, start, upto, VM_LOCKED | (VM_LOCKONFAULT if onfault else 0),
                              0 if onfault else VM_LOCKONFAULT)
            mm.locked_vm += ((upto - start) >> PAGE_SHIFT) - before
        if upto < end:
            raise errno("ENOMEM", f0)        # do_mlock returns before __mm_populate
        self.note("apply_vma_lock_flags: VM_LOCKED set (mlock_fixup splits the VMA at the range)")
        minor = major = 0
        if not onfault:
            # __mm_populate(start, len, ignore_errors=0), VMA by VMA: GUP fails with -EFAULT on
            # a PROT_NONE VMA (no FOLL_FORCE: populate_vma_page_range) or an execute-only one
            # (check_vma_flags: arch_vma_access_permitted), and at a page past EOF (SIGBUS);
            # do_mlock then returns __mlock_posix_error_return(-EFAULT) = ENOMEM with the
            # pages before faulted in and VM_LOCKED left set (measured for all three)
            for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
                if v.flags & VM_LOCKONFAULT:
                    continue
                if not v.flags & (VM_READ | VM_WRITE | VM_EXEC) or v.flags & VM_PKEY_MASK:
                    raise errno("ENOMEM", self._faults(minor, major))
                stopped: list = []
                mi, ma = self.mem.populate(mm, max(start, v.start), min(end, v.end), stopped)
                minor, major = minor + mi, major + ma
                if stopped:
                    raise errno("ENOMEM", self._faults(minor, major))
            self.note("__mm_populate faults the locked pages in")
        return self._faults(minor, major), None

    def sys_munlock(self, proc: Process, args: dict):
        f0 = self._faults()
        start, length = args["addr"], args["length"]
        length = page_align(length + (start & (PAGE_SIZE - 1)))
        start &= ~(PAGE_SIZE - 1)
        end = start + length
        mm = proc.mm
        upto = self.lock_walk_end(mm, start, end)
        if upto > start:
            before = mm.locked_pages_in(start, upto)
            self.modify_flags(proc, start, upto, 0, VM_LOCKED | VM_LOCKONFAULT)
            mm.locked_vm -= before
        if upto < end:
            raise errno("ENOMEM", f0)
        self.note("apply_vma_lock_flags: VM_LOCKED cleared; VMAs merge where vma_modify allows")
        return f0, None

    @staticmethod
    def lock_walk_end(mm: AddressSpace, start: int, end: int) -> int:
        """mm/mlock.c apply_vma_lock_flags(): no VMA at start is ENOMEM with nothing changed;
        otherwise mlock_fixup() runs VMA by VMA up to the first hole, and a hole (or a range
        ending past the last VMA) is ENOMEM after those changes (measured: munlock over a
        range whose tail was unmapped splits and unlocks the mapped part, then fails).
        Returns where the changes stop; < end means ENOMEM."""
        upto = start
        for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
            if v.start > upto:
                break
            upto = min(v.end, end)
        return upto
