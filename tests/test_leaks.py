"""Kernel objects outlive processes: a killed worker, a killed parent or Ctrl-C
must leave nothing of the run behind once `shmkit clean` has run (and the run's
own cleanup removes everything when only a worker dies)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shmkit import procfs
from tests.helpers import kill_run, leftovers, shmkit, start_in_long_step
from tests.interrupts import Trial, check_stopped

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture(autouse=True)
def prefix_mode(monkeypatch):
    """These tests are the prefix mode's (shmkit.isolation): objects on the host's /dev/shm
    and SysV table, each written to the registry first, and `shmkit clean` after a SIGKILL.
    The hermetic mode's SIGKILL test is tests/test_hermetic.py."""
    monkeypatch.setenv("SHMKIT_ISOLATION", "prefix")

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
    proc, entries = start_in_long_step(exp, state)
    return proc, state, entries


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
    deadline = time.monotonic() + timeout
    for pid in pids:
        while procfs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def test_sigkill_of_the_parent_then_clean_leaves_nothing(tmp_path):
    proc, state, entries = _start(tmp_path)
    prefix, keys, workers = _run_facts(entries)
    try:
        kill_run(proc)
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


# ----- a signal at any moment ------------------------------------------------------------------
# Objects of every kind and a fork; the registry gains an entry before each object and worker.
STEPS = """
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
do = "touch"
region = "m"
access = "write"
[[step]]
do = "shmget"
as = "seg"
size = "4 pages"
key = 99
create = true
[[step]]
do = "shmat"
as = "a"
segment = "seg"
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
do = "touch"
in = "kid"
region = "m"
access = "write"
"""
TRIAL_SHORT = 'about = "objects of every kind and a fork"\n' + STEPS
# ... and a last step that lasts: every signal sent before it is over is sent before the
# command can have finished, so nothing but 128 + n is an acceptable exit status then.
TRIAL_LONG = 'about = "objects of every kind, a fork, then a step that lasts"\n' + STEPS + """
[[step]]
do = "file"
in = "kid"
name = "big"
size = "4 GiB"
"""
ENTRIES = 11    # registry entries of TRIAL_LONG up to the big file: run, main, posix, 2+2 sysv, file, memfd, kid, big
SEED = int(os.environ.get("SHMKIT_INTERRUPT_SEED", "20261203"))


def _plan(rng: random.Random, kinds: dict[str, int]) -> list[dict]:
    """Trials: where the first signal is aimed, which signal, to the process or its group."""
    plan = []
    for kind, n in kinds.items():
        for _ in range(n):
            plan.append({"kind": kind, "sig": rng.choice([signal.SIGINT, signal.SIGINT, signal.SIGTERM]),
                         "group": rng.random() < 0.5, "k": rng.randint(1, ENTRIES),
                         "delay": rng.uniform(0, 0.05), "start": rng.uniform(0, 0.8),
                         "second": rng.choice([signal.SIGINT, signal.SIGTERM]), "again": rng.uniform(0, 0.3)})
    rng.shuffle(plan)
    return plan


def _main_worker_gone(t: Trial, seen: dict) -> bool:
    """The run reached its last step (the kid is registered) and its main worker is dead: the
    manager is killing its workers at the end of the run. Remembers what the registry showed
    (the run removes its registry at the end)."""
    for e in t.registry():
        if e.get("kind") == "worker":
            seen[e["name"]] = e["pid"]
    if "kid" not in seen:
        return False
    return not procfs.alive(seen["main"])


def _stop(t: Trial, trial: dict) -> None:
    """Send the trial's signal(s) where it aims. TRIAL_LONG runs: "start" at a random moment of
    the first 0.8 s (interpreter start-up, shmkit's imports), "early" in the 0.4 s after shmkit's
    handlers were installed (parsing, preflight, probes, the worker's start), "entry" a few ms
    after the k-th registry entry appeared (before or inside step k's object, the fork, the long
    step), "twice" the same, then a second signal a little later (into the cleanup the first one
    started). TRIAL_SHORT runs: "end" just after the main worker was killed at the end of a
    complete run, into its own cleanup (or after the command decided its status)."""
    kind = trial["kind"]
    if kind == "start":
        t.sleep(trial["start"])
    elif kind == "early":
        assert t.wait_until(t.handlers_installed), "shmkit ended before installing its handlers"
        t.sleep(trial["start"] / 2)
    elif kind == "end":
        seen: dict = {}
        t.wait_until(lambda: _main_worker_gone(t, seen))
        t.sleep(trial["delay"])
    else:
        reached = t.wait_until(lambda: len(t.registry()) >= trial["k"])
        assert reached, f"the run ended before registry entry {trial['k']}"
        t.sleep(trial["delay"])
    t.send(trial["sig"], trial["group"])
    if kind == "twice":
        t.sleep(trial["again"])
        if t.running():
            t.send(trial["second"], trial["group"])


def _trials(tmp_path, command: list[str], kinds: dict[str, int], finished_ok, probe: Path | None = None) -> dict:
    """Runs the plan's trials, two at a time (each mostly waits for its own processes); each has
    its own state directory, with the stored kernel probe when one is given (but "start" and
    "early", which then probe: a run of its own)."""
    rng = random.Random(f"{SEED}:{command[0]}")
    short, long_ = tmp_path / "short.toml", tmp_path / "long.toml"
    short.write_text(TRIAL_SHORT)
    long_.write_text(TRIAL_LONG)

    def one(i: int, trial: dict) -> str:
        exp = short if trial["kind"] == "end" else long_
        state = tmp_path / f"state{i}"
        state.mkdir()
        if probe is not None and trial["kind"] not in ("start", "early"):
            shutil.copy(probe, state / "probe.json")
        t = Trial([*command, str(exp)], tmp_path / f"trial{i}", state=state)
        what = f"trial {i} of seed {SEED}: {trial['kind']} {signal.Signals(trial['sig']).name}" + (
            " to the group" if trial["group"] else "")
        try:
            _stop(t, trial)
            rc, out, err = t.finish()
            how = check_stopped(t, rc, err, (lambda rc: finished_ok(rc, out)) if trial["kind"] == "end" else None)
            assert t.leftovers() == [], what
            if len(t.sent) > 1:
                how += f" (a second signal {signal.Signals(t.sent[1][0]).name} before it ended)"
            return how
        except BaseException as e:
            t.kill()
            raise AssertionError(f"{what}: {e}; left: {t.leftovers()}") from e

    with ThreadPoolExecutor(max_workers=2) as pool:
        hows = [f.result() for f in [pool.submit(one, i, trial) for i, trial in enumerate(_plan(rng, kinds))]]
    outcomes = {h: hows.count(h) for h in set(hows)}
    print(f"{command[0]}: {outcomes}")
    return outcomes


def test_a_signal_at_any_moment_of_run_stops_it_and_leaves_nothing(tmp_path):
    """shmkit run, 13 trials: exit 128 + n, no worker, nothing in /dev/shm, the SysV table, the
    temp dir or the registry, every time."""
    outcomes = _trials(tmp_path, ["run", "--attempts", "1", "--timeout", "600"],
                       {"start": 1, "early": 2, "entry": 5, "twice": 3, "end": 2},
                       lambda rc, out: rc in (0, 1) and "experiment(s) ran with every step clean" in out)
    assert sum(n for h, n in outcomes.items() if h.startswith("stopped")) >= 10, outcomes


def test_a_signal_at_any_moment_of_validate_stops_it_and_leaves_nothing(tmp_path):
    """shmkit validate of one experiment, 9 trials; the kernel is probed once for them all, and
    again (interrupted) by the "start" and "early" trials."""
    shared = tmp_path / "probe"
    shared.mkdir()
    res = shmkit("probe", "--out", str(shared / "probe.json"), state=shared)
    assert res.returncode == 0, res.stderr
    outcomes = _trials(tmp_path, ["validate", "--attempts", "1", "--timeout", "600"],
                       {"start": 1, "early": 2, "entry": 3, "twice": 1, "end": 2},
                       lambda rc, out: rc in (0, 1) and "experiment(s) match on every field" in out,
                       probe=shared / "probe.json")
    assert sum(n for h, n in outcomes.items() if h.startswith("stopped")) >= 6, outcomes


def test_a_signal_ignored_on_entry_stays_ignored_and_sigterm_still_stops(tmp_path):
    """The convention of POSIX sh and CPython (shmkit.interrupt): a command started with SIGINT
    ignored (a background job of a script) or SIGHUP ignored (nohup) keeps them ignored; SIGTERM
    stops it. The three are sent at once; pending signals are taken lowest number first (SIGHUP,
    SIGINT, then SIGTERM), so a handled SIGINT or SIGHUP would give 130 or 129, not 143."""
    exp = tmp_path / "long.toml"
    exp.write_text(TRIAL_LONG)
    state = tmp_path / "state"
    state.mkdir()
    t = Trial(["run", str(exp), "--attempts", "1", "--timeout", "600"], tmp_path / "trial", state=state,
              ignored=("INT", "HUP"))
    try:
        assert t.wait_until(lambda: len(t.registry()) >= ENTRIES), "the long step never started"
        assert t.handlers_installed()
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            os.kill(t.pid, sig)
        t.sent.append((signal.SIGTERM, False, True))
        rc, out, err = t.finish()
        assert rc == 143, err[-2000:]
        assert "interrupted (SIGTERM)" in err and "Traceback" not in err
        assert t.leftovers() == []
    finally:
        t.kill()


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
