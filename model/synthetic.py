"""A small synthetic address space, to run the model with no live process behind it.

The live side seeds the model from a real snapshot (shmkit/predict.py: snapshot_from_record).
Unit tests of the model's rules (tests/test_model_merge.py), the model's own benchmark
(experiments/bench_model.py) and the IPC benchmark's fault predictions (shmkit/bench/model.py)
need only a plausible top-down layout instead: a program, one library page whose start marks
mmap_base (EDGE: the first mmap lands just below it) and the stack.
"""
from __future__ import annotations

EDGE = 0x7F0000000000


def _vma(start: int, end: int, perms: str, path: str) -> dict:
    return {"start": start, "end": end, "perms": perms, "offset": 0, "dev": "00:00", "inode": 0,
            "path": path, "smaps_kb": {}}


def snapshot(program: str = "/bin/x", devices: dict | None = None) -> dict:
    """The snapshot dict Kernel() takes: process "main", privileged, top-down layout."""
    snap = {"processes": {"main": {"pid": 1000, "vmas": [
        _vma(0x555555554000, 0x555555556000, "r-xp", program),
        _vma(EDGE, EDGE + 0x1000, "r--p", "/lib/ld.so"),
        _vma(0x7FFFFFFDE000, 0x7FFFFFFFF000, "rw-p", "[stack]")]}},
        "setup": {"layout": "topdown"}, "privileged": True}
    if devices is not None:
        snap["devices"] = devices
    return snap


def profile() -> dict:
    """A permissive profile: no map-count or overcommit refusals get in a unit test's way."""
    return {"sysctl": {"max_map_count": 1 << 20, "mmap_min_addr": 4096, "overcommit_memory": 1}}
