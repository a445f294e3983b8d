"""mremap(2). Methods of Kernel (MremapOps).

Kernel source: mm/mremap.c (do_mremap, check_mremap_params, remap_move, mremap_to,
expand_vma, move_vma, move_page_tables, move_huge_pmd); the 6.17 changes are named where
they apply (Kernel.release).
"""
from __future__ import annotations

from model.flags import MREMAP, ULONG_MASK, VM_MAYSHARE, VM_SHARED  # model.resolve's numbers

from array import array

from model.errors import errno
from model.flags import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, VM_LOCKED, VM_LOCKONFAULT
from model.mm import TASK_SIZE
from model.pages import page_align
from model.process import Process, Region
from model.versions import MREMAP_CHECKS_FIRST_SINCE
from model.vma import Vma


class MremapOps:
    """mremap (model.mremap)."""

    def sys_mremap(self, proc: Process, args: dict):
        """mm/mremap.c do_mremap(): check_mremap_params(), then remap_move() for MREMAP_FIXED
        with old_len == new_len (vrm_move_only, since 6.17), mremap_to() for the other
        MREMAP_FIXED or MREMAP_DONTUNMAP calls (vrm_implies_new_addr), else mremap_at(): same
        size is a no-op, shrink_vma() unmaps the tail (neither checks that the old range is one
        VMA), expand_vma() grows in place or moves."""
        f0 = self._faults()
        addr, old_len, new_len, new_addr = args["addr"], args["length"], args["new_length"], args["new_addr"]
        r = proc.regions.get(args["follow"]) if args.get("follow") else None
        bits = args["flags"]
        flags = {n.lower() for n, v in MREMAP.items() if bits & v}
        mm = proc.mm
        # check_mremap_params(): unknown flags, an unaligned address, a zero new length
        if bits & ~(MREMAP["MAYMOVE"] | MREMAP["FIXED"] | MREMAP["DONTUNMAP"]) & ULONG_MASK:
            raise errno("EINVAL", f0)
        if addr & (PAGE_SIZE - 1) or not page_align(new_len):
            raise errno("EINVAL", f0)
        if "fixed" in flags or "dontunmap" in flags:
            if new_addr & (PAGE_SIZE - 1) or "maymove" not in flags:
                raise errno("EINVAL", f0)
            if "dontunmap" in flags and old_len != new_len:   # before PAGE_ALIGN
                raise errno("EINVAL", f0)
            if mm.map_count + 2 >= self.max_map_count - 3:
                raise errno("ENOMEM", f0)
        old_len, new_len = page_align(old_len), page_align(new_len)
        if ("fixed" in flags or "dontunmap" in flags) and self.release >= MREMAP_CHECKS_FIRST_SINCE:
            # the 6.17 series ("mm/mremap: refactor initial parameter sanity checks"): the
            # target is checked in check_mremap_params(), before any VMA is looked up
            # (measured: a target overlapping an unmapped source is EINVAL, not EFAULT)
            self.mremap_new_addr_ok(addr, old_len, new_addr, new_len)
            if "fixed" in flags and old_len == new_len:
                return self.remap_move(proc, r, args, addr, old_len, new_addr, flags)
        vma = mm.vma_at(addr)
        if vma is None or vma.opaque is not None:
            raise errno("EFAULT", f0)
        if not old_len and new_len:
            # check_prep_vma(): old_len 0 "duplicates" a mapping; for a private one that
            # would be a new unrelated mapping: EINVAL
            if not vma.flags & (VM_SHARED | VM_MAYSHARE):
                raise errno("EINVAL", f0)
            if "fixed" not in flags and "dontunmap" not in flags:
                return self.mremap_duplicate(proc, vma, addr, new_len, flags, f0)
        if "fixed" in flags or "dontunmap" in flags:
            if self.release >= MREMAP_CHECKS_FIRST_SINCE and old_len > vma.end - addr:
                # check_prep_vma() runs before mremap_to() unmaps the target ("mm/mremap: move
                # remap_is_valid() into check_prep_vma()", 6.17): a range that is not inside
                # one VMA is EFAULT with nothing unmapped, also when it shrinks (measured)
                raise errno("EFAULT", f0)
            return self.mremap_to(proc, r, args, addr, old_len, new_addr, new_len, flags)
        if new_len <= old_len:
            if new_len < old_len:
                self.unmap_vmas(proc, addr + new_len, addr + old_len)
            self._follow(r, args, addr, new_len)
            return f0, {"addr": addr}
        # expand_vma() -> remap_is_valid()
        if old_len > vma.end - addr:
            raise errno("EFAULT", f0)
        delta = (new_len - old_len) >> PAGE_SHIFT
        if vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        # in place: vma_expandable() - the range above is free (vm_start_gap of the next VMA)
        if addr + old_len == vma.end:
            nxt = mm.find_vma(vma.end)
            if (nxt is None or nxt.start >= vma.start + (vma.end - vma.start) + (new_len - old_len)) \
                    and vma.end + (new_len - old_len) <= TASK_SIZE:
                newv = Vma(vma.end, addr + new_len, vma.flags, vma.pgoff + vma.pages, vma.file, vma.anon_vma)
                vma.absorb(newv)
                mm.try_merge(vma)
                minor = major = 0
                if vma.flags & VM_LOCKED:
                    mm.locked_vm += delta
                    minor, major = self.mem.populate(mm, addr + old_len, addr + new_len)
                self._follow(r, args, addr, new_len)
                self.note("mremap grew the VMA in place (vma_expandable, vma_merge_extend)")
                return self._faults(minor, major), {"addr": addr}
        if "maymove" not in flags:
            raise errno("ENOMEM", f0)
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        thp, thp_pgoff = self._mremap_thp_align(vma, 0, new_len, pgoff)
        where = mm.get_unmapped_area(new_len, 0, False, thp_align=thp, pgoff=thp_pgoff)
        if isinstance(where, str):
            raise errno(where, f0)
        faults = self.move_vma(proc, vma, addr, old_len, new_len, where, pgoff, False)
        self._follow(r, args, where, new_len)
        self.note("mremap moved the VMA (move_vma: copy_vma, move_page_tables, unmap the old range)")
        return faults, {"addr": where}

    def mremap_duplicate(self, proc, vma: Vma, addr: int, new_len: int, flags, f0):
        """mm/mremap.c, old_len 0 on a shared mapping: expand_vma() cannot grow a range of no
        pages in place, so with MREMAP_MAYMOVE move_vma() copies the VMA (copy_vma: a new VMA
        of new_len over the same object at the same offset) and moves no page tables, and the
        old range, empty, is not unmapped: the object is mapped twice. Without MREMAP_MAYMOVE
        ENOMEM."""
        if "maymove" not in flags:
            raise errno("ENOMEM", f0)
        delta = new_len >> PAGE_SHIFT
        if vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        mm = proc.mm
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        thp, thp_pgoff = self._mremap_thp_align(vma, 0, new_len, pgoff)
        where = mm.get_unmapped_area(new_len, 0, False, thp_align=thp, pgoff=thp_pgoff)
        if isinstance(where, str):
            raise errno(where, f0)
        new = Vma(where, where + new_len, vma.flags, pgoff, vma.file, vma.anon_vma)
        if vma.file is not None and vma.file.segment is not None:
            self.ipc.opened(vma.file.segment)
        mm.insert(new)
        minor = major = 0
        if new.flags & VM_LOCKED:
            mm.locked_vm += delta
            minor, major = self.mem.populate(mm, where, where + new_len)
        mm.try_merge(new)
        self.note("mremap with old_len 0 duplicated the shared mapping (move_vma copies the VMA, "
                  "moves no page, unmaps nothing)")
        return self._faults(minor, major), {"addr": where}

    def mremap_new_addr_ok(self, addr, old_len, new_addr, new_len) -> None:
        """check_mremap_params() on the target: inside TASK_SIZE, not overlapping the source
        (vrm_overlaps): EINVAL."""
        if new_len > TASK_SIZE or new_addr > TASK_SIZE - new_len:
            raise errno("EINVAL", self._faults())
        if new_addr < addr + old_len and addr < new_addr + new_len:
            raise errno("EINVAL", self._faults())          # the old and new ranges overlap

    def remap_move(self, proc, r, args, start, length, new_addr, flags):
        """mm/mremap.c remap_move() (since 6.17, commit d23cb648e365 "mm/mremap: permit mremap()
        move of multiple VMAs"; d50dabff4d1f "catch invalid multi VMA moves earlier"):
        MREMAP_FIXED with old_len == new_len moves every VMA of [start, start + length), each
        cut to the range, through check_prep_vma() + mremap_to() (which unmaps only that VMA's
        own target), keeping the gaps between them. No VMA at start is EFAULT; so is a range
        with no VMA at all. vma_multi_allowed(): a VMA whose file has its own
        get_unmapped_area other than shmem's, hugetlbfs' or thp_get_unmapped_area (a SysV
        attach: shm_get_unmapped_area) moves only alone: EFAULT when it is the first and the
        range goes past its end, or when it comes after others (those have moved). A gap at
        the end of the range is allowed. Measured: anonymous, ext4 and memfd VMAs move
        together; a SysV attach after an anonymous VMA is EFAULT with the anonymous part moved."""
        f0 = self._faults()
        mm = proc.mm
        end = start + length
        target = new_addr
        res = None
        last_end = 0
        at = start
        while at < end:                                # for_each_vma_range(vmi, vma, end)
            vma = mm.find_vma(at)
            if vma is None or vma.start >= end:
                break
            if res is None and start < vma.start:
                raise errno("EFAULT", f0)              # no gap permitted at the start
            a = max(vma.start, start)
            ln = min(end, vma.end) - a
            offset = vma.start - last_end if res is not None else 0
            last_end = vma.end
            if vma.opaque is not None:
                raise errno("EFAULT", f0)
            if vma.file is not None and vma.file.kind == "shm":     # not vma_multi_allowed()
                if res is not None or vma.end < end:
                    raise errno("EFAULT", f0)
            at = a + ln
            moved = self.mremap_to(proc, r, args, a, ln, target + offset, ln, flags, follow=False)
            if res is None:
                res = moved
            target = moved + ln
        if res is None:
            raise errno("EFAULT", f0)
        self._follow(r, args, res, length)
        return f0, {"addr": res}

    def mremap_to(self, proc, r, args, addr, old_len, new_addr, new_len, flags, follow=True):
        """mm/mremap.c mremap_to(): MREMAP_FIXED unmaps the target range first (do_munmap);
        MREMAP_DONTUNMAP alone takes new_addr as a hint (vrm_set_new_addr -> get_unmapped_area);
        a target overlapping the source is EINVAL either way (vrm_overlaps). With follow=False
        (one VMA of remap_move) returns the new address."""
        f0 = self._faults()
        fixed, dontunmap = "fixed" in flags, "dontunmap" in flags
        self.mremap_new_addr_ok(addr, old_len, new_addr, new_len)
        mm = proc.mm
        if fixed:
            self.unmap_vmas(proc, new_addr, new_addr + new_len)
            if mm.vma_at(addr) is None:
                raise errno("EFAULT", f0)
        if old_len > new_len:
            self.unmap_vmas(proc, addr + new_len, addr + old_len)
            old_len = new_len
        vma = mm.vma_at(addr)
        # remap_is_valid()
        if vma is None or old_len > vma.end - addr:
            raise errno("EFAULT", f0)
        delta = (new_len - old_len) >> PAGE_SHIFT
        if delta and vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if delta and not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        # MREMAP_DONTUNMAP keeps the old range: the address space grows by old_len
        if dontunmap and not self.may_expand_vm(proc, vma.flags, old_len >> PAGE_SHIFT):
            raise errno("ENOMEM", f0)
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        thp, thp_pgoff = self._mremap_thp_align(vma, new_addr, new_len, pgoff)
        where = mm.get_unmapped_area(new_len, new_addr, fixed, thp_align=thp and not fixed, pgoff=thp_pgoff)
        if isinstance(where, str):
            raise errno(where, f0)
        faults = self.move_vma(proc, vma, addr, old_len, new_len, where, pgoff, dontunmap)
        if not follow:
            self.note("remap_move: a VMA of the range moved (check_prep_vma, mremap_to)")
            return where
        self._follow(r, args, where, new_len)
        self.note("mremap_to: " + ("MREMAP_FIXED unmapped the target range and moved the VMA there"
                                   if fixed else "moved the VMA to a free range (new_addr a hint)")
                  + ("; MREMAP_DONTUNMAP left the old range mapped and empty" if dontunmap else ""))
        return faults, {"addr": where}

    def _mremap_thp_align(self, vma: Vma, hint: int, length: int, pgoff: int) -> tuple[bool, int]:
        """mm/mremap.c vrm_set_new_addr() -> get_unmapped_area(vm_file, hint, new_len, pgoff)
        -> __get_unmapped_area(), as mmap places a new mapping: a disk file's
        f_op->get_unmapped_area (ext4: thp_get_unmapped_area, hint and pgoff included), and an
        anonymous VMA (pgoff treated as 0) moved without a hint to a multiple of 2 MiB
        (thp_get_unmapped_area_vmflags). Returns (THP-align, the pgoff to align to).
        Measured: thp-mremap-aligned.toml (MREMAP_DONTUNMAP of 2 MiB skips a free 2 MiB hole
        for an aligned range below), mremap-file-thp-align.toml."""
        if vma.file is None:
            return self.thp_align_anon and not hint and length % PMD_SIZE == 0, 0
        if vma.file.kind == "file" and not vma.file.inode.is_shmem:
            return True, pgoff
        return False, 0

    def _follow(self, r: Region | None, args: dict, addr: int, length: int) -> None:
        """The handle the range was given by (model.resolve "follow") follows the moved range,
        also when only some pages of it moved (DESIGN.md; the spec then knows the region by
        its new length). A range given by address moves no handle."""
        if r is not None:
            r.addr, r.length = addr, args["new_length"]

    def move_vma(self, proc, vma: Vma, addr, old_len, new_len, new_addr, pgoff, dontunmap) -> dict:
        """mm/mremap.c move_vma(): copy_vma + move_page_tables, then unmap_source_vma(); with
        MREMAP_DONTUNMAP dontunmap_complete() instead: the old VMA is neither split nor
        unmapped, it only loses its PTEs in the moved range, VM_LOCKED/VM_LOCKONFAULT go from
        all of it (measured: its pages outside the moved range then count Locked 0; VM_ACCOUNT
        stays on this kernel) and, when the whole VMA moved, its anon_vma (unlink_anon_vmas).
        locked_vm is not lowered for the old VMA (vrm_stat_account adds the new one; measured:
        VmLck keeps the old VMA's pages after every range is munlocked)."""
        mm = proc.mm
        if dontunmap:
            src = mm.vma_at(addr)
            i0 = src.index(addr)
        else:
            src = mm.isolate(addr, addr + old_len)[0]
            i0 = 0
        if src.is_anonymous and src.anon_vma is None:
            pgoff = new_addr >> PAGE_SHIFT           # copy_vma(): never faulted, take the new address
        new = Vma(new_addr, new_addr + new_len, src.flags, pgoff, src.file, src.anon_vma)
        k = old_len >> PAGE_SHIFT
        new.pte[:k] = src.pte[i0:i0 + k]
        if src.anon is not None:
            arr = new.anon_array()
            arr[:k] = src.anon[i0:i0 + k]
        if src.file is not None and src.file.segment is not None:
            self.ipc.opened(src.file.segment)
        self._move_huge_pmds(src, i0, k, new)
        src.pte[i0:i0 + k] = bytes(k)
        if src.anon is not None:
            src.anon[i0:i0 + k] = array("q", bytes(8 * k))
        mm.insert(new)
        new_locked = bool(new.flags & VM_LOCKED)
        if dontunmap:
            # copy_vma() merges the new range (vma_merge_new_range) while the source still has
            # its VM_LOCKED; a never-faulted source (no anon_vma: its pgoff follows the address)
            # can be the VMA it merges with, and then vrm->vma is the merged VMA
            # (copy_vma: *vmap = vma = new_vma), so dontunmap_complete() clears VM_LOCKED_MASK
            # from all of it, moved range included (found by tests/test_differential.py: a
            # locked 1-page r-- mapping moved with MREMAP_DONTUNMAP shows as one unlocked VMA)
            start, old_pages = src.start, src.pages
            mm.try_merge(new)
            src = mm.vma_at(start)
            if src.flags & VM_LOCKED:     # locked_vm keeps them; no VM_LOCKED VMA holds them now
                merged = src.start <= new_addr < src.end
                mm.locked_vm_stale += old_pages + (new_len >> PAGE_SHIFT if merged else 0)
            src.flags &= ~(VM_LOCKED | VM_LOCKONFAULT)
            if k == src.pages:
                src.anon_vma = None
                src.anon = None
        else:
            if src.flags & VM_LOCKED:
                mm.locked_vm -= src.pages
            mm.remove(src)
            if src.file is not None and src.file.segment is not None:
                self.ipc.closed(src.file.segment)
        if new_locked:
            mm.locked_vm += new_len >> PAGE_SHIFT
        if not dontunmap:               # (with DONTUNMAP the merge came first, above)
            mm.try_merge(new)
        minor = major = 0
        if new.flags & VM_LOCKED and new_len > old_len:
            # do_mremap(): mm_populate() of the grown part once the lock is dropped
            minor, major = self.mem.populate(mm, new_addr + old_len, new_addr + new_len)
        return self._faults(minor, major)

    @staticmethod
    def _move_huge_pmds(src: Vma, i0: int, k: int, new: Vma) -> None:
        """mm/mremap.c move_page_tables(): a PMD-mapped block (a THP or the huge zero page)
        whose extent is a whole 2 MiB at both the old and the new address moves as one PMD
        (move_pgt_entry(HPAGE_PMD) -> move_huge_pmd); any other is split first
        (split_huge_pmd) and its PTEs move. Pages [i0, i0 + k) of src go to page 0 of new.
        Measured: thp-mremap-aligned.toml (AnonHugePages stays), thp-mremap-unaligned.toml."""
        for h, kind in list(src.huge.items()):
            if h + 512 <= i0 or i0 + k <= h:
                continue
            del src.huge[h]
            if i0 <= h and h + 512 <= i0 + k and not (new.start + ((h - i0) << PAGE_SHIFT)) & (PMD_SIZE - 1):
                new.huge[h - i0] = kind
