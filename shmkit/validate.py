"""`shmkit validate`: every experiment live and through the model, compared field by field.

The prediction is chained from the live run's initial snapshot (never re-seeded at a later
step), so a difference at step N stays visible at every later step that it affects."""
from __future__ import annotations

import os
import time
from dataclasses import asdict

from shmkit import damon, manager, record
from shmkit.compare import count_fields, count_not_compared, damon_not_compared, differences
from shmkit.predict import predict, snapshot_from_record


def validate_experiment(exp, profile: dict, attempts: int = 3, step_timeout: float = 60.0) -> dict:
    """One experiment: {path, about, status, live, predicted, comparison}.

    status: "match" (every field equal), "mismatch", or "live-perturbed" / "live-aborted" when
    the live run could not give a clean observation to compare with. Fields a running DAMON
    context makes unpredictable (shmkit.damon) are not compared, and listed in
    comparison["not_compared"] with their count and cause."""
    t0 = time.perf_counter()
    with damon.Watch() as watch:
        live = manager.run_experiment(exp, attempts=attempts, step_timeout=step_timeout)
    t_live = time.perf_counter() - t0
    return compare_live(exp, profile, live, damon_not_compared(watch.clearers(run_pids(live))), t_live)


def compare_live(exp, profile: dict, live: dict, skip, t_live: float) -> dict:
    """The model's prediction from `live`'s initial snapshot, compared with `live` field by
    field (validate_experiment's result, without running anything)."""
    out = {"path": exp.path, "about": exp.about, "live": live, "predicted": None,
           "comparison": {"live_seconds": t_live}}
    if live["status"] != "ok" or "initial" not in live:
        out["status"] = f"live-{live['status']}"
        out["comparison"].update(fields=0, matched=0, differences=[], first=None, checks=[],
                                 not_compared=[])
        return out
    pred = predict(exp, profile, snapshot_from_record(live, profile), live["pads"])
    nl, nm = record.normalise(live), record.normalise(pred)
    diffs = differences(nl, nm, skip)
    fields = count_fields(nl, skip)
    checks = [f"step {s['index']}: {c}" for s in pred["steps"] for c in s["check"]]
    out["predicted"] = pred
    out["status"] = "match" if not diffs and not checks else "mismatch"
    out["comparison"].update(
        fields=fields, matched=max(fields - len(diffs), 0),
        differences=[asdict(d) for d in diffs], first=str(diffs[0]) if diffs else None,
        checks=checks, model_seconds=pred["model_seconds"],
        steps=len(exp.steps), not_compared=[n.account(count_not_compared(nl, n)) for n in skip])
    return out


def replay_experiment(exp, profile: dict, entry: dict) -> dict:
    """One experiment of an earlier validate record, predicted again by this model from that
    record's live run and host profile (`shmkit validate --replay`): what a guest, an ssh host
    or last week's host showed, checked without running anything. The fields that run left
    uncompared because DAMON ran stay uncompared (the same cause)."""
    causes = [c for n in entry.get("comparison", {}).get("not_compared", [])
              if n.get("known_difference") == "damon-accessed-bits" for c in n.get("cause", [])]
    live = entry["live"]
    return compare_live(exp, profile, live, damon_not_compared(causes),
                        entry.get("comparison", {}).get("live_seconds", 0.0))


def run_pids(rec: dict) -> set[int]:
    """Every pid a live record names (its processes at the start and after each step)."""
    pids = {p["pid"] for p in rec.get("initial", {}).get("processes", {}).values()}
    for s in rec.get("steps", []):
        pids.update(p["pid"] for p in s.get("processes", {}).values())
    return pids


def not_compared_total(results: list[dict]) -> list[dict]:
    """The not-compared accounts of every experiment, summed per field: {field, count,
    experiments, why, known_difference, cause}."""
    out: dict[str, dict] = {}
    for r in results:
        for n in r["comparison"].get("not_compared") or []:
            t = out.setdefault(n["field"], {**n, "count": 0, "experiments": 0, "cause": []})
            t["count"] += n["count"]
            t["experiments"] += 1
            t["cause"] += [c for c in n["cause"] if c not in t["cause"]]
    return list(out.values())


def summary(results: list[dict]) -> dict:
    fields = sum(r["comparison"]["fields"] for r in results)
    matched = sum(r["comparison"]["matched"] for r in results)
    return {"experiments": len(results),
            "matching": sum(1 for r in results if r["status"] == "match"),
            "fields": fields, "matched": matched,
            "match_rate": (matched / fields) if fields else None,
            "not_compared": not_compared_total(results)}


def compare_hosts(a: dict, b: dict) -> dict:
    """Two validate documents (two hosts, or one host before and after a change): per
    experiment both match rates, and where the two hosts' live observations differ."""
    by_name = _names_unique(a) and _names_unique(b)
    by_a, by_b = _by_experiment(a, by_name), _by_experiment(b, by_name)
    rows = []
    for path in sorted(set(by_a) | set(by_b)):
        ra, rb = by_a.get(path), by_b.get(path)
        row = {"path": path, "a": _rate(ra), "b": _rate(rb), "observations_differ": None, "first": None}
        if ra and rb and ra.get("live", {}).get("steps") and rb.get("live", {}).get("steps"):
            d = differences(record.normalise(ra["live"]), record.normalise(rb["live"]))
            row["observations_differ"] = len(d)
            row["first"] = str(d[0]) if d else None
        rows.append(row)
    host_diff = {k: (a["host"].get(k), b["host"].get(k)) for k in sorted(set(a["host"]) | set(b["host"]))
                 if k not in ("config",) and a["host"].get(k) != b["host"].get(k)}
    return {"rows": rows, "host": host_diff, "a": summary(a["experiments"]), "b": summary(b["experiments"])}


def _names_unique(doc: dict) -> bool:
    names = [os.path.basename(r["path"]) for r in doc["experiments"]]
    return len(set(names)) == len(names)


def _by_experiment(doc: dict, by_name: bool) -> dict[str, dict]:
    """Experiments by file name when both records' names are unique, so the same experiments
    run from different places (a checkout here, an installed wheel or a guest there) pair up;
    otherwise by path."""
    return {(os.path.basename(r["path"]) if by_name else r["path"]): r for r in doc["experiments"]}


def _rate(r):
    if r is None:
        return None
    c = r["comparison"]
    return {"status": r["status"], "fields": c["fields"], "matched": c["matched"]}
