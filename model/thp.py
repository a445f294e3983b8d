"""Transparent huge pages on a fault: which anonymous VMAs get a THP, the PMD that maps a THP
or the huge zero page, and a write fault on one. Methods of model.memory.Memory (HugePageOps);
they use self.k, the kernel.

Kernel sources: mm/huge_memory.c (thp_vma_allowable_order, do_huge_pmd_anonymous_page,
do_huge_pmd_wp_page, do_huge_zero_wp_pmd), mm/memory.c __handle_mm_fault / create_huge_pmd /
wp_huge_pmd; the 6.13 change is named where it applies (Kernel.huge_zero_wp_thp).
"""
from __future__ import annotations

from array import array

from model.flags import (PAGE_SHIFT, PMD_SIZE, PTE_ANON, PTE_DIRTY, PTE_NONE, PTE_WRITE, PTE_YOUNG,
                         PTE_ZERO, VM_HUGEPAGE, VM_NOHUGEPAGE, VM_SHARED)
from model.vma import Vma


class HugePageOps:
    """Transparent huge pages on faults (model.thp)."""

    def thp_eligible(self, vma: Vma) -> bool:
        """thp_vma_allowable_order() for PMD size on a private anonymous VMA: THP "always"
        (unless VM_NOHUGEPAGE) or "madvise" with VM_HUGEPAGE."""
        if vma.file is not None or vma.opaque is not None or vma.flags & VM_SHARED:
            return False
        mode = self.k.thp_enabled
        if vma.flags & VM_NOHUGEPAGE:
            return False
        return mode == "always" or (mode == "madvise" and bool(vma.flags & VM_HUGEPAGE))

    @staticmethod
    def huge_block(vma: Vma, i: int) -> str | None:
        """What PMD maps page i: "anon" (a THP), "zero" (the huge zero page) or None (PTEs)."""
        if not vma.huge:
            return None
        a = (((vma.start >> PAGE_SHIFT) + i) & ~511) - (vma.start >> PAGE_SHIFT)
        return vma.huge.get(a)

    def huge_fault(self, mm, vma: Vma, i: int, write: bool, value) -> str | None:
        """__handle_mm_fault() -> create_huge_pmd()/wp_huge_pmd(): the 2 MiB block around the
        address, if it lies inside the VMA (thp_vma_suitable_order) and has no PTE table yet
        (pmd_none), is mapped by one PMD: do_huge_pmd_anonymous_page() maps the huge zero page
        on a read (use_zero_page) and a new THP on a write; a write to the huge zero page maps
        a new THP (do_huge_zero_wp_pmd). Returns None to fall back to PTEs."""
        addr = vma.start + (i << PAGE_SHIFT)
        haddr = addr & ~(PMD_SIZE - 1)
        if haddr < vma.start or haddr + PMD_SIZE > vma.end:
            return None
        a = (haddr - vma.start) >> PAGE_SHIFT
        kind = vma.huge.get(a)
        if kind == "anon":
            return self.huge_wp(mm, vma, a, i, value)
        if kind == "zero":
            if not write:
                return None
            if not self.k.huge_zero_wp_thp:
                # Before 6.13 (1ced09e0331f "mm: allocate THP on hugezeropage wp-fault"),
                # do_huge_pmd_wp_page() on the huge zero page goes to its fallback:
                # __split_huge_pmd() leaves 512 zero-page PTEs and the write is an ordinary
                # do_wp_page() copy of one page. Measured: 513 faults for a 4 MiB write after
                # a read on Debian 6.1.0-50 and 6.12.118, 2 on 6.18.
                del vma.huge[a]
                mm.ptables.add(haddr >> 21)
                self.k.note("do_huge_pmd_wp_page (before 6.13): a write to the huge zero page splits "
                            "the PMD into zero-page PTEs and copies one page")
                return None
        elif not self.thp_eligible(vma) or (haddr >> 21) in mm.ptables or vma.pte[a:a + 512].count(PTE_NONE) != 512:
            return None
        if kind is None:
            # do_huge_pmd_anonymous_page() calls vmf_anon_prepare() before it looks at the
            # access: a read that maps the huge zero page gives the VMA an anon_vma too, so a
            # fork copies its page tables (vma_needs_copy; copy_huge_pmd copies the zero PMD).
            # Measured: thp-fork-huge-zero.toml, the child reads the block without a fault.
            self.anon_vma_prepare(mm, vma)
        if not write and self.k.thp_use_zero_page and kind is None:
            vma.pte[a:a + 512] = bytes([PTE_ZERO | PTE_YOUNG]) * 512
            vma.huge[a] = "zero"
            self.k.note("do_huge_pmd_anonymous_page: a read maps the huge zero page (one PMD, 512 pages)")
            return "minor"
        self.anon_vma_prepare(mm, vma)
        first = self.k.anon.new_run(512, 0)
        vma.anon_array()[a:a + 512] = array("q", range(first, first + 512))
        vma.pte[a:a + 512] = bytes([PTE_ANON | PTE_WRITE | PTE_DIRTY | PTE_YOUNG]) * 512
        if value is not None and write:
            self.k.anon.data[vma.anon[i]] = value
        vma.huge[a] = "anon"
        self.k.note("do_huge_zero_wp_pmd: a write to the huge zero page maps a new THP" if kind == "zero"
                    else "do_huge_pmd_anonymous_page: one fault maps a 2 MiB THP (512 pages)")
        return "minor"

    def huge_wp(self, mm, vma: Vma, a: int, i: int, value) -> str | None:
        """do_huge_pmd_wp_page(): an exclusive THP is reused (the PMD made writable); a shared
        one is split and the fault falls back to PTE copy-on-write."""
        ids = vma.anon[a:a + 512]
        anon = self.k.anon
        if all(anon.mapcount[p] == 1 for p in ids):
            for j in range(a, a + 512):
                vma.pte[j] |= PTE_WRITE | PTE_YOUNG | PTE_DIRTY
            if value is not None:
                anon.data[vma.anon[i]] = value
            self.k.note("do_huge_pmd_wp_page: the only mapping reuses its THP")
            return "minor"
        del vma.huge[a]
        mm.ptables.add((vma.start + (a << PAGE_SHIFT)) >> 21)
        self.k.note("do_huge_pmd_wp_page: a shared THP is split (__split_huge_pmd); the write copies one page")
        return None
