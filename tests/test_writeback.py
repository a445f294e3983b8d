"""The kernel writing back a run's own mapped disk file during a step is a perturbation,
detected from the kernel's rules (a written page is dirty until something cleans it), never
reported as a model mismatch (shmkit.manager.Manager._writeback)."""
from __future__ import annotations

import os

import pytest

from shmkit import manager, spec

EXP = """
about = "write a shared disk-file mapping, then read it"
[[step]]
do = "file"
name = "data"
size = "4 pages"
[[step]]
do = "mmap"
as = "map"
file = "data"
length = "4 pages"
prot = "rw"
flags = ["shared"]
[[step]]
do = "touch"
region = "map"
access = "write"
[[step]]
do = "read"
region = "map"
"""


def _dirty_kb(view: dict, path: str) -> int:
    v = next(v for v in view["vmas"] if v["path"] == path)
    return v["smaps_kb"].get("Shared_Dirty", 0) + v["smaps_kb"].get("Private_Dirty", 0)


def test_fsync_between_steps_is_caught_as_writeback():
    """fsync(2) of the mapped file between two steps cleans the pages the first step wrote
    (folio_mkclean): the next step, a read that cannot clean anything, is perturbed."""
    exp = spec.loads(EXP)
    m = manager.Manager(exp)
    m.open()
    try:
        m.spawn_main()
        m.observe()
        recs = [m.take_step(s) for s in exp.steps[:3]]
        assert recs[2]["result"] == "ok"
        path = next(iter(m.naming.files))
        assert _dirty_kb(recs[2]["processes"]["main"], path) == 16   # the kernel's rule: 4 written pages
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        rec = m.take_step(exp.steps[3])
        assert _dirty_kb(rec["processes"]["main"], path) == 0
        assert rec["perturbed"] and any(manager.WRITTEN_BACK in p for p in rec["perturbed"]), rec["perturbed"]
    finally:
        m.close()


def _view(path: str, dirty: int, rss: int = 16, perms: str = "rw-s") -> dict:
    return {"main": {"vmas": [{"start": 0x10000, "end": 0x14000, "inode": 7, "offset": 0, "perms": perms,
                               "path": path, "smaps_kb": {"Rss": rss, "Shared_Dirty": dirty}}]}}


@pytest.fixture
def m():
    m = manager.Manager(spec.loads(EXP))
    path = str(m.run.dir / "f")
    m.naming.files[path] = "data"
    m.procs["main"] = manager.Proc("main", 1, None, None, regions={"map": (0x10000, 0x4000, True, "file")})
    return m, path


def test_dirty_going_down_only_counts_after_steps_that_cannot_clean(m):
    m, path = m
    read, msync = spec.loads(EXP).steps[3], None
    assert m._writeback(read, {"result": "ok"}, _view(path, 16), _view(path, 8), {}, {})
    assert not m._writeback(read, {"result": "ok"}, _view(path, 8), _view(path, 16), {}, {})
    exp = spec.loads(EXP + '[[step]]\ndo = "msync"\nregion = "map"\nflags = ["sync"]\n')
    msync = exp.steps[4]
    assert not m._writeback(msync, {"result": "ok"}, _view(path, 16), _view(path, 0), {}, {})


def test_a_write_that_left_clean_pages_while_writeback_ran(m):
    m, path = m
    touch = spec.loads(EXP).steps[2]
    # the worker's reply carries the step's call (model.resolve): 4 pages written at the region
    ok = {"result": "ok", "call": {"addr": 0x10000, "length": 0x4000, "pages": 4, "access": "write"}}
    moved, still = ({"nr_written": 10}, {"nr_written": 14}), ({"nr_written": 10}, {"nr_written": 10})
    assert m._writeback(touch, ok, {}, _view(path, 8), *moved)
    assert not m._writeback(touch, ok, {}, _view(path, 8), *still)   # no writeback: a model question
    assert not m._writeback(touch, ok, {}, _view(path, 16), *moved)  # every written page dirty
    assert not m._writeback(touch, dict(ok, result={"signal": "SIGBUS"}), {}, _view(path, 0), *moved)
    assert not m._writeback(touch, ok, {}, _view(path, 8, perms="rw-p"), *moved)
