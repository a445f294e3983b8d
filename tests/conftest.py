"""Shared fixtures. Live tests start real worker processes; they need Linux with
/proc, /dev/shm and SysV IPC. Each test's objects carry a run-unique prefix, so
tests do not interfere under pytest-xdist."""
from __future__ import annotations

import os

import pytest

from shmkit import manager
from shmkit.observe import zero_page_pfn
from shmkit.spec import ExperimentBuilder

ROOT = os.geteuid() == 0


@pytest.fixture(scope="session")
def zero_pfn():
    return zero_page_pfn()


@pytest.fixture(scope="module")
def profile():
    """This host's kernel profile (shmkit.profile), as the model reads it."""
    from shmkit.profile import read_profile
    return read_profile().to_dict()


@pytest.fixture
def run(zero_pfn):
    """run(builder_or_experiment) -> the record of one live run (one attempt)."""

    def _run(b, attempts: int = 3):
        exp = b.build() if isinstance(b, ExperimentBuilder) else b
        rec = manager.run_experiment(exp, attempts=attempts, step_timeout=60, zero_pfn=zero_pfn)
        assert rec["status"] == "ok", f"run not clean: {rec['status']} {rec.get('abort')} " + str(
            [s["perturbed"] for s in rec["steps"] if s["perturbed"]])
        return rec

    return _run


def step(rec, n):
    """The record of step n (1-based)."""
    return rec["steps"][n - 1]


needs_root = pytest.mark.skipif(not ROOT, reason="needs root (user switching, raising limits)")


# ----- the differential test's count of examples, in the terminal summary ------------------
_SUMMARY: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":      # passed or failed: the count is wanted either way
        _SUMMARY.extend(v for k, v in report.user_properties if k == "differential")


def pytest_terminal_summary(terminalreporter):
    for line in _SUMMARY:
        terminalreporter.write_line(line)
