"""The harness's padding, and how it yields: one definition for the worker, the manager, the
model and the record's normal form.

The worker (shmkit.worker pad_address_space) fills the holes among the interpreter's
libraries, and the free side of that cluster down to a 2 MiB boundary (`edge`; up to it in the
legacy layout) with PROT_NONE private mappings of an empty memfd named PAD_NAME, so that
experiment mappings land at the same offsets from `edge` under ASLR (fault-around windows and
THP blocks depend on the address). The boundary is at least PAD_ROOM away from the cluster, so
that the address space just beyond the experiment's first mapping is always pad, never a
library, whatever ASLR picked.

A pad takes address space an experiment may ask for: MAP_FIXED just above a mapping would land
in it, MAP_FIXED_NOREPLACE and shmat at that address would fail (EEXIST, EINVAL) and a hint
would be moved. So a step that asks for an address yields first: before the step the harness
unmaps exactly the parts of its pads inside the range the call looks at (`target_range`,
`pieces_in_the_way`), and the kernel then behaves as if that range had never been padded. The
live side does it (the manager computes the pieces from the worker's maps and the worker
munmaps them, shmkit.manager / shmkit.worker), the model does the same to its VMA list
(`yield_for`, called by model.kernel.Kernel.step), and the step's record lists the pieces
(`yielded`), so the normal form (shmkit.record) knows that those addresses are the
experiment's from then on and the perturbation check (shmkit.manager) expects the rest of each
pad to stay as it is.

The range a call looks at (checked against the kernel's order of checks):
- mmap with an address: [addr, addr + PAGE_ALIGN(len)) for MAP_FIXED and MAP_FIXED_NOREPLACE
  (mm/mmap.c do_mmap -> __get_unmapped_area returns addr; mmap_region unmaps, or
  FIXED_NOREPLACE finds the VMA); a hint is rounded down to its page first (round_hint_to_min)
  and arch_get_unmapped_area_topdown() takes it when [hint, hint + len) is free. MAP_HUGETLB
  rounds len up to the huge page and refuses an unaligned MAP_FIXED address before looking
  (ksys_mmap_pgoff, hugetlb_get_unmapped_area: nothing to yield then);
- shmat with an address: [addr, addr + PAGE_ALIGN(segment size)) after SHM_RND rounds it down
  to SHMLBA (one page on x86-64); unaligned without SHM_RND is EINVAL first (ipc/shm.c
  do_shmat; its find_vma_intersection() refuses a range that holds any VMA, pad included);
- mremap with MREMAP_FIXED: [new_addr, new_addr + PAGE_ALIGN(new_len)) (mm/mremap.c
  mremap_to unmaps it); with MREMAP_DONTUNMAP alone new_addr is a hint for that range
  (vrm_set_new_addr -> get_unmapped_area). check_mremap_params() refuses an unaligned new_addr
  or a missing MREMAP_MAYMOVE first.
A range that ends above TASK_SIZE is refused (or, as a hint, ignored) before the kernel looks
at any VMA: nothing yields. Not yielded either: mremap growing a mapping in place
(vma_expandable) names no address; the pad above the experiment's highest mapping stays a
neighbour there, as the next library would be without padding. An anonymous hint of a 2 MiB
multiple, or a file hint on a filesystem with THP, is checked by __thp_get_unmapped_area() for
len + 2 MiB; only [hint, hint + len) yields.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

from model.flags import MAP, MREMAP, PAGE_SIZE, PMD_SIZE, SHM_RND
from model.mm import TASK_SIZE, page_align
from model.vma import Vma

PAD_NAME = "shmkit-pad"
PAD_ALIGN = PMD_SIZE       # the boundary experiment addresses are relative to
PAD_ROOM = PMD_SIZE        # at least this much pad between the boundary and the libraries
SHMLBA = PAGE_SIZE         # arch/x86/include/asm/shmparam.h
HUGE_PAGE = PMD_SIZE       # the default hstate on x86-64 (hugepagesz=2M)

Range = tuple[int, int]


def is_pad(path: str) -> bool:
    """A pad's maps path. memfd_create() unlinks its file at birth, so maps prints
    "/memfd:NAME (deleted)" (mm/memfd.c, fs/d_path.c); an experiment's memfd names carry the
    run's prefix and cannot be this one."""
    return path == f"/memfd:{PAD_NAME} (deleted)"


def subtract(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """The parts of `ranges` outside every hole, in order."""
    holes = list(holes)
    out: list[Range] = []
    for s, e in ranges:
        pieces = [(s, e)]
        for a, b in holes:
            pieces = [p for lo, hi in pieces for p in ((lo, min(hi, a)), (max(lo, b), hi)) if p[0] < p[1]]
        out += pieces
    return out


def target_range(op: str, call: Mapping) -> Range | None:
    """The address range a step asks the kernel for (see the module docstring), or None.

    call: the step's system-call arguments (model.resolve): absolute addresses, numeric flags;
    shmat's `size` is the segment's size (None for a raw shmid: nothing yields)."""
    if op == "mmap":
        addr, flags, length = call["addr"], call["flags"], call["length"] or 0
        fixed = bool(flags & (MAP["FIXED"] | MAP["FIXED_NOREPLACE"]))
        if flags & MAP["HUGETLB"] and flags & MAP["ANONYMOUS"]:
            if fixed and addr % HUGE_PAGE:
                return None
            length = -(-length // HUGE_PAGE) * HUGE_PAGE
    elif op == "shmat":
        addr, length = call["addr"], call.get("size") or 0
        fixed = True
        if addr % SHMLBA:
            if not call["flags"] & SHM_RND:
                return None
            addr -= addr % SHMLBA
    elif op == "mremap":
        addr, flags = call["new_addr"], call["flags"]
        if not flags & MREMAP["MAYMOVE"] or not flags & (MREMAP["FIXED"] | MREMAP["DONTUNMAP"]):
            return None
        fixed = True           # an unaligned new_addr is EINVAL, hint or not
        length = call["new_length"] or 0
    else:
        return None
    if not addr:
        return None
    if fixed and addr % PAGE_SIZE:
        return None
    start = addr - addr % PAGE_SIZE
    end = start + page_align(length)
    if length <= 0 or end > TASK_SIZE:
        return None
    return start, end


def pieces_in_the_way(vmas: Iterable[tuple[int, int, str]], target: Range | None) -> list[Range]:
    """The parts of pad VMAs ((start, end, path) of every VMA) inside the target range."""
    if target is None:
        return []
    lo, hi = target
    return [(max(s, lo), min(e, hi)) for s, e, path in vmas if s < hi and lo < e and is_pad(path)]


def what_is_left(start: int, end: int, offset: int, pieces: Iterable[Range]) -> list[tuple[int, int, int]]:
    """(start, end, offset) of what stays of the VMA [start, end) at file offset `offset` once
    the pieces are unmapped (mm/vma.c do_vmi_align_munmap -> __split_vma: the part above a cut
    keeps vm_pgoff continuous, so its offset grows by its distance from the old start)."""
    return [(s, e, offset + (s - start)) for s, e in subtract([(start, end)], pieces)]


def remove(mm, pieces: Iterable[Range]) -> None:
    """munmap of each piece from the model's address space (model.mm.AddressSpace): the pad
    VMA holding it is cut around it."""
    for a, b in pieces:
        vma = mm.vma_at(a)
        if vma is None or vma.opaque is None or not is_pad(vma.opaque["path"]) or vma.end < b:
            raise ValueError(f"{a:#x}-{b:#x} is not inside one pad VMA")
        mm.remove(vma)
        for s, e, off in what_is_left(vma.start, vma.end, vma.opaque["offset"], [(a, b)]):
            bisect.insort(mm.vmas, Vma(s, e, 0, opaque=dict(vma.opaque, offset=off)), key=lambda v: v.start)


def yield_for(kernel, proc, op: str, call: Mapping) -> list[Range]:
    """The model's side: the pads of proc (a model.process.Process) in the way of this step
    go, exactly as the live harness unmaps them before it runs the step."""
    target = target_range(op, call)
    pieces = pieces_in_the_way(((v.start, v.end, v.opaque["path"]) for v in proc.mm.vmas
                                if v.opaque is not None), target)
    remove(proc.mm, pieces)
    return pieces
