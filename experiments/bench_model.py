"""Model speed and scale (issue 3): prints figures, asserts nothing (the machine is shared).

    python experiments/bench_model.py            # the model alone
    python experiments/bench_model.py --live     # also the model's time beside the live run's
                                                 # for every bundled experiment

Targets: a touch of every page of a 4 GiB region (1,048,576 pages) under 1 s; 100,000
mmap/munmap steps under 5 s; peak memory under 300 MB.
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.kernel import Kernel  # noqa: E402
from model.synthetic import profile, snapshot  # noqa: E402

PAGE = 4096


def step(k, i, do, **args):
    return k.step({"index": i, "do": do, "in": "main", "args": args})


def bench_touch(pages: int) -> list[tuple[str, float, int]]:
    """Read (zero page), write (copy from the zero page), write again (no faults), read: each
    step and the observation (maps, smaps, residency) after it."""
    k = Kernel(profile(), snapshot())
    step(k, 1, "mmap", **{"as": "big"}, length=pages * PAGE, prot="rw", flags=("PRIVATE", "ANONYMOUS"))
    out = []
    for i, access in enumerate(("read", "write", "write", "read"), 2):
        t = time.perf_counter()
        res = step(k, i, "touch", region="big", pages=None, access=access, value=7)
        k.observe()
        out.append((access, time.perf_counter() - t, res["faults"]["minor"]))
    return out


def bench_mmap_munmap(n: int) -> float:
    k = Kernel(profile(), snapshot())
    t = time.perf_counter()
    for i in range(n // 2):
        step(k, 2 * i, "mmap", **{"as": "r"}, length=16 * PAGE, prot="rw", flags=("PRIVATE", "ANONYMOUS"))
        step(k, 2 * i + 1, "munmap", region="r", pages=None)
    return time.perf_counter() - t


def bench_live() -> None:
    from shmkit import manager, spec
    from shmkit.predict import predict, snapshot_from_record
    from shmkit.profile import read_profile

    prof = read_profile().to_dict()
    root = os.path.dirname(os.path.abspath(__file__))
    print(f"{'experiment':40} {'steps':>5} {'live s':>8} {'model ms':>9}")
    for path in sorted(glob.glob(os.path.join(root, "*.toml"))):
        exp = spec.load(path)
        t = time.perf_counter()
        live = manager.run_experiment(exp)
        t_live = time.perf_counter() - t
        pr = predict(exp, prof, snapshot_from_record(live, prof), live["pads"])
        print(f"{os.path.basename(path)[:-5]:40} {len(exp.steps):5} {t_live:8.2f} {pr['model_seconds'] * 1000:9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", action="store_true", help="time the bundled experiments live and in the model")
    args = ap.parse_args()
    for access, t, faults in bench_touch(1 << 20):
        print(f"{access} touch of every page of a 4 GiB region, {faults:,} faults, step + observation:"
              f" {t:.3f} s  (target < 1 s)")
    t = bench_mmap_munmap(100_000)
    print(f"100,000 mmap/munmap steps: {t:.3f} s  (target < 5 s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (ru_maxrss): {peak:.0f} MB  (target < 300 MB)")
    if args.live:
        bench_live()


if __name__ == "__main__":
    main()
