"""Page tables and page faults: mm/memory.c (handle_mm_fault and the paths below it),
mm/filemap.c (filemap_fault, filemap_map_pages), mm/shmem.c (shmem_fault), ipc/shm.c
(shm_fault), mm/gup.c (populate) and zapping (zap_pte_range). Readahead on a fault is in
model.readahead, transparent huge pages in model.thp: Memory inherits both.

`access()` runs one process's touch or read over a page range the way the CPU and the
kernel do: an access to a present PTE that allows it costs nothing; otherwise one fault,
counted as major when it had to read the page from disk (VM_FAULT_MAJOR, or a retry after
dropping the lock for I/O: mm_account_fault() counts FAULT_FLAG_TRIED as major). SIGBUS and
SIGSEGV are never counted (mm_account_fault() skips VM_FAULT_ERROR).
"""
from __future__ import annotations

from array import array

from model.flags import PTE_GUARD, VM_LOCKED, VM_PKEY_MASK, VM_RAND_READ
from model.flags import (PAGE_SHIFT, PAGE_SIZE, PTE_ANON, PTE_DIRTY, PTE_FILE, PTE_KIND,
                         PTE_NONE, PTE_WRITE, PTE_YOUNG, PTE_ZERO, PTRS_PER_PTE,
                         VM_READ, VM_EXEC, VM_SHARED, VM_WRITE)
from model.readahead import ReadaheadOps
from model.thp import HugePageOps
from model.vma import AnonVma, Vma

FAULT_AROUND_PAGES = 16   # mm/memory.c fault_around_bytes = 64 KiB (the default; probed per host)

# byte -> 1 where the entry allows the access without a fault (bytes.translate tables)
_PRESENT = bytes(1 if b & PTE_KIND else 0 for b in range(256))
_WRITABLE = bytes(1 if b & PTE_KIND and b & PTE_WRITE else 0 for b in range(256))
_YOUNG = bytes((b | PTE_YOUNG) if b & PTE_KIND else b for b in range(256))
_DIRTY_YOUNG = bytes((b | PTE_YOUNG | PTE_DIRTY) if b & PTE_KIND else b for b in range(256))


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


class Memory(ReadaheadOps, HugePageOps):
    """Fault handling for one kernel (model.kernel.Kernel holds the shared objects); the
    readahead (model.readahead) and THP (model.thp) methods are inherited."""

    def __init__(self, kernel):
        self.k = kernel
        # who is faulting: None, a user access (its retry may come from a per-VMA-lock attempt);
        # "gup-tried", GUP whose retry carries FAULT_FLAG_TRIED (__get_user_pages_locked);
        # "gup-restart", GUP that starts again without it (__mm_populate, MADV_POPULATE_*
        # before 6.9): see readahead_retry
        self.gup = None

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
                    ino.lru[idx] = mark_accessed(ino.lru[idx], self.k.mglru)
            pte[i] = 0
        return n

    # ----- one fault ------------------------------------------------------------------------
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

    def readahead_retry(self, vma: Vma, idx: int) -> str:
        """filemap_fault() found the page cached with PG_readahead: do_async_mmap_readahead()
        starts the next window, dropping the fault's lock first (maybe_unlock_mmap_for_io), so
        the fault returns VM_FAULT_RETRY and runs again. How mm_account_fault() counts the
        completed fault depends on the lock the first attempt held (model.versions
        FILE_FAULT_VMA_LOCK_SINCE): major under the mmap lock (FAULT_FLAG_TRIED), minor after a
        per-VMA-lock attempt. VM_RAND_READ: no readahead, no retry."""
        if vma.flags & VM_RAND_READ:
            return "minor"
        self.async_readahead(vma, idx)
        if self.gup == "gup-restart":
            return "minor"
        if self.gup is None and self.k.retry_counts_minor:
            return "minor"
        self.k.note("do_async_mmap_readahead dropped the mmap lock: the retried fault "
                    "(FAULT_FLAG_TRIED) counts as major" + (" (GUP)" if self.gup else " (before 6.7)"))
        return "major"

    def _get_page(self, vma: Vma, idx: int) -> str:
        """filemap_fault / shmem_fault / shm_fault: the page cache page, read from disk on a
        miss (major) or, for shmem, allocated zeroed (minor); a cached PG_readahead page
        starts async readahead (readahead_retry)."""
        ino = vma.file.inode
        if ino.is_cached(idx):
            if not ino.is_shmem and ino.ra_flag[idx]:
                return self.readahead_retry(vma, idx)
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
            how = "minor"
            if vma.pte[i] == PTE_NONE:      # fault-around did not map it: __do_fault
                if ino.ra_flag[idx]:        # a PG_readahead page: fault-around skipped it
                    how = self.readahead_retry(vma, idx)
                self.finish_fault_read(vma, i)
            return how
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
            first = self.k.anon.new_run(n, value or 0)     # value None: a GUP write (zeroed page)
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
                        if value is not None:      # a GUP write stores nothing (_store)
                            anon.data[pid] = value
                    elif values is not None:
                        values.append(anon.data[pid])
                elif kind == PTE_FILE:
                    idx = vma.pgoff + j
                    if write:
                        if value is not None:
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
            before = self.mapped_as(vma, a, b)
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
            after = self.mapped_as(vma, a, b)
            for j in range(a, b):
                self.touch_folio(vma, j, fresh=before[j - a] != after[j - a])
        return minor, major

    @staticmethod
    def mapped_as(vma: Vma, a: int, b: int) -> list:
        """What pages [a, b) of vma map (PTE and anonymous page), to tell the pages a populate
        faulted in (or replaced) from those it found (touch_folio's `fresh`)."""
        return [(vma.pte[j], vma.anon[j] if vma.anon is not None else 0) for j in range(a, b)]

    def touch_folio(self, vma: Vma, j: int, fresh: bool = False) -> None:
        """folio_mark_accessed() on the page behind page j, if any (GUP's FOLL_TOUCH). Under
        the multi-gen LRU, folio_inc_refs() returns at once for an unevictable folio: a page of
        a VM_LOCKED VMA is mlocked (mlock_vma_pages_range drains the mlock batch before
        __mm_populate touches it), so it gains no PG_referenced; without MGLRU
        folio_mark_accessed() sets PG_referenced before it looks at unevictable. A folio the
        populate itself faulted in (`fresh`) waits in the mlock batch (mlock_new_folio), not yet
        unevictable, when GUP touches it: it gains PG_referenced. Measured:
        mprotect-locked-private.toml, in the child forked after the mlocks (copy_present_pte
        makes its PTEs old) Debian 6.12 (LRU_GEN_ENABLED) shows Referenced 0 for the pages
        touched before their mlock and the full size for those the mlock faulted in; this
        host shows the full size for both."""
        if self.k.mglru and vma.flags & VM_LOCKED and not fresh:
            return
        kind = vma.pte[j] & PTE_KIND
        if kind == PTE_ANON:
            self.k.anon.mark_accessed(vma.anon[j])
        elif kind == PTE_FILE:
            from model.objects import mark_accessed
            ino = vma.file.inode
            idx = vma.file_index(j)
            ino.lru[idx] = mark_accessed(ino.lru[idx], self.k.mglru)
