"""The model against the live kernel: every bundled experiment runs live, the model predicts it
from the same initial snapshot (chained, never re-seeded), and the two normalised records must
agree on every field of every step (maps lines of every process, minor/major faults, smaps
figures, region residency, /dev/shm, SysV rows, errno, values read). The model's check() must
hold after every step, and the worker and the model must have received the same call for every
step (model/resolve.py; assert_same_calls)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shmkit import spec
from tests import helpers

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
# the bundled experiments, and the regressions that differential testing found and the model fixed
BUNDLED = sorted(EXPERIMENTS.glob("*.toml")) + sorted((EXPERIMENTS / "regressions").glob("*.toml"))


def live_and_model(path: Path, profile: dict):
    """tests.helpers.live_and_model of a bundled file, saying which fields are not compared."""
    live, pred, nl, nm, skip = helpers.live_and_model(spec.load(path), profile)
    for n in skip:
        print(f"{path.name}: not compared: {n.field}: {n.why} ({', '.join(n.cause)})")
    return live, pred, nl, nm, skip


def assert_same_calls(path: Path, live: dict, nl: dict, nm: dict) -> None:
    """One resolver (model/resolve.py): for every step, the call the worker executed and the
    call the model consumed are the same once run-specific names, shmids and addresses are in
    normal form (shmkit.record Normaliser.call); a step without a call (its region does not
    exist: model.resolve.Skip) is skipped on both sides."""
    assert len(nl["steps"]) == len(nm["steps"]) == len(live["steps"]) > 0
    for a, b in zip(nl["steps"], nm["steps"]):
        assert a["call"] == b["call"], \
            f"{path.name} step {a['index']} ({a['do']}): live call {a['call']} != model call {b['call']}"
        skipped = isinstance(a["result"], dict) and "skipped" in a["result"]
        assert a["call"] is not None or skipped, f"{path.name} step {a['index']}: no call, result {a['result']}"


@pytest.mark.live
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live runs need Linux")
@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_model_predicts_the_live_kernel(path, profile):
    from shmkit.compare import count_fields, differences

    live, pred, nl, nm, skip = live_and_model(path, profile)
    assert_same_calls(path, live, nl, nm)
    broken = [f"step {s['index']}: {c}" for s in pred["steps"] for c in s["check"]]
    assert not broken, f"{path.name}: model check() failed:\n" + "\n".join(broken)
    diffs = differences(nl, nm, skip)
    assert count_fields(nl, skip) > 10 * len(exp_steps := nl["steps"]) > 0
    assert not diffs, (f"{path.name}: {len(diffs)} of {count_fields(nl)} fields differ:\n"
                       + "\n".join(str(d) for d in diffs[:30]))

