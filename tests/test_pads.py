"""The harness's padding yields to a step that asks for an address (model.pads): the rule in
pure tests, then on the live kernel, checked against what the kernel must do with a free range
(MAP_FIXED_NOREPLACE and a hint at a free address return exactly that address) and against the
model's own copy of the pads."""
from __future__ import annotations

import sys

import pytest

from model import pads
from model.mm import TASK_SIZE, AddressSpace
from model.resolve import Skip, resolve
from model.vma import Vma
from shmkit.record import normalise
from shmkit.spec import ExperimentBuilder
from tests.conftest import step

PAGE = 4096
PAD = "/memfd:shmkit-pad (deleted)"


class _Names:
    """What model.resolve asks of a side's naming: here only segment sizes."""

    def __init__(self, segments):
        self.segment_size = segments.get

    def shmid(self, handle):
        return 1


def target(op, regions=None, segments=None, **args):
    """The range a step asks for: the step resolved (model.resolve, as both sides do), then
    model.pads.target_range of its call. A step naming a region its process lacks is skipped
    (nothing yields)."""
    regions = {h: (a, PAGE) for h, a in (regions or {}).items()}
    try:
        call = resolve(op, args, regions, _Names(segments or {}), PAGE)
    except Skip:
        return None
    return pads.target_range(op, call)


# ----- the rule -------------------------------------------------------------------------------

def test_mmap_fixed_and_noreplace_look_at_the_page_aligned_length():
    for flag in ("FIXED", "FIXED_NOREPLACE"):
        assert target("mmap", addr=("abs", 0x10000), length=5000,
                      flags=("PRIVATE", "ANONYMOUS", flag)) == (0x10000, 0x12000)


def test_mmap_fixed_at_an_unaligned_address_yields_nothing():
    # do_mmap -> __get_unmapped_area: EINVAL before any VMA is looked at
    assert target("mmap", addr=("abs", 0x10010), length=PAGE, flags=("PRIVATE", "ANONYMOUS", "FIXED")) is None


def test_a_hint_is_rounded_down_to_its_page():
    # round_hint_to_min(): hint &= PAGE_MASK
    assert target("mmap", addr=("abs", 0x10010), length=PAGE, flags=("PRIVATE", "ANONYMOUS")) == (0x10000, 0x11000)


def test_region_relative_addresses_follow_the_region():
    regions = {"buf": 0x7f0000000000}
    assert target("mmap", regions, addr=("rel", "buf", 4 * PAGE), length=2 * PAGE,
                  flags=("PRIVATE", "ANONYMOUS", "FIXED")) == (0x7f0000004000, 0x7f0000006000)
    # a region whose call failed has no address: the step is skipped, nothing yields
    assert target("mmap", regions, addr=("rel", "gone", 0), length=PAGE, flags=("PRIVATE", "FIXED")) is None


def test_no_address_zero_length_or_past_task_size_yields_nothing():
    assert target("mmap", addr=None, length=PAGE, flags=("PRIVATE", "ANONYMOUS")) is None
    assert target("mmap", addr=("abs", 0x10000), length=0, flags=("PRIVATE", "ANONYMOUS", "FIXED")) is None
    assert target("mmap", addr=("abs", TASK_SIZE - PAGE), length=2 * PAGE,
                  flags=("PRIVATE", "ANONYMOUS", "FIXED")) is None
    assert target("munmap", addr=("abs", 0x10000), length=PAGE) is None


def test_hugetlb_rounds_the_length_to_the_huge_page_and_refuses_unaligned_fixed():
    flags = ("PRIVATE", "ANONYMOUS", "HUGETLB", "FIXED")
    assert target("mmap", addr=("abs", 0x40000000), length=PAGE, flags=flags) == (0x40000000, 0x40200000)
    assert target("mmap", addr=("abs", 0x40001000), length=PAGE, flags=flags) is None


def test_shmat_looks_at_the_whole_segment_rounded_by_shm_rnd():
    segs = {"seg": 5000}
    assert target("shmat", segments=segs, segment="seg", addr=("abs", 0x10000)) == (0x10000, 0x12000)
    assert target("shmat", segments=segs, segment="seg", addr=("abs", 0x10100)) is None       # EINVAL
    assert target("shmat", segments=segs, segment="seg", addr=("abs", 0x10100), rnd=True) == (0x10000, 0x12000)
    assert target("shmat", segments=segs, segment="none", addr=("abs", 0x10000)) is None
    assert target("shmat", segments=segs, segment="seg", addr=None) is None


def test_mremap_yields_for_fixed_and_for_a_dontunmap_hint_only():
    base = dict(addr=("abs", 0x20000), length=3 * PAGE)
    assert target("mremap", flags=("MAYMOVE", "FIXED"), **base) == (0x20000, 0x23000)
    assert target("mremap", flags=("MAYMOVE", "DONTUNMAP"), **base) == (0x20000, 0x23000)
    assert target("mremap", flags=("MAYMOVE",), **base) is None          # the address is not looked at
    assert target("mremap", flags=("FIXED",), **base) is None            # EINVAL without MAYMOVE
    assert target("mremap", flags=("MAYMOVE", "FIXED"), addr=("abs", 0x20010), length=PAGE) is None


def test_only_pad_vmas_yield_and_only_inside_the_target():
    vmas = [(0x1000, 0x5000, PAD), (0x5000, 0x6000, "/usr/lib/libc.so.6"), (0x6000, 0x9000, PAD),
            (0x9000, 0xa000, "/memfd:shmkit-123-abcdef-pad (deleted)")]
    assert pads.pieces_in_the_way(vmas, (0x3000, 0xa000)) == [(0x3000, 0x5000), (0x6000, 0x9000)]
    assert pads.pieces_in_the_way(vmas, None) == []


def test_what_is_left_keeps_the_offset_continuous():
    assert pads.what_is_left(0x1000, 0x9000, 0, [(0x3000, 0x4000)]) == [(0x1000, 0x3000, 0), (0x4000, 0x9000, 0x3000)]
    assert pads.what_is_left(0x1000, 0x9000, 0x1000, [(0x1000, 0x9000)]) == []


def _opaque(path, offset=0):
    return {"perms": "---p", "offset": offset, "dev": "00:01", "inode": 7, "path": path, "smaps_kb": {}}


def test_the_model_cuts_the_pad_vma_around_the_piece():
    lib = Vma(0x9000, 0xa000, 0, opaque=_opaque("/usr/lib/libc.so.6"))
    mm = AddressSpace([Vma(0x1000, 0x9000, 0, opaque=_opaque(PAD)), lib], True, 0xa000, 0x10000, 65530)
    pads.remove(mm, [(0x3000, 0x4000)])
    assert [(v.start, v.end, v.opaque["offset"]) for v in mm.vmas] == [
        (0x1000, 0x3000, 0), (0x4000, 0x9000, 0x3000), (0x9000, 0xa000, 0)]
    with pytest.raises(ValueError):
        pads.remove(mm, [(0x9000, 0xa000)])       # a library is never the harness's to unmap


def test_the_normal_form_gives_yielded_addresses_to_the_experiment():
    """Before the yield the pad is the interpreter's ($interp, left out); after it, a mapping
    inside the former pad is the experiment's, in the process that yielded and in a child
    forked after it, not in the other processes."""
    edge = 0x7f0000000000
    pad = {"start": edge, "end": edge + 0x300000, "perms": "---p", "offset": 0, "dev": "00:01",
           "inode": 9, "path": PAD, "smaps_kb": {}, "vmflags": []}
    new = dict(pad, start=edge, end=edge + 0x2000, perms="rw-p", dev="00:00", inode=0, path="")
    rest = dict(pad, start=edge + 0x2000)

    def procs(*names):
        return {n: {"pid": i + 1, "vmas": [new, rest], "regions": {}} for i, n in enumerate(names)}
    rec = {"path": "t", "status": "ok", "pads": {"main": {"edge": edge}},
           "initial": {"processes": {"main": {"pid": 1, "vmas": [pad], "regions": {}}}},
           "names": {}, "prefix": "shmkit-1-abcdef-",
           "steps": [
               {"index": 1, "do": "fork", "in": "main", "args": {"child": "before"}, "result": "ok",
                "faults": None, "value": None, "processes": procs("main", "before")},
               {"index": 2, "do": "mmap", "in": "main", "args": {}, "result": "ok", "faults": None,
                "value": {"addr": edge}, "yielded": [[edge, edge + 0x2000]],
                "processes": procs("main", "before")},
               {"index": 3, "do": "fork", "in": "main", "args": {"child": "after"}, "result": "ok",
                "faults": None, "value": None, "processes": procs("main", "before", "after")},
           ]}
    n = normalise(rec)
    assert n["initial"]["main"] == []
    assert n["steps"][0]["processes"]["main"]["maps"] == []
    assert n["steps"][1]["processes"]["main"]["maps"] == ["$edge-$edge+0x2000 rw-p 00000000 00:00 0"]
    assert n["steps"][1]["processes"]["before"]["maps"] == []
    assert n["steps"][2]["processes"]["after"]["maps"] == ["$edge-$edge+0x2000 rw-p 00000000 00:00 0"]


# ----- on the live kernel ----------------------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live runs need Linux")


def _pad_ranges(proc_view) -> list[tuple[int, int]]:
    return [(v["start"], v["end"]) for v in proc_view["vmas"] if v["path"] == PAD]


@pytest.mark.parametrize("layout", ["topdown", "legacy"])
@pytest.mark.live
@linux_only
def test_the_pad_leaves_room_beyond_the_edge(run, layout):
    """An experiment may ask for addresses just beyond its first mapping: at least PAD_ROOM of
    them are always pad (so they yield), never a library, whatever ASLR picked."""
    b = ExperimentBuilder(about="t", layout=layout)
    b.mmap(as_="a", length="1 page", prot="r", flags=["private", "anonymous"])
    rec = run(b)
    edge = rec["pads"]["main"]["edge"]
    ranges = _pad_ranges(rec["initial"]["processes"]["main"])
    if layout == "topdown":
        room = next(e for s, e in ranges if s == edge) - edge
    else:
        room = edge - next(s for s, e in ranges if e == edge)
    assert edge % pads.PAD_ALIGN == 0
    assert pads.PAD_ROOM <= room < pads.PAD_ROOM + pads.PAD_ALIGN


@pytest.mark.live
@linux_only
def test_a_free_address_just_above_a_mapping_is_given_exactly(run):
    """What the kernel must do once the range is free: MAP_FIXED_NOREPLACE and a hint return the
    very address asked for (do_mmap; arch_get_unmapped_area_topdown takes a free hint), and
    shmat there succeeds. Only the asked-for part of the pad went; the rest stays as it was."""
    b = ExperimentBuilder(about="t")
    b.mmap(as_="buf", length="4 pages", prot="r", flags=["private", "anonymous"])
    b.mmap(as_="nr", addr="buf+4 pages", length="2 pages", prot="r", flags=["private", "anonymous", "fixed_noreplace"])
    b.mmap(as_="hint", addr="nr+2 pages", length="3 pages", prot="rw", flags=["shared", "anonymous"])
    b.shmget(as_="seg", size="1 page", create=True)
    b.shmat(as_="at", segment="seg", addr="hint+3 pages")
    rec = run(b)
    buf = step(rec, 1)["value"]["addr"]
    assert step(rec, 2)["value"]["addr"] == buf + 4 * PAGE
    assert step(rec, 3)["value"]["addr"] == buf + 6 * PAGE
    assert step(rec, 5)["value"]["addr"] == buf + 9 * PAGE
    yielded = [tuple(p) for s in rec["steps"] for p in s.get("yielded") or []]
    assert yielded == [(buf + 4 * PAGE, buf + 6 * PAGE), (buf + 6 * PAGE, buf + 9 * PAGE),
                       (buf + 9 * PAGE, buf + 10 * PAGE)]
    before = _pad_ranges(rec["initial"]["processes"]["main"])
    after = _pad_ranges(step(rec, 5)["processes"]["main"])
    assert after == pads.subtract(before, yielded)
    assert not any(s["perturbed"] for s in rec["steps"])


@pytest.mark.live
@linux_only
def test_the_model_keeps_the_same_pads_as_the_kernel(run):
    """The pads are left out of the normal form, so compare them raw: after every step the
    model's pad VMAs (start, end, offset) are the kernel's, in a parent and in a child that
    yields on its own after the fork."""
    from shmkit.predict import predict, snapshot_from_record
    from shmkit.profile import read_profile

    b = ExperimentBuilder(about="t")
    b.mmap(as_="buf", length="4 pages", prot="rw", flags=["private", "anonymous"])
    b.fork(child="kid")
    b.mmap(in_="kid", as_="k_above", addr="buf+5 pages", length="2 pages", prot="r",
           flags=["private", "anonymous", "fixed"])
    b.mmap(as_="m_above", addr="buf+4 pages", length="1 page", prot="rw", flags=["shared", "anonymous", "fixed"])
    b.touch(in_="kid", region="k_above", access="read")
    exp = b.build()
    rec = run(exp)
    profile = read_profile().to_dict()
    pred = predict(exp, profile, snapshot_from_record(rec, profile), rec["pads"])
    for live_step, model_step in zip(rec["steps"], pred["steps"]):
        assert live_step.get("yielded") == model_step.get("yielded")
        for name, p in live_step["processes"].items():
            m = model_step["processes"][name]
            assert [(v["start"], v["end"], v["offset"]) for v in p["vmas"] if v["path"] == PAD] == \
                [(v["start"], v["end"], v["offset"]) for v in m["vmas"] if v["path"] == PAD], (live_step["index"], name)
    assert any(v["offset"] for v in step(rec, 4)["processes"]["main"]["vmas"] if v["path"] == PAD)
    nl, nm = normalise(rec), normalise(pred)
    from shmkit.compare import differences
    assert not differences(nl, nm)
    assert "$edge+0x1000-$edge+0x3000 r--p 00000000 00:00 0" in nl["steps"][2]["processes"]["kid"]["maps"]


@pytest.mark.live
@linux_only
def test_the_worker_unmaps_nothing_but_its_own_pads():
    """A yield naming memory that is not pad (here the worker's own heap) is refused: the worker
    answers with an error, unmaps nothing, and the manager calls it a harness failure."""
    from shmkit import manager, procfs, protocol

    m = manager.Manager(ExperimentBuilder(about="t").mmap(as_="a", length="1 page", prot="r",
                                                           flags=["private", "anonymous"]).build())
    m.run.open()
    try:
        proc = m.spawn_main()
        _, vmas = procfs.read_maps(proc.pid)
        heap = next(v for v in vmas if v.path == "[heap]")
        protocol.send(proc.sock, {"cmd": "step", "op": "noop", "args": {}, "yield": [[heap.start, heap.start + PAGE]]})
        reply = protocol.recv(proc.sock)
        assert "not a part of this worker's pads" in reply["error"]
        _, after = procfs.read_maps(proc.pid)
        assert [(v.start, v.end) for v in after] == [(v.start, v.end) for v in vmas]
    finally:
        m.shutdown()
        m.run.cleanup()


@pytest.mark.live
@linux_only
def test_in_the_legacy_layout_the_pad_below_the_first_mapping_yields(run):
    """Bottom-up (ADDR_COMPAT_LAYOUT) the pad lies below the experiment's first mapping: a
    MAP_FIXED_NOREPLACE just below it gets exactly the address asked for."""
    b = ExperimentBuilder(about="t", layout="legacy")
    b.mmap(as_="buf", length="4 pages", prot="r", flags=["private", "anonymous"])
    b.mmap(as_="below", addr="buf-2 pages", length="2 pages", prot="rw",
           flags=["private", "anonymous", "fixed_noreplace"])
    rec = run(b)
    buf = step(rec, 1)["value"]["addr"]
    assert buf == rec["pads"]["main"]["edge"]
    assert step(rec, 2)["value"]["addr"] == buf - 2 * PAGE
    assert step(rec, 2)["yielded"] == [[buf - 2 * PAGE, buf]]
