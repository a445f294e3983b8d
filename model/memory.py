"""Page tables and page faults: mm/memory.c (handle_mm_fault and the paths below it),
mm/filemap.c (filemap_fault, filemap_map_pages, read-around), mm/shmem.c (shmem_fault),
ipc/shm.c (shm_fault), mm/gup.c (populate) and zapping (zap_pte_range).

`access()` runs one process's touch or read over a page range the way the CPU and the
kernel do: an access to a present PTE that allows it costs nothing; otherwise one fault,
counted as major when it had to read the page from disk (VM_FAULT_MAJOR, or a retry after
dropping the lock for I/O: mm_account_fault() counts FAULT_FLAG_TRIED as major). SIGBUS and
SIGSEGV are never counted (mm_account_fault() skips VM_FAULT_ERROR).
"""
from __future__ import annotations

from array import array

from model.flags import PTE_GUARD, VM_PKEY_MASK
from model.flags import (PMD_SIZE, VM_HUGEPAGE, VM_NOHUGEPAGE, PAGE_SHIFT, PAGE_SIZE, PTE_ANON, PTE_DIRTY, PTE_FILE, PTE_KIND,
                         PTE_NONE, PTE_WRITE, PTE_YOUNG, PTE_ZERO, PTRS_PER_PTE, VM_RAND_READ,
                         VM_READ, VM_EXEC, VM_SEQ_READ, VM_SHARED, VM_WRITE)
from model.vma import AnonVma, Vma

FAULT_AROUND_PAGES = 16   # mm/memory.c fault_around_bytes = 64 KiB (the default; probed per host)

# byte -> 1 where the entry allows the access without a fault (bytes.translate tables)
_PRESENT = bytes(1 if b & PTE_KIND else 0 for b in range(256))
_WRITABLE = bytes(1 if b & PTE_KIND and b & PTE_WRITE else 0 for b in range(256))
_YOUNG = bytes((b | PTE_YOUNG) if b & PTE_KIND else b for b in range(256))
_DIRTY_YOUNG = bytes((b | PTE_YOUNG | PTE_DIRTY) if b & PTE_KIND else b for b in range(256))


def _init_ra_size(size: int, maxp: int) -> int:
    """mm/readahead.c get_init_ra_size()."""
    new = 1 << max(size - 1, 0).bit_length()
    if new <= maxp // 32:
        return new * 4
    if new <= maxp // 4:
        return new * 2
    return maxp


def _next_ra_size(cur: int, maxp: int) -> int:
    """mm/readahead.c get_next_ra_size()."""
    if cur < maxp // 16:
        return 4 * cur
    if cur <= maxp // 2:
        return 2 * cur
    return maxp


class Fault(Exception):
    """An access the kernel answers with a signal (SIGSEGV, SIGBUS)."""

    def __init__(self, signal: str, why: str):
        super().__init__(why)
        self.signal, self.why = signal, why


def _shared_writable_pte(vma: Vma) -> bool:
    """vm_page_prot of a shared writable mapping without write-notify includes write
    (vma_set_page_prot): a read fault maps the page writable, a later write costs nothing."""
    return bool(vma.flags & VM_SHARED and vma.flags & VM_WRITE and vma.file is not None
                and not vma.file.write_notify)


class Memory:
    """Fault handling for one kernel (model.kernel.Kernel holds the shared objects)."""

    def __init__(self, kernel):
        self.k = kernel

    # ----- anon_vma -------------------------------------------------------------------------
    def anon_vma_prepare(self, mm, vma: Vma) -> None:
        """mm/rmap.c __anon_vma_prepare(): reuse a neighbour's anon_vma when
        find_mergeable_anon_vma() allows (anon_vma_compatible(): adjacent, flags equal
        but for access bits, pgoff continuous, not forked), else a new one."""
        if vma.anon_vma is not None:
            return
        prev, nxt = mm.neighbours(vma)
        mask = ~0x7
        for a, b, other in ((vma, nxt, nxt), (prev, vma, prev)):
            if a is None or b is None or other.anon_vma is None or other.opaque is not None:
                continue
            if (a.end == b.start and (a.flags ^ b.flags) & mask == 0 and a.file is b.file
                    and b.pgoff == a.pgoff + a.pages and not other.anon_vma.forked):
                vma.anon_vma = other.anon_vma
                self.k.note("anon_vma_prepare reused the neighbour's anon_vma (find_mergeable_anon_vma)")
                return
        vma.anon_vma = AnonVma()

    # ----- page cache -----------------------------------------------------------------------
    def read_around(self, vma: Vma, pgoff: int) -> None:
        """mm/filemap.c do_sync_mmap_readahead(): VM_RAND_READ (without VM_EXEC) reads no
        more than the page (filemap_fault's own read), VM_SEQ_READ page_cache_sync_ra(ra_pages),
        VM_EXEC from the fault to the end of the VMA, otherwise mmap read-around: ra_pages
        centred on the fault, async_size = ra_pages / 4."""
        ino = vma.file.inode
        ra = vma.file.ra_pages or ino.readahead_pages
        if vma.flags & (VM_RAND_READ | VM_EXEC) == VM_RAND_READ:
            if not ino.is_cached(pgoff):
                ino.add_folio(pgoff, 1)
            self.k.note("page cache miss: no readahead (VM_RAND_READ) (do_sync_mmap_readahead)")
            return
        if vma.flags & VM_SEQ_READ:
            self.sync_ra(vma, pgoff, ra)
            return
        if vma.flags & VM_EXEC:
            # executable memory "rarely benefits from readahead": from the fault (rounded down
            # to exec_folio_order(), 0 on x86) up to ra_pages, cut at the end of the VMA, and
            # async_size 0 (no mark). Measured: file-readahead-exec.toml.
            start = max(pgoff, vma.pgoff)
            size = min(start + ra, vma.pgoff + vma.pages) - start
            vma.file.ra = (start, size, 0, 0)
            self.ra_order(vma, start, size, 0, 0)
            self.k.note(f"page cache miss in a VM_EXEC mapping: {size} pages from the fault, "
                        "bounded by the VMA (do_sync_mmap_readahead)")
            return
        start = max(0, pgoff - ra // 2)
        vma.file.ra = (start, ra, ra // 4, 0)
        self.ra_order(vma, start, ra, ra // 4, 0)
        self.k.note(f"page cache miss: read-around of {ra} pages (do_sync_mmap_readahead)")

    def sync_ra(self, vma: Vma, index: int, req: int) -> None:
        """mm/readahead.c page_cache_sync_ra() for a VM_SEQ_READ fault (req = ra_pages, so
        ractl_max_pages() is ra_pages). At page 0 (a start of file; mmap faults never move
        prev_pos) the window is get_init_ra_size(req, max) pages with async_size = size / 2
        (size > req is impossible here), so its middle page gets PG_readahead. Elsewhere the
        cached run just before the fault decides (page_cache_prev_miss): a short one is a
        small random read, do_page_cache_ra(req) with no mark and no state; a run longer than
        req (only possible doubled, from page 0: miss == ULONG_MAX) starts a window of
        min(contig + req, max) pages with async_size 1. Measured: file-readahead-marks.toml."""
        ino = vma.file.inode
        maxp = vma.file.ra_pages or ino.readahead_pages
        if index == 0:
            size = _init_ra_size(req, maxp)
            asz = size - req if size > req else size >> 1
            vma.file.ra = (index, size, asz, 0)
            self.ra_order(vma, index, size, asz, 0)
            self.k.note(f"page cache miss at page 0: page_cache_sync_ra reads a {size}-page window "
                        f"and marks page {index + size - asz} PG_readahead (VM_SEQ_READ)")
            return
        contig = 0
        j = index - 1
        while j >= 0 and contig < maxp and ino.is_cached(j):
            contig += 1
            j -= 1
        if j < 0:                        # cached from page 0: miss == ULONG_MAX
            contig *= 2
        if contig <= req:
            self.ra_order(vma, index, req, 0, 0, fallback_only=True)
            self.k.note(f"page cache miss: page_cache_sync_ra reads {req} pages ahead, no mark "
                        "(do_page_cache_ra: a small random read, VM_SEQ_READ)")
            return
        size = min(contig + req, maxp)
        vma.file.ra = (index, size, 1, 0)
        self.ra_order(vma, index, size, 1, 0)
        self.k.note(f"page cache miss after {contig} cached pages: page_cache_sync_ra reads a "
                    f"{size}-page window (VM_SEQ_READ)")

    def ra_order(self, vma: Vma, start: int, size: int, asz: int, order: int,
                 fallback_only: bool = False) -> None:
        """mm/readahead.c page_cache_ra_order(): folios of the window's order (capped by
        ilog2(size), smaller where the index is not aligned or the end of file is near) from
        start; the folio holding start + size - async_size gets PG_readahead (ra_alloc_folio).
        A page already cached ends that loop (filemap_add_folio: -EEXIST) and
        do_page_cache_ra() -> page_cache_ra_unbounded() reads the rest in order-0 folios,
        skipping cached pages and marking the same index if it adds it. Nothing past EOF."""
        ino = vma.file.inode
        n = ino.npages
        mark = start + size - asz if asz else -1
        index = start
        if ino.large_folios and not fallback_only:
            limit = min(n - 1, start + size - 1)
            new_order = min(order, max(size.bit_length() - 1, 0), 9)
            vma.file.ra = vma.file.ra[:3] + (new_order,) if vma.file.ra else None
            while index <= limit:
                o = new_order
                if index & ((1 << o) - 1):
                    o = (index & -index).bit_length() - 1
                while o > 0 and index + (1 << o) - 1 > limit:
                    o -= 1
                if any(ino.is_cached(j) for j in range(index, index + (1 << o))):
                    break
                ino.add_folio(index, 1 << o)
                if mark >= 0 and mark & ~((1 << o) - 1) == index:
                    ino.ra_flag[index:index + (1 << o)] = b"\x01" * (1 << o)
                index += 1 << o
            else:
                return
        elif not fallback_only and vma.file.ra:
            vma.file.ra = vma.file.ra[:3] + (0,)    # no large folio support: ra->order = 0
        # do_page_cache_ra(ractl, size - (index - start), async_size): nr_to_read is cut at
        # EOF first, and page_cache_ra_unbounded() marks nr_to_read - lookahead_size (no mark
        # when the lookahead is longer)
        nr = min(size - (index - start), n - index)
        mark = index + nr - asz if 0 < asz <= nr else -1
        for j in range(index, index + max(nr, 0)):
            if not ino.is_cached(j):
                ino.add_folio(j, 1)
                if j == mark:
                    ino.ra_flag[j] = 1

    def async_readahead(self, vma: Vma, pgoff: int) -> None:
        """mm/filemap.c do_async_mmap_readahead() -> mm/readahead.c page_cache_async_ra(): a
        fault that finds a PG_readahead folio (VM_RAND_READ: left alone) clears the mark and
        reads the next window. At the index the file's readahead state expects (start + size -
        async_size, rounded down to the folio) the window moves on: start += size, size =
        get_next_ra_size(); a marked folio the state does not expect (another open of the
        file, an interleaved stream) starts the window at the next page cache miss after it
        (page_cache_next_miss), sized from the distance (start - index + ra_pages). Either
        way async_size = size (the new window's first folio is marked), ra->order grows by 2
        and the window's end is aligned to it. The faulting page was cached: the fault stays
        minor. Measured: file-readahead-marks.toml, file-readahead-other-open.toml."""
        if vma.flags & VM_RAND_READ:
            return
        ino = vma.file.inode
        fa, fb = ino.folio_range(pgoff)
        ino.ra_flag[fa:fb] = bytes(fb - fa)
        maxp = vma.file.ra_pages or ino.readahead_pages
        start, size, asz, order = vma.file.ra or (0, 0, 0, 0)
        nr = fb - fa
        if pgoff == (start + size - asz) & ~(nr - 1):
            start += size
            size = max(size, _next_ra_size(size, maxp))
        else:
            miss = pgoff + 1
            while miss < pgoff + 1 + maxp and ino.is_cached(miss):
                miss += 1
            if miss - pgoff > maxp:
                return
            size = _next_ra_size(miss - pgoff + maxp, maxp)
            start = miss
        order += 2
        align = 1 << min(order, (maxp & -maxp).bit_length() - 1)
        end = start + size
        if end & ~(align - 1) > start:
            size -= end - (end & ~(align - 1))
        vma.file.ra = (start, size, size, order)
        self.ra_order(vma, start, size, size, order)
        self.k.note(f"do_async_mmap_readahead: the PG_readahead page started the next window "
                    f"({max(0, min(start + size, ino.npages) - start)} pages from {start})")

    # ----- PTE changes ----------------------------------------------------------------------
    def map_file_pte(self, vma: Vma, i: int, write: bool, young: bool = True) -> None:
        """set_pte_range(): map the page cache page behind page i."""
        ino = vma.file.inode
        idx = vma.file_index(i)
        ino.mapcount[idx] += 1
        e = PTE_FILE | (PTE_YOUNG if young else 0)
        if write:
            e |= PTE_WRITE | PTE_DIRTY
            ino.mark_dirty(idx)
        elif _shared_writable_pte(vma):
            e |= PTE_WRITE
        vma.pte[i] = e

    def new_anon(self, mm, vma: Vma, i: int, value: int | None) -> None:
        self.anon_vma_prepare(mm, vma)
        vma.anon_array()[i] = self.k.anon.new(value or 0)
        vma.pte[i] = PTE_ANON | PTE_WRITE | PTE_DIRTY | PTE_YOUNG

    def zap(self, vma: Vma, a: int, b: int) -> int:
        """zap_pte_range() over pages [a, b) of vma: drops the mappings; a dirty PTE marks its
        file page dirty (folio_mark_dirty). Returns how many present entries went."""
        pte = vma.pte
        n = 0
        anon = vma.anon
        for h in list(vma.huge):
            if h < b and a < h + 512:
                del vma.huge[h]          # zap_huge_pmd, or split_huge_pmd for a partial range
        for i in range(a, b):
            e = pte[i]
            kind = e & PTE_KIND
            if kind == PTE_NONE:
                continue
            n += 1
            if kind == PTE_ANON:
                self.k.anon.put(anon[i])
                anon[i] = 0
            elif kind == PTE_FILE:
                ino = vma.file.inode
                idx = vma.file_index(i)
                ino.mapcount[idx] -= 1
                if e & PTE_DIRTY and ino.is_cached(idx):
                    ino.mark_dirty(idx)
                if e & PTE_YOUNG and ino.is_cached(idx):   # zap_present_folio_ptes: young -> accessed
                    from model.objects import mark_accessed
                    ino.lru[idx] = mark_accessed(ino.lru[idx])
            pte[i] = 0
        return n

    # ----- one fault ------------------------------------------------------------------------
    # ----- transparent huge pages (mm/huge_memory.c) ------------------------------------
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

    def fault(self, mm, vma: Vma, i: int, write: bool, value: int) -> str:
        """handle_mm_fault() for page i of vma: returns "minor" or "major"; raises Fault."""
        e = vma.pte[i]
        if e & PTE_GUARD:
            # handle_pte_marker(): a guard marker is VM_FAULT_SIGSEGV (not counted as a fault)
            raise Fault("SIGSEGV", "the page is a guard region (MADV_GUARD_INSTALL marker)")
        kind = e & PTE_KIND
        block = self.huge_block(vma, i)
        if block is not None or (kind == PTE_NONE and self.thp_eligible(vma)):
            how = self.huge_fault(mm, vma, i, write, value)
            if how is not None:
                return how
            e = vma.pte[i]
            kind = e & PTE_KIND
        # pmd_none(*vmf->pmd) before this fault: filemap_map_pages() needs it (fault_around)
        self.pmd_none = (vma.start + (i << PAGE_SHIFT)) >> 21 not in mm.ptables
        mm.ptables.add((vma.start + (i << PAGE_SHIFT)) >> 21)
        if kind != PTE_NONE:
            return self.wp_fault(mm, vma, i, value)
        if vma.file is None:                                   # private anonymous
            if write:
                self.new_anon(mm, vma, i, value)
                self.k.note("do_anonymous_page: a new zeroed page, mapped writable")
            else:
                vma.pte[i] = PTE_ZERO | PTE_YOUNG
                self.k.note("do_anonymous_page: read maps the shared zero page")
            return "minor"
        ino = vma.file.inode
        idx = vma.file_index(i)
        if idx >= ino.npages:
            if not write and vma.file.fault_around:
                # do_read_fault() runs do_fault_around() before ->fault finds the page past
                # i_size: filemap_map_pages maps the window's cached pages up to the end of
                # file (measured: a read past EOF after a truncation maps the pages before it)
                self.fault_around(vma, i, self.pmd_none)
            raise Fault("SIGBUS", f"page {idx} is past the end of the file ({ino.size} bytes): "
                        "filemap_fault/shmem_fault return VM_FAULT_SIGBUS")
        if not write:
            return self.do_read_fault(mm, vma, i)
        if not vma.flags & VM_SHARED:
            return self.do_cow_fault(mm, vma, i, value)
        return self.do_shared_fault(mm, vma, i, value)

    def _get_page(self, vma: Vma, idx: int) -> str:
        """filemap_fault / shmem_fault / shm_fault: the page cache page, read from disk on a
        miss (major) or, for shmem, allocated zeroed (minor)."""
        ino = vma.file.inode
        if ino.is_cached(idx):
            return "minor"
        if ino.is_shmem:
            ino.add_folio(idx, 1)
            self.k.note("shmem_fault: a hole, a new zeroed page enters the shmem page cache")
            return "minor"
        self.read_around(vma, idx)
        return "major"

    def do_read_fault(self, mm, vma: Vma, i: int) -> str:
        """mm/memory.c do_read_fault(): fault-around first (should_fault_around: the VMA has
        ->map_pages), then __do_fault + finish_fault."""
        ino = vma.file.inode
        idx = vma.file_index(i)
        pmd_none = getattr(self, "pmd_none", False)
        if vma.file.fault_around and ino.is_cached(idx):
            self.fault_around(vma, i, pmd_none)
            if vma.pte[i] == PTE_NONE:      # fault-around did not map it: __do_fault
                if ino.ra_flag[idx]:        # a PG_readahead page: fault-around skipped it
                    self.async_readahead(vma, idx)
                self.finish_fault_read(vma, i)
            return "minor"
        if vma.file.fault_around and ino.is_shmem:
            # do_fault_around() runs before __do_fault whether or not this page is cached:
            # filemap_map_pages() maps the window's other cached pages, then shmem_fault fills
            # the hole (measured: a read over a punched shmem range next to cached pages takes
            # one fault per hole, none for the cached pages after it)
            self.fault_around(vma, i, pmd_none)
        how = self._get_page(vma, idx)
        if how == "major" and vma.file.fault_around:
            # filemap_fault dropped the mmap lock for the read (VM_FAULT_RETRY); the retried
            # fault finds the page cached and fault-around maps the window.
            self.fault_around(vma, i, pmd_none)
            if vma.pte[i] == PTE_NONE:
                self.finish_fault_read(vma, i)
            self.k.note("the retried fault (FAULT_FLAG_TRIED) counts as major")
            return "major"
        self.map_file_pte(vma, i, write=False)
        self.k.note("shm_fault: one page, no fault-around (shm_vm_ops has no map_pages)"
                    if vma.file.kind == "shm" else "__do_fault + finish_fault: one page")
        return how

    @staticmethod
    def finish_fault_span(vma: Vma, i: int) -> tuple[int, int]:
        """The pages [lo, hi) of vma that mm/memory.c finish_fault() maps for a fault on page i:
        the whole folio when it ends within i_size (needs_fallback otherwise), lies inside the
        VMA and the page table (vma_off >= idx, pte_off >= idx, ...) and none of its PTEs is
        set (pte_range_none); else the one page. Measured: a write to a shared mapping at
        file offset 2 pages maps 1 page, not the 14 pages of its cut 16-page folio."""
        ino = vma.file.inode
        idx = vma.file_index(i)
        fa, fb = ino.folio_range(idx)
        k = idx - fa
        pte_off = ((vma.start >> PAGE_SHIFT) + i) & (PTRS_PER_PTE - 1)
        if fb - fa > 1 and fb <= ino.npages and i >= k and i + (fb - idx) <= vma.pages \
                and pte_off >= k and pte_off + (fb - idx) <= PTRS_PER_PTE \
                and vma.pte[i - k:i + (fb - idx)].count(PTE_NONE) == fb - fa:
            return i - k, i + (fb - idx)
        return i, i + 1

    def finish_fault_read(self, vma: Vma, i: int) -> int:
        """mm/memory.c finish_fault() after __do_fault() found the page cached: since 6.18
        ("try to map the entire file folio in finish_fault()") the whole folio is mapped when
        it ends within i_size (needs_fallback otherwise), lies inside the VMA and the page
        table, and none of its PTEs is set; else the one page."""
        lo, hi = self.finish_fault_span(vma, i)
        for j in range(lo, hi):
            self.map_file_pte(vma, j, write=False)
        self.k.note(f"__do_fault + finish_fault: mapped the whole {hi - lo}-page folio" if hi - lo > 1
                    else "__do_fault + finish_fault: one page")
        return hi - lo

    def fault_around(self, vma: Vma, i: int, pmd_none: bool = False) -> int:
        """mm/memory.c do_fault_around() + mm/filemap.c filemap_map_pages(): the 16-page window
        aligned in the page table, clipped to the VMA, the page table and the end of file;
        maps the cached pages whose PTE is empty."""
        addr = vma.start + (i << PAGE_SHIFT)
        pte_off = (addr >> PAGE_SHIFT) & (PTRS_PER_PTE - 1)
        vma_off = i
        nr = self.k.fault_around_pages
        from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + nr, PTRS_PER_PTE, pte_off + vma.pages - vma_off) - 1
        a = i - (pte_off - from_pte)
        b = a + (to_pte - from_pte) + 1
        ino = vma.file.inode
        b = min(b, ino.npages - vma.pgoff)
        # filemap_map_folio_range() (since 6.18, "map entire large folio faultaround") maps a
        # large folio whole, pages outside the window included, when the folio lies inside the
        # VMA (folio_within_vma), in one page table, and ends before the file's last page
        # (file_end >= folio_next_index, file_end being the last index) or is shmem.
        # Measured: a 40-page mapping at file offset 2 pages, window [11, 27) -> 19 PTEs; the
        # folio holding the file's last page is mapped only as far as the window goes.
        def large_ok(fb):
            return ino.is_shmem or fb <= ino.npages - 1
        first = next((j for j in range(a, b) if ino.is_cached(vma.file_index(j))
                      and not ino.ra_flag[vma.file_index(j)]), None)
        if first is None:
            return 0                 # next_uptodate_folio() found nothing: goto out
        if pmd_none and not large_ok(ino.folio_range(vma.file_index(first))[1]):
            # filemap_map_pages(): filemap_map_pmd(), which installs the preallocated PTE
            # table, runs only when the first folio passes the i_size test; without a table
            # pte_offset_map_lock() fails and nothing is mapped (goto out). The fault goes on
            # to __do_fault + finish_fault. Measured: a first fault whose window starts in the
            # file's last 16-page folio maps that folio whole, not the window.
            self.k.note("filemap_map_pages mapped nothing: no PTE table yet and the window's "
                        "first folio holds the end of the file")
            return 0
        mapped = 0
        j = a
        while j < b:
            idx = vma.file_index(j)
            if not ino.is_cached(idx) or ino.ra_flag[idx]:   # next_uptodate_folio() skips
                j += 1                                        # a PG_readahead folio
                continue
            fa, fb = ino.folio_range(idx)
            lo, hi = j, min(fb - vma.pgoff, b)
            if large_ok(fb) and fb - fa > 1 and fa >= vma.pgoff and fb - vma.pgoff <= vma.pages \
                    and (vma.start + ((fa - vma.pgoff) << PAGE_SHIFT)) >> 21 \
                    == (vma.start + ((fb - vma.pgoff - 1) << PAGE_SHIFT)) >> 21:
                lo, hi = fa - vma.pgoff, fb - vma.pgoff
            for k in range(lo, hi):
                if vma.pte[k] == PTE_NONE:
                    self.map_file_pte(vma, k, write=False)
                    mapped += 1
            j = max(hi, j + 1)
        self.k.note(f"do_read_fault: fault-around (filemap_map_pages) mapped {mapped} cached "
                    f"page{'s' if mapped != 1 else ''} of the window [{a}, {b})")
        return mapped

    def do_cow_fault(self, mm, vma: Vma, i: int, value: int) -> str:
        """mm/memory.c do_cow_fault(): read the file page, copy it into a new anonymous page."""
        idx = vma.file_index(i)
        how = self._get_page(vma, idx)
        self.new_anon(mm, vma, i, vma.file.inode.data[idx] if value is None else value)
        self.k.note("do_cow_fault: the file page copied into a new anonymous page")
        return how

    def do_shared_fault(self, mm, vma: Vma, i: int, value: int) -> str:
        """mm/memory.c do_shared_fault(): the page cache page, ->page_mkwrite where the
        filesystem has it, mapped writable and dirty. A large folio is mapped whole when
        finish_fault allows it (finish_fault_span), else the one page."""
        ino = vma.file.inode
        idx = vma.file_index(i)
        how = self._get_page(vma, idx)
        a, b = ino.folio_range(idx) if ino.large_folios else (idx, idx + 1)
        lo, hi = self.finish_fault_span(vma, i) if ino.large_folios else (i, i + 1)
        n = 0
        for j in range(lo, hi):
            if vma.pte[j] == PTE_NONE:
                self.map_file_pte(vma, j, write=True)
                n += 1
        if value is not None:
            ino.data[idx] = value
        self.k.note("do_shared_fault: page mapped writable and dirty"
                    + (" (->page_mkwrite)" if vma.file.write_notify else "")
                    + (f"; finish_fault mapped the whole {b - a}-page folio ({n} PTEs)" if n > 1 else ""))
        return how

    def wp_fault(self, mm, vma: Vma, i: int, value: int) -> str:
        """mm/memory.c do_wp_page(): a write to a present read-only PTE."""
        e = vma.pte[i]
        kind = e & PTE_KIND
        anon = self.k.anon
        if kind == PTE_ZERO:
            self.new_anon(mm, vma, i, value or 0)
            self.k.note("do_wp_page: wp_page_copy replaces the zero page with a new page")
        elif kind == PTE_ANON:
            pid = vma.anon[i]
            if anon.mapcount[pid] == 1:
                anon.exclusive[pid] = 1
                vma.pte[i] = e | PTE_WRITE | PTE_DIRTY | PTE_YOUNG
                if value is not None:
                    anon.data[pid] = value
                self.k.note("do_wp_page: the only mapping reuses its page (wp_can_reuse_anon_folio)")
            else:
                old = anon.data[pid]
                anon.put(pid)
                vma.anon[i] = anon.new(old if value is None else value)
                vma.pte[i] = PTE_ANON | PTE_WRITE | PTE_DIRTY | PTE_YOUNG
                self.k.note("do_wp_page: copy-on-write (wp_page_copy) of a shared anonymous page")
        elif vma.flags & VM_SHARED:
            ino = vma.file.inode
            idx = vma.file_index(i)
            vma.pte[i] = e | PTE_WRITE | PTE_DIRTY | PTE_YOUNG
            ino.mark_dirty(idx)
            if value is not None:
                ino.data[idx] = value
            self.k.note("do_wp_page: wp_page_shared (->page_mkwrite) makes the page writable")
        else:
            ino = vma.file.inode
            idx = vma.file_index(i)
            ino.mapcount[idx] -= 1
            self.new_anon(mm, vma, i, ino.data[idx] if value is None else value)
            self.k.note("do_wp_page: wp_page_copy copies the file page (private mapping)")
        return "minor"

    # ----- accesses -------------------------------------------------------------------------
    def check_access(self, vma: Vma | None, write: bool, addr: int) -> None:
        """arch/x86/mm/fault.c: no VMA, or access_error() -> SIGSEGV."""
        if vma is None or vma.start > addr:
            raise Fault("SIGSEGV", "no VMA at the address (bad_area_nosemaphore)")
        if vma.opaque is not None:
            raise Fault("SIGSEGV", "not an experiment mapping")
        if vma.flags & VM_PKEY_MASK:
            # access_error() -> arch_vma_access_permitted(): the only key the model hands out
            # is the execute-only one, whose PKRU bits (set by execute_only_pkey) deny every
            # data access; no fault is handled, so none is counted
            raise Fault("SIGSEGV", "data access to an execute-only (protection key) VMA")
        if write and not vma.flags & VM_WRITE:
            raise Fault("SIGSEGV", "write to a VMA without VM_WRITE (access_error)")
        if not write and not vma.flags & (VM_READ | VM_WRITE | VM_EXEC):
            raise Fault("SIGSEGV", "access to a PROT_NONE VMA (access_error)")

    def access(self, mm, start: int, npages: int, write: bool, value: int,
               values: bytearray | None = None) -> tuple[int, int, int, Fault | None]:
        """Touch (write or read) npages pages from start, first byte of each. Returns
        (pages done, minor, major, the Fault that stopped it). `values` collects read bytes."""
        minor = major = 0
        done = 0
        addr = start
        while done < npages:
            vma = mm.find_vma(addr)
            try:
                self.check_access(vma, write, addr)
            except Fault as f:
                return done, minor, major, f
            i = vma.index(addr)
            stop = min(vma.pages, i + (npages - done))
            if stop - i >= 64 and self._bulk(mm, vma, i, stop, write, value, values):
                n = stop - i
                minor += self._bulk_faults
                done += n
                addr = vma.start + (stop << PAGE_SHIFT)
                continue
            for j in range(i, stop):
                e = vma.pte[j]
                ok = e & PTE_KIND != PTE_NONE and (not write or e & PTE_WRITE)
                if not ok:
                    try:
                        how = self.fault(mm, vma, j, write, value)
                    except Fault as f:
                        return done, minor, major, f
                    if how == "major":
                        major += 1
                    else:
                        minor += 1
                elif write:
                    vma.pte[j] = e | PTE_DIRTY | PTE_YOUNG
                    self._store(vma, j, value)
                else:
                    vma.pte[j] = e | PTE_YOUNG
                if values is not None:
                    values.append(self.load(vma, j))
                done += 1
            addr = vma.start + (stop << PAGE_SHIFT)
        return done, minor, major, None

    _bulk_faults = 0

    def _bulk(self, mm, vma: Vma, i: int, stop: int, write: bool, value: int, values) -> bool:
        """Whole runs handled at once, with the same outcome as page by page (the common cases
        of large regions): fresh or zero-page private anonymous memory written or read, and
        accesses that fault nowhere. Returns False when the run needs the page-by-page path."""
        n = stop - i
        seg = vma.pte[i:stop]
        anon_vma = vma.file is None
        self._bulk_faults = 0
        if vma.huge or self.thp_eligible(vma):
            return False
        first_block = (vma.start + (i << PAGE_SHIFT)) >> 21
        last_block = (vma.start + (stop << PAGE_SHIFT) - 1) >> 21
        if seg.count(PTE_NONE):
            mm.ptables.update(range(first_block, last_block + 1))
        if anon_vma and write and (seg.count(PTE_NONE) == n or seg.count(PTE_ZERO | PTE_YOUNG) == n
                                   or seg.count(PTE_ZERO) == n):
            zero = seg[0] != PTE_NONE
            self.anon_vma_prepare(mm, vma)
            first = self.k.anon.new_run(n, value)
            vma.anon_array()[i:stop] = array("q", range(first, first + n))
            vma.pte[i:stop] = bytes([PTE_ANON | PTE_WRITE | PTE_DIRTY | PTE_YOUNG]) * n
            self.k.note("do_wp_page: wp_page_copy replaces the zero page with a new page" if zero
                        else "do_anonymous_page: a new zeroed page, mapped writable", n)
            self._bulk_faults = n
            return True
        if anon_vma and not write and seg.count(PTE_NONE) == n:
            vma.pte[i:stop] = bytes([PTE_ZERO | PTE_YOUNG]) * n
            self.k.note("do_anonymous_page: read maps the shared zero page", n)
            if values is not None:
                values.extend(bytes(n))
            self._bulk_faults = n
            return True
        ok = seg.translate(_WRITABLE if write else _PRESENT)
        if ok.count(0):
            return False
        vma.pte[i:stop] = seg.translate(_DIRTY_YOUNG if write else _YOUNG)
        if write or values is not None:
            anon = self.k.anon
            for j in range(i, stop):
                kind = seg[j - i] & PTE_KIND
                if kind == PTE_ANON:
                    pid = vma.anon[j]
                    if write:
                        anon.data[pid] = value
                    elif values is not None:
                        values.append(anon.data[pid])
                elif kind == PTE_FILE:
                    idx = vma.pgoff + j
                    if write:
                        vma.file.inode.data[idx] = value
                    elif values is not None:
                        values.append(vma.file.inode.data[idx])
                elif values is not None:
                    values.append(0)
        return True

    def _store(self, vma: Vma, i: int, value: int | None) -> None:
        if value is None:           # a GUP write access (MADV_POPULATE_WRITE) stores nothing
            return
        e = vma.pte[i]
        kind = e & PTE_KIND
        if kind == PTE_ANON:
            self.k.anon.data[vma.anon[i]] = value
        elif kind == PTE_FILE:
            vma.file.inode.data[vma.file_index(i)] = value

    def load(self, vma: Vma, i: int) -> int:
        e = vma.pte[i]
        kind = e & PTE_KIND
        if kind == PTE_ANON:
            return self.k.anon.data[vma.anon[i]]
        if kind == PTE_FILE:
            return vma.file.inode.data[vma.file_index(i)]
        return 0

    def populate(self, mm, start: int, end: int, stopped: list | None = None,
                 unlockable: bool = True) -> tuple[int, int]:
        """mm/gup.c __mm_populate() -> populate_vma_page_range(): fault in every page, with a
        write fault where the mapping is private and writable (to break COW); PROT_NONE and
        VM_LOCKONFAULT VMAs are skipped. A fault that fails (SIGBUS past EOF) ends that VMA;
        its address goes to `stopped` when given (mlock reports it: sys_mlock).

        A fault that has to read the page counts as minor here: filemap_fault drops the mmap
        lock for the I/O and returns VM_FAULT_RETRY (not counted, mm_account_fault); __mm_populate
        calls populate_vma_page_range() -> __get_user_pages() again for the same address after
        retaking the lock, a fresh fault without FAULT_FLAG_TRIED that finds the page cached.
        (MADV_POPULATE_* goes through __get_user_pages_locked(), whose retry carries
        FAULT_FLAG_TRIED: major there.) Measured: mlock and MAP_POPULATE of a cold file, 0 major.
        unlockable=False: populate_vma_page_range(..., locked=NULL) (mprotect_fixup) has no
        FOLL_UNLOCKABLE, so the fault may not drop the lock and retry: a read is major."""
        from model.flags import VM_LOCKONFAULT
        minor = major = 0
        for vma in sorted(mm.overlapping(start, end), key=lambda v: v.start):
            if vma.opaque is not None or vma.flags & VM_LOCKONFAULT:
                continue
            if not vma.flags & (VM_READ | VM_WRITE | VM_EXEC):
                continue
            if vma.flags & VM_PKEY_MASK:
                # check_vma_flags(): arch_vma_access_permitted() refuses GUP's data access to
                # an execute-only (protection key) VMA: -EFAULT, which mm_populate ignores
                # (measured: PROT_EXEC with MAP_POPULATE or MAP_LOCKED maps no page)
                continue
            write = vma.flags & (VM_WRITE | VM_SHARED) == VM_WRITE
            a, b = vma.index(max(start, vma.start)), vma.index(min(end, vma.end))
            for j in range(a, b):
                e = vma.pte[j]
                if e & PTE_KIND != PTE_NONE and (not write or e & PTE_WRITE):
                    continue
                try:
                    how = self.fault(mm, vma, j, write, None)
                except Fault:
                    if stopped is not None:
                        stopped.append(vma.start + (j << PAGE_SHIFT))
                    break          # GUP stops at SIGBUS (populate is best effort)
                if how == "major" and not unlockable:
                    major += 1
                else:
                    minor += 1        # "major" included: see the docstring
            # follow_page_pte() with FOLL_TOUCH marks every page it returns accessed
            for j in range(a, b):
                self.touch_folio(vma, j)
        return minor, major

    def touch_folio(self, vma: Vma, j: int) -> None:
        """folio_mark_accessed() on the page behind page j, if any (GUP's FOLL_TOUCH)."""
        kind = vma.pte[j] & PTE_KIND
        if kind == PTE_ANON:
            self.k.anon.mark_accessed(vma.anon[j])
        elif kind == PTE_FILE:
            from model.objects import mark_accessed
            ino = vma.file.inode
            idx = vma.file_index(j)
            ino.lru[idx] = mark_accessed(ino.lru[idx])
