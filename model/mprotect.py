"""munmap(2), mprotect(2), and vma_modify_flags() over a range (used by madvise and mlock).
Methods of Kernel (MprotectOps).

Kernel sources: mm/vma.c do_vmi_munmap, mm/mprotect.c (do_mprotect_pkey, mprotect_fixup,
change_protection, can_change_pte_writable), arch/x86/mm/pkeys.c
__arch_override_mprotect_pkey, mm/vma.c vma_modify_flags.
"""
from __future__ import annotations

from model.errors import StepError, errno
from model.flags import (PAGE_SHIFT, PAGE_SIZE, PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP,
                         PROT_READ, PROT_SEM, PROT_WRITE, PTE_ANON, PTE_DIRTY, PTE_FILE, PTE_KIND,
                         PTE_WRITE, ULONG_MASK, VM_ACCESS_FLAGS, VM_ACCOUNT, VM_EXEC, VM_GROWSDOWN,
                         VM_LOCKED, VM_NORESERVE, VM_PKEY_BIT0, VM_PKEY_MASK, VM_SHARED, VM_WRITE,
                         calc_vm_prot_bits)
from model.mm import TASK_SIZE
from model.pages import page_align
from model.process import Process
from model.versions import UNACCOUNT_UNFAULTED_SINCE
from model.vma import Vma


class MprotectOps:
    """munmap, mprotect and vma_modify_flags (model.mprotect)."""

    def sys_munmap(self, proc: Process, args: dict):
        f0 = self._faults()
        addr, length = args["addr"], args["length"]
        if addr & (PAGE_SIZE - 1) or not length or addr > TASK_SIZE or length > TASK_SIZE - addr:
            raise errno("EINVAL", f0)
        end = addr + page_align(length)
        mm = proc.mm
        if mm.splits_needed(addr, end) and mm.map_count + 1 > self.max_map_count \
                and any(v.start < addr and v.end > end for v in mm.overlapping(addr, end)):
            raise errno("ENOMEM", f0)
        self.unmap_vmas(proc, addr, end)
        r = self.whole_region(proc, args)
        if r is not None:
            r.mapped = False
        self.note("do_vmi_munmap: split at the edges, zap the page tables, free the VMAs")
        return f0, None

    def sys_mprotect(self, proc: Process, args: dict):
        """mm/mprotect.c do_mprotect_pkey()."""
        f0 = self._faults()
        start, length, prot = args["addr"], args["length"], args["prot"]
        grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
        prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP) & ULONG_MASK
        if grows == PROT_GROWSDOWN | PROT_GROWSUP:          # can't be both
            raise errno("EINVAL", f0)
        if start & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        if not length:
            return f0, None
        end = start + page_align(length)
        if end > ULONG_MASK or end <= start:                 # end = start + len wrapped
            raise errno("ENOMEM", f0)
        # include/linux/mman.h arch_validate_prot() (x86 has no override): only PROT_READ,
        # PROT_WRITE, PROT_EXEC and PROT_SEM (ignored) are known
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):
            raise errno("EINVAL", f0)
        mm = proc.mm
        vma = mm.find_vma(start)
        if vma is None:
            raise errno("ENOMEM", f0)
        if grows & PROT_GROWSDOWN:
            # PROT_GROWSDOWN: the range extends down to the start of a VM_GROWSDOWN VMA
            if vma.start >= end or not vma.flags & VM_GROWSDOWN:
                raise errno("EINVAL", f0)
            start = vma.start
        elif vma.start > start:
            raise errno("ENOMEM", f0)
        elif grows & PROT_GROWSUP:
            raise errno("EINVAL", f0)                       # no VM_GROWSUP on x86-64
        at = start
        done = [0, 0]           # faults of populate_vma_page_range() in the VMAs changed so far
        while at < end:
            vma = mm.vma_at(at)
            if vma is None:
                raise errno("ENOMEM", self._faults(*done))
            if vma.opaque is not None:
                raise errno("EACCES", self._faults(*done))
            # mask_off_old_flags = VM_ACCESS_FLAGS | VM_FLAGS_CLEAR (the pkey bits): the key
            # comes from arch_override_mprotect_pkey()
            newflags = (vma.flags & ~(VM_ACCESS_FLAGS | VM_PKEY_MASK)) | calc_vm_prot_bits(prot) \
                | self.override_mprotect_pkey(vma, prot)
            # (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS: each access needs its VM_MAY*
            if (newflags & ~(newflags >> 4)) & 0x7:
                raise errno("EACCES", self._faults(*done))
            tmp = min(vma.end, end)
            try:
                minor, major = self.mprotect_fixup(proc, vma, at, tmp, newflags)
            except StepError as e:
                e.faults = self._faults(*done)
                raise
            done[0] += minor
            done[1] += major
            at = tmp
        return self._faults(*done), None

    def override_mprotect_pkey(self, vma: Vma, prot: int) -> int:
        """arch/x86/mm/pkeys.c __arch_override_mprotect_pkey() for a plain mprotect: PROT_EXEC
        alone takes the execute-only key; any other prot on an execute-only VMA (access flags
        VM_EXEC, the execute-only key) goes back to key 0; otherwise the VMA keeps its key."""
        if self.pkeys and prot == PROT_EXEC:
            return VM_PKEY_BIT0
        if vma.flags & VM_ACCESS_FLAGS == VM_EXEC and vma.flags & VM_PKEY_MASK == VM_PKEY_BIT0:
            return 0
        return vma.flags & VM_PKEY_MASK

    def mprotect_fixup(self, proc: Process, vma: Vma, start: int, end: int, newflags: int) -> tuple[int, int]:
        """mm/mprotect.c mprotect_fixup(); returns the (minor, major) faults it took."""
        mm = proc.mm
        if newflags & VM_WRITE and not vma.flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE):
            newflags |= VM_ACCOUNT       # a private mapping becoming writable is charged
        elif not newflags & VM_WRITE and vma.flags & VM_ACCOUNT and vma.is_anonymous and vma.anon_vma is None \
                and self.release >= UNACCOUNT_UNFAULTED_SINCE:
            newflags &= ~VM_ACCOUNT      # an unfaulted anonymous VMA made read-only is uncharged
        if newflags == vma.flags:
            return 0, 0
        # mprotect_fixup(): "Check space limits when area turns into data" (RLIMIT_DATA)
        if newflags & VM_WRITE:
            npages = (end - start) >> PAGE_SHIFT
            if not self.may_expand_vm(proc, newflags, npages) and self.may_expand_vm(proc, vma.flags, npages):
                raise errno("ENOMEM", self._faults())
            # a private mapping made writable is charged: security_vm_enough_memory_mm()
            # (measured: a 64 GiB read-only private mapping made rw is ENOMEM)
            if newflags & VM_ACCOUNT and not vma.flags & VM_ACCOUNT and not self.vm_enough_memory(npages):
                raise errno("ENOMEM", self._faults())
        if vma.start < start:
            vma = mm.split(vma, start)
        if vma.end > end:
            mm.split(vma, end)
        old = vma.flags
        vma.flags = newflags
        # change_protection(): removing write write-protects PTEs; adding it makes writable the
        # PTEs that can_change_pte_writable() allows (exclusive anonymous pages; dirty PTEs of
        # shared mappings)
        if old & VM_WRITE and not newflags & VM_WRITE:
            for i, e in enumerate(vma.pte):
                if e & PTE_WRITE:
                    vma.pte[i] = e & ~PTE_WRITE
        elif newflags & VM_WRITE and not old & VM_WRITE:
            made = 0
            for i, e in enumerate(vma.pte):
                k = e & PTE_KIND
                if k == PTE_ANON and not newflags & VM_SHARED and self.anon.exclusive[vma.anon[i]]:
                    vma.pte[i] = e | PTE_WRITE
                    made += 1
                elif k == PTE_FILE and newflags & VM_SHARED and (e & PTE_DIRTY or not vma.file.write_notify):
                    vma.pte[i] = e | PTE_WRITE
                    made += 1
            if made:
                self.note(f"change_pte_range made {made} PTE(s) writable at once (can_change_pte_writable)")
        merged = mm.try_merge(vma)
        self.note("mprotect_fixup: vma_modify_flags " + ("merged with a neighbour" if merged is not vma
                                                          or merged.start != start or merged.end != end
                                                          else "split the VMA"))
        if old & (VM_WRITE | VM_SHARED | VM_LOCKED) == VM_LOCKED and newflags & VM_WRITE:
            # "Private VM_LOCKED VMA becoming writable: trigger COW to avoid major fault on
            # access": populate_vma_page_range(vma, start, end, NULL), a write fault per page
            # that is not writable yet, counted to the caller (mm_account_fault); nothing for
            # VM_LOCKONFAULT; its error is ignored (a file VMA past EOF stops there). Without
            # FOLL_UNLOCKABLE a fault that reads the page cannot retry: a major fault.
            # Measured: the faults are mprotect's, the writes after take none.
            minor, major = self.mem.populate(mm, start, end, unlockable=False)
            if minor + major:
                self.note(f"mprotect_fixup: populate_vma_page_range broke COW on {minor + major} page(s) "
                          "of a locked private VMA made writable")
            return minor, major
        return 0, 0

    def modify_flags(self, proc: Process, start: int, end: int, set_: int, clear: int) -> None:
        """vma_modify_flags() over a range (madvise flags, mlock)."""
        mm = proc.mm
        at = start
        while at < end:
            vma = mm.vma_at(at)
            if vma is None:
                nxt = mm.find_vma(at)
                if nxt is None or nxt.start >= end:
                    return
                at = nxt.start
                continue
            tmp = min(vma.end, end)
            newflags = (vma.flags | set_) & ~clear
            if newflags != vma.flags and vma.opaque is None:
                if vma.start < at:
                    vma = mm.split(vma, at)
                if vma.end > tmp:
                    mm.split(vma, tmp)
                vma.flags = newflags
                mm.try_merge(vma)
            at = tmp
