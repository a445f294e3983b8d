"""Running the shmkit CLI as a user would, stopping a run mid-step, looking for what a run left
behind, and running an experiment live and through the model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def shmkit(*args: str, state: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if state is not None:
        env["SHMKIT_STATE"] = str(state)
    return subprocess.run([sys.executable, "-m", "shmkit", *args], capture_output=True, text=True,
                          env=env, timeout=kw.pop("timeout", 300), **kw)


def spawn(*args: str, state: Path) -> subprocess.Popen:
    """shmkit as a terminal starts it: SIGINT, SIGTERM and SIGHUP at their default disposition,
    whatever the test runner inherited (tests/interrupts.py: DEFAULT_SIGNALS)."""
    from tests.interrupts import DEFAULT_SIGNALS

    env = dict(os.environ, SHMKIT_STATE=str(state))
    return subprocess.Popen([*DEFAULT_SIGNALS, "--", sys.executable, "-m", "shmkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def registry_entries(state: Path) -> list[dict]:
    out = []
    for p in state.glob("*.jsonl"):
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def leftovers(prefix: str, keys: set[int]) -> list[str]:
    """Everything of a run still on the machine: /dev/shm names, SysV segments, temp dir."""
    found = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    with open("/proc/sysvipc/shm") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[0]) in keys and int(fields[0]) != 0:
                found.append(f"SysV key {int(fields[0]):#x} shmid {fields[1]}")
    d = Path(tempfile.gettempdir()) / prefix.rstrip("-")
    if d.exists():
        found.append(str(d))
    return found


def start_in_long_step(exp: Path, state: Path, *args: str, timeout: float = 120.0):
    """`shmkit run EXP --attempts 1 ARGS` of an experiment whose last step writes a 3 GiB
    disk file named "big": returns (the process, the registry entries) once a worker is
    inside that step, i.e. the file has bytes (the registry's entry alone does not say so:
    the manager notes a step's objects before it sends the step)."""
    proc = spawn("run", str(exp), "--attempts", "1", *args, state=state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        entries = registry_entries(state)
        big = next((e["path"] for e in entries if e.get("kind") == "file" and e["path"].endswith("/big")), None)
        try:
            if big is not None and os.stat(big).st_size > 0:
                return proc, entries
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the long step never started: {proc.communicate()}")


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL a spawned run and wait for it. Not communicate(): a forked worker busy in its
    step holds the pipes it inherited until it sees its socket close."""
    proc.kill()
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()


def live_and_model(exp, profile: dict):
    """The experiment run live (it must run clean), then predicted by the model from the live
    run's initial snapshot (shmkit.predict.snapshot_from_record): (live record, prediction,
    their normal forms, the fields not compared on this host: a running DAMON context,
    model/known_differences.py "damon-accessed-bits")."""
    from shmkit import damon, manager, record
    from shmkit.compare import damon_not_compared
    from shmkit.predict import predict, snapshot_from_record
    from shmkit.validate import run_pids

    with damon.Watch() as watch:
        live = manager.run_experiment(exp)
    assert live["status"] == "ok", f"{exp.path}: live run {live['status']}: {live.get('abort')}"
    pred = predict(exp, profile, snapshot_from_record(live, profile), live["pads"])
    skip = damon_not_compared(watch.clearers(run_pids(live)))
    return live, pred, record.normalise(live), record.normalise(pred), skip
