"""The model against kernels this machine does not run: every record kept under tests/kernels/
(one per kernel release, made by `shmkit matrix --out` in a QEMU guest and slimmed by
tests/kernels/keep.py) is predicted again by the model as it is now, from that record's own
live runs and host profile (`shmkit validate --replay`), and compared field by field.

A change to a rule keyed on the release (model/versions.py), or to any rule, is so checked
against 6.1 and 6.12 as they behaved, not only against the host's kernel. Where a kernel and
the model are known to differ the entry in model/known_differences.py names the kernels and
experiments, and the test is a strict xfail: it fails the day they agree."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.known_differences import KNOWN_DIFFERENCES

KEPT = Path(__file__).resolve().parent / "kernels"
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _records() -> list[tuple[str, dict, dict]]:
    from shmkit import record

    out = []
    for f in sorted(KEPT.glob("*.json.gz")):
        doc = record.read_json(str(f))
        for e in doc["experiments"]:
            out.append((doc["host"]["release"], doc, e))
    return out


RECORDS = _records()


def _known(release: str, name: str):
    return [k for k in KNOWN_DIFFERENCES
            if any(release.startswith(r + ".") or release.startswith(r + "-") for r in k.kernels)
            and name in k.experiments]


def test_records_are_kept():
    """At least two kernels besides the host's, each with 90% of the bundled set or more: a replay
    of nothing proves nothing."""
    releases = {r for r, _, _ in RECORDS}
    assert len(releases) >= 2, releases
    bundled = {p.name for p in EXPERIMENTS.glob("*.toml")}
    for r in releases:
        names = {e["path"] for rr, _, e in RECORDS if rr == r}
        assert len(names & bundled) >= 0.9 * len(bundled), (r, sorted(bundled - names))


def test_every_kernel_known_difference_has_a_kept_record():
    """A known difference of another kernel names experiments whose kept records exist (else it
    is shown by nothing, and may be stale)."""
    kept = {(r, e["path"]) for r, _, e in RECORDS}
    for k in KNOWN_DIFFERENCES:
        for name in k.experiments:
            assert any(_known(r, name) and n == name for r, n in kept), (k.id, name)


@pytest.mark.parametrize("release, doc, entry", RECORDS,
                         ids=[f"{r}:{e['path']}" for r, _, e in RECORDS])
def test_model_matches_the_kept_kernel(release, doc, entry, request):
    from shmkit import spec
    from shmkit.validate import replay_experiment

    path = EXPERIMENTS / entry["path"]
    if not path.exists():
        pytest.skip(f"{entry['path']} is no longer a bundled experiment")
    if entry["live"].get("status") != "ok":
        pytest.skip(f"the kept live run of {entry['path']} on {release} was {entry['live'].get('status')} "
                    "(nothing to compare)")
    known = _known(release, entry["path"])
    if known:
        request.applymarker(pytest.mark.xfail(strict=True, reason="; ".join(k.id for k in known)))
    res = replay_experiment(spec.load(str(path)), doc["host"], entry)
    c = res["comparison"]
    assert res["status"] == "match", (
        f"{entry['path']} on {release}: {c['matched']}/{c['fields']} fields; first: {c['first']}; "
        f"{len(c['differences'])} difference(s); checks: {c['checks'][:3]}")
