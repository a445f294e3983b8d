"""mlockall(2) and munlockall(2) (mm/mlock.c). A mixin of model.kernel.Kernel."""
from __future__ import annotations

from model.errors import errno
from model.flags import (MCL, PAGE_SHIFT, VM_DONTEXPAND, VM_EXEC, VM_HUGETLB, VM_LOCKED,
                         VM_LOCKONFAULT, VM_PKEY_MASK, VM_READ, VM_WRITE)
from model.process import CAP_IPC_LOCK

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = MCL["CURRENT"], MCL["FUTURE"], MCL["ONFAULT"]
VM_LOCKED_MASK = VM_LOCKED | VM_LOCKONFAULT


class LockAll:
    def sys_mlockall(self, proc, args: dict):
        """mm/mlock.c sys_mlockall(): no flag, an unknown bit or MCL_ONFAULT alone is EINVAL;
        can_do_mlock() (EPERM); with MCL_CURRENT, ENOMEM when total_vm passes RLIMIT_MEMLOCK
        without CAP_IPC_LOCK; apply_mlockall_flags(); then, for MCL_CURRENT,
        mm_populate(0, TASK_SIZE) with errors ignored. Its faults include the interpreter's
        own pages (the snapshot's VMAs, which the model does not page), so the step's fault
        count is not an observation; the snapshot's VMAs are locked too by the kernel, but the
        model keeps them as they were (their lines are not compared)."""
        f0 = self._faults()
        flags = args["flags"]                   # MCL_* bits (model.resolve)
        if not flags or flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) or flags == MCL_ONFAULT:
            raise errno("EINVAL", f0)
        if not self.can_do_mlock(proc):
            raise errno("EPERM", f0)
        limit = proc.rlimit("memlock")
        if flags & MCL_CURRENT and not self.capable(proc, CAP_IPC_LOCK) and limit is not None \
                and proc.mm.total_vm > limit >> PAGE_SHIFT:
            raise errno("ENOMEM", f0)
        self.apply_mlockall_flags(proc, flags)
        if flags & MCL_CURRENT and not flags & MCL_ONFAULT:
            mm = proc.mm
            for v in sorted((v for v in mm.vmas if v.opaque is None), key=lambda v: v.start):
                # populate_vma_page_range(): PROT_NONE and execute-only VMAs fail in GUP,
                # __mm_populate(ignore_errors=1) goes on with the next VMA
                if not v.flags & VM_LOCKED or v.flags & VM_LOCKONFAULT:
                    continue
                if not v.flags & (VM_READ | VM_WRITE | VM_EXEC) or v.flags & VM_PKEY_MASK:
                    continue
                self.mem.populate(mm, v.start, v.end, [])
            self.note("mm_populate(0, TASK_SIZE): every locked VMA faulted in (the interpreter's "
                      "too: the step's faults are not an observation)")
            return None
        return f0, None

    def sys_munlockall(self, proc, args: dict):
        """mm/mlock.c sys_munlockall() -> apply_mlockall_flags(0): def_flags and every VMA lose
        VM_LOCKED and VM_LOCKONFAULT."""
        f0 = self._faults()
        self.apply_mlockall_flags(proc, 0)
        return f0, None

    def apply_mlockall_flags(self, proc, flags: int) -> None:
        """mm/mlock.c apply_mlockall_flags(): MCL_FUTURE sets mm->def_flags (VM_LOCKED, with
        MCL_ONFAULT also VM_LOCKONFAULT) for later mappings; MCL_CURRENT (or flags 0, from
        munlockall) sets every VMA's lock bits through mlock_fixup(), which leaves VM_SPECIAL
        and hugetlb VMAs alone and counts mm->locked_vm."""
        mm = proc.mm
        mm.def_flags &= ~VM_LOCKED_MASK
        if flags & MCL_FUTURE:
            mm.def_flags |= VM_LOCKED | (VM_LOCKONFAULT if flags & MCL_ONFAULT else 0)
            if not flags & MCL_CURRENT:
                self.note("MCL_FUTURE: mm->def_flags gets VM_LOCKED; later mappings are locked")
                return
        to_add = 0
        if flags & MCL_CURRENT:
            to_add = VM_LOCKED | (VM_LOCKONFAULT if flags & MCL_ONFAULT else 0)
        for v in list(mm.vmas):
            if v.opaque is not None or v not in mm.vmas:
                continue
            old = v.flags
            new = (old & ~VM_LOCKED_MASK) | to_add
            if new == old or old & (VM_DONTEXPAND | VM_HUGETLB):
                continue
            pages = v.pages
            self.modify_flags(proc, v.start, v.end, new & VM_LOCKED_MASK, ~new & VM_LOCKED_MASK)
            if not new & VM_LOCKED:
                mm.locked_vm -= pages
            elif not old & VM_LOCKED:
                mm.locked_vm += pages
        self.note("apply_mlockall_flags: mlock_fixup on every VMA"
                  + (" (VM_LOCKED set)" if to_add else " (VM_LOCKED cleared)"))
