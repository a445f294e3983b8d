"""shmkit.probe: a probe run that stays perturbed is a harness failure (one line, exit 2 from
the CLI), never a traceback; the THP alignment probe cannot be aligned by chance."""
from __future__ import annotations

import pytest

from shmkit import manager, probe, spec


def test_a_probe_that_stays_perturbed_is_a_harness_failure(monkeypatch):
    def perturbed(exp, attempts=3, **kw):
        assert attempts >= 6        # a busy host gets more tries than an experiment
        return {"status": "perturbed", "steps": [{"perturbed": ["main: khugepaged collapsed 1 huge page(s)"]}]}

    monkeypatch.setattr(manager, "run_experiment", perturbed)
    with pytest.raises(manager.HarnessError, match=r"probe fault_around: the live run stayed perturbed.*khugepaged"):
        probe.run_probes()


def test_thp_align_probe_maps_below_a_page_off_the_boundary():
    """The 2 MiB mapping is placed below a 1-page one: without THP alignment (before 6.7) it
    would start one page off a 2 MiB boundary, so only the kernel's alignment makes it aligned."""
    exp = spec.loads(probe.PROBES["thp_align"], "probe-thp_align.toml")
    assert [s.do for s in exp.steps] == ["mmap", "mmap"]
    rec = manager.run_experiment(exp)
    assert rec["status"] == "ok"
    small, big = (s["value"]["addr"] for s in rec["steps"])
    assert big + (2 << 20) <= small             # below it, top-down
    assert (small % (2 << 20)) != 0             # the gap's top is off a boundary
