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


def load_all(files: list[str], bundled: bool = False):
    """Parses and preflights every file before anything is created. In the prefix mode an
    experiment that sets SysV limits in its [setup] cannot run (only a hermetic run has an IPC
    namespace of its own): a file named on the command line is bad input; the bundled ones
    (`bundled`, no file named) are left out, and a line on stderr says which and why."""
    from shmkit import isolation, preflight, spec
    from shmkit.manager import ipc_limits

    mode = isolation.choose(isolation.asked())
    exps = []
    for f in files:
        if not os.path.exists(f):
            raise spec.SpecError(f, None, None, None, "no such file", "a path to an experiment .toml file")
        exps.append(spec.load(f))
    if mode == isolation.PREFIX:
        needs = [e for e in exps if ipc_limits(e.setup)]
        if needs and not bundled:
            e = needs[0]
            raise spec.SpecError(e.path, None, None, next(iter(ipc_limits(e.setup))),
                                 "a SysV limit can be set only in the hermetic mode, and this run "
                                 "uses the prefix mode", "--isolation hermetic (or auto, as root)",
                                 section="setup")
        if needs:
            print("left out in the prefix mode (they set SysV limits, which needs the hermetic mode): "
                  + ", ".join(os.path.basename(e.path) for e in needs), file=sys.stderr)
            exps = [e for e in exps if e not in needs]
    for e in exps:
        preflight.check(e, mode)
    return exps


def cmd_run(args) -> int:
    from shmkit import manager, record, report
    from shmkit.probe import load_or_probe

    files = experiment_files(args.files)
    exps = load_all(files, bundled=not args.files)
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
    exps = load_all(files, bundled=not args.files)
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
    if args.replay:
        try:
            doc = record.read_json(args.replay)
            if doc.get("kind") != "validate":
                raise ValueError(f"kind is {doc.get('kind')!r}")
            profile, probed = doc["host"], doc.get("probed")
            entries = list(doc["experiments"])
        except (OSError, ValueError, TypeError, KeyError) as e:
            print(f"{args.replay}: --replay: not a record written by 'shmkit validate --json' ({e}); "
                  "accepted: a validate JSON file (.json or .json.gz)", file=sys.stderr)
            return 2
        pairs = _replay_pairs(args.replay, entries, args.files)
        if isinstance(pairs, int):
            return pairs
        results = [val.replay_experiment(exp, profile, entry) for exp, entry in pairs]
        pause = None
        return _validate_report(args, out, results, profile, probed, pause,
                                title=f"this model against the live kernel of {args.replay} "
                                      f"({profile.get('release', '?')})")
    files = experiment_files(args.files)
    exps = load_all(files, bundled=not args.files)
    if args.progress_file:
        with open(args.progress_file, "a") as pf:
            pf.write(f"profile and probes ({len(exps)} experiments to validate)\n")
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
            if args.progress_file:
                # one whole line per experiment, for whoever watches from outside (shmkit matrix
                # reads it from a guest through the shared folder)
                with open(args.progress_file, "a") as pf:
                    pf.write(f"validated {len(results)}/{len(exps)} {os.path.basename(exp.path)} "
                             f"{results[-1]['status']}\n")
    return _validate_report(args, out, results, profile, probed, pause, title="model against the live kernel")


def _replay_pairs(path: str, entries: list[dict], files: list[str]):
    """Each experiment of a record with its experiment file: the file named on the command line
    with the same name, else the recorded path, else the bundled file of that name. Returns
    [(experiment, entry)] or 2 (a line said why)."""
    from shmkit import spec

    named = {os.path.basename(f): f for f in experiment_files(files)} if files else {}
    bundled = {p.name: str(p) for p in bundled_dir().glob("*.toml")}
    pairs = []
    for e in entries:
        base = os.path.basename(e.get("path", ""))
        if named:
            f = named.get(base)
            if f is None:
                continue
        else:
            f = e["path"] if os.path.exists(e.get("path", "")) else bundled.get(base)
        if f is None:
            print(f"{path}: --replay: experiment {base}: its file is gone and no bundled one has "
                  "that name; accepted: name the experiment files (paired by file name)", file=sys.stderr)
            return 2
        pairs.append((spec.load(f), e))
    if not pairs:
        print(f"{path}: --replay: none of the named experiment files is in the record; accepted: "
              "files whose names the record's experiments have", file=sys.stderr)
        return 2
    return pairs


def _validate_report(args, out, results, profile, probed, pause, title: str) -> int:
    from rich.table import Table

    from shmkit import record
    from shmkit import validate as val

    t = Table(title=title)
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
    modes = sorted({(r.get("live") or {}).get("isolation", {}).get("mode", "prefix") for r in results})
    out.print(f"isolation: {', '.join(modes) or '-'} (--isolation; the record and the HTML report "
              "say it per experiment)", markup=False)
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


def cmd_matrix(args) -> int:
    """shmkit matrix: the experiments validated on this host, on each --target ssh:HOST over ssh
    and on each --kernel booted as a QEMU guest (shmkit.ssh, shmkit.guest, shmkit.matrix); one
    table, experiments by kernels."""
    import json
    import shutil as _shutil

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from shmkit import guest, matrix, ssh

    out = Console() if sys.stdout.isatty() else Console(width=240)
    err = Console(stderr=True)
    if args.cpus < 1:
        print(f"--cpus {args.cpus}: not a count of vCPUs; accepted: 1 or more", file=sys.stderr)
        return 2
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"--out {args.out}: exists and is not a directory; accepted: a directory (made if absent)",
              file=sys.stderr)
        return 2
    if not args.kernel and not args.target and args.no_host:
        print("shmkit matrix: no target (--no-host, no --kernel and no --target); accepted: --kernel "
              "VMLINUZ|PACKAGE, --target ssh:HOST, the host, or any of them", file=sys.stderr)
        return 2
    files = experiment_files(args.files)
    load_all(files)
    ssh_config = args.ssh_config or os.environ.get("SHMKIT_SSH_CONFIG") or None
    try:
        for k in args.kernel:
            guest.check_kernel_spec(k)
        for t in args.target:
            ssh.check_target(t)
        if args.target:
            ssh.check_ssh_config(ssh_config)
            if _shutil.which("ssh") is None:
                raise guest.GuestError("ssh not found; install OpenSSH's client (Debian: apt-get install "
                                       "openssh-client)")
            ssh.source_tree()
        cache = guest.cache_dir()
        if args.kernel:
            if guest.find_vng() is None:
                raise guest.GuestError("vng (virtme-ng) not found on PATH nor beside this Python; install "
                                       "it: pip install 'shmkit[matrix]' (or pip install virtme-ng)")
            if _shutil.which("qemu-system-x86_64") is None:
                raise guest.GuestError("qemu-system-x86_64 not found; install it (Debian: apt-get install "
                                       "qemu-system-x86)")
        kernels = [guest.resolve_kernel(k, cache, say=lambda s: err.print(s, markup=False)) for k in args.kernel]
    except guest.GuestError as e:
        print(f"shmkit matrix: {e}", file=sys.stderr)
        return 2
    accel = args.accel
    if kernels and accel == "auto":
        accel = "kvm" if guest.kvm_works() else "tcg"
    if kernels:
        err.print(f"guests run under {'KVM' if accel == 'kvm' else 'QEMU TCG emulation (no working KVM here)'}"
                  f" with {args.cpus} vCPUs and {args.memory} of memory", markup=False)
    if args.target:
        err.print("ssh targets: on each host, in a private directory made with mktemp -d there, a venv "
                  "gets this shmkit's wheel (its dependencies from that host's package index) and runs "
                  "validate as the ssh user; the directory is removed at the end, nothing is left there",
                  markup=False, soft_wrap=True)
    out_dir = None
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        tasks = {}

        def start(key, n):
            tasks[key] = bar.add_task(f"{key}: starting ({n} experiments)", total=None)

        def progress(key, line):
            bar.update(tasks[key], description=f"{key}: {line}")

        def done(key, col):
            sm = col["summary"]
            what = (f"{sm['matching']}/{sm['experiments']} experiments match" if sm else f"failed: {col['error']}")
            bar.update(tasks[key], description=f"{col['label']}: {what}", total=1, completed=1)

        cols = matrix.run_matrix(files, kernels, host=not args.no_host, accel=accel, cache=cache,
                                 out_dir=out_dir, cpus=args.cpus, memory=args.memory,
                                 attempts=args.attempts, step_timeout=args.timeout,
                                 guest_step_timeout=args.guest_step_timeout,
                                 guest_timeout=args.guest_timeout,
                                 on_start=start, on_progress=progress, on_done=done,
                                 ssh_targets=args.target, ssh_config=ssh_config,
                                 ssh_timeout=args.ssh_timeout,
                                 on_say=lambda s: err.print(s, markup=False, soft_wrap=True))
    mdoc = matrix.document(cols, files, __version__, matrix.source_commit())
    t = Table(title="model against each kernel (shmkit matrix)")
    t.add_column("experiment")
    for c in cols:
        t.add_column(matrix.header(c), overflow="fold")
    for row in matrix.rows(mdoc):
        t.add_row(*row)
    out.print(t)
    for c in cols:
        if c["error"]:
            out.print(f"{c['label']}: {c['error']}", markup=False, soft_wrap=True)
    if out_dir is not None:
        with open(out_dir / "matrix.json", "w") as f:
            json.dump(mdoc, f, indent=1)
            f.write("\n")
        kept = [c["record"] for c in cols if c.get("record")]
        out.print(f"matrix.json and {len(kept)} record(s) written to {out_dir}"
                  + (f" ({', '.join(kept)}; compare two with shmkit validate --compare A B)" if kept else ""),
                  markup=False, soft_wrap=True)
    if args.html:
        from shmkit.html_report import write_matrix_html
        write_matrix_html(mdoc, args.html)
        out.print(f"report written to {args.html}")
    return 0 if matrix.ok(mdoc) else 1


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


def _isolation_option(parser: argparse.ArgumentParser) -> None:
    """--isolation, the same for every command that runs experiments (shmkit.isolation)."""
    parser.add_argument("--isolation", choices=("auto", "hermetic", "prefix"), default=None,
                        help="hermetic: each experiment in its own IPC and mount namespace, exact names "
                             "(default where the host allows it); prefix: run-unique names on the host's "
                             "(default: $SHMKIT_ISOLATION, else auto)")


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
    _isolation_option(r)
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("predict", help="predict every observation of experiments with the model")
    q.add_argument("files", nargs="*", help="experiment files or directories (default: the bundled ones)")
    q.add_argument("--json", metavar="OUT", help="write the JSON record (docs/record.md, kind predict)")
    q.add_argument("--snapshot", metavar="RUN.json",
                   help="start from the initial views of a 'shmkit run --json' record instead of a fresh worker")
    q.add_argument("--quiet", action="store_true", help="only the summary line")
    q.add_argument("--probed", metavar="FILE",
                   help="probed kernel parameters (shmkit probe --out); default: the stored ones, probed now if absent")
    _isolation_option(q)
    q.set_defaults(func=cmd_predict)
    v = sub.add_parser("validate", help="run experiments live and through the model, compare every field")
    v.add_argument("files", nargs="*", help="experiment files or directories (default: the bundled ones)")
    v.add_argument("--json", metavar="OUT", help="write the JSON record with the comparison (docs/record.md)")
    v.add_argument("--html", metavar="OUT", help="write a self-contained HTML report")
    v.add_argument("--replay", metavar="RECORD",
                   help="run nothing: predict again, with this model, every experiment of an earlier "
                        "validate record (another kernel's, a guest's) from its live run and host "
                        "profile, and compare (named files: only those, paired by file name)")
    v.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two validate records (two hosts): observations and match rates")
    v.add_argument("--probed", metavar="FILE",
                   help="probed kernel parameters (shmkit probe --out); default: the stored ones, probed now if absent")
    v.add_argument("--attempts", type=int, default=3, help="runs of a perturbed experiment (default 3)")
    v.add_argument("--timeout", type=float, default=60.0, help="seconds a step may take (default 60)")
    v.add_argument("--pause-damon", action="store_true",
                   help="turn the host's DAMON off while the experiments run, and back on after, "
                        "so smaps Referenced is compared too (otherwise not compared where DAMON runs)")
    v.add_argument("--progress-file", metavar="FILE",
                   help="append a line to FILE as each experiment is done (progress seen from outside)")
    _isolation_option(v)
    v.set_defaults(func=cmd_validate)
    m = sub.add_parser("matrix", help="validate on this host, on other hosts over ssh and on other kernels "
                                      "booted under QEMU, one table")
    m.add_argument("files", nargs="*", help="experiment files or directories (default: the bundled ones)")
    m.add_argument("--kernel", action="append", default=[], metavar="VMLINUZ|PACKAGE",
                   help="a kernel to boot with virtme-ng: a vmlinuz path, or a Debian package "
                        "(linux-image-6.1.0-50-amd64-unsigned) fetched with apt-get download into the "
                        "cache, never installed; repeat for several")
    m.add_argument("--target", action="append", default=[], metavar="ssh:HOST",
                   help="another host, reached with your ssh client and configuration (a Host alias, "
                        "[USER@]HOST or ssh://[USER@]HOST[:PORT]); validate runs there from a wheel of "
                        "this shmkit in a temporary venv, removed after; repeat for several")
    m.add_argument("--ssh-config", metavar="FILE",
                   help="the ssh_config file for ssh targets (ssh -F; default: $SHMKIT_SSH_CONFIG, "
                        "else your own ~/.ssh/config)")
    m.add_argument("--ssh-timeout", type=float, default=None,
                   help="seconds a whole ssh target's run may take (default: no limit)")
    m.add_argument("--no-host", action="store_true", help="leave out this host's column")
    m.add_argument("--out", metavar="DIR", help="keep every column's validate record and matrix.json here")
    m.add_argument("--html", metavar="OUT", help="write the kernels view as a self-contained HTML report")
    m.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="KVM or QEMU's TCG emulation for guests (default: KVM when it works)")
    m.add_argument("--cpus", type=int, default=2, help="vCPUs per guest (default 2)")
    m.add_argument("--memory", default="4G", help="memory per guest (default 4G)")
    m.add_argument("--attempts", type=int, default=3, help="runs of a perturbed experiment (default 3)")
    m.add_argument("--timeout", type=float, default=60.0, help="seconds a step may take on the host and ssh targets (default 60)")
    m.add_argument("--guest-step-timeout", type=float, default=600.0,
                   help="seconds a step may take in a guest (default 600: TCG is ~12x slower)")
    m.add_argument("--guest-timeout", type=float, default=None,
                   help="seconds a whole guest run may take (default: no limit)")
    m.set_defaults(func=cmd_matrix)
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
    from shmkit.guest import GuestError
    from shmkit.manager import HarnessError
    from shmkit.registry import UnsafeState
    from shmkit.spec import SpecError

    from shmkit import isolation

    args = build_parser().parse_args(argv)
    isolation.ask(getattr(args, "isolation", None))
    try:
        return args.func(args)
    except isolation.HostRefuses as e:
        print(f"shmkit: {e}", file=sys.stderr)
        return 2
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
    except GuestError as e:
        print(f"shmkit: {e}", file=sys.stderr)
        return 2
