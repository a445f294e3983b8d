"""madvise(2): the advices that set VMA flags, DONTNEED, FREE, WILLNEED, REMOVE, COLD, PAGEOUT,
COLLAPSE and POPULATE_(READ|WRITE). Methods of Kernel (MadviseOps).

Kernel sources: mm/madvise.c (do_madvise, madvise_walk_vmas, madvise_vma_behavior,
madvise_free_pte_range, madvise_cold_or_pageout_pte_range, madvise_populate), mm/gup.c
faultin_page_range, mm/khugepaged.c (madvise_collapse, collapse_huge_page), mm/huge_memory.c
__folio_split, mm/vmscan.c reclaim_pages / shrink_folio_list, mm/rmap.c try_to_unmap_one,
mm/ksm.c ksm_madvise.
"""
from __future__ import annotations

from model.flags import MADV, MADV_NAME, ULONG_MASK, c_int  # model.resolve's numbers
from model.versions import GUARD_SINCE, PAGEOUT_KEEPS_YOUNG_SINCE, POPULATE_TRIED_SINCE

from model.errors import StepError, errno
from model.flags import (PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PTE_ANON, PTE_DIRTY, PTE_FILE, PTE_KIND,
                         PTE_NONE, PTE_WRITE, PTE_YOUNG, PTE_ZERO, VM_DONTCOPY, VM_DONTDUMP,
                         VM_DONTEXPAND, VM_HUGEPAGE, VM_LOCKED, VM_MAYSHARE, VM_MAYWRITE,
                         VM_MERGEABLE, VM_NOHUGEPAGE, VM_RAND_READ, VM_READ, VM_SEQ_READ,
                         VM_SHARED, VM_WIPEONFORK, VM_WRITE)
from model.pages import page_align
from model.process import Process
from model.vma import Vma


class MadviseOps:
    """madvise (model.madvise)."""

    # madvise_vma_behavior(): the advices that only change vm_flags (madvise_update_vma), as
    # (flags set, flags cleared)
    MADV_VM_FLAGS = {
        "normal": (0, VM_RAND_READ | VM_SEQ_READ), "sequential": (VM_SEQ_READ, VM_RAND_READ),
        "random": (VM_RAND_READ, VM_SEQ_READ), "dontfork": (VM_DONTCOPY, 0), "dofork": (0, VM_DONTCOPY),
        "wipeonfork": (VM_WIPEONFORK, 0), "keeponfork": (0, VM_WIPEONFORK),
        "dontdump": (VM_DONTDUMP, 0), "dodump": (0, VM_DONTDUMP),
        "mergeable": (VM_MERGEABLE, 0), "unmergeable": (0, VM_MERGEABLE),
        "hugepage": (VM_HUGEPAGE, VM_NOHUGEPAGE), "nohugepage": (VM_NOHUGEPAGE, VM_HUGEPAGE)}

    def sys_madvise(self, proc: Process, args: dict):
        """mm/madvise.c do_madvise(): MADV_POPULATE_* go to madvise_populate(); every other advice
        goes through madvise_walk_vmas(), which visits the VMAs of the range in address order
        (madvise_vma_behavior on the part of each inside the range), stops at the first error
        (the VMAs visited before keep what was done to them) and, when the range has a hole,
        returns ENOMEM after visiting all of them."""
        f0 = self._faults()
        # SYSCALL_DEFINE3(madvise, ..., int, behavior): the advice is an int (found by
        # a draw of tests/test_differential.py: 2**32 + 4 is MADV_DONTNEED; regressions/
        # differential-madvise-int-advice.toml)
        start, length, number = args["addr"], args["length"], c_int(args["advice"])
        # madvise_should_skip(): the advice first (madvise_behavior_valid), then the range
        if not self.madvise_behavior_valid(number):
            raise errno("EINVAL", f0)
        advice = MADV_NAME.get(number)
        if advice is None:
            raise StepError({"error": f"model: advice {number} is valid on this kernel "
                                      "(madvise_behavior_valid) but not modelled"}, f0)
        if start & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        end = start + page_align(length)
        if length and end == start:          # a small negative length rounded up to 0
            raise errno("EINVAL", f0)
        if end > ULONG_MASK:                 # end < start once wrapped
            raise errno("EINVAL", f0)
        if end == start:
            return f0, None
        if advice in ("populate_read", "populate_write"):
            return self.madvise_populate(proc, start, end, advice == "populate_write")
        mm = proc.mm
        at, hole = start, False
        while at < end:
            vma = mm.find_vma(at)
            if vma is None:
                raise errno("ENOMEM", f0)
            if vma.start > at:
                hole = True
                at = vma.start
                if at >= end:
                    break
            tmp = min(vma.end, end)
            try:
                self.madvise_vma_behavior(proc, vma, at, tmp, advice)
            except StepError as e:
                e.faults = e.faults or f0
                raise
            at = tmp
        if hole:
            raise errno("ENOMEM", f0)
        return f0, None

    def madvise_behavior_valid(self, number: int) -> bool:
        """mm/madvise.c madvise_behavior_valid(): the advices this kernel knows (the numbers of
        model/flags.py MADV, MADV_DONTNEED_LOCKED (24, 5.18), MADV_SOFT_OFFLINE/HWPOISON (101,
        100; CONFIG_MEMORY_FAILURE, assumed set as on every distribution kernel) and
        MADV_GUARD_INSTALL/REMOVE (102, 103; 6.13)); any other number is EINVAL."""
        if number in (MADV["guard_install"], MADV["guard_remove"]):
            return self.release >= GUARD_SINCE
        return number in MADV_NAME or number in (100, 101)

    def madvise_vma_behavior(self, proc: Process, vma: Vma, start: int, end: int, advice: str) -> None:
        """mm/madvise.c madvise_vma_behavior() for [start, end) inside one VMA."""
        a, b = vma.index(start), vma.index(end)
        if advice in self.MADV_VM_FLAGS:
            set_, clear = self.MADV_VM_FLAGS[advice]
            if vma.opaque is not None:
                return
            if advice == "wipeonfork" and (vma.file is not None or vma.flags & VM_SHARED):
                raise errno("EINVAL")     # MADV_WIPEONFORK: private anonymous memory only
            if advice == "dodump" and vma.flags & VM_DONTEXPAND:
                raise errno("EINVAL")     # VM_SPECIAL (VM_IO, VM_DONTEXPAND, VM_PFNMAP, VM_MIXEDMAP)
            if advice == "mergeable" and vma.flags & (VM_SHARED | VM_MAYSHARE | VM_DONTEXPAND):
                set_ = 0                  # mm/ksm.c ksm_madvise: !vma_ksm_compatible() -> 0, flag not set
            self.modify_flags(proc, start, end, set_, clear)
            self.note(f"madvise_update_vma sets the VMA flags for MADV_{advice.upper()}"
                      + (" (ksm_madvise: ksmd merges nothing until /sys/kernel/mm/ksm/run is 1)"
                         if advice == "mergeable" and set_ else ""))
        elif advice in ("guard_install", "guard_remove"):
            self.madvise_guard(proc, vma, start, end, advice == "guard_install")
        elif advice in ("dontneed", "free", "dontneed_locked"):
            # madvise_dontneed_free_valid_vma(): not VM_LOCKED (nor VM_PFNMAP, nor hugetlb);
            # MADV_DONTNEED_LOCKED (5.18+) allows VM_LOCKED
            if vma.opaque is not None or (vma.flags & VM_LOCKED and advice != "dontneed_locked"):
                raise errno("EINVAL")
            if advice != "free":
                n = self.mem.zap(vma, a, b)
                self.note(f"madvise_dontneed_single_vma: zap_page_range_single dropped {n} PTE(s)")
            else:
                if not vma.is_anonymous:  # madvise_free_single_vma: anonymous VMAs only
                    raise errno("EINVAL")
                self.madvise_free(proc.mm, vma, a, b)
        elif advice == "willneed":
            if vma.file is not None and not vma.file.inode.is_shmem:
                ino = vma.file.inode
                # generic_fadvise(POSIX_FADV_WILLNEED) -> force_page_cache_ra(): nr_to_read is
                # clamped to max(bdi->io_pages, ra_pages) and read from the start of the range
                # (in 2 MiB chunks of do_page_cache_ra with no lookahead: order-0 folios, no
                # PG_readahead mark); the rest of a larger range stays uncached.
                # Measured: madvise-willneed-limit.toml (3,072 pages advised, 2,048 read).
                limit = max(self.io_pages, ino.readahead_pages)
                first = vma.file_index(a)
                end = min(vma.file_index(b), first + limit, ino.npages)
                for i in range(first, end):
                    if not ino.is_cached(i):
                        ino.add_folio(i, 1)
                self.note("madvise_willneed: vfs_fadvise(WILLNEED) -> force_page_cache_ra reads "
                          f"{max(0, end - first)} page(s) from the start of the range"
                          + (f" (at most max(io_pages, ra_pages) = {limit})"
                             if vma.file_index(b) - first > limit else ""))
        elif advice == "remove":
            # madvise_remove(): VM_LOCKED or no file -> EINVAL; a mapping that is not shared and
            # may-write (vma_is_shared_maywrite: private, or a read-only open) -> EACCES
            if vma.opaque is not None or vma.flags & VM_LOCKED or vma.file is None:
                raise errno("EINVAL")
            if vma.flags & (VM_SHARED | VM_MAYWRITE) != VM_SHARED | VM_MAYWRITE:
                raise errno("EACCES")
            self.fallocate_punch_hole(vma.file.inode, vma.file_index(a), vma.file_index(b))
        elif advice in ("cold", "pageout"):
            if vma.opaque is not None or vma.flags & VM_LOCKED:   # can_madv_lru_vma()
                raise errno("EINVAL")
            self.cold_or_pageout(vma, a, b, advice == "pageout", proc.mm)
        elif advice == "collapse":
            self.madvise_collapse(proc.mm, vma, a, b)
        else:
            raise errno("EINVAL")

    def madvise_free(self, mm, vma: Vma, a: int, b: int) -> None:
        """mm/madvise.c madvise_free_pte_range(): each present anonymous page mapped here gets
        its PTE cleaned and made old (clear_young_dirty_ptes) and its folio made lazy-free
        (folio_mark_lazyfree -> lru_lazyfree: PG_active, PG_referenced and PG_swapbacked
        cleared). Nothing is freed now: the page keeps its contents and stays mapped until
        reclaim discards it, unless it is written again first (model.madvise cold_or_pageout).
        A PMD-mapped THP wholly inside the range is made lazy-free whole
        (madvise_free_huge_pmd); one the range cuts is split first (split_anon_thp), and one
        mapped elsewhere too is left alone."""
        anon = self.anon
        whole, skip = set(), set()
        for h, kind in list(vma.huge.items()):
            if not (h < b and a < h + 512):
                continue
            if kind != "anon" or any(anon.mapcount[p] != 1 for p in vma.anon[h:h + 512]):
                skip.add(h)              # the huge zero page, or folio_maybe_mapped_shared
            elif a <= h and h + 512 <= b:
                whole.add(h)
            else:
                self.split_anon_thp(mm, vma, h)
        n = 0
        for i in range(a, b):
            e = vma.pte[i]
            if e & PTE_KIND != PTE_ANON:
                continue                 # none, or the zero page (no folio: vm_normal_folio)
            if skip and (((vma.start >> PAGE_SHIFT) + i) & ~511) - (vma.start >> PAGE_SHIFT) in skip:
                continue
            vma.pte[i] = e & ~(PTE_DIRTY | PTE_YOUNG)
            pid = vma.anon[i]
            anon.set_lru(pid, 0)
            anon.lazyfree.add(pid)
            n += 1
        self.note(f"madvise_free_pte_range: {n} page(s) cleaned and made lazy-free (still mapped)"
                  + (f", {len(whole)} THP(s) whole" if whole else ""))

    def split_anon_thp(self, mm, vma: Vma, h: int) -> None:
        """split_folio() of the PMD-mapped anonymous THP at page h (mm/huge_memory.c
        __folio_split: the PMD is split into PTEs, then remap_page() with
        RMP_USE_SHARED_ZEROPAGE maps every zero-filled subpage to the shared zero page
        (try_to_map_unused_to_zeropage) and frees it). Measured: a THP of which one page was
        written keeps that page and shows 511 zero-page entries."""
        del vma.huge[h]
        if mm is not None:
            mm.ptables.add((vma.start + (h << PAGE_SHIFT)) >> 21)
        zeroed = 0
        for j in range(h, h + 512):
            pid = vma.anon[j]
            if self.anon.data[pid] == 0:
                self.anon.put(pid)
                self.anon.lazyfree.discard(pid)
                vma.anon[j] = 0
                vma.pte[j] = PTE_ZERO
                zeroed += 1
        self.note(f"split_folio: a THP split, {zeroed} zero-filled page(s) remapped to the shared zero page")

    def madvise_populate(self, proc: Process, start: int, end: int, write: bool):
        """mm/madvise.c madvise_populate() -> mm/gup.c faultin_page_range(): GUP with FOLL_TOUCH
        and FOLL_MADV_POPULATE (and FOLL_WRITE) from start, VMA by VMA: no VMA at the address ->
        ENOMEM; a VMA that check_vma_flags() refuses (no VM_READ for a read, no VM_WRITE for a
        write) -> EINVAL (__get_user_pages turns it into -EINVAL for FOLL_MADV_POPULATE); a fault
        that ends in SIGBUS or SIGSEGV -> EFAULT. What was populated before the error stays, and
        its faults count. A page already mapped as needed takes no fault and its PTE is left as
        it is (follow_page_pte does not make it young); FOLL_TOUCH marks every folio accessed
        (folio_mark_accessed) and, for a write, dirties a clean one (folio_mark_dirty; the model
        keeps an anonymous page's dirtiness in its PTE)."""
        mm = proc.mm
        minor = major = 0
        # how a fault that dropped the lock is retried (model.versions POPULATE_TRIED_SINCE)
        tried = self.release >= POPULATE_TRIED_SINCE
        self.mem.gup = "gup-tried" if tried else "gup-restart"
        try:
            return self._madvise_populate(mm, start, end, write, tried)
        finally:
            self.mem.gup = None

    def _madvise_populate(self, mm, start: int, end: int, write: bool, tried: bool):
        minor = major = 0
        at = start
        while at < end:
            v = mm.vma_at(at)
            if v is None:
                raise errno("ENOMEM", self._faults(minor, major))
            if v.opaque is not None or not v.flags & (VM_WRITE if write else VM_READ):
                raise errno("EINVAL", self._faults(minor, major))
            stop = min(end, v.end)
            a, b = v.index(at), v.index(stop)
            j = a
            while j < b:
                e = v.pte[j]
                if e & PTE_KIND and (not write or e & PTE_WRITE):
                    if write and not e & PTE_DIRTY:
                        if e & PTE_KIND == PTE_FILE:
                            if v.file.inode.cached[v.file_index(j)] != 2:
                                v.file.inode.mark_dirty(v.file_index(j))
                        elif e & PTE_KIND == PTE_ANON:
                            v.pte[j] = e | PTE_DIRTY
                    self.mem.touch_folio(v, j)
                    j += 1
                    continue
                k = j + 1                         # a run of pages that need a fault
                while k < b and not (v.pte[k] & PTE_KIND and (not write or v.pte[k] & PTE_WRITE)):
                    k += 1
                done, mi, ma, fault = self.mem.access(mm, v.start + (j << PAGE_SHIFT), k - j, write, None)
                for i in range(j, j + done):
                    self.mem.touch_folio(v, i, fresh=True)
                if not tried:
                    # faultin_vma_page_range() -> __get_user_pages(): after VM_FAULT_RETRY
                    # madvise_populate() retakes the lock and starts again at the address, a
                    # fresh fault that finds the page cached (as __mm_populate does)
                    mi, ma = mi + ma, 0
                minor += mi
                major += ma
                if fault is not None:
                    raise errno("EFAULT", self._faults(minor, major))
                j = k
            at = stop
        self.note(f"madvise_populate: faultin_page_range over the range ({'write' if write else 'read'})")
        return self._faults(minor, major), None

    def madvise_collapse(self, mm, vma: Vma, a: int, b: int) -> None:
        """mm/khugepaged.c madvise_collapse(). thp_vma_allowable_order(TVA_FORCED_COLLAPSE)
        first: VM_NOHUGEPAGE, or no 2 MiB-aligned block that fits in the VMA
        (thp_vma_suitable_order), -> EINVAL; the sysfs THP mode does not matter. Then each
        2 MiB-aligned block wholly inside [a, b): already PMD-mapped -> done (SCAN_PMD_MAPPED);
        no PTE table under it -> SCAN_PMD_NULL;
        a VMA without anon_vma -> SCAN_PAGE_ANON (hugepage_vma_revalidate); otherwise
        collapse_huge_page(): a new THP gets a copy of every present page (zeros for none and
        zero-page entries: madvise_collapse sets no max_ptes_none limit and needs no writable
        page), is mapped by one PMD (dirty, young) and the old pages lose this mapping. Every
        block is tried; if any failed the call returns the last failure's errno
        (madvise_collapse_errno: EINVAL for these). The call succeeds only when every block
        counted, `thps == (hend - hstart) >> HPAGE_PMD_SHIFT` with hstart the range's start
        rounded up and hend its end rounded down to 2 MiB, in unsigned long: a range in which
        no 2 MiB boundary lies (hstart > hend) wraps around, and with no block tried,
        last_fail is still SCAN_FAIL: EINVAL (found by tests/test_differential.py:
        experiments/regressions/differential-collapse-no-block.toml). A range from one boundary
        to the same one (hstart == hend) tries nothing and succeeds. The model collapses
        private anonymous memory only: a shmem or file VMA is refused with EINVAL (true of a disk file without
        CONFIG_READ_ONLY_THP_FOR_FS; shmem collapses on the kernel: model/known_differences.py)."""
        if vma.opaque is not None or not vma.is_anonymous or vma.flags & VM_NOHUGEPAGE:
            raise errno("EINVAL")
        first = (vma.start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        if first + PMD_SIZE > vma.end:
            raise errno("EINVAL")
        base = vma.start >> PAGE_SHIFT
        h = a + (-(base + a)) % 512                  # the first 2 MiB-aligned page at or after a
        if h > b - (base + b) % 512:                 # hstart > hend: (hend - hstart) wraps
            raise errno("EINVAL")
        blocks = fails = 0
        while h + 512 <= b:
            blocks += 1
            kind = vma.huge.get(h)
            block = (vma.start + (h << PAGE_SHIFT)) >> 21
            if kind is not None:
                pass                                  # SCAN_PMD_MAPPED
            elif block not in mm.ptables or vma.anon_vma is None:
                fails += 1                            # SCAN_PMD_NULL / SCAN_PAGE_ANON
            else:
                self.collapse_huge_page(mm, vma, h)
            h += 512
        self.note(f"madvise_collapse: {blocks - fails} of {blocks} 2 MiB block(s) PMD-mapped")
        if fails:
            raise errno("EINVAL")

    def collapse_huge_page(self, mm, vma: Vma, h: int) -> None:
        """mm/khugepaged.c collapse_huge_page() for the block at page h of an anonymous VMA."""
        from array import array
        anon = self.anon
        old = vma.anon_array()[h:h + 512]
        values = bytes(anon.data[p] if vma.pte[h + j] & PTE_KIND == PTE_ANON else 0
                       for j, p in enumerate(old))
        for j, p in enumerate(old):
            if vma.pte[h + j] & PTE_KIND == PTE_ANON:
                anon.put(p)                           # __collapse_huge_page_copy_succeeded
        first = anon.new_run(512, 0)
        anon.data[first:first + 512] = values
        vma.anon[h:h + 512] = array("q", range(first, first + 512))
        pte = PTE_ANON | PTE_DIRTY | PTE_YOUNG | (PTE_WRITE if vma.flags & VM_WRITE else 0)
        vma.pte[h:h + 512] = bytes([pte]) * 512
        vma.huge[h] = "anon"
        mm.ptables.discard((vma.start + (h << PAGE_SHIFT)) >> 21)   # the PMD maps the THP now

    def cold_or_pageout(self, vma: Vma, a: int, b: int, pageout: bool, mm=None) -> None:
        """mm/madvise.c madvise_cold_or_pageout_pte_range(): folios mapped elsewhere too are
        left alone; the others are aged (young cleared) and, for MADV_PAGEOUT, reclaimed at once
        (reclaim_pages -> shrink_folio_list): try_to_unmap, then a clean file folio is freed, a
        dirty one stays cached (only kswapd writes back file folios) with PG_reclaim set, which
        is the PG_readahead bit; shmem stays cached (no swap to write it to), and an anonymous
        page stays mapped (no swap) unless it is lazy-free (MADV_FREE, !PG_swapbacked):
        try_to_unmap_one() discards a lazy-free page whose PTE is still clean, and one written
        since (dirty PTE) is made swap-backed again and kept.
        A PMD-mapped anonymous THP (not mapped elsewhere) that the range covers whole is aged
        as one folio, or for MADV_PAGEOUT discarded whole if lazy-free and clean, else split
        (shrink_folio_list: add_to_swap fails without swap -> split_folio_to_list); one the
        range cuts is split first (split_folio). A split maps zero-filled subpages to the
        shared zero page (split_anon_thp). Before 6.9 MADV_PAGEOUT clears the young bit of
        every PTE it isolates too (model.versions PAGEOUT_KEEPS_YOUNG_SINCE): a page reclaim
        keeps is old."""
        unmapped = freed = aged = discarded = marked = 0
        clear_young = pageout and self.release < PAGEOUT_KEEPS_YOUNG_SINCE
        whole = set()
        for h, kind in sorted(vma.huge.items()):
            if not (h < b and a < h + 512):
                continue
            ids = vma.anon[h:h + 512] if kind == "anon" else None
            if ids is None or any(self.anon.mapcount[p] != 1 for p in ids):
                whole.add(h)             # the huge zero page, or folio_likely_mapped_shared
                continue
            if not (a <= h and h + 512 <= b):
                self.split_anon_thp(mm, vma, h)
                continue
            whole.add(h)
            if not pageout:
                for j in range(h, h + 512):
                    vma.pte[j] &= ~PTE_YOUNG
                    self.anon.set_lru(vma.anon[j], 0)
                aged += 512
            elif ids[0] in self.anon.lazyfree and not any(vma.pte[j] & PTE_DIRTY for j in range(h, h + 512)):
                self.anon.lazyfree.difference_update(ids)
                self.mem.zap(vma, h, h + 512)
                discarded += 512
            else:
                self.anon.lazyfree.difference_update(ids)
                whole.discard(h)
                self.split_anon_thp(mm, vma, h)
                if clear_young:          # the PMD was made old before the split
                    for j in range(h, h + 512):
                        if vma.pte[j] & PTE_KIND == PTE_ANON:
                            vma.pte[j] &= ~PTE_YOUNG
                            self.anon.set_lru(vma.anon[j], 0)
        i = a
        while i < b:
            e = vma.pte[i]
            kind = e & PTE_KIND
            if kind in (PTE_NONE, PTE_ZERO) or (whole and self.mem.huge_block(vma, i) is not None):
                i += 1
                continue
            if kind == PTE_ANON:
                pid = vma.anon[i]
                if self.anon.mapcount[pid] == 1:
                    if not pageout:     # ptep_test_and_clear_young, folio_clear_referenced, deactivate
                        vma.pte[i] = e & ~PTE_YOUNG
                        self.anon.set_lru(pid, 0)
                    else:
                        if clear_young:  # pte_mkold, ClearPageReferenced (before 6.9)
                            vma.pte[i] = e & ~PTE_YOUNG
                            self.anon.set_lru(pid, 0)
                        if pid in self.anon.lazyfree:
                            self.anon.lazyfree.discard(pid)
                            if not e & PTE_DIRTY:
                                self.mem.zap(vma, i, i + 1)
                                discarded += 1
                    aged += not pageout
                i += 1
                continue
            ino = vma.file.inode
            fa, fb = ino.folio_range(vma.pgoff + i)
            lo, hi = max(fa - vma.pgoff, a), min(fb - vma.pgoff, b)
            mine = sum(1 for j in range(lo, hi) if vma.pte[j] & PTE_KIND == PTE_FILE)
            total = sum(ino.mapcount[j] for j in range(fa, fb))
            if total > mine or (fa - vma.pgoff < 0 or fb - vma.pgoff > vma.pages and pageout):
                i = hi
                continue
            for j in range(lo, hi):
                if not pageout:
                    vma.pte[j] &= ~PTE_YOUNG
                    ino.lru[vma.pgoff + j] = 0
                    aged += 1
            if pageout:
                self.mem.zap(vma, lo, hi)
                unmapped += hi - lo
                if not ino.is_shmem and all(ino.cached[j] == 1 for j in range(fa, fb)):
                    for j in range(fa, fb):
                        ino.cached[j] = 0
                        ino.folio[j] = -1
                    freed += fb - fa
                elif not ino.is_shmem:
                    # shrink_folio_list: a dirty file folio outside kswapd is folio_set_reclaim()ed
                    # and put back; PG_reclaim is PG_readahead (include/linux/page-flags.h), so
                    # fault-around skips it and the next fault on it starts async readahead
                    # (FileFaults.readahead_retry). Measured: one fault per 4 KiB folio after
                    # the pageout (madvise-pageout.toml step 13 on 6.1 and 6.12).
                    ino.ra_flag[fa:fb] = b"\x01" * (fb - fa)
                    marked += fb - fa
            i = hi
        if pageout:
            self.note(f"MADV_PAGEOUT: reclaim_pages unmapped {unmapped} page(s) and freed {freed} "
                      "clean file page(s); anonymous pages stay (no swap), dirty and shmem pages stay cached")
            if discarded:
                self.note(f"MADV_PAGEOUT: try_to_unmap_one discarded {discarded} clean lazy-free page(s)")
            if marked:
                self.note(f"MADV_PAGEOUT: {marked} dirty file page(s) kept with PG_reclaim "
                          "(= PG_readahead) set")
        else:
            self.note(f"MADV_COLD: {aged} page(s) aged (young cleared, folio deactivated)")
