"""struct mm_struct: the address space of one process, its VMAs, where new mappings go
(get_unmapped_area) and how VMAs split and merge (mm/vma.c).

Placement follows mm/mmap.c and mm/vma.c:
- `unmapped_area_topdown()`: the highest gap below mmap_base that fits (the default layout);
- `unmapped_area()`: the lowest gap at or above mmap_base (legacy layout, ADDR_COMPAT_LAYOUT);
- `generic_get_unmapped_area_topdown()`: a free, page-aligned hint is honoured; an occupied one
  falls back to the search; hints are first raised to mmap_min_addr (round_hint_to_min);
- `__get_unmapped_area()` / `__thp_get_unmapped_area()`: anonymous mappings whose length is a
  multiple of 2 MiB, and file mappings of a filesystem that supports THP (ext4) of at least
  2 MiB, are aligned to 2 MiB.
Merging follows `is_mergeable_vma()`, `is_mergeable_anon_vma()`, `can_vma_merge_before/after()`
and `vma_merge_new_range()` / `vma_merge_existing_range()`.
"""
from __future__ import annotations

import bisect

from model.flags import (PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, VM_DONTEXPAND, VM_SOFTDIRTY, VM_GROWSDOWN,
                         VM_MAYBE_GUARD,
                         VM_LOCKED, VM_LOCKONFAULT, VM_SHARED, VM_STACK_FLAGS, VM_WRITE)
from model.pages import page_align
from model.vma import Vma

TASK_SIZE = (1 << 47) - PAGE_SIZE     # x86-64, 4-level page tables: TASK_SIZE_MAX
STACK_GUARD_GAP = 256 << PAGE_SHIFT    # mm/mmap.c stack_guard_gap (256 pages)


def mmap_base_formula(stack_rlimit: int, rnd: int = 0, stack_rnd: int = 0) -> int:
    """arch/x86/mm/mmap.c mmap_base(): TASK_SIZE - gap - rnd, with gap = the stack rlimit plus
    pad = stack_maxrandom_size() (stack_rnd: 0 without ASLR, at most 16 GiB - 4 KiB with it)
    + the stack guard gap, clamped to [128 MiB, 5/6 of TASK_SIZE]. The pad is added before
    the clamp ("if (gap + pad > gap)": not when the sum wraps, as RLIM_INFINITY's would)."""
    gap_min, gap_max = 128 << 20, TASK_SIZE // 6 * 5
    gap = stack_rlimit
    if gap + stack_rnd + STACK_GUARD_GAP < 1 << 64:
        gap += stack_rnd + STACK_GUARD_GAP
    gap = min(max(gap, gap_min), gap_max)
    return page_align(TASK_SIZE - gap - rnd)


def thp_pad_ok(off: int, length: int) -> bool:
    """mm/huge_memory.c __thp_get_unmapped_area(): whether it pads the request at all, with its
    C arithmetic: off (loff_t) = pgoff << PAGE_SHIFT, off_align = round_up(off, PMD_SIZE);
    no when off_end <= off_align (signed) or (off_end - off_align) < PMD_SIZE (compared as
    unsigned long), or when off + len_pad wraps. So a file range must hold a whole aligned
    2 MiB block - except at the very top of the loff_t range, where round_up() wraps to
    LLONG_MIN and the unsigned compare lets even a one-page mapping through (measured: a page
    at offset 2^63 - 8 KiB is placed so that address and offset agree modulo 2 MiB)."""
    m = (1 << 64) - 1

    def s64(x: int) -> int:
        x &= m
        return x - (1 << 64) if x >> 63 else x
    off = s64(off)
    off_end = s64(off + length)
    off_align = s64(((off - 1) | (PMD_SIZE - 1)) + 1)
    if off_end <= off_align or (off_end - off_align) & m < PMD_SIZE:
        return False
    return (off + length + PMD_SIZE) & m >= off & m


def legacy_base(rnd: int = 0) -> int:
    """arch/x86/mm/mmap.c mmap_legacy_base(): TASK_UNMAPPED_BASE = PAGE_ALIGN(TASK_SIZE / 3)."""
    return page_align(TASK_SIZE // 3) + rnd


class AddressSpace:
    """The VMA tree of one mm (a sorted list here: the maple tree's order, not its shape)."""

    def __init__(self, vmas: list[Vma], topdown: bool, mmap_base: int, mmap_min_addr: int,
                 max_map_count: int):
        self.vmas: list[Vma] = sorted(vmas, key=lambda v: v.start)
        self.topdown = topdown
        self.mmap_base = mmap_base
        self.mmap_min_addr = mmap_min_addr
        self.max_map_count = max_map_count
        # mm/mmap.c stack_guard_gap: 256 pages unless the kernel command line says
        # "stack_guard_gap=" (the profile's stack_guard_gap_pages; Kernel sets it)
        self.stack_guard_gap = STACK_GUARD_GAP
        # is_mergeable_anon_vma(): may a faulted range join an unfaulted neighbour? From 6.16
        # on (Kernel sets it from the release; see anon_mergeable)
        self.faulted_into_unfaulted = True
        # __thp_get_unmapped_area(): an aligned padded area gives its top PMD (6.8 on)
        self.thp_pad_topdown = True
        self.locked_vm = 0   # pages in VM_LOCKED VMAs (mm->locked_vm)
        # mm->def_flags: VM_LOCKED (| VM_LOCKONFAULT) after mlockall(MCL_FUTURE); a new mm
        # (fork: mm_init keeps only VM_INIT_DEF_MASK, never the lock bits) starts without
        self.def_flags = 0
        # of those, pages no VMA holds locked any more: mremap MREMAP_DONTUNMAP clears VM_LOCKED
        # on the old VMA and leaves locked_vm as it was (mm/mremap.c dontunmap_complete)
        self.locked_vm_stale = 0
        self.ptables: set[int] = set()   # 2 MiB blocks (addr >> 21) that have a PTE table
        # VMAs inserted or cut by the operation under way (until its try_merge or isolate ends):
        # the kernel never had them whole, so a merge may delete them (see try_merge)
        self._fresh: list[Vma] = []

    def same_kernel_as(self, other: "AddressSpace") -> None:
        """The settings an mm takes from its kernel (the command line, the release), for a
        new mm of the same kernel (fork)."""
        self.stack_guard_gap = other.stack_guard_gap
        self.faulted_into_unfaulted = other.faulted_into_unfaulted
        self.thp_pad_topdown = other.thp_pad_topdown

    # ----- lookup -----------------------------------------------------------------------------
    @property
    def map_count(self) -> int:
        """mm->map_count: VMAs (the [vsyscall] gate area is not one)."""
        return sum(1 for v in self.vmas if v.start < TASK_SIZE)

    @property
    def total_vm(self) -> int:
        return sum(v.pages for v in self.vmas if v.start < TASK_SIZE)

    @property
    def data_vm(self) -> int:
        """mm->data_vm: private writable pages that are not stack (is_data_mapping)."""
        return sum(v.pages for v in self.vmas if v.start < TASK_SIZE and v.opaque is None
                   and v.flags & (VM_WRITE | VM_SHARED | VM_STACK_FLAGS) == VM_WRITE)

    def _starts(self) -> list[int]:
        return [v.start for v in self.vmas]

    def find_vma(self, addr: int) -> Vma | None:
        """find_vma(): the first VMA with end > addr (it may start above addr)."""
        i = bisect.bisect_right(self._starts(), addr) - 1
        if i >= 0 and self.vmas[i].end > addr:
            return self.vmas[i]
        return self.vmas[i + 1] if i + 1 < len(self.vmas) else None

    def vma_at(self, addr: int) -> Vma | None:
        """vma_lookup(): the VMA containing addr."""
        v = self.find_vma(addr)
        return v if v is not None and v.start <= addr else None

    def overlapping(self, start: int, end: int) -> list[Vma]:
        return [v for v in self.vmas if v.start < end and start < v.end]

    def neighbours(self, vma: Vma) -> tuple[Vma | None, Vma | None]:
        i = self.vmas.index(vma)
        return (self.vmas[i - 1] if i > 0 else None,
                self.vmas[i + 1] if i + 1 < len(self.vmas) else None)

    def insert(self, vma: Vma) -> None:
        bisect.insort(self.vmas, vma, key=lambda v: v.start)
        self._fresh.append(vma)

    def remove(self, vma: Vma) -> None:
        self.vmas.remove(vma)

    def fully_mapped(self, start: int, end: int) -> bool:
        at = start
        for v in sorted(self.overlapping(start, end), key=lambda v: v.start):
            if v.start > at:
                return False
            at = v.end
        return at >= end

    # ----- placement (mm/mmap.c, mm/vma.c) ----------------------------------------------------
    def _gaps(self):
        """Free gaps [lo, hi) between VMAs, honouring the stack guard gap of VM_GROWSDOWN VMAs
        (vm_start_gap())."""
        prev_end = 0
        for v in self.vmas:
            start = v.start
            if v.opaque is not None and v.opaque.get("path") == "[stack]" or v.flags & VM_GROWSDOWN:
                start = max(0, start - self.stack_guard_gap)
            if start > prev_end:
                yield prev_end, start
            prev_end = max(prev_end, v.end)
        if prev_end < TASK_SIZE:
            yield prev_end, TASK_SIZE

    def unmapped_area_topdown(self, length: int, low: int, high: int, align_mask: int = 0) -> int | None:
        """mm/vma.c unmapped_area_topdown(): the highest gap in [low, high) that fits, the
        mapping placed at its top (aligned down when align_mask is set)."""
        need = length + align_mask
        best = None
        for lo, hi in self._gaps():
            lo, hi = max(lo, low), min(hi, high)
            if hi - lo >= need:
                best = (lo, hi)
        if best is None:
            return None
        addr = best[1] - length
        return addr - (addr & align_mask)

    def unmapped_area(self, length: int, low: int, high: int, align_mask: int = 0) -> int | None:
        """mm/vma.c unmapped_area(): the lowest gap in [low, high) that fits."""
        need = length + align_mask
        for lo, hi in self._gaps():
            lo, hi = max(lo, low), min(hi, high)
            if hi - lo >= need:
                return (lo + align_mask) & ~align_mask
        return None

    def search(self, length: int, align_mask: int = 0) -> int | None:
        if self.topdown:
            addr = self.unmapped_area_topdown(length, max(PAGE_SIZE, self.mmap_min_addr),
                                              self.mmap_base, align_mask)
            if addr is not None:
                return addr
            # generic_get_unmapped_area_topdown(): "A failed mmap() very likely causes
            # application failure, so fall back to the bottom-up function here."
        return self.unmapped_area(length, self.mmap_base if not self.topdown else legacy_base(),
                                  TASK_SIZE, align_mask)

    def get_unmapped_area(self, length: int, hint: int, fixed: bool, thp_align: bool = False,
                          pgoff: int = 0, map32: bool = False) -> int | str:
        """mm/mmap.c __get_unmapped_area(): an address, or an errno name. map32: MAP_32BIT
        (arch/x86/kernel/sys_x86_64.c, see _area_32bit)."""
        if length > TASK_SIZE - self.mmap_min_addr:
            return "ENOMEM"
        if fixed:
            if hint & (PAGE_SIZE - 1):
                return "EINVAL"
            if hint + length > TASK_SIZE:
                return "ENOMEM"
            return hint
        if hint:
            # mm/mmap.c do_mmap() -> round_hint_to_min() masks the hint down to its page (hint
            # &= PAGE_MASK) before generic_get_unmapped_area_topdown()'s PAGE_ALIGN: an
            # unaligned hint rounds down (checked live: 0x20000001 -> 0x20000000)
            hint &= ~(PAGE_SIZE - 1)
        area = self._area_32bit if map32 else self._area
        if thp_align and thp_pad_ok(pgoff << PAGE_SHIFT, length):
            # mm/huge_memory.c __thp_get_unmapped_area(): ask the arch function (hint, window
            # and all) for len + PMD_SIZE; a hint it takes is kept, otherwise move up to the
            # next boundary that keeps (addr - off) aligned; on failure, the plain request
            ret = area(length + PMD_SIZE, hint)
            if ret is not None:
                if hint and ret == hint:
                    return hint
                off_sub = ((pgoff << PAGE_SHIFT) - ret) & (PMD_SIZE - 1)
                if self.topdown and not off_sub and self.thp_pad_topdown:
                    # MMF_TOPDOWN, whatever the window (from 6.8: model.versions)
                    return ret + PMD_SIZE
                return ret + off_sub
        addr = area(length, hint)
        return "ENOMEM" if addr is None else addr

    def _area(self, length: int, hint: int) -> int | None:
        """arch/x86/kernel/sys_x86_64.c arch_get_unmapped_area_topdown() (or, in the legacy
        layout, arch_get_unmapped_area()): a free hint is taken, else search()."""
        if hint and (TASK_SIZE - length >= hint and hint >= self.mmap_min_addr
                     and not self.overlapping(hint, hint + length)
                     and not self._in_stack_gap(hint + length)):
            return hint
        return self.search(length)

    MAP32_BEGIN, MAP32_END = 0x40000000, 0x80000000

    def _area_32bit(self, length: int, hint: int) -> int | None:
        """arch/x86/kernel/sys_x86_64.c: with MAP_32BIT, arch_get_unmapped_area_topdown() jumps
        to "bottomup" before looking at the hint, so both layouts end in arch_get_unmapped_area()
        with find_start_end()'s window [1 GiB, 2 GiB): a hint is taken only when it is free and
        ends below 2 GiB ("end - len >= addr", no lower bound), otherwise the lowest gap in the
        window (vm_unmapped_area, no top-down fallback: ENOMEM when none fits; the window is
        1 GiB). Under PF_RANDOMIZE find_start_end() moves the window's start up by a random
        0..32 MiB (randomize_page) on every call, which no model can know: experiments that use
        MAP_32BIT set aslr = false (measured: without ASLR the first such mapping is at
        0x40000000)."""
        begin, end = self.MAP32_BEGIN, self.MAP32_END
        if length > end:
            return None
        if hint:
            hint = page_align(hint)
            if end - length >= hint and not self.overlapping(hint, hint + length) \
                    and not self._in_stack_gap(hint + length):
                return hint
        return self.unmapped_area(length, begin, end)

    def _in_stack_gap(self, end: int) -> bool:
        for v in self.vmas:
            if (v.flags & VM_GROWSDOWN or v.opaque is not None and v.opaque.get("path") == "[stack]") \
                    and v.start - self.stack_guard_gap < end <= v.start:
                return True
        return False

    # ----- split and merge (mm/vma.c) ---------------------------------------------------------
    def split(self, vma: Vma, addr: int) -> Vma:
        """__split_vma(): returns the upper part, now in the tree."""
        if any(a < (addr - vma.start) >> PAGE_SHIFT < a + 512 for a in vma.huge):
            self.ptables.add(addr >> 21)     # split_huge_pmd leaves a PTE table behind
        new = vma.split_at(addr)
        self.insert(new)
        self._fresh.append(vma)
        if new.file is not None and new.file.segment is not None:
            new.file.segment.nattch += 1     # __split_vma -> vm_ops->open: ipc/shm.c shm_open
        return new

    def isolate(self, start: int, end: int) -> list[Vma]:
        """Split VMAs so that [start, end) is covered by whole VMAs; returns them in order."""
        for v in list(self.overlapping(start, end)):
            if v.start < start < v.end:
                self.split(v, start)
        for v in list(self.overlapping(start, end)):
            if v.start < end < v.end:
                self.split(v, end)
        self._fresh.clear()
        return sorted(self.overlapping(start, end), key=lambda v: v.start)

    def splits_needed(self, start: int, end: int) -> int:
        return sum(1 for v in self.overlapping(start, end) for a in (start, end) if v.start < a < v.end)

    @staticmethod
    def mergeable(a: Vma, b: Vma, into_b: bool = False, faulted_into_unfaulted: bool = True) -> bool:
        """Can a and b (b starting at a.end) become one VMA? is_mergeable_vma(),
        is_mergeable_anon_vma() and the pgoff continuity of can_vma_merge_after(). The VMA
        that stays is a, or b when `into_b` (can_vma_merge_before: a range joining its next)."""
        if a.end != b.start or a.opaque is not None or b.opaque is not None:
            return False
        # is_mergeable_vma(): flags equal but for VM_SOFTDIRTY (VM_IGNORE_MERGE since 6.18);
        # VM_SPECIAL never merges
        # VM_MAYBE_GUARD is in VM_IGNORE_MERGE too (sticky: absorb keeps it)
        if (a.flags ^ b.flags) & ~(VM_SOFTDIRTY | VM_MAYBE_GUARD) or a.flags & VM_DONTEXPAND:
            return False
        if a.file is not b.file:                            # the struct file, not the inode
            return False
        if a.pgoff + a.pages != b.pgoff:
            return False
        tgt, src = (b, a) if into_b else (a, b)
        return AddressSpace.anon_mergeable(src.anon_vma, tgt.anon_vma, faulted_into_unfaulted)

    @staticmethod
    def anon_mergeable(src, tgt, faulted_into_unfaulted: bool = True) -> bool:
        """mm/vma.c is_mergeable_anon_vma(): may the range whose anon_vma is `src` join the
        existing VMA `tgt` (the one that stays)? Both set: only the same anon_vma. One set: not
        when the VMA that has it was forked (its anon_vma_chain is not singular: the parent's
        anon_vma root lock). Before 6.16 the check was list_is_singular(&tgt->anon_vma_chain)
        whichever side had the anon_vma, so a faulted range never joined an unfaulted target
        (its chain is empty); 6.16 ("mm/vma: fix incorrectly disallowed anonymous VMA
        merges", Lorenzo Stoakes) lets it, dup_anon_vma() then giving the target src's
        anon_vma. Measured: 6.1 and 6.12 keep mmap-prot-write-only's mprotected VMA apart from
        its unfaulted neighbour, 6.18 merges them."""
        if src is not None and tgt is not None:
            return src is tgt
        if src is None and tgt is None:
            return True
        if src is not None and not faulted_into_unfaulted:
            return False
        return not (src or tgt).forked

    @staticmethod
    def has_close(vma: Vma) -> bool:
        """vma->vm_ops->close: ipc/shm.c shm_vm_ops has shm_close; the other VMAs the model
        builds (anonymous, ext4 and shmem files) have none."""
        return vma.file is not None and vma.file.kind == "shm"

    def _drop(self, vma: Vma) -> None:
        """A VMA the merge deletes: no ->close is called (vma_complete), so a SysV attach's
        count follows the VMAs only because the kernel never deletes one with ->close."""
        self.remove(vma)
        if vma.file is not None and vma.file.segment is not None:
            vma.file.segment.nattch -= 1

    def try_merge(self, vma: Vma) -> Vma:
        """Merge vma with its neighbours where the kernel would (vma_merge_existing_range(),
        vma_merge_new_range()); returns the VMA that now holds vma's range.

        can_merge_remove_vma(): a merge never deletes a VMA that has vm_ops->close. When the
        changed range is a whole existing VMA (vma_merge_existing_range: merge_will_delete_vma)
        that VMA would go, so nothing merges; a range cut out of a VMA by this operation's
        split (the kernel shrinks the VMA instead) or a new VMA may merge. When both sides
        merge, next goes too: with ->close only prev merges."""
        prev, nxt = self.neighbours(vma)
        whole = self.has_close(vma) and not any(v is vma for v in self._fresh)
        self._fresh.clear()
        if whole:
            return vma
        old = self.faulted_into_unfaulted
        if prev is not None and self.mergeable(prev, vma, False, old):
            if nxt is not None and self.mergeable(vma, nxt, True, old) and not (
                    prev.anon_vma and nxt.anon_vma and prev.anon_vma is not nxt.anon_vma) \
                    and not self.has_close(nxt):
                prev.absorb(vma)
                self._drop(vma)
                prev.absorb(nxt)
                self._drop(nxt)
                return prev
            prev.absorb(vma)
            self._drop(vma)
            return prev
        if nxt is not None and self.mergeable(vma, nxt, True, old):
            vma.absorb(nxt)
            self._drop(nxt)
        return vma

    def locked_pages_in(self, start: int, end: int) -> int:
        """count_mm_mlocked_page_nr()"""
        return sum((min(end, v.end) - max(start, v.start)) >> PAGE_SHIFT
                   for v in self.overlapping(start, end) if v.flags & VM_LOCKED)

    def recount_locked(self) -> int:
        return sum(v.pages for v in self.vmas if v.opaque is None and v.flags & VM_LOCKED
                   and not v.flags & VM_LOCKONFAULT) + sum(
            v.pages for v in self.vmas if v.opaque is None and v.flags & VM_LOCKONFAULT)
