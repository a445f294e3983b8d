"""`shmkit bench [options]` and `shmkit bench compare A.json B.json` (docs/bench.md).

Exit status: 0 the run completed (goals are reported, not enforced); 1 a benchmark failed
(a worker error or timeout, a message with a wrong stamp) or an object was left behind;
2 bad input (one line on stderr); 128 + the signal's number when stopped by Ctrl-C (130), SIGTERM
(143) or SIGHUP (129): everything created was removed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from shmkit import interrupt
from shmkit.bench.matrix import SIZES_FULL, SIZES_QUICK, TRANSPORTS, select, series_list


class BadInput(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):            # one line, exit 2, no usage dump
        raise BadInput(f"{self.prog}: {message}; see '{self.prog} --help'")


_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise BadInput(f"shmkit bench: --sizes: cannot read {text!r} as a size; accepted: 64, 4KiB, 1MiB, 64MiB")
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if not 64 <= n <= 256 << 20:
        raise BadInput(f"shmkit bench: --sizes: {text} is out of range; accepted: 64 B to 256 MiB")
    return n


def _positive(kind, name):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}")
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return v
    return conv


def run_parser() -> _Parser:
    p = _Parser(prog="shmkit bench", description="mmap versus read IPC between real processes: throughput, "
                "round trip, faults per message, against the same run's memcpy (docs/bench.md)")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (3 sizes, a subset of "
                   "series, 1 worker, short values): checks everything runs, not for conclusions")
    p.add_argument("--out", metavar="DIR", default="bench-results",
                   help="directory for bench.json, summary.md and the PNG plots (default: bench-results)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON record here")
    p.add_argument("--sizes", metavar="LIST", help="comma-separated message sizes (default: 64 B to 64 MiB, "
                   "every 4x; --quick: 64 B, 64 KiB, 1 MiB)")
    p.add_argument("--transports", metavar="LIST", help="comma-separated transports: " + ", ".join(TRANSPORTS)
                   + " (memcpy, the roofline, always runs; the goals need pipe and mp-pipe too)")
    p.add_argument("--pattern", choices=("throughput", "latency"), help="only one pattern")
    p.add_argument("--runs", type=_positive(int, "--runs"), help="worker processes per benchmark (default 2; quick 1)")
    p.add_argument("--values", type=_positive(int, "--values"), help="values per worker (default 3; quick 2)")
    p.add_argument("--warmups", type=int, help="warm-up values per worker, discarded (default 1)")
    p.add_argument("--min-time", type=_positive(float, "--min-time"),
                   help="seconds a value lasts at least (calibrated; default 0.05; quick 0.004)")
    p.add_argument("--timeout", type=_positive(float, "--timeout"), default=300.0,
                   help="seconds a worker may take before it is killed (default 300)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def compare_parser() -> _Parser:
    p = _Parser(prog="shmkit bench compare", description="two shmkit bench JSON results side by side")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    return p


def cmd_compare(argv: list[str]) -> int:
    from shmkit.bench import compare as cmp
    args = compare_parser().parse_args(argv)
    try:
        a, b = cmp.load(args.a), cmp.load(args.b)
    except cmp.BadInput as e:
        raise BadInput(f"shmkit bench compare: {e}")
    print(cmp.render(cmp.compare(a, b), args.a, args.b))
    return 0


def settings_from(args, argv):
    from shmkit.bench.runner import Settings, default_cpus

    if os.environ.get("PYTEST_XDIST_WORKER") and not args.quick:
        raise BadInput(f"shmkit bench: refusing a full benchmark inside a pytest-xdist worker "
                       f"(PYTEST_XDIST_WORKER={os.environ['PYTEST_XDIST_WORKER']}): its neighbours would be "
                       "measured too; accepted: --quick")
    sizes = [parse_size(x) for x in args.sizes.split(",")] if args.sizes else (
        SIZES_QUICK if args.quick else SIZES_FULL)
    sizes = sorted(set(sizes))
    transports = None
    if args.transports:
        transports = [t.strip() for t in args.transports.split(",") if t.strip()]
        bad = [t for t in transports if t not in TRANSPORTS]
        if bad:
            raise BadInput(f"shmkit bench: --transports: unknown {', '.join(bad)}; accepted: {', '.join(TRANSPORTS)}")
    series = select(series_list(args.quick), transports, [args.pattern] if args.pattern else None)
    if args.warmups is not None and args.warmups < 0:
        raise BadInput("shmkit bench: --warmups must be >= 0")
    q = args.quick
    return Settings(quick=q, sizes=sizes, series=series,
                    runs=args.runs or (1 if q else 2), values=args.values or (2 if q else 3),
                    warmups=args.warmups if args.warmups is not None else 1,
                    min_time=args.min_time or (0.004 if q else 0.05), timeout=args.timeout,
                    cpus=default_cpus(), command=["shmkit", "bench"] + list(argv))


def cmd_run(argv: list[str]) -> int:
    from shmkit.bench import report
    from shmkit.bench.runner import Lock, Orchestrator

    args = run_parser().parse_args(argv)
    st = settings_from(args, argv)
    out = args.out
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise BadInput(f"shmkit bench: --out: cannot create {out} ({e.strerror}); accepted: a writable directory")
    if not os.access(out, os.W_OK):
        raise BadInput(f"shmkit bench: --out: {out} is not writable; accepted: a writable directory")
    say = lambda s: print(s, file=sys.stderr)     # noqa: E731
    with Lock(say):
        total = sum(x.applies(z) for z in st.sizes for x in st.series)
        doc = _with_progress(st, say, total, Orchestrator)
    doc["goals"] = report.goals(doc)
    doc["summary"] = report.summary_rows(doc)
    files = []
    path = os.path.join(out, "bench.json")
    _write_json(doc, path)
    files.append(path)
    if args.json:
        _write_json(doc, args.json)
        files.append(args.json)
    md = os.path.join(out, "summary.md")
    with open(md, "w") as f:
        f.write(report.markdown(doc))
    files.append(md)
    if not args.no_plots:
        files += report.plots(doc, out)
    print(report.terminal(doc))
    print()
    print("written: " + ", ".join(files))
    bad = [b for b in doc["benchmarks"] if b["error"] or b["errors"]]
    left = doc["cleanup"]["leftovers"]
    if bad:
        print(f"{len(bad)} benchmark(s) failed: " + "; ".join(f"{b['id']}: {b['error'] or 'stamp errors'}"
                                                           for b in bad[:5]), file=sys.stderr)
    if left:
        print("left behind: " + ", ".join(left), file=sys.stderr)
    return 1 if bad or left else 0


def _with_progress(st, say, total, Orchestrator):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("benchmarks", total=total)
        state = {"n": 0}

        def progress(desc):
            if state["n"]:
                bar.advance(task)
            state["n"] += 1
            bar.update(task, description=desc)

        doc = Orchestrator(st, say=say, progress=progress).run()
        bar.advance(task)
    return doc


def _write_json(doc: dict, path: str) -> None:
    tmp = path + ".tmp"
    with interrupt.deferred():          # the whole file or none, and no .tmp left
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C, SIGTERM, SIGHUP: the pair is killed, everything removed, exit 128 + the signal's
    number; a signal ignored on entry stays ignored (shmkit.interrupt)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return interrupt.run_command(_dispatch, argv, "shmkit bench: interrupted ({signal}); the workers were "
                                 "killed and everything they created was removed")


def _dispatch(argv: list[str]) -> int:
    try:
        if argv and argv[0] == "compare":
            return cmd_compare(argv[1:])
        return cmd_run(argv)
    except BadInput as e:
        print(str(e), file=sys.stderr)
        return 2
    except SystemExit as e:              # --help
        return e.code if isinstance(e.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
