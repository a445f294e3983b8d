"""Field-by-field comparison of two normalised records (shmkit.record.normalise): a live run
and a prediction, or two runs. Every field of every step and process is compared; nothing is
skipped except `perturbed`, which only the live side can say, and the fields a caller names as
not compared (:class:`NotCompared`: a known difference the host causes, model/known_differences.py),
which are counted and reported apart, never silently dropped."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

IGNORED = {"perturbed"}


@dataclass(frozen=True)
class NotCompared:
    """A leaf field left out of a comparison on this host, and why: ``key`` inside every
    ``under`` object (``Referenced`` of every ``smaps_kb``)."""
    under: str
    key: str
    why: str                    # "host DAMON clears accessed bits"
    known_difference: str       # its id in model.known_differences
    cause: tuple[str, ...] = () # what on the host causes it: "kdamond 0 context 0 (paddr, pid 81)"

    @property
    def field(self) -> str:
        return f"{self.under}.{self.key}"

    def account(self, count: int) -> dict:
        return {"field": self.field, "count": count, "why": self.why,
                "known_difference": self.known_difference, "cause": list(self.cause)}


def damon_not_compared(cause: list[str] | tuple[str, ...]) -> tuple[NotCompared, ...]:
    """The fields a running DAMON context makes unpredictable (known difference
    "damon-accessed-bits", shmkit.damon): none when ``cause`` (shmkit.damon.clearers) is empty."""
    if not cause:
        return ()
    return (NotCompared("smaps_kb", "Referenced", "host DAMON clears accessed bits",
                        "damon-accessed-bits", tuple(cause)),)


def _skipped(path: str, key: str, skip) -> bool:
    return any(key == n.key and (path == n.under or path.endswith("." + n.under)) for n in skip)


@dataclass(frozen=True)
class Difference:
    step: int | None        # None: the initial view
    where: str              # a path such as "processes.main.vmas[0].smaps_kb.Rss"
    live: Any
    model: Any

    def __str__(self) -> str:
        at = "initial" if self.step is None else f"step {self.step}"
        return f"{at}: {self.where}: live {_short(self.live)}, model {_short(self.model)}"


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 160 else s[:157] + "..."


def _walk(a: Any, b: Any, path: str, step, out: list, skip=()) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in IGNORED or (skip and _skipped(path, str(k), skip)):
                continue
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(Difference(step, p, a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                _walk(a[k], b[k], p, step, out, skip)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", step, out, skip)
    elif a != b:
        out.append(Difference(step, path, a, b))


def differences(live: dict, model: dict, not_compared: tuple[NotCompared, ...] = ()) -> list[Difference]:
    """Every field where two normalised experiment records disagree, but those not compared."""
    out: list[Difference] = []
    _walk(live.get("initial"), model.get("initial"), "initial", None, out, not_compared)
    ls, ms = live.get("steps", []), model.get("steps", [])
    if len(ls) != len(ms):
        out.append(Difference(None, "steps", len(ls), len(ms)))
    for a, b in zip(ls, ms):
        _walk(a, b, "", a.get("index"), out, not_compared)
    return out


def _count(rec: dict, keep) -> int:
    def n(x, path):
        if isinstance(x, dict):
            total = 0
            for k, v in x.items():
                if k in IGNORED:
                    continue
                p = f"{path}.{k}" if path else str(k)
                total += n(v, p) if keep(path, str(k)) else 0
            return total
        if isinstance(x, list):
            return sum(n(v, path) for v in x) or 1
        return 1
    return n(rec.get("initial"), "initial") + sum(n(s, "") for s in rec.get("steps", []))


def count_fields(rec: dict, not_compared: tuple[NotCompared, ...] = ()) -> int:
    """How many leaf fields a normalised record holds that are compared (the denominator of a
    match rate)."""
    return _count(rec, lambda path, k: not _skipped(path, k, not_compared))


def count_not_compared(rec: dict, not_compared: NotCompared) -> int:
    """How many leaf fields of a normalised record one NotCompared leaves out."""
    def inside(x):
        if isinstance(x, dict):
            return sum(inside(v) for v in x.values())
        if isinstance(x, list):
            return sum(inside(v) for v in x)
        return 1
    total = 0

    def walk(x, path):
        nonlocal total
        if isinstance(x, dict):
            for k, v in x.items():
                p = f"{path}.{k}" if path else str(k)
                if _skipped(path, str(k), (not_compared,)):
                    total += inside(v)
                elif k not in IGNORED:
                    walk(v, p)
        elif isinstance(x, list):
            for v in x:
                walk(v, path)
    walk(rec.get("initial"), "initial")
    for s in rec.get("steps", []):
        walk(s, "")
    return total


def masked(rec: dict, not_compared: tuple[NotCompared, ...]) -> dict:
    """A copy of a normalised record with every field not compared replaced by the text
    "<not compared: WHY>" (for comparing whole records as text, and for showing them)."""
    def m(x, path):
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                p = f"{path}.{k}" if path else str(k)
                hit = next((n for n in not_compared if _skipped(path, str(k), (n,))), None)
                out[k] = f"<not compared: {hit.why}>" if hit else m(v, p)
            return out
        if isinstance(x, list):
            return [m(v, path) for v in x]
        return x
    if not not_compared:
        return rec
    out = {k: v for k, v in rec.items() if k not in ("initial", "steps")}
    out["initial"] = m(rec.get("initial"), "initial")
    out["steps"] = [m(s, "") for s in rec.get("steps", [])]
    return out
