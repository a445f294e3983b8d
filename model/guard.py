"""Guard regions: MADV_GUARD_INSTALL / MADV_GUARD_REMOVE (mm/madvise.c, Linux 6.13+; before
6.13 the advice values 102/103 are EINVAL: madvise_behavior_valid). A mixin of
model.kernel.Kernel."""
from __future__ import annotations

from model.errors import errno
from model.flags import (PTE_GUARD, PTE_KIND, PTE_NONE, VM_DONTEXPAND, VM_HUGETLB, VM_LOCKED,
                         VM_MAYBE_GUARD)

from model.versions import FILE_GUARD_SINCE, MAYBE_GUARD_SINCE


class Guard:
    def madvise_guard(self, proc, vma, start: int, end: int, install: bool) -> None:
        """madvise_guard_install() / madvise_guard_remove() (6.13+): is_valid_guard_vma()
        refuses VM_SPECIAL and hugetlb VMAs, and locked ones for an install (EINVAL). Install:
        present entries of the range are zapped (zap_page_range_single) and every entry becomes
        a guard marker; an anonymous VMA gets an anon_vma first (so fork copies the markers).
        Remove: the markers go, nothing else changes. A marker counts in no Rss; an access to
        it is SIGSEGV."""
        bad = VM_DONTEXPAND | VM_HUGETLB | (0 if not install else VM_LOCKED)
        if vma.opaque is not None or vma.flags & bad:
            raise errno("EINVAL")
        if self.release < FILE_GUARD_SINCE and not vma.is_anonymous:
            raise errno("EINVAL")    # 6.13, 6.14: anonymous memory only (not measured here)
        a, b = vma.index(start), vma.index(end)
        if install and self.release >= MAYBE_GUARD_SINCE:
            # vma_flag_set_atomic(VM_MAYBE_GUARD_BIT): the whole VMA, no split; never cleared
            # by MADV_GUARD_REMOVE
            vma.flags |= VM_MAYBE_GUARD
        if install:
            if vma.file is None:
                self.mem.anon_vma_prepare(proc.mm, vma)
            n = self.mem.zap(vma, a, b)
            for i in range(a, b):
                vma.pte[i] = PTE_GUARD
            for blk in range(start >> 21, ((end - 1) >> 21) + 1):
                proc.mm.ptables.add(blk)          # the markers live in PTE tables
            self.note(f"madvise_guard_install: {n} page(s) zapped, {b - a} guard marker(s)")
        else:
            for i in range(a, b):
                if vma.pte[i] & PTE_GUARD and vma.pte[i] & PTE_KIND == PTE_NONE:
                    vma.pte[i] = 0
            self.note("madvise_guard_remove: the guard markers of the range are cleared")
