"""Where the model puts new mappings: mm/mmap.c (do_mmap, __get_unmapped_area,
generic_get_unmapped_area_topdown, round_hint_to_min), mm/vma.c (unmapped_area,
unmapped_area_topdown, __mmap_region's MAP_FIXED unmapping), mm/huge_memory.c
(__thp_get_unmapped_area) and arch/x86/mm/mmap.c (mmap_base, the legacy layout).

Expected values that are not plain arithmetic from the kernel source were checked on the live
6.18 kernel: hint rounding, mmap_base without ASLR (setarch -R) at stack rlimits of 8 MiB,
64 MiB, 1 GiB and unlimited, the legacy base (setarch -L -R), the stack guard gap for hints
and MAP_FIXED, and which anonymous mappings get 2 MiB alignment."""
from __future__ import annotations

import pytest

from model.resolve import Direct, run_step
from model.flags import PAGE_SIZE, PMD_SIZE
from model.kernel import Kernel
from model.mm import STACK_GUARD_GAP, TASK_SIZE, legacy_base, mmap_base_formula

PAGE = PAGE_SIZE
MiB = 1 << 20
EDGE = 0x7F0000000000                      # the library below which mappings go (mmap_base)
STACK = (0x7FFFFFFDE000, 0x7FFFFFFFF000)
ANON = ("PRIVATE", "ANONYMOUS")


def _vma(start, end, perms, path):
    return {"start": start, "end": end, "perms": perms, "offset": 0, "dev": "00:00", "inode": 0,
            "path": path, "smaps_kb": {}}


def default_vmas():
    return [_vma(0x555555554000, 0x555555556000, "r-xp", "/bin/x"),
            _vma(EDGE, EDGE + PAGE, "r--p", "/lib/ld.so"),
            _vma(*STACK, "rw-p", "[stack]")]


def make_kernel(vmas=None, layout="topdown", min_addr=4096, release=None) -> Kernel:
    snap = {"processes": {"main": {"pid": 1000, "vmas": vmas if vmas is not None else default_vmas()}},
            "setup": {"layout": layout}, "privileged": True}
    prof = {"sysctl": {"max_map_count": 1 << 20, "mmap_min_addr": min_addr, "overcommit_memory": 1}}
    if release is not None:
        prof["release_tuple"] = list(release)
    return Kernel(prof, snap)


def maps(k: Kernel) -> str:
    return "\n".join(f"  {v.start:#014x}-{v.end:#014x} {v.perms()} "
                     f"{v.opaque['path'] if v.opaque else '(experiment)'}"
                     for v in k.procs["main"].mm.vmas)


_n = [0]


def mmap(k: Kernel, length: int, *, prot="rw", flags=ANON, addr=None, expect="ok", handle=None) -> int | None:
    """One mmap step; returns the address (None when it failed as expected)."""
    _n[0] += 1
    args = {"as": handle or f"r{_n[0]}", "length": length, "prot": prot, "flags": tuple(flags)}
    if addr is not None:
        args["addr"] = ("abs", addr)
    out = run_step(k, {"index": _n[0], "do": "mmap", "in": "main", "args": args}, Direct())
    assert out["result"] == expect, f"mmap {args}: {out['result']}, expected {expect}\n{maps(k)}"
    assert k.check() == [], k.check()
    return out["value"]["addr"] if expect == "ok" else None


def step(k: Kernel, do: str, expect="ok", **args):
    _n[0] += 1
    out = run_step(k, {"index": _n[0], "do": do, "in": "main", "args": args}, Direct())
    assert out["result"] == expect, f"{do} {args}: {out['result']}, expected {expect}\n{maps(k)}"
    assert k.check() == [], k.check()
    return out


# ----- top-down: unmapped_area_topdown below mmap_base ---------------------------------------

def test_mmap_base_is_the_top_of_the_highest_mapping_below_the_stack():
    k = make_kernel()
    assert k.procs["main"].mm.topdown
    assert k.procs["main"].mm.mmap_base == EDGE + PAGE


def test_topdown_takes_the_top_of_the_highest_gap_below_mmap_base():
    """unmapped_area_topdown(): the first mapping ends where the gap below mmap_base ends (at
    the library), each next one directly below the previous."""
    k = make_kernel()
    a = mmap(k, 4 * PAGE)
    b = mmap(k, 2 * PAGE)
    assert a == EDGE - 4 * PAGE, maps(k)
    assert b == a - 2 * PAGE, maps(k)


def test_topdown_reuses_the_highest_hole_that_fits():
    """A hole above the lowest mapping is the highest gap: a request that fits goes to its top;
    one that does not fit skips it and goes below everything."""
    k = make_kernel()
    a = mmap(k, 4 * PAGE, handle="a")
    b = mmap(k, 4 * PAGE, handle="b")
    c = mmap(k, 4 * PAGE, handle="c")
    step(k, "munmap", region="b")
    fits = mmap(k, 3 * PAGE)
    assert fits == b + PAGE, f"top of the 4-page hole\n{maps(k)}"
    too_big = mmap(k, 2 * PAGE)
    assert too_big == c - 2 * PAGE, f"the 1 page left is too small\n{maps(k)}"
    assert a == EDGE - 4 * PAGE


# ----- hints (generic_get_unmapped_area_topdown, round_hint_to_min) ---------------------------

def test_free_hint_is_honoured():
    k = make_kernel()
    hint = 0x10000000000
    assert mmap(k, 4 * PAGE, addr=hint) == hint, maps(k)


def test_unaligned_hint_is_rounded_down():
    """do_mmap -> round_hint_to_min(): hint &= PAGE_MASK (checked live: 0x20000001 ->
    0x20000000)."""
    k = make_kernel()
    assert mmap(k, PAGE, addr=0x20000001) == 0x20000000, maps(k)


def test_occupied_hint_falls_back_to_the_search():
    """A hint whose range overlaps a VMA (here its last page) is ignored: the top-down search
    decides."""
    k = make_kernel()
    taken = mmap(k, 4 * PAGE, addr=0x10000000000)
    assert mmap(k, 2 * PAGE, addr=taken - PAGE) == EDGE - 2 * PAGE, maps(k)
    assert mmap(k, 2 * PAGE, addr=taken + 2 * PAGE) == EDGE - 4 * PAGE, maps(k)


def test_hint_below_mmap_min_addr_is_raised():
    """round_hint_to_min(): a page-aligned, non-zero hint below mmap_min_addr becomes
    PAGE_ALIGN(mmap_min_addr) (checked live with the host's effective 64 KiB: 0x1000 ->
    0x10000)."""
    k = make_kernel(min_addr=0x10000)
    assert mmap(k, PAGE, addr=0x2000) == 0x10000, maps(k)
    # ... and an occupied raised hint falls back to the search
    assert mmap(k, PAGE, addr=0x3000) == EDGE - PAGE, maps(k)


def test_hint_below_one_page_is_no_hint():
    k = make_kernel(min_addr=0x10000)
    assert mmap(k, PAGE, addr=0x100) == EDGE - PAGE, maps(k)


# ----- MAP_FIXED, MAP_FIXED_NOREPLACE --------------------------------------------------------

def test_map_fixed_unmaps_what_it_covers_and_splits():
    """__mmap_region(): MAP_FIXED unmaps the range first (vms_gather_munmap_vmas splits the VMAs
    at its edges); the old pages there are gone, the rest keep theirs."""
    k = make_kernel()
    base = 0x10000000000
    mmap(k, 8 * PAGE, addr=base, handle="old")
    step(k, "touch", region="old", pages=None, access="write", value=7)
    mmap(k, 2 * PAGE, prot="r", flags=ANON + ("FIXED",), addr=base + 2 * PAGE)
    mm = k.procs["main"].mm
    spans = [(v.start - base, v.end - base, v.perms()) for v in mm.vmas if v.opaque is None]
    assert spans == [(0, 2 * PAGE, "rw-p"), (2 * PAGE, 4 * PAGE, "r--p"), (4 * PAGE, 8 * PAGE, "rw-p")], maps(k)
    new = mm.vma_at(base + 2 * PAGE)
    assert not any(new.pte) and new.anon_vma is None, "the new mapping starts empty"
    assert all(mm.vma_at(base).pte) and all(mm.vma_at(base + 4 * PAGE).pte), "the rest keep their pages"
    assert mm.vma_at(base + 4 * PAGE).pgoff == (base >> 12) + 4


def test_map_fixed_over_several_vmas_and_a_gap():
    k = make_kernel()
    base = 0x10000000000
    mmap(k, 2 * PAGE, addr=base)
    mmap(k, 2 * PAGE, prot="r", addr=base + 3 * PAGE)
    mmap(k, 6 * PAGE, prot="rw", flags=("SHARED", "ANONYMOUS", "FIXED"), addr=base - PAGE)
    mm = k.procs["main"].mm
    vmas = [v for v in mm.vmas if v.opaque is None]
    assert [(v.start, v.end, v.perms()) for v in vmas] == [(base - PAGE, base + 5 * PAGE, "rw-s")], maps(k)


def test_map_fixed_noreplace_refuses_an_occupied_range():
    """MAP_FIXED_NOREPLACE: EEXIST when anything is mapped in the range, the address itself
    when it is free."""
    k = make_kernel()
    base = 0x10000000000
    mmap(k, 2 * PAGE, addr=base)
    mmap(k, 2 * PAGE, flags=ANON + ("FIXED_NOREPLACE",), addr=base + PAGE, expect={"errno": "EEXIST"})
    assert len([v for v in k.procs["main"].mm.vmas if v.opaque is None]) == 1
    assert mmap(k, 2 * PAGE, flags=ANON + ("FIXED_NOREPLACE",), addr=base + 4 * PAGE) == base + 4 * PAGE


def test_unaligned_map_fixed_is_einval():
    k = make_kernel()
    mmap(k, PAGE, flags=ANON + ("FIXED",), addr=0x10000000800, expect={"errno": "EINVAL"})
    mmap(k, PAGE, flags=ANON + ("FIXED_NOREPLACE",), addr=0x10000000800, expect={"errno": "EINVAL"})
    assert not [v for v in k.procs["main"].mm.vmas if v.opaque is None]


# ----- 2 MiB alignment (__get_unmapped_area -> thp_get_unmapped_area_vmflags) ---------------

def test_thp_alignment_of_an_anonymous_2mib_mapping():
    """A private anonymous mapping whose length is a multiple of 2 MiB and that has no hint is
    searched for len + 2 MiB and aligned (__thp_get_unmapped_area): when the search result is
    already aligned the top-down layout takes the slot one PMD higher, right under the
    library here."""
    k = make_kernel()
    a = mmap(k, 2 * MiB)
    assert a % PMD_SIZE == 0 and a == EDGE - 2 * MiB, maps(k)


@pytest.mark.parametrize("release, where", [((6, 1), EDGE - 18 * MiB), ((6, 8), EDGE - 16 * MiB),
                                            (None, EDGE - 16 * MiB)])
def test_thp_padding_of_a_file_mapping_by_release(release, where):
    """ext4's thp_get_unmapped_area pads a 16 MiB file mapping to 18 MiB. The padded area's
    bottom is aligned here (right under the library): before 6.8 the mapping starts there,
    from 6.8 ("thp_get_unmapped_area must honour topdown preference") one PMD higher, at the
    top of the padding. Measured: 6.1 (guest) 2 MiB lower than 6.12 and 6.18."""
    k = make_kernel(release=release)
    step(k, "file", name="/tmp/f", size=16 * MiB)
    step(k, "open", file="/tmp/f", **{"as": "fd"})
    _n[0] += 1
    out = run_step(k, {"index": _n[0], "do": "mmap", "in": "main",
                       "args": {"as": "m", "length": 16 * MiB, "prot": "r", "flags": ("SHARED",),
                                "fd": "fd"}}, Direct())
    assert out["result"] == "ok", out
    assert out["value"]["addr"] == where, maps(k)


def test_thp_alignment_leaves_a_gap_under_an_unaligned_top():
    """Under a one-page mapping the top of the gap is not aligned: the 4 MiB mapping goes to the
    aligned slot below, leaving a gap of 2 MiB - 4 KiB above it."""
    k = make_kernel()
    small = mmap(k, PAGE)
    big = mmap(k, 4 * MiB)
    assert big % PMD_SIZE == 0, maps(k)
    assert big == EDGE - 6 * MiB, maps(k)
    assert small - (big + 4 * MiB) == 2 * MiB - PAGE


@pytest.mark.parametrize("length,flags,addr", [
    (2 * MiB + PAGE, ANON, None),                          # length not a multiple of 2 MiB
    (2 * MiB, ("SHARED", "ANONYMOUS"), None),              # shmem: shmem_get_unmapped_area
    (2 * MiB, ANON, 0x10000001000),                        # a hint is honoured as it is
], ids=["not-multiple", "shared", "hint"])
def test_no_thp_alignment(length, flags, addr):
    """Only hint-less private anonymous mappings of a 2 MiB multiple are aligned (checked live:
    2 MiB + 4 KiB private and 2 MiB shared anonymous mappings are not)."""
    k = make_kernel()
    small = mmap(k, PAGE)
    got = mmap(k, length, flags=flags, addr=addr)
    if addr is not None:
        assert got == addr, maps(k)
    else:
        assert got == small - length, f"directly under the previous mapping\n{maps(k)}"
        assert got % PMD_SIZE != 0


# ----- legacy bottom-up layout (ADDR_COMPAT_LAYOUT / legacy_va_layout) ----------------------

def legacy_vmas(stack_start=None):
    base = legacy_base()
    vmas = [_vma(0x555555554000, 0x555555556000, "r-xp", "/bin/x"),
            _vma(base, base + PAGE, "r--p", "/lib/ld.so")]
    if stack_start is not None:
        vmas.append(_vma(stack_start, stack_start + 33 * PAGE, "rw-p", "[stack]"))
    else:
        vmas.append(_vma(*STACK, "rw-p", "[stack]"))
    return vmas


def test_legacy_base_is_a_third_of_task_size():
    """arch/x86/mm/mmap.c mmap_legacy_base(): __TASK_UNMAPPED_BASE = PAGE_ALIGN(TASK_SIZE / 3)
    (checked live with setarch -L -R: the loader at 0x2aaaaaaab000)."""
    assert legacy_base() == 0x2AAAAAAAB000
    k = make_kernel(legacy_vmas(), layout="legacy")
    assert not k.procs["main"].mm.topdown
    assert k.procs["main"].mm.mmap_base == 0x2AAAAAAAB000


def test_legacy_layout_goes_bottom_up():
    """unmapped_area(): the lowest gap at or above mmap_base; a hole left lower down is taken
    first by a request that fits."""
    k = make_kernel(legacy_vmas(), layout="legacy")
    lib_end = legacy_base() + PAGE
    a = mmap(k, 4 * PAGE, handle="a")
    b = mmap(k, 2 * PAGE, handle="b")
    assert a == lib_end, maps(k)
    assert b == a + 4 * PAGE, maps(k)
    step(k, "munmap", region="a")
    assert mmap(k, 3 * PAGE) == lib_end, maps(k)
    assert mmap(k, 2 * PAGE) == b + 2 * PAGE, f"the 1-page hole is too small\n{maps(k)}"


# ----- the stack guard gap (stack_guard_gap, vm_start_gap) ----------------------------------

def test_hint_may_not_end_inside_the_stack_guard_gap():
    """generic_get_unmapped_area_topdown(): addr + len <= vm_start_gap(next); the guard gap is
    256 pages (checked live: a hint ending at stack - 1 MiB is honoured, one page more is
    not)."""
    k = make_kernel()
    assert STACK_GUARD_GAP == 256 * PAGE
    edge = STACK[0] - STACK_GUARD_GAP
    assert mmap(k, PAGE, addr=edge - PAGE) == edge - PAGE, maps(k)
    assert mmap(k, PAGE, addr=edge) == EDGE - PAGE, f"inside the gap: the search decides\n{maps(k)}"


def test_map_fixed_may_map_inside_the_stack_guard_gap():
    """MAP_FIXED takes the address as it is, guard gap or not (checked live)."""
    k = make_kernel()
    at = STACK[0] - 2 * PAGE
    assert mmap(k, PAGE, flags=ANON + ("FIXED",), addr=at) == at, maps(k)


def test_search_treats_the_guard_gap_as_taken():
    """unmapped_area() bounds a gap by vm_start_gap() of the VMA above it: 2 MiB free below a
    stack holds 1 MiB (the gap is 1 MiB) but not 1 MiB + 4 KiB, which goes above the stack."""
    stack_start = legacy_base() + PAGE + 2 * MiB
    k = make_kernel(legacy_vmas(stack_start), layout="legacy")
    lib_end = legacy_base() + PAGE
    assert mmap(k, MiB + PAGE) == stack_start + 33 * PAGE, maps(k)
    assert mmap(k, MiB) == lib_end, maps(k)


# ----- mmap_base (arch/x86/mm/mmap.c) -------------------------------------------------------

@pytest.mark.parametrize("rlimit,expected", [
    (8 * MiB, 0x7FFFF7FFF000),             # 9 MiB < 128 MiB: the minimum gap
    (64 * MiB, 0x7FFFF7FFF000),
    (1 << 30, 0x7FFFBFEFF000),             # 1 GiB + 1 MiB
    ((1 << 64) - 1, 0x155555556000),       # RLIM_INFINITY: 5/6 of TASK_SIZE
], ids=["8M", "64M", "1G", "unlimited"])
def test_mmap_base_formula_without_aslr(rlimit, expected):
    """mmap_base = PAGE_ALIGN(TASK_SIZE - clamp(rlimit + stack_guard_gap, 128 MiB, TASK_SIZE /
    6 * 5) - rnd). Each value is where the loader ended on the live kernel under
    `ulimit -s ...; setarch -R` (no randomisation: rnd = 0, stack_maxrandom_size = 0)."""
    gap = min(max(rlimit + STACK_GUARD_GAP, 128 * MiB), TASK_SIZE // 6 * 5)
    assert mmap_base_formula(rlimit) == (TASK_SIZE - gap + PAGE - 1) & ~(PAGE - 1)   # PAGE_ALIGN
    assert mmap_base_formula(rlimit) == expected


def test_mmap_base_formula_subtracts_rnd():
    rnd = 0x12345 * PAGE
    assert mmap_base_formula(8 * MiB, rnd) == 0x7FFFF7FFF000 - rnd
    assert mmap_base_formula(8 * MiB, rnd + 1) == 0x7FFFF7FFF000 - rnd, "PAGE_ALIGN rounds up"


def test_mmap_base_formula_pads_with_the_stack_randomisation_before_the_clamp():
    """With ASLR the pad is stack_maxrandom_size() + stack_guard_gap, added before the clamp:
    8 MiB + 16 GiB - 4 KiB + 1 MiB is above the 128 MiB minimum, so it counts in full."""
    stack_rnd = (0x3FFFFF) << 12                   # STACK_RND_MASK << PAGE_SHIFT, x86-64
    gap = 8 * MiB + stack_rnd + STACK_GUARD_GAP
    assert mmap_base_formula(8 * MiB, 0, stack_rnd) == TASK_SIZE - gap
    assert mmap_base_formula((1 << 64) - 1, 0, stack_rnd) == 0x155555556000


def test_seeded_mmap_base_matches_the_formula():
    """A snapshot laid out as the live kernel does without ASLR (loader ending at mmap_base)
    gives the model that mmap_base, and the first mapping goes right under the loader."""
    top = mmap_base_formula(8 * MiB)
    vmas = [_vma(0x555555554000, 0x555555556000, "r-xp", "/bin/x"),
            _vma(top - 0x34000, top, "r--p", "/lib/ld.so"),
            _vma(*STACK, "rw-p", "[stack]")]
    k = make_kernel(vmas)
    assert k.procs["main"].mm.mmap_base == top
    assert mmap(k, 4 * PAGE) == top - 0x34000 - 4 * PAGE, maps(k)


@pytest.mark.parametrize("gap_pages", [None, 1, 16])
def test_stack_guard_gap_below_a_growsdown_vma_follows_the_command_line(gap_pages):
    """mm/mmap.c stack_guard_gap: 256 pages, or "stack_guard_gap=N" on the kernel command line
    (the profile's stack_guard_gap_pages). The next top-down mapping keeps that gap below a
    VM_GROWSDOWN VMA (vm_start_gap). The 256-page default is checked live by
    experiments/mmap-flags-growsdown.toml; other values need another boot, so model only."""
    snap = {"processes": {"main": {"pid": 1000, "vmas": default_vmas()}},
            "setup": {"layout": "topdown"}, "privileged": True}
    prof = {"sysctl": {"max_map_count": 1 << 20, "mmap_min_addr": 4096, "overcommit_memory": 1},
            "stack_guard_gap_pages": gap_pages}
    k = Kernel(prof, snap)
    low = mmap(k, PAGE, flags=ANON + ("GROWSDOWN",))
    below = mmap(k, PAGE)
    gap = STACK_GUARD_GAP if gap_pages is None else gap_pages * PAGE
    assert below == low - gap - PAGE, maps(k)
