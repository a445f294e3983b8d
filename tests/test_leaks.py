"""Kernel objects outlive processes: a killed worker, a killed parent or Ctrl-C
must leave nothing of the run behind once `shmkit clean` has run (and the run's
own cleanup removes everything when only a worker dies)."""
from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import leftovers, registry_entries, shmkit, spawn

pytestmark = [pytest.mark.live, pytest.mark.slow]

LONG = '''
about = "objects of every kind, then a step that takes a while"
[[step]]
do = "shm_open"
as = "s"
name = "obj"
create = true
size = "4 pages"
[[step]]
do = "mmap"
as = "m"
length = "4 pages"
prot = "rw"
flags = ["shared"]
shm = "s"
[[step]]
do = "shmget"
as = "seg"
size = "4 pages"
key = 99
create = true
[[step]]
do = "shmget"
as = "priv"
size = "4 pages"
key = "private"
create = true
[[step]]
do = "file"
name = "f"
size = "4 pages"
on = "tmpfs"
[[step]]
do = "memfd"
as = "mf"
name = "mem"
size = "4 pages"
[[step]]
do = "fork"
child = "kid"
[[step]]
do = "file"
in = "kid"
name = "big"
size = "3 GiB"
fill = "random"
'''


def _start(tmp_path):
    exp = tmp_path / "long.toml"
    exp.write_text(LONG)
    state = tmp_path / "state"
    state.mkdir()
    proc = spawn("run", str(exp), "--attempts", "1", state=state)
    deadline = time.time() + 60
    while time.time() < deadline:
        entries = registry_entries(state)
        if any(e.get("kind") == "file" and e["path"].endswith("big") for e in entries):
            time.sleep(0.5)  # well inside the 3 GiB step
            return proc, state, entries
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the long step never started: {proc.communicate()}")


def _run_facts(entries):
    run = next(e for e in entries if e["kind"] == "run")
    prefix = f"shmkit-{run['run']}-"
    keys = {e["key"] for e in entries if e.get("kind") == "sysv" and e.get("key")}
    workers = {e["name"]: e["pid"] for e in entries if e.get("kind") == "worker"}
    return prefix, keys, workers


def test_sigkill_of_a_worker_mid_step_is_reported_and_the_run_cleans_up(tmp_path):
    proc, state, entries = _start(tmp_path)
    prefix, keys, workers = _run_facts(entries)
    import os

    os.kill(workers["kid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "ABORTED at step 8" in out and "SIGKILL" in out
    assert leftovers(prefix, keys) == []
    assert list(state.glob("*.jsonl")) == []


def _wait_gone(pids, timeout: float = 60.0) -> None:
    """The workers of a killed parent see their socket close and exit; on a loaded machine
    that takes a moment, and clean rightly keeps a run whose processes still live."""
    import os

    deadline = time.time() + timeout
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def test_sigkill_of_the_parent_then_clean_leaves_nothing(tmp_path):
    proc, state, entries = _start(tmp_path)
    prefix, keys, workers = _run_facts(entries)
    try:
        proc.kill()
        proc.communicate(timeout=60)
        assert leftovers(prefix, keys), "the killed run should have left objects for clean to find"
        _wait_gone(workers.values())
        res = shmkit("clean", state=state)
        assert res.returncode == 0, res.stderr
        assert "removed" in res.stdout, res.stdout
        assert leftovers(prefix, keys) == []
        assert list(state.glob("*.jsonl")) == []
        # and a second clean finds nothing more
        assert "nothing left" in shmkit("clean", state=state).stdout
    finally:
        # whatever failed above, leave nothing on the machine
        _wait_gone(workers.values())
        shmkit("clean", state=state)


def test_ctrl_c_cleans_up_at_once(tmp_path):
    proc, state, entries = _start(tmp_path)
    prefix, keys, _ = _run_facts(entries)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert leftovers(prefix, keys) == []


def test_clean_never_touches_a_live_run(tmp_path):
    proc, state, entries = _start(tmp_path)
    prefix, keys, _ = _run_facts(entries)
    try:
        res = shmkit("clean", state=state)
        assert "kept run" in res.stdout
        assert leftovers(prefix, keys), "a live run's objects must stay"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert leftovers(prefix, keys) == []
