"""Run `shmkit validate` of the bundled experiments N times in a row and say how many exited 0.

The acceptance of issue 9 item 4 ("the main job is deterministic"): on the project's host,
10 consecutive runs must all exit 0. It is not part of the test suite (one validate takes
1.5 to 3 minutes under load). Run it as root from the worktree:

    .venv/bin/python experiments/validate_repeat.py -n 10 [--log DIR] [-- validate options]

Everything after "--" goes to `shmkit validate` (e.g. `-- --pause-damon`). Each run's output
is kept in DIR (default: a new directory under the temp dir) as run-K.out; for a run that
did not exit 0 the script prints its MISMATCH rows and its last lines. The exit status is 0
when every run exited 0, else 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=10, help="how many validate runs (default 10)")
    p.add_argument("--log", metavar="DIR", help="where to keep each run's output")
    args = p.parse_args(argv)
    if args.runs < 1:
        print("validate_repeat: -n: expected a positive number of runs", file=sys.stderr)
        return 2
    log = args.log or tempfile.mkdtemp(prefix="shmkit-validate-repeat-")
    os.makedirs(log, exist_ok=True)
    cmd = [sys.executable, "-m", "shmkit", "validate", *extra]
    print(f"{' '.join(cmd)}, {args.runs} times; output in {log}", flush=True)
    ok = 0
    for k in range(1, args.runs + 1):
        t0 = time.monotonic()
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        took = time.monotonic() - t0
        path = os.path.join(log, f"run-{k}.out")
        with open(path, "w") as f:
            f.write(res.stdout)
        lines = res.stdout.splitlines()
        summary = next((ln for ln in reversed(lines) if "experiment(s) match" in ln), "(no summary line)")
        print(f"run {k}: exit {res.returncode} in {took:.0f} s: {summary.strip()}", flush=True)
        for ln in lines:
            if ln.startswith("not compared:"):
                print(f"  {ln}", flush=True)
        if res.returncode == 0:
            ok += 1
            continue
        for ln in lines:
            if "MISMATCH" in ln or "live-" in ln:
                print(f"  {ln.rstrip()}", flush=True)
        for ln in lines[-5:]:
            print(f"  | {ln.rstrip()}", flush=True)
    print(f"{ok} of {args.runs} validate runs exited 0", flush=True)
    return 0 if ok == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
