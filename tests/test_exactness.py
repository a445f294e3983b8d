"""Exact observations: measure the interpreter's own interference, and show that
the worker's counter-measures remove it (each check would fail without them)."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from shmkit import record
from shmkit.record import normalise
from shmkit.spec import ExperimentBuilder
from tests.conftest import step

pytestmark = pytest.mark.live

NAIVE_CHILD = r"""
import os, resource, json
def faults():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt
pid = os.fork()
if pid == 0:
    a = faults(); b = faults()      # nothing between the two readings but Python itself
    x = [str(i) for i in range(200)]
    c = faults()
    os.write(1, json.dumps([b - a, c - b]).encode()); os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_naively_forked_python_child_faults_on_its_own():
    """The problem the worker solves: after fork, plain Python code takes
    copy-on-write faults on interpreter pages before touching anything."""
    out = subprocess.run([sys.executable, "-c", NAIVE_CHILD], capture_output=True, text=True, timeout=60)
    empty, alloc = json.loads(out.stdout)
    assert empty + alloc > 0, "expected interference from the interpreter in a naive child"


def test_the_worker_measures_zero_faults_for_steps_that_touch_nothing(run):
    b = ExperimentBuilder(about="t")
    b.mmap(as_="buf", length="4 pages", prot="rw", flags=["private", "anonymous"])
    b.fork(child="kid")
    b.mprotect(in_="kid", region="buf", prot="r")
    b.mprotect(in_="kid", region="buf", prot="rw")
    b.madvise(region="buf", advice="dontneed")
    b.munmap(in_="kid", region="buf")
    rec = run(b)
    for n in (1, 3, 4, 5, 6):
        assert step(rec, n)["faults"] == {"minor": 0, "major": 0}, step(rec, n)


@pytest.mark.parametrize("pages", [1, 7, 64, 300])
def test_touching_n_fresh_pages_counts_exactly_n_in_parent_and_child(run, pages):
    b = ExperimentBuilder(about="t")
    b.fork(child="kid")
    for proc in ("main", "kid"):
        b.mmap(in_=proc, as_=f"b_{proc}", length=f"{pages} pages", prot="rw", flags=["private", "anonymous"])
        b.touch(in_=proc, region=f"b_{proc}", access="write")
    rec = run(b)
    assert step(rec, 3)["faults"] == {"minor": pages, "major": 0}
    assert step(rec, 5)["faults"] == {"minor": pages, "major": 0}


def test_placement_is_relative_to_a_padded_2mib_edge(run):
    b = ExperimentBuilder(about="t")
    b.mmap(as_="a", length="3 pages", prot="r", flags=["private", "anonymous"])
    b.mmap(as_="b", length="16 pages", prot="r", flags=["shared", "anonymous"])
    rec = run(b)
    edge = rec["pads"]["main"]["edge"]
    assert edge % (2 << 20) == 0
    n = normalise(rec)
    assert n["steps"][0]["value"]["addr"] == "$edge-0x3000"
    assert n["steps"][1]["value"]["addr"] == "$edge-0x13000"


def test_access_loop_survives_sigsegv_in_process():
    """shmkit._access recovers from a fault on an unmapped page and counts no fault for it."""
    from shmkit import _access, libc

    page = os.sysconf("SC_PAGE_SIZE")
    addr = libc.mmap(0, 2 * page, 0x3, libc.MAP["PRIVATE"] | libc.MAP["ANONYMOUS"])
    libc.munmap(addr + page, page)
    try:
        done, signo, minflt, majflt, where = _access.touch(addr, 2, page, True, 1)
        assert (done, signo, where) == (1, 11, addr + page)
        assert ctypes.c_char.from_address(addr).value == b"\x01"
    finally:
        libc.munmap(addr, page)


def test_observations_do_not_depend_on_parallel_runs(run):
    """The same experiment run alone and beside 3 others (pytest -n 4 style) observes the same."""
    from concurrent.futures import ThreadPoolExecutor

    here = os.path.dirname(__file__)
    exp = os.path.join(here, "..", "experiments")
    files = sorted(f for f in os.listdir(exp) if f.endswith(".toml"))
    if not files:
        pytest.skip("no bundled experiments")
    path = os.path.join(exp, files[0])

    def once():
        out = subprocess.run([sys.executable, "-m", "shmkit", "run", "--quiet", path, "--json", "/dev/stdout"],
                             capture_output=True, text=True, timeout=300)
        text = out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1]
        return json.dumps(normalise(record.loads(text)["experiments"][0]), sort_keys=True)

    alone = once()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: once(), range(4)))
    assert all(t == alone for t in together)


def test_pages_taken_from_a_file_vma_are_told_apart_from_the_interpreters_own_faults():
    from shmkit import manager

    lib = ("r--p", 0, 42, "/usr/lib/x.so", 20, 0, 0)
    assert manager._only_lost_pages(lib, lib[:4] + (0, 0, 0))
    assert not manager._only_lost_pages(lib, lib[:4] + (24, 0, 0))     # a fault: ours
    assert not manager._only_lost_pages(lib, ("rw-p",) + lib[1:4] + (0, 0, 0))
    anon = ("rw-p", 0, 0, "", 20, 20, 20)
    assert not manager._only_lost_pages(anon, anon[:4] + (0, 0, 0))    # anonymous: not external
    fresh = ("r-xp", 4096, 43, "/venv/ext.so", 20, 0, 20)               # written moments ago
    assert manager._only_lost_pages(fresh, fresh[:6] + (0,))            # the flusher cleaned it
    assert not manager._only_lost_pages(fresh[:6] + (0,), fresh)        # dirtied: ours


def test_a_vma_appears_only_when_it_was_not_there_at_the_last_observation():
    """The perturbation check on canned views: a VMA outside every region, the step's range and
    the interpreter is the interpreter's doing when it is new (flagged), but not when it was
    already there at the last observation (the rest of a region after a partial mremap, the old
    range of MREMAP_DONTUNMAP: experiment VMAs that no handle covers any more)."""
    from shmkit.manager import Manager, Proc

    def vma(s, e):
        return {"start": s, "end": e, "perms": "rw-p", "offset": 0, "inode": 0, "path": "",
                "smaps_kb": {}}

    proc = Proc("main", 1, None, None)
    view = {"vmas": [vma(0x1000, 0x3000), vma(0x8000, 0x9000)]}
    flagged = Manager.perturbation(None, proc, view, [], "touch")
    assert len(flagged) == 2 and all("appeared outside the step" in p for p in flagged)
    proc.seen = {(0x1000, 0x3000)}
    flagged = Manager.perturbation(None, proc, view, [], "touch")
    assert flagged == ["VMA 8000-9000 [anon] appeared outside the step"]
    assert Manager.perturbation(None, proc, view, [(0x8000, 0x9000)], "touch") == []


def _views(*flags):
    return {"main": {"vmas": [{"vmflags": list(f)} for f in flags]}}


@pytest.mark.parametrize("moved, thp, flags, perturbed", [
    (1, "madvise", ("rd", "wr", "hg"), True),    # a MADV_HUGEPAGE VMA, and khugepaged collapsed
    (0, "madvise", ("rd", "wr", "hg"), False),   # nothing collapsed
    (1, "madvise", ("rd", "wr"), False),         # nothing here khugepaged may collapse
    (2, "always", ("rd", "wr"), True),           # THP always: any anonymous VMA
])
def test_a_khugepaged_collapse_during_a_step_is_a_perturbation(monkeypatch, moved, thp, flags, perturbed):
    """khugepaged's host-wide counter (khugepaged/pages_collapsed) moved since the last
    observation while the run has memory khugepaged may collapse: the step is perturbed."""
    from types import SimpleNamespace

    from shmkit import manager

    monkeypatch.setattr(manager, "khugepaged_collapsed", lambda: 10 + moved)
    monkeypatch.setattr(manager, "_thp_enabled", lambda: thp)
    m = SimpleNamespace(collapsed=10)
    got = manager.Manager._khugepaged(m, _views(flags))
    assert bool(got) is perturbed and m.collapsed == 10 + moved
    if perturbed:
        assert got == [f"{manager.KHUGEPAGED} {moved} huge page(s) on this host since the last "
                       "observation (khugepaged/pages_collapsed), and this run has memory it may collapse"]


def test_khugepaged_counter_is_read_and_madv_collapse_does_not_move_it(run):
    """The counter the perturbation relies on: present, and not moved by MADV_COLLAPSE (a
    step's own collapse, mm/khugepaged.c madvise_collapse) when khugepaged does nothing."""
    from shmkit import manager

    before = manager.khugepaged_collapsed()
    if before is None:
        pytest.skip("no /sys/kernel/mm/transparent_hugepage/khugepaged/pages_collapsed here")
    for _ in range(3):
        before = manager.khugepaged_collapsed()
        rec = run(ExperimentBuilder(about="collapse")
                  .step("mmap", as_="b", length="4 MiB", prot="rw", flags=["private", "anonymous"])
                  .step("touch", region="b", pages="0..8", access="write")
                  .step("madvise", region="b", pages="0..512", advice="collapse"))
        if manager.khugepaged_collapsed() == before:
            break
    else:
        pytest.fail("khugepaged/pages_collapsed moved in every try")
    assert rec["steps"][-1]["result"] == "ok"
    assert sum(v["smaps_kb"]["AnonHugePages"] for v in rec["steps"][-1]["processes"]["main"]["vmas"]
               if "smaps_kb" in v) >= 2048, "MADV_COLLAPSE made no THP: the check above proves nothing"
