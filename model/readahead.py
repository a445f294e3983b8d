"""Readahead on a page fault: what a page cache miss reads (mmap read-around, VM_SEQ_READ,
VM_EXEC, VM_RAND_READ), the folio orders it allocates, and the async readahead a PG_readahead
folio starts. Methods of model.memory.Memory (ReadaheadOps); they use self.k, the kernel.

Kernel sources: mm/filemap.c (do_sync_mmap_readahead, do_async_mmap_readahead),
mm/readahead.c (page_cache_sync_ra, page_cache_async_ra, page_cache_ra_order,
get_init_ra_size, get_next_ra_size).
"""
from __future__ import annotations

from model.flags import VM_EXEC, VM_RAND_READ, VM_SEQ_READ
from model.vma import Vma


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


class ReadaheadOps:
    """Readahead on faults (model.readahead)."""

    def read_around(self, vma: Vma, pgoff: int) -> None:
        """mm/filemap.c do_sync_mmap_readahead(): VM_RAND_READ (without VM_EXEC) reads no
        more than the page (filemap_fault's own read), VM_SEQ_READ page_cache_sync_ra(ra_pages),
        VM_EXEC from the fault to the end of the VMA, otherwise mmap read-around: ra_pages
        centred on the fault, async_size = ra_pages / 4."""
        ino = vma.file.inode
        ra = vma.file.ra_pages or ino.readahead_pages
        # the VM_EXEC branch exists from 6.17 (model.versions EXEC_READAHEAD_SINCE); before,
        # VM_RAND_READ stops readahead whatever VM_EXEC says, and VM_EXEC reads around
        exec_branch = vma.flags & VM_EXEC if self.k.exec_readahead else 0
        if vma.flags & VM_RAND_READ and not exec_branch:
            if not ino.is_cached(pgoff):
                ino.add_folio(pgoff, 1)
            self.k.note("page cache miss: no readahead (VM_RAND_READ) (do_sync_mmap_readahead)")
            return
        if vma.flags & VM_SEQ_READ:
            self.sync_ra(vma, pgoff, ra)
            return
        if exec_branch:
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
