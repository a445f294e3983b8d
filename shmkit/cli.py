"""shmkit command line (DESIGN.md "CLI contract").

Exit status: 0 all went as planned; 1 a step stayed perturbed or a worker was
lost; 2 bad input or a harness failure (one line on stderr, no traceback);
128 + n stopped by signal n (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; shmkit.interrupt).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shmkit import __version__, interrupt

def bundled_dir() -> Path:
    """The bundled experiments: shmkit/experiments in a regular (wheel) install, where
    pyproject.toml ships them as package data; the top-level experiments/ of a checkout
    (an editable install)."""
    here = Path(__file__).resolve().parent
    for d in (here / "experiments", here.parent / "experiments"):
        if d.is_dir():
            return d
    return here / "experiments"


def experiment_files(paths: list[str]) -> list[str]:
    """The experiment files named on the command line (a directory gives its *.toml), or the
    bundled ones when none is named. Nothing to run is bad input (exit 2): a check that ran no
    experiment cannot fail, so it must not pass."""
    from shmkit.spec import SpecError

    if not paths:
        files = sorted(str(p) for p in bundled_dir().glob("*.toml"))
        if not files:
            raise SpecError(str(bundled_dir()), problem="no bundled experiment found (is shmkit installed whole?)",
                            accepted="a directory holding experiment .toml files")
        return files
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(str(x) for x in Path(p).glob("*.toml"))
            if not found:
                raise SpecError(p, problem="directory holds no experiment (*.toml)",
                                accepted="experiment .toml files, or directories that hold some")
            out.extend(found)
        else:
            out.append(p)
    return out


def _damon_pause(args):
    """--pause-damon: DAMON off around the live runs, and back on after (shmkit.damon.Pause);
    otherwise nothing."""
    import contextlib

    from shmkit import damon

    return damon.Pause() if getattr(args, "pause_damon", False) else contextlib.nullcontext()


def load_all(files: list[str]):
    """Parses and preflights every file before anything is created."""
    from shmkit import preflight, spec

    exps = []
    for f in files:
        if not os.path.exists(f):
            raise spec.SpecError(f, None, None, None, "no such file", "a path to an experiment .toml file")
        exps.append(spec.load(f))
    for e in exps:
        preflight.check(e)
    return exps


def cmd_run(args) -> int:
    from shmkit import manager, record, report
    from shmkit.probe import load_or_probe

    files = experiment_files(args.files)
    exps = load_all(files)
    results = []
    status = 0
    with _damon_pause(args) as pause:
        for exp in exps:
            rec = manager.run_experiment(exp, attempts=args.attempts, step_timeout=args.timeout)
            results.append(rec)
            if not args.quiet:
                print(report.render(rec))
                print()
            if rec["status"] != "ok":
                status = 1
    ok = sum(1 for r in results if r["status"] == "ok")
    print(f"{ok} of {len(results)} experiment(s) ran with every step clean"
          + ("" if ok == len(results) else "; see PERTURBED/ABORTED above"))
    if args.json:
        # the record's host is a model input (predict --snapshot): the same profile validate uses
        doc = record.document("run", results, load_or_probe(args.probed)[0], __version__)
        if pause is not None:
            doc["damon_pause"] = pause.account()
        record.write_json(doc, args.json)
        print(f"record written to {args.json}")
    return status


def cmd_predict(args) -> int:
    import time

    from shmkit import predict as pred
    from shmkit import record, report
    from shmkit.probe import load_or_probe

    files = experiment_files(args.files)
    exps = load_all(files)
    snaps = {}
    if args.snapshot:
        try:
            doc = record.read_json(args.snapshot)
            snaps = {os.path.abspath(e["path"]): e for e in doc["experiments"]}
            host = doc["host"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"{args.snapshot}: --snapshot: not a record written by 'shmkit run --json' ({e}); "
                  "accepted: the JSON file of docs/record.md", file=sys.stderr)
            return 2
    else:
        host = load_or_probe(args.probed)[0]
    results = []
    bad = 0
    for exp in exps:
        live = snaps.get(os.path.abspath(exp.path))
        t0 = time.perf_counter()
        if live is not None:
            snap, pads, run = pred.snapshot_from_record(live, host), live["pads"], None
        elif args.snapshot:
            print(f"{args.snapshot}: --snapshot: holds no run of {exp.path}; accepted: a record "
                  "of the same experiment files", file=sys.stderr)
            return 2
        else:
            snap, pads, run = pred.fresh_snapshot(exp, host)
        t_snap = time.perf_counter() - t0
        rec = pred.predict(exp, host, snap, pads, run)
        results.append(rec)
        broken = [c for s in rec["steps"] for c in s["check"]]
        bad += bool(broken)
        if not args.quiet:
            print(report.render_prediction(rec))
            print(f"  model: {rec['model_seconds'] * 1000:.1f} ms for {len(rec['steps'])} steps"
                  f" (snapshot {t_snap:.2f} s)")
            for c in broken:
                print(f"  MODEL CHECK FAILED: {c}")
            print()
    print(f"{len(results)} experiment(s) predicted" + (f"; {bad} with a failed model check" if bad else ""))
    if args.json:
        doc = record.document("predict", results, host, __version__)
        record.write_json(doc, args.json)
        print(f"record written to {args.json}")
    return 1 if bad else 0


def cmd_validate(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from shmkit import record
    from shmkit import validate as val
    from shmkit.probe import load_or_probe

    # a pipe or a file gets lines wide enough for the table (rich assumes 80 columns there)
    out = Console() if sys.stdout.isatty() else Console(width=200)
    err = Console(stderr=True)
    if args.compare:
        docs = []
        for path in args.compare:
            try:
                doc = record.read_json(path)
                if doc.get("kind") != "validate":
                    raise ValueError(f"kind is {doc.get('kind')!r}")
                docs.append(doc)
            except (OSError, ValueError, TypeError) as e:
                print(f"{path}: --compare: not a record written by 'shmkit validate --json' ({e}); "
                      "accepted: two validate JSON files", file=sys.stderr)
                return 2
        cmp = val.compare_hosts(*docs)
        t = Table(title=f"{args.compare[0]} (A) against {args.compare[1]} (B)")
        for col in ("experiment", "A matched", "B matched", "live observations differ", "first difference"):
            t.add_column(col)
        for r in cmp["rows"]:
            fa = f"{r['a']['matched']}/{r['a']['fields']}" if r["a"] else "-"
            fb = f"{r['b']['matched']}/{r['b']['fields']}" if r["b"] else "-"
            t.add_row(os.path.basename(r["path"]), fa, fb,
                      "-" if r["observations_differ"] is None else str(r["observations_differ"]),
                      r["first"] or "")
        out.print(t)
        for k, (a, b) in cmp["host"].items():
            out.print(f"host {k}: A {a!r}  B {b!r}", soft_wrap=True)
        return 0
    files = experiment_files(args.files)
    exps = load_all(files)
    profile, probed = load_or_probe(args.probed)
    results = []
    with _damon_pause(args) as pause, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, transient=True) as bar:
        task = bar.add_task("validating", total=len(exps))
        for exp in exps:
            bar.update(task, description=f"validating {os.path.basename(exp.path)}")
            results.append(val.validate_experiment(exp, profile, attempts=args.attempts,
                                                   step_timeout=args.timeout))
            bar.advance(task)
    t = Table(title="model against the live kernel")
    for col in ("experiment", "steps", "fields matched", "result", "first difference"):
        t.add_column(col, overflow="fold")
    for r in results:
        c = r["comparison"]
        t.add_row(os.path.basename(r["path"]), str(c.get("steps", "-")), f"{c['matched']}/{c['fields']}",
                  {"match": "[green]match[/]", "mismatch": "[red]MISMATCH[/]"}.get(r["status"], f"[yellow]{r['status']}[/]"),
                  c["first"] or (c["checks"][0] if c["checks"] else ""))
    out.print(t)
    sm = val.summary(results)
    rate = f"{100 * sm['match_rate']:.2f}%" if sm["match_rate"] is not None else "-"
    out.print(f"{sm['matching']} of {sm['experiments']} experiment(s) match on every field; "
              f"{sm['matched']}/{sm['fields']} fields ({rate})")
    for n in sm["not_compared"]:
        out.print(f"not compared: {n['field']} ({n['count']} fields in {n['experiments']} experiment(s)): "
                  f"{n['why']} ({', '.join(n['cause'])}; known difference {n['known_difference']}; "
                  "--pause-damon compares them)", soft_wrap=True, markup=False)
    doc = record.document("validate", results, profile, __version__)
    doc["summary"] = sm
    doc["probed"] = probed
    if pause is not None:
        doc["damon_pause"] = pause.account()
    if args.json:
        record.write_json(doc, args.json)
        out.print(f"record written to {args.json}")
    if args.html:
        from shmkit.html_report import write_html
        write_html(doc, args.html)
        out.print(f"report written to {args.html}")
    return 0 if sm["matching"] == sm["experiments"] else 1


def cmd_probe(args) -> int:
    import json

    from shmkit.probe import default_path, run_probes

    probed = run_probes()
    path = args.out or str(default_path())
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        json.dump(probed, f, indent=1)
        f.write("\n")
    print(json.dumps(probed, indent=1))
    print(f"stored in {path} (validate uses it on this kernel until the next boot)")
    return 0


def cmd_clean(args) -> int:
    from shmkit import registry

    removed, skipped = registry.clean()
    for r in removed:
        print(f"removed {r}")
    for s in skipped:
        print(f"kept {s}")
    if not removed:
        print("nothing left by earlier runs")
    return 0


def cmd_profile(args) -> int:
    import json

    from shmkit.profile import read_profile

    print(json.dumps(read_profile().to_dict(), indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shmkit", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"shmkit {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run experiments on the live kernel and observe each step")
    r.add_argument("files", nargs="*", help="experiment files or directories (default: the bundled ones)")
    r.add_argument("--json", metavar="OUT", help="write the JSON record (docs/record.md)")
    r.add_argument("--attempts", type=int, default=3, help="runs of a perturbed experiment (default 3)")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds a step may take (default 60)")
    r.add_argument("--quiet", action="store_true", help="only the summary line")
    r.add_argument("--pause-damon", action="store_true",
                   help="turn the host's DAMON off while the experiments run, and back on after")
    r.add_argument("--probed", metavar="FILE",
                   help="probed kernel parameters for the record's host profile (shmkit probe --out); "
                        "default: the stored ones, probed now if absent")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("predict", help="predict every observation of experiments with the model")
    q.add_argument("files", nargs="*", help="experiment files or directories (default: the bundled ones)")
    q.add_argument("--json", metavar="OUT", help="write the JSON record (docs/record.md, kind predict)")
    q.add_argument("--snapshot", metavar="RUN.json",
                   help="start from the initial views of a 'shmkit run --json' record instead of a fresh worker")
    q.add_argument("--quiet", action="store_true", help="only the summary line")
    q.add_argument("--probed", metavar="FILE",
                   help="probed kernel parameters (shmkit probe --out); default: the stored ones, probed now if absent")
    q.set_defaults(func=cmd_predict)
    v = sub.add_parser("validate", help="run experiments live and through the model, compare every field")
    v.add_argument("files", nargs="*", help="experiment files or directories (default: the bundled ones)")
    v.add_argument("--json", metavar="OUT", help="write the JSON record with the comparison (docs/record.md)")
    v.add_argument("--html", metavar="OUT", help="write a self-contained HTML report")
    v.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two validate records (two hosts): observations and match rates")
    v.add_argument("--probed", metavar="FILE",
                   help="probed kernel parameters (shmkit probe --out); default: the stored ones, probed now if absent")
    v.add_argument("--attempts", type=int, default=3, help="runs of a perturbed experiment (default 3)")
    v.add_argument("--timeout", type=float, default=60.0, help="seconds a step may take (default 60)")
    v.add_argument("--pause-damon", action="store_true",
                   help="turn the host's DAMON off while the experiments run, and back on after, "
                        "so smaps Referenced is compared too (otherwise not compared where DAMON runs)")
    v.set_defaults(func=cmd_validate)
    pb = sub.add_parser("probe", help="measure the kernel parameters that cannot be read (fault-around, write-notify, ...)")
    pb.add_argument("--out", metavar="FILE", help="where to store them (default: the state directory)")
    pb.set_defaults(func=cmd_probe)
    c = sub.add_parser("clean", help="remove what killed runs left (objects whose owner is gone)")
    c.set_defaults(func=cmd_clean)
    pr = sub.add_parser("profile", help="print this host's kernel profile as JSON")
    pr.set_defaults(func=cmd_profile)
    bn = sub.add_parser("bench", add_help=False, prefix_chars="\0",
                        help="mmap versus read IPC between real processes (docs/bench.md; 'shmkit bench --help')")
    bn.add_argument("argv", nargs=argparse.REMAINDER)
    bn.set_defaults(func=lambda a: __import__("shmkit.bench.cli", fromlist=["main"]).main(a.argv))
    return p


def main(argv: list[str] | None = None) -> int:
    """The process's entry point. Ctrl-C, SIGTERM and SIGHUP stop the command, which removes what
    it created and exits 128 + the signal's number; a signal ignored on entry stays ignored
    (shmkit.interrupt). When this returns, the three are ignored (interrupt.disarm)."""
    return interrupt.run_command(_dispatch, argv, "shmkit: interrupted ({signal}); everything this run "
                                 "created was removed")


def _dispatch(argv: list[str] | None) -> int:
    from shmkit.damon import DamonError
    from shmkit.manager import HarnessError
    from shmkit.registry import UnsafeState
    from shmkit.spec import SpecError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return 2
    except HarnessError as e:
        print(f"shmkit: harness failure: {e}", file=sys.stderr)
        return 2
    except UnsafeState as e:
        print(f"shmkit: {e}", file=sys.stderr)
        return 2
    except DamonError as e:
        print(f"shmkit: {e}", file=sys.stderr)
        return 2
