"""Running the shmkit CLI as a user would, and looking for what a run left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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
