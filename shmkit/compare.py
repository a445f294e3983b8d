"""Field-by-field comparison of two normalised records (shmkit.record.normalise): a live run
and a prediction, or two runs. Every field of every step and process is compared; nothing is
skipped except `perturbed`, which only the live side can say."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

IGNORED = {"perturbed"}


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


def _walk(a: Any, b: Any, path: str, step, out: list) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in IGNORED:
                continue
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(Difference(step, p, a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                _walk(a[k], b[k], p, step, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", step, out)
    elif a != b:
        out.append(Difference(step, path, a, b))


def differences(live: dict, model: dict) -> list[Difference]:
    """Every field where two normalised experiment records disagree."""
    out: list[Difference] = []
    _walk(live.get("initial"), model.get("initial"), "initial", None, out)
    ls, ms = live.get("steps", []), model.get("steps", [])
    if len(ls) != len(ms):
        out.append(Difference(None, "steps", len(ls), len(ms)))
    for a, b in zip(ls, ms):
        _walk(a, b, "", a.get("index"), out)
    return out


def count_fields(rec: dict) -> int:
    """How many leaf fields a normalised record holds (the denominator of a match rate)."""
    def n(x):
        if isinstance(x, dict):
            return sum(n(v) for k, v in x.items() if k not in IGNORED)
        if isinstance(x, list):
            return sum(n(v) for v in x) or 1
        return 1
    return n(rec.get("initial")) + sum(n(s) for s in rec.get("steps", []))
