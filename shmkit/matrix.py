"""`shmkit matrix`: the same experiments validated on several kernels, one table (issue 13).

The host is one column; each ``--target ssh:HOST`` runs `shmkit validate` on that host over
ssh (shmkit.ssh); each ``--kernel`` is booted as a guest (shmkit.guest) and runs
`shmkit validate` there. Every column's validate record is kept (``--out DIR``) and can be
compared pairwise with ``shmkit validate --compare``; the matrix document (kind "matrix") holds
per column the kernel, how it ran (host, ssh, or guest under KVM or TCG), its wall time, and per
experiment the status, fields matched and the first difference.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from shmkit import guest

FORMAT = 1


def _name(path: str) -> str:
    return os.path.basename(path)


def column(label: str, how: str, doc: dict | None, seconds: float, error: str | None = None,
           target: str = "host") -> dict:
    """One column of the matrix from one validate document (None when the target gave none)."""
    from shmkit.validate import summary

    col = {"label": label, "target": target, "how": how, "seconds": round(seconds, 1), "error": error,
           "release": None, "summary": None, "results": {}, "profile": None}
    if doc is not None:
        host = doc.get("host") or {}
        col["release"] = host.get("release")
        col["summary"] = {k: v for k, v in (doc.get("summary") or summary(doc["experiments"])).items()
                          if k != "not_compared"}
        col["profile"] = {k: host.get(k) for k in ("release", "soft_dirty", "thp_enabled", "thp_shmem_enabled",
                                                   "tmpdir", "tmpdir_mount", "dev_shm", "page_size")}
        for r in doc["experiments"]:
            c = r["comparison"]
            col["results"][_name(r["path"])] = {
                "status": r["status"], "matched": c["matched"], "fields": c["fields"],
                "first": c.get("first") or (c["checks"][0] if c.get("checks") else None)}
    return col


def document(columns: list[dict], experiments: list[str], version: str, commit: str | None) -> dict:
    return {"format": FORMAT, "kind": "matrix", "shmkit": version, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "experiments": [_name(p) for p in experiments], "columns": columns}


def source_commit() -> str | None:
    """The git commit of the shmkit source that runs (a checkout), else None."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        p = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                           capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return p.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def cell(res: dict | None) -> tuple[str, str | None]:
    """A table cell: the result and fields matched; the first difference beside a mismatch."""
    if res is None:
        return "-", None
    frac = f"{res['matched']}/{res['fields']}"
    if res["status"] == "match":
        return f"match {frac}", None
    return f"{res['status'].upper()} {frac}", res.get("first")


def rows(mdoc: dict, width: int = 70) -> list[list[str]]:
    """The table as text: one row per experiment, one column per kernel, then the totals."""
    out = []
    for name in mdoc["experiments"]:
        row = [name]
        for col in mdoc["columns"]:
            text, first = cell(col["results"].get(name))
            if first:
                text += ": " + (first if len(first) <= width else first[:width - 1] + "…")
            row.append(text)
        out.append(row)
    tot = ["experiments matching"]
    fld = ["fields matched"]
    for col in mdoc["columns"]:
        sm = col["summary"]
        if sm is None:
            tot.append("no record (below)")
            fld.append("-")
            continue
        tot.append(f"{sm['matching']}/{sm['experiments']}")
        rate = f" ({100 * sm['match_rate']:.2f}%)" if sm.get("match_rate") is not None else ""
        fld.append(f"{sm['matched']}/{sm['fields']}{rate}")
    return out + [tot, fld]


def header(col: dict) -> str:
    how = {"host": "host", "kvm": "guest, KVM", "tcg": "guest, QEMU TCG"}.get(col["how"], col["how"])
    # an ssh column is named by the remote's kernel release and host name
    name = col["label"] if col["how"] == "ssh" else (col["release"] or col["label"])
    return f"{name}\n({how}, {col['seconds'] / 60:.1f} min)"


def ok(mdoc: dict) -> bool:
    return all(c["error"] is None and c["summary"] is not None
               and c["summary"]["matching"] == c["summary"]["experiments"] for c in mdoc["columns"])


# --------------------------------------------------------------------------------------------
# Running the targets
# --------------------------------------------------------------------------------------------

def run_host(files: list[str], work: Path, attempts: int, step_timeout: float,
             on_progress: Callable[[str], None]) -> tuple[dict | None, float, str | None, str]:
    """`shmkit validate` on this host, as a process of its own (the same command a guest runs)."""
    from shmkit import record

    out = work / "host.json"
    prog = work / "host.progress"
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "shmkit", "validate", *map(os.path.abspath, files), "--json", str(out),
           "--progress-file", str(prog), "--attempts", str(attempts), "--timeout", str(step_timeout)]
    with open(work / "host.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        seen = 0
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                seen = _follow(prog, seen, on_progress)
        except BaseException:
            proc.terminate()    # validate removes what it created on SIGTERM (shmkit.interrupt)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        _follow(prog, seen, on_progress)
    seconds = time.monotonic() - t0
    if not out.exists():
        tail = [ln for ln in (work / "host.log").read_text(errors="replace").splitlines() if ln.strip()]
        return None, seconds, f"validate exited {proc.returncode}: {tail[-1] if tail else ''}", str(out)
    return record.read_json(str(out)), seconds, None, str(out)


def _follow(path: Path, seen: int, on_progress: Callable[[str], None]) -> int:
    try:
        lines = path.read_text(errors="replace").split("\n")[:-1]
    except OSError:
        return seen
    for ln in lines[seen:]:
        on_progress(ln)
    return len(lines)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in name)


def run_matrix(files: list[str], kernels: list[guest.Kernel], *, host: bool, accel: str,
               cache: Path, out_dir: Path | None, cpus: int, memory: str, attempts: int,
               step_timeout: float, guest_step_timeout: float, guest_timeout: float | None,
               on_start: Callable[[str, int], None], on_progress: Callable[[str, str], None],
               on_done: Callable[[str, dict], None], ssh_targets: list[str] = (),
               ssh_config: str | None = None, ssh_timeout: float | None = None,
               on_say: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every target in turn (host first, then the ssh targets, then the guests); returns the
    columns. Each target's progress is keyed by the name given to `on_start`. Each column's
    record is copied into `out_dir` when given; the run directories in the cache (and the
    wheel built for the ssh targets) are removed on every path."""
    from shmkit import record
    from shmkit import ssh

    runs = cache / "runs"
    runs.mkdir(mode=0o700, exist_ok=True)
    guest._check_private_dir(runs)
    cols: list[dict] = []
    if host:
        work = Path(tempfile.mkdtemp(prefix="host-", dir=runs))
        try:
            on_start("host", len(files))
            doc, secs, err, path = run_host(files, work, attempts, step_timeout, lambda s: on_progress("host", s))
            if doc is not None and out_dir is not None:
                shutil.copyfile(path, out_dir / "host.json")
            col = column("host", "host", doc, secs, err, target="host")
            col["record"] = "host.json" if doc is not None and out_dir is not None else None
            cols.append(col)
            on_done("host", col)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if ssh_targets:
        # one wheel of this shmkit for every ssh target of the run, in a private directory
        wheel_dir = Path(tempfile.mkdtemp(prefix="wheel-", dir=runs))
        built: list[Path] = []

        def wheel() -> Path:
            if not built:
                built.append(ssh.build_wheel(wheel_dir, say=on_say))
            return built[0]
        try:
            for target in ssh_targets:
                work = Path(tempfile.mkdtemp(prefix="ssh-", dir=runs))
                try:
                    on_start(target, len(files))
                    r = ssh.run_ssh(target, files, wheel, work, config=ssh_config, attempts=attempts,
                                    step_timeout=step_timeout, timeout=ssh_timeout,
                                    on_progress=lambda s, t=target: on_progress(t, s))
                    doc = None
                    err = r.error
                    if r.record is not None:
                        try:
                            doc = record.read_json(r.record)
                        except (OSError, ValueError) as e:
                            err = err or f"the record that came back is unreadable ({e})"
                    col = column(r.label, "ssh", doc, r.seconds, err, target=target)
                    col["record"] = None
                    if doc is not None and out_dir is not None:
                        name = f"ssh-{_safe(r.nodename or target)}-{_safe(r.release or '')}.json.gz"
                        shutil.copyfile(r.record, out_dir / name)
                        col["record"] = name
                    cols.append(col)
                    on_done(target, col)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        finally:
            shutil.rmtree(wheel_dir, ignore_errors=True)
    for k in kernels:
        work = Path(tempfile.mkdtemp(prefix="guest-", dir=runs))
        try:
            on_start(k.release, len(files))
            g = guest.run_guest(k, files, work, cache, accel=accel, cpus=cpus, memory=memory,
                                attempts=attempts, step_timeout=guest_step_timeout, timeout=guest_timeout,
                                on_progress=lambda s, r=k.release: on_progress(r, s))
            doc = None
            err = g.error
            if g.record is not None:
                try:
                    doc = record.read_json(g.record)
                except (OSError, ValueError) as e:
                    err = err or f"the record that came back is unreadable ({e})"
            col = column(k.release, g.accel, doc, g.seconds, err, target=k.spec)
            col["record"] = None
            if doc is not None and out_dir is not None:
                name = f"{k.release}.json.gz"
                shutil.copyfile(g.record, out_dir / name)
                col["record"] = name
            cols.append(col)
            on_done(k.release, col)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return cols
