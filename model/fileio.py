"""System calls on an open file that change its page cache: pwrite(2) (mm/filemap.c
generic_perform_write, fs/ext4 and mm/shmem.c write_begin/write_end), posix_fadvise(2)
(mm/fadvise.c generic_fadvise), and the harness's `settle` pause.

A mixin of model.kernel.Kernel: `self` is the kernel (files, procs, fd(), alloc_fd(),
writeback(), note())."""
from __future__ import annotations

from model.errors import errno
from model.flags import FADV_NAME, F_SEAL_GROW, F_SEAL_FUTURE_WRITE, F_SEAL_WRITE, PAGE_SHIFT, PAGE_SIZE
from model.objects import DISK, invalidate_unmapped, mark_accessed
from model.versions import SHMEM_WRITE_LARGE_CHUNK_SINCE, SHMEM_WRITE_LARGE_CHUNK_UNTIL
from model.vma import OpenFile

# include/linux/pagemap.h MAX_PAGECACHE_ORDER (PMD order on x86-64); ext4's mapping max order
# (EXT4_MAX_PAGECACHE_ORDER) is the same with 4 KiB blocks
MAX_PAGECACHE_ORDER = 9


class FileIO:
    def file_source(self, proc, args: dict) -> OpenFile:
        """The struct file a file call acts on: a file by name is opened O_RDWR for the call
        (fs/open.c: alloc_fd before the lookup), a handle's own open file is used as is. The
        call's source (model.resolve): ["file", path] or [fd|shm|memfd, handle]."""
        kind, ref = args["source"]
        if kind == "file":
            self.alloc_fd(proc)
            ino = self.files.get(ref)
            if ino is None:
                raise errno("ENOENT")
            return OpenFile(ino)
        return self.fd(proc, ref)

    # ----- pwrite(2) ------------------------------------------------------------------------
    def sys_write(self, proc, args: dict):
        """fs/read_write.c ksys_pwrite64 -> vfs_write (EBADF unless open for writing) ->
        ->write_iter: generic_write_checks (generic_write_check_limits: EFBIG at or past
        RLIMIT_FSIZE, a write crossing it is shortened), then generic_perform_write chunk by
        chunk: write_begin finds or adds the folio (shmem_write_begin refuses a write-sealed
        memfd, and a chunk past i_size under F_SEAL_GROW, with EPERM), the bytes are copied,
        write_end marks the folio dirty and moves i_size. A failing chunk ends the write: what
        was written before is returned. No fault: the copy is from the caller's own buffer."""
        f0 = self._faults()
        f = self.file_source(proc, args)
        ino = f.inode
        pos, count, value = args["offset"], args["length"], args["value"]
        if not f.writable:
            raise errno("EBADF", f0)
        if pos >= 1 << 63:
            raise errno("EINVAL", f0)           # ksys_pwrite64: pos < 0
        if count == 0:
            return f0, {"written": 0}
        limit = proc.rlimit("fsize")
        if limit is not None:
            if pos >= limit:
                raise errno("EFBIG", f0)        # SIGXFSZ, ignored by the worker
            count = min(count, limit - pos)
        seals = ino.seals or 0
        if ino.is_shmem and seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise errno("EPERM", f0)            # shmem_write_begin: is_write_sealed
        end = pos + count
        if ino.is_shmem and seals & F_SEAL_GROW and end > ino.size:
            end = self._grow_sealed_end(ino, pos, end)
            if end <= pos:
                raise errno("EPERM", f0)
        if end > ino.size:
            ino.resize(end)                     # write_end: i_size_write(pos + copied)
        if ino.is_shmem:
            self._shmem_write_pages(ino, pos, end, self.mglru)
        else:
            self._filemap_write_pages(ino, pos, end)
        # the first byte of each page is what the model keeps of a page's contents
        first = -(-pos // PAGE_SIZE)
        for idx in range(first, (end - 1) // PAGE_SIZE + 1):
            ino.data[idx] = value & 0xFF
        self.note(f"generic_perform_write: {end - pos} byte(s) into the page cache, folios "
                  "dirty (no PTE changes: mappings see the new bytes)")
        return f0, {"written": end - pos}

    def _grow_sealed_end(self, ino, pos: int, end: int) -> int:
        """Where generic_perform_write stops on a memfd sealed F_SEAL_GROW: each chunk runs to
        the next chunk boundary or the end of the write, and shmem_write_begin refuses (EPERM)
        the first whose pos + len passes i_size; an accepted chunk gets an order-0 folio (no
        shmem THP here), so one page of it is copied and the next chunk starts after it. The
        chunk is a page, or the largest folio (2 MiB) on 6.11-6.12 (model.versions
        SHMEM_WRITE_LARGE_CHUNK_SINCE/UNTIL)."""
        large = SHMEM_WRITE_LARGE_CHUNK_SINCE <= self.release < SHMEM_WRITE_LARGE_CHUNK_UNTIL
        chunk = (1 << MAX_PAGECACHE_ORDER) * PAGE_SIZE if large else PAGE_SIZE
        p = pos
        while p < end:
            n = min(chunk - (p & (chunk - 1)), end - p)
            if p + n > ino.size:
                break
            p += min(n, PAGE_SIZE - (p & (PAGE_SIZE - 1)))
        return p

    @staticmethod
    def _shmem_write_pages(ino, pos: int, end: int, mglru: bool) -> None:
        """mm/shmem.c shmem_write_begin -> shmem_get_folio(SGP_WRITE): an existing folio is
        marked accessed, a new one (order 0: no shmem THP here) starts referenced;
        shmem_write_end marks it dirty."""
        for idx in range(pos >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
            if ino.is_cached(idx):
                ino.lru[idx] = mark_accessed(ino.lru[idx], mglru)
            else:
                ino.add_folio(idx, 1)
                ino.lru[idx] = 1
            ino.cached[idx] = 2

    @staticmethod
    def _filemap_write_pages(ino, pos: int, end: int) -> None:
        """generic_perform_write with ext4_write_begin -> __filemap_get_folio(FGP_WRITEBEGIN |
        fgf_set_order(len)): a cached folio is written whole or in part and marked dirty
        (block_write_end -> folio_mark_dirty: the whole folio); a missing one is added with the
        order of the chunk's length (chunk = the mapping's largest folio), smaller where the
        index is not aligned to it, and smaller again while the range holds a cached page
        (filemap_add_folio -EEXIST: retried with order - 1). No PG_readahead, not accessed."""
        chunk = (1 << MAX_PAGECACHE_ORDER) * PAGE_SIZE if ino.large_folios else PAGE_SIZE
        p = pos
        while p < end:
            idx = p >> PAGE_SHIFT
            offset = p & (chunk - 1)
            nbytes = min(chunk - offset, end - p)
            if ino.is_cached(idx):
                fa, fb = ino.folio_range(idx)
            else:
                shift = nbytes.bit_length() - 1
                order = max(shift - PAGE_SHIFT, 0) if ino.large_folios else 0
                order = min(order, MAX_PAGECACHE_ORDER)
                if idx & ((1 << order) - 1):
                    order = (idx & -idx).bit_length() - 1
                while order > 0 and any(ino.is_cached(j) for j in range(idx, idx + (1 << order))):
                    order -= 1
                ino.add_folio(idx, 1 << order)
                fa, fb = idx, idx + (1 << order)
                # add_folio stops at EOF; i_size already covers this write
            ino.mark_dirty(idx)
            p = min(end, max(p + 1, fb << PAGE_SHIFT))

    # ----- posix_fadvise(2) -----------------------------------------------------------------
    def sys_fadvise(self, proc, args: dict):
        """mm/fadvise.c generic_fadvise(). A file whose bdi is noop_backing_dev_info (tmpfs,
        memfd, /dev/shm: shmem) takes any valid advice and does nothing. Otherwise NORMAL and
        SEQUENTIAL set file->f_ra.ra_pages (the bdi's, twice the bdi's: the read-around window
        of a later fault through this open file), RANDOM and NOREUSE set f_mode bits that no
        page fault reads (FMODE_RANDOM matters to read(2) and to VM_SEQ_READ faults only; not
        modelled), WILLNEED reads ahead (force_page_cache_ra), DONTNEED starts writeback of the
        range and drops its clean folios that no PTE maps (mapping_try_invalidate: only folios
        wholly inside the range, partial pages at both ends excluded)."""
        f0 = self._faults()
        f = self.file_source(proc, args)
        ino = f.inode
        advice = FADV_NAME.get(args["advice"])
        if advice is None:
            raise errno("EINVAL", f0)
        offset, length = args["offset"], args["length"]
        if ino.is_shmem:
            self.note("generic_fadvise: shmem has noop_backing_dev_info, the advice is ignored")
            return f0, None
        endbyte = offset + length
        endbyte = (1 << 63) - 1 if not length or endbyte >= 1 << 63 else endbyte - 1
        if advice == "normal":
            f.ra_pages = None
        elif advice == "sequential":
            f.ra_pages = 2 * ino.readahead_pages
        elif advice == "willneed":
            first, last = offset >> PAGE_SHIFT, endbyte >> PAGE_SHIFT
            limit = max(self.io_pages, f.ra_pages or ino.readahead_pages)
            stop = min(first + min(last - first + 1, limit), ino.npages)
            for i in range(first, stop):
                if not ino.is_cached(i):
                    ino.add_folio(i, 1)
            self.note(f"force_page_cache_ra: {max(0, stop - first)} page(s) from page {first} "
                      f"(at most max(io_pages, ra_pages) = {limit})")
        elif advice == "dontneed" and ino.kind == DISK:
            self.writeback(ino, offset >> PAGE_SHIFT, (endbyte >> PAGE_SHIFT) + 1)
            lo = (offset + PAGE_SIZE - 1) >> PAGE_SHIFT
            hi = endbyte >> PAGE_SHIFT
            if endbyte & (PAGE_SIZE - 1) != PAGE_SIZE - 1:
                hi -= 1                          # a partial last page stays
            if hi >= lo:
                n = invalidate_unmapped(ino, lo, hi + 1)
                self.note(f"mapping_try_invalidate dropped {n} clean unmapped page(s)")
        return f0, None

    # ----- settle ---------------------------------------------------------------------------
    def sys_settle(self, proc, args: dict):
        """Not a system call: the live side waits until the file's disk has no read in flight,
        then pauses. The model has no I/O in flight (every folio it adds is uptodate at once),
        so nothing changes."""
        self.note("settle: no I/O in flight in the model; nothing changes")
        return None
