"""Files and the page cache seen through system calls: creating a file (write + fsync), open,
fadvise DONTNEED (sys_evict), writeback and msync, truncate and hole punching, POSIX shm
(shm_open / shm_unlink on /dev/shm) and memfd_create. Methods of Kernel (FileOps).

Kernel sources: fs/open.c (do_sys_openat2, do_sys_truncate, build_open_flags), fs/file.c
alloc_fd, fs/attr.c inode_newsize_ok, fs/namei.c do_open, mm/filemap.c
(generic_write_check_limits, folio_mkclean via folio_clear_dirty_for_io), mm/fadvise.c,
mm/msync.c, mm/truncate.c (truncate_pagecache, truncate_inode_partial_folio), mm/memory.c
unmap_mapping_range, fs/ext4/inode.c ext4_punch_hole, mm/shmem.c (shmem_fallocate,
shmem_setattr), mm/memfd.c memfd_create.
"""
from __future__ import annotations

from model.flags import MFD_ALLOW_SEALING, MS, O_ACCMODE, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, ULONG_MASK  # model.resolve's numbers

from model import ipc
from model.errors import errno
from model.flags import (PAGE_SIZE, PTE_DIRTY, PTE_FILE, PTE_KIND, PTE_NONE, PTE_WRITE, VM_LOCKED,
                         VM_SHARED)
from model.objects import DISK, SHMEM, TMPFS, Inode, invalidate_unmapped
from model.pages import page_align, pages_of
from model.process import Process
from model.vma import OpenFile


class FileOps:
    """Files, the page cache, msync, truncation, POSIX shm and memfd (model.files)."""

    def sys_file(self, proc: Process, args: dict):
        """Create a file (write() of its bytes in 64 KiB chunks, fsync, optional fadvise).
        open(O_CREAT) allocates the descriptor first (alloc_fd: EMFILE, no file made). Past
        RLIMIT_FSIZE mm/filemap.c generic_write_check_limits() shortens the write that
        crosses the limit and fails the next with EFBIG: the file keeps the bytes below the
        limit (the live side still fsyncs them), and the step fails with EFBIG."""
        path, size, on = args["path"], args["size"], args.get("on") or "disk"   # model.resolve call
        self.alloc_fd(proc)
        limit = proc.rlimit("fsize")
        efbig = limit is not None and size > limit
        if efbig:
            size = limit
        kind = TMPFS if on == "tmpfs" else DISK
        ino = Inode(kind, self.new_ino(), self.dev[kind], 0, path,
                    large_folios=self.large_folios and kind == DISK)
        ino.write_notify = self.write_notify[kind]
        ino.resize(size)
        ino.uid = proc.uid
        ino.readahead_pages = self.readahead_pages
        fill = args.get("fill") or "zero"
        if fill == "zero":
            ino.data[:] = bytes(len(ino.data))
        elif fill == "byte":
            ino.data[:] = bytes([args.get("value", 0x5A) & 0xFF]) * len(ino.data)
        else:
            ino.data[:] = _random_first_bytes(args.get("seed") or args.get("name", ""), size)
        # write(2) of 64 KiB chunks: ext4 allocates a folio per chunk (fgf_set_order(len))
        chunk = 16
        for start in range(0, ino.npages, chunk):
            n = min(chunk, ino.npages - start)
            order_pages = 1 << (n.bit_length() - 1) if kind == DISK and self.large_folios else 1
            i = start
            while i < start + n:
                m = min(order_pages, start + n - i) if kind == DISK else 1
                # ext4 writes back on fsync (clean); shmem_write_end marks tmpfs folios dirty
                # and fsync cannot clean them (there is nothing to write them to)
                ino.add_folio(i, m, dirty=kind == TMPFS)
                i += m
        if args.get("cache") == "cold" and kind == DISK and not efbig:
            for i in range(ino.npages):
                ino.cached[i] = 0
                ino.folio[i] = -1
        self.files[path] = ino
        if kind == TMPFS:
            self.posix[path.split("/dev/shm/", 1)[1]] = ino
            ino.mode = 0o600
        if efbig:
            raise errno("EFBIG")
        self.note("write() fills the page cache; fsync writes it back"
                  + ("; POSIX_FADV_DONTNEED drops it" if args.get("cache") == "cold" else ""))
        return None

    def sys_open(self, proc: Process, args: dict):
        """fs/open.c do_sys_openat2(): get_unused_fd_flags() (EMFILE) before the lookup."""
        self.alloc_fd(proc)
        ino = self.files.get(args["path"])
        if ino is None:
            raise errno("ENOENT")
        acc = args["flags"] & O_ACCMODE           # O_RDONLY, O_WRONLY, O_RDWR (model.resolve)
        proc.fds[args["as"]] = OpenFile(ino, readable=acc in (O_RDONLY, O_RDWR),
                                        writable=acc in (O_WRONLY, O_RDWR))
        return None

    def alloc_fd(self, proc: Process) -> None:
        """fs/file.c alloc_fd() (get_unused_fd_flags, before the path is looked up): EMFILE
        once the lowest free descriptor reaches RLIMIT_NOFILE. The model does not know the
        worker's descriptor table, so it decides only the limit 0, where every allocation
        fails; a limit between 1 and the worker's own descriptors is not predicted."""
        if proc.rlimit("nofile") == 0:
            raise errno("EMFILE")

    def newsize_ok(self, proc: Process, ino: Inode, size: int) -> None:
        """fs/attr.c inode_newsize_ok(): growing a file past RLIMIT_FSIZE is EFBIG (with a
        SIGXFSZ that Python processes ignore, so the call just fails)."""
        limit = proc.rlimit("fsize")
        if size > ino.size and limit is not None and size > limit:
            raise errno("EFBIG")

    def sys_evict(self, proc: Process, args: dict):
        """fsync + POSIX_FADV_DONTNEED (mm/fadvise.c -> mapping_try_invalidate): write back
        dirty pages, then drop every clean folio that no PTE maps. The live side opens the
        file first (alloc_fd: EMFILE)."""
        self.alloc_fd(proc)
        ino = self.files.get(args["path"])
        if ino is None:
            raise errno("ENOENT")
        if ino.kind != DISK:
            return None
        self.writeback(ino, 0, ino.npages)       # every folio is clean after it
        dropped = invalidate_unmapped(ino, 0, ino.npages)
        self.note(f"fadvise DONTNEED dropped {dropped} unmapped page(s); mapped folios stay")
        return None

    def writeback(self, ino: Inode, a: int, b: int) -> int:
        """Write back dirty folios in [a, b): folio_clear_dirty_for_io -> folio_mkclean
        write-protects and cleans the PTEs of shared mappings (rmap walk over all processes)."""
        dirty = [i for i in range(a, min(b, ino.npages)) if ino.cached[i] == 2]
        if not dirty:
            return 0
        folios = {ino.folio_range(i) for i in dirty}
        for fa, fb in folios:
            for j in range(fa, fb):
                if ino.cached[j]:
                    ino.cached[j] = 1
        for p in self.procs.values():
            if not p.alive:
                continue
            for vma in p.mm.vmas:
                if vma.file is None or vma.file.inode is not ino or not vma.flags & VM_SHARED:
                    continue
                for fa, fb in folios:
                    for j in range(max(fa - vma.pgoff, 0), min(fb - vma.pgoff, vma.pages)):
                        e = vma.pte[j]
                        if e & PTE_KIND == PTE_FILE:
                            vma.pte[j] = e & ~(PTE_WRITE | PTE_DIRTY)
        self.note(f"writeback of {len(dirty)} dirty page(s): folio_mkclean write-protects their PTEs")
        return len(dirty)

    def sys_msync(self, proc: Process, args: dict):
        """mm/msync.c: MS_SYNC writes back the file range of each shared file VMA."""
        f0 = self._faults()
        start, length, bits = args["addr"], args["length"], args["flags"]
        # mm/msync.c: unknown bits, an unaligned start, MS_SYNC|MS_ASYNC: EINVAL, in that order
        if bits & ~(MS["SYNC"] | MS["ASYNC"] | MS["INVALIDATE"]) & 0xFFFFFFFF:
            raise errno("EINVAL", f0)
        flags = {n.lower() for n, v in MS.items() if bits & v}
        if start & (PAGE_SIZE - 1) or ("sync" in flags and "async" in flags):
            raise errno("EINVAL", f0)
        end = start + page_align(length)
        if end > ULONG_MASK:                  # end < start once wrapped
            raise errno("ENOMEM", f0)
        mm = proc.mm
        hole = not mm.fully_mapped(start, end)
        for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
            if "invalidate" in flags and v.flags & VM_LOCKED:
                raise errno("EBUSY", f0)
            if "sync" in flags and v.file is not None and v.flags & VM_SHARED and not v.file.inode.is_shmem:
                a, b = v.index(max(start, v.start)), v.index(min(end, v.end))
                self.writeback(v.file.inode, v.file_index(a), v.file_index(b))
        if hole:
            raise errno("ENOMEM", f0)
        return f0, None

    def fallocate_punch_hole(self, ino: Inode, lo: int, hi: int) -> None:
        """vfs_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) over file pages [lo, hi)
        (madvise_remove). shmem (shmem_fallocate): unmap and free the pages. A disk file
        (ext4_punch_hole -> truncate_pagecache_range): unmap_mapping_range over the range (a
        dirty PTE dirties its folio), folios wholly inside leave the page cache, and a large
        folio that straddles an end goes through truncate_inode_partial_folio(): its part in the
        range is zeroed, then try_folio_split_or_unmap() -- splitting a file folio unmaps all of
        it from every process first, and when the split fails it is unmapped anyway. Measured:
        a clean folio splits and its pages in the range are dropped (the next read is a major
        fault); a dirty one (ext4 buffer heads still dirty, filemap_release_folio fails) does
        not split and stays cached whole and dirty, its punched pages reading back as zeros
        without I/O. The model makes the pieces of a split folio single pages."""
        if ino.is_shmem:
            self.punch_hole(ino, lo, hi)
            self.note("madvise_remove: shmem_fallocate(PUNCH_HOLE) unmaps and frees the pages")
            return
        hi = min(hi, ino.npages)
        if lo >= hi:
            return
        self.unmap_file_pages(ino, lo, hi)
        keep = set()
        for edge in sorted({lo, hi - 1}):
            if not ino.is_cached(edge):
                continue
            fa, fb = ino.folio_range(edge)
            if lo <= fa and fb <= hi:
                continue                      # wholly inside: truncate_inode_folio
            self.unmap_file_pages(ino, fa, fb)
            inside = range(max(fa, lo), min(fb, hi))
            for j in inside:
                ino.data[j] = 0               # folio_zero_range
            if ino.cached[fa] == 2:           # the split fails: the folio stays whole
                keep.update(inside)
            else:
                for j in range(fa, fb):
                    ino.folio[j] = j
        run = lo
        for j in range(lo, hi + 1):
            if j == hi or j in keep:
                if run < j:
                    self.punch_hole(ino, run, j)
                run = j + 1
        self.note("madvise_remove: vfs_fallocate(PUNCH_HOLE) frees the pages"
                  + (f"; {len(keep)} page(s) of a dirty large folio stay cached, zeroed" if keep else ""))

    def unmap_file_pages(self, ino: Inode, lo: int, hi: int, even_cows: bool = False) -> None:
        """mm/memory.c unmap_mapping_range() over file pages [lo, hi): every PTE that maps one
        of them goes, in every process. even_cows=0 (hole punch: shmem_fallocate,
        truncate_pagecache_range) leaves the private COW copies of a MAP_PRIVATE mapping alone
        (zap_details.even_cows: only PTEs of the mapping's own folios go); even_cows=1
        (truncation: shmem_setattr, truncate_pagecache) zaps them too."""
        for p in self.procs.values():
            if not p.alive:
                continue
            for v in p.mm.vmas:
                if v.file is not None and v.file.inode is ino:
                    a, b = max(lo - v.pgoff, 0), min(hi - v.pgoff, v.pages)
                    for i in range(a, b):
                        kind = v.pte[i] & PTE_KIND
                        if kind == PTE_FILE or (even_cows and kind != PTE_NONE):
                            self.mem.zap(v, i, i + 1)

    def punch_hole(self, ino: Inode, lo: int, hi: int) -> None:
        """shmem_fallocate(PUNCH_HOLE) / truncate_pagecache_range: unmap then free [lo, hi)."""
        self.unmap_file_pages(ino, lo, hi)
        for i in range(lo, min(hi, ino.npages)):
            ino.cached[i] = 0
            ino.data[i] = 0
            ino.folio[i] = -1

    def sys_truncate(self, proc: Process, args: dict):
        """truncate(2) by path (fs/open.c do_sys_truncate: no descriptor is allocated) or
        ftruncate(2) of a handle (do_ftruncate: EINVAL unless open for writing), then
        inode_newsize_ok (EFBIG past RLIMIT_FSIZE) and the filesystem's setattr (truncate)."""
        kind, ref = args["source"]
        if kind == "file":
            ino = self.files.get(ref)
            if ino is None:
                raise errno("ENOENT")
        else:
            f = self.fd(proc, ref)
            if not f.writable:
                raise errno("EINVAL")
            ino = f.inode
        size = args["size"]
        self.newsize_ok(proc, ino, size)
        if ino.is_shmem:
            self.seals_allow_resize(ino, size)
        self.truncate(ino, size)
        self.note("do_truncate -> notify_change -> setattr: the file is " +
                  ("shrunk" if size < ino.size else "resized"))
        return None

    def truncate(self, ino: Inode, size: int) -> None:
        """do_truncate -> mm/shmem.c shmem_setattr (mm/truncate.c truncate_pagecache for other
        filesystems): unmap_mapping_range(holebegin, 0, even_cows=1) with holebegin =
        round_up(newsize, PAGE_SIZE), then the pages past the new end leave the page cache.
        even_cows=1: the private COW copies of MAP_PRIVATE mappings past holebegin are zapped
        too (measured: a later access to them is a SIGBUS; the copy of the page holding the new
        end stays), unlike a hole punch (fallocate_punch_hole)."""
        kept = []
        if size < ino.size:
            first = pages_of(size)       # a partial last page stays (truncate_inode_partial_folio)
            self.unmap_file_pages(ino, first, ino.npages, even_cows=True)
            if ino.is_shmem:
                self.punch_hole(ino, first, ino.npages)
            else:
                # truncate_inode_pages_range: a large folio that straddles the new end goes
                # through truncate_inode_partial_folio, as for a hole punch; a dirty one that
                # does not split stays in the page cache whole, its pages past the new end
                # included (zeroed). Measured (truncate-grow-shrink-sigbus.toml): grown back,
                # the file reads them with a minor fault, dirty, no I/O.
                old = ino.npages
                self.fallocate_punch_hole(ino, first, old)
                kept = [(j, ino.cached[j], ino.folio[j]) for j in range(first, old) if ino.is_cached(j)]
        ino.resize(size)
        for j, state, head in kept:
            ino.cached[j], ino.folio[j] = state, head

    def sys_shm_open(self, proc: Process, args: dict):
        """glibc shm_open() = open("/dev/shm/NAME") on tmpfs (mm/shmem.c)."""
        oflag = args["flags"]                      # O_* (model.resolve)
        create, excl = bool(oflag & O_CREAT), bool(oflag & O_EXCL)
        trunc, readonly = bool(oflag & O_TRUNC), oflag & O_ACCMODE == O_RDONLY
        err, name = ipc.shm_name(args["name"])     # glibc's name rule (model/ipc.py)
        if err:
            raise errno(err)
        if name in (".", "..") and (create or not readonly):
            raise errno("EINVAL")   # the kernel's EISDIR, which glibc's shm_open turns into EINVAL
        self.alloc_fd(proc)
        ino = self.posix.get(name)
        if ino is None:
            if not create:
                raise errno("ENOENT")
            ino = Inode(TMPFS, self.new_ino(), self.dev[TMPFS], 0, "/dev/shm/" + name)
            ino.write_notify = self.write_notify[TMPFS]
            ino.mode = (0o600 if args.get("mode") is None else args["mode"]) & ~self.umask
            ino.uid = proc.uid
            self.posix[name] = ino
            self.note("shmem_create: a new tmpfs inode in /dev/shm")
        else:
            if create and excl:
                raise errno("EEXIST")
            # fs/open.c:build_open_flags(): O_TRUNC adds MAY_WRITE to the access asked for
            want = 0o4 | (0o2 if not readonly or trunc else 0)
            if not self._perm_ok(proc, ino, want):
                raise errno("EACCES")
        f = OpenFile(ino, readable=True, writable=not readonly)
        if trunc:
            # fs/namei.c:do_open -> handle_truncate: O_TRUNC truncates whatever the access mode
            # (measured: a read-only open with O_TRUNC empties a mapped object)
            self.truncate(ino, 0)
            self.note("do_open: O_TRUNC -> do_truncate -> shmem_setattr empties the object")
        proc.fds[args["as"]] = f
        size = args.get("size")
        if size is not None:
            if readonly or size < 0:
                raise errno("EINVAL")
            self.newsize_ok(proc, ino, size)
            self.truncate(ino, size)
        return self._faults(), None

    def _perm_ok(self, proc: Process, ino: Inode, want: int) -> bool:
        if proc.privileged:
            return True
        bits = (ino.mode >> 6) & 7 if ino.uid == proc.uid else ino.mode & 7
        return want & ~bits == 0

    def sys_shm_unlink(self, proc: Process, args: dict):
        err, name = ipc.shm_name(args["name"])     # glibc's name rule (model/ipc.py)
        if err == "EINVAL":
            raise errno("ENOENT")   # glibc shm_unlink: a name __shm_get_name refuses is ENOENT
        if err:
            raise errno(err)        # ENAMETOOLONG: the kernel's, from unlink()
        if name in (".", ".."):
            raise errno("EISDIR")   # fs/namei.c do_unlinkat: the last component is not LAST_NORM
        ino = self.posix.get(name)
        if ino is None:
            raise errno("ENOENT")
        del self.posix[name]
        ino.deleted = True
        self.note("shm_unlink removes the name; mappings keep the inode, maps shows (deleted)")
        return None

    def sys_memfd(self, proc: Process, args: dict):
        """mm/memfd.c memfd_create(): a shmem file on the internal mount, "memfd:NAME"."""
        name = args["name"]
        if len(name) > 249:
            raise errno("EINVAL")
        self.alloc_fd(proc)
        ino = Inode(SHMEM, self.new_ino(), self.dev[SHMEM], 0, "/memfd:" + name)
        ino.deleted = True
        if args["flags"] & MFD_ALLOW_SEALING:
            ino.seals = 0                # MFD_ALLOW_SEALING: F_SEAL_SEAL cleared
        if args.get("size"):
            # the live side's ftruncate: a failure leaves no handle
            self.newsize_ok(proc, ino, args["size"])
            ino.resize(args["size"])
        proc.fds[args["as"]] = OpenFile(ino)
        return None


def _random_first_bytes(seed, size: int) -> bytes:
    """The first byte of each page of a file filled by random.Random(seed).randbytes in 64 KiB
    chunks, as the live side writes it (shmkit.worker op_file). The model cannot draw the same
    bytes without Python's generator, which is pure: it is used here as the file's contents."""
    import random
    rng = random.Random(seed)
    out = bytearray()
    done = 0
    while done < size:
        n = min(1 << 16, size - done)
        chunk = rng.randbytes(n)
        out += chunk[::PAGE_SIZE]
        done += n
    return bytes(out)
