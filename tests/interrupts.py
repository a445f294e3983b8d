"""Stopping a shmkit command with a signal at a random moment, and finding everything it left.

A trial starts the command as a terminal starts a foreground job, whatever the test runner
inherited: SIGINT, SIGTERM and SIGHUP at their default disposition (a background job of a script
runs with SIGINT ignored, nohup with SIGHUP ignored, and an ignored signal stays ignored across
exec, so a test that passed its own disposition on would test a command that cannot be
interrupted), in a process group of its own, so that "Ctrl-C" can go to the whole group as a
terminal sends it, and with a marker in its environment that every process of the command
inherits (workers, forked children, benchmark pairs).

While it waits, a trial keeps collecting the command's processes (its descendants, the workers its
registry names, the pids file of a benchmark), so that a SysV segment any of them created is
recognised after they are gone. Afterwards `leftovers()` lists what of the command is still on
the machine: a live process carrying the marker, a /dev/shm name or a temp directory with the
command's prefix, a SysV segment created by one of its processes, a registry file. Objects that
existed before the trial (another process that once had the same pid) are not the trial's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from shmkit import procfs

ROOT = Path(__file__).resolve().parent.parent
# coreutils env (8.31+): the dispositions a terminal gives a foreground command
DEFAULT_SIGNALS = ["env", "--default-signal=INT,TERM,HUP"]
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def sysv_table() -> dict[int, dict]:
    out = {}
    with open("/proc/sysvipc/shm") as f:
        head = f.readline().split()
        for line in f:
            row = dict(zip(head, line.split()))
            out[int(row["shmid"])] = {"key": int(row["key"]), "cpid": int(row["cpid"]),
                                      "nattch": int(row["nattch"]), "ctime": row["ctime"]}
    return out




def _sig_caught(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


class Trial:
    """One run of `shmkit ARGS...`, stopped by the test."""

    def __init__(self, args: list[str], workdir: Path, state: Path | None = None,
                 ignored: tuple[str, ...] = ()):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.marker = f"shmkit-trial-{uuid.uuid4().hex}"
        env = dict(os.environ, SHMKIT_TRIAL=self.marker)
        env.pop("PYTEST_XDIST_WORKER", None)
        if state is not None:
            env["SHMKIT_STATE"] = str(state)
        prefix = DEFAULT_SIGNALS + ([f"--ignore-signal={','.join(ignored)}"] if ignored else []) + ["--"]
        self.before_shm = set(os.listdir("/dev/shm"))
        self.before_tmp = set(os.listdir(tempfile.gettempdir()))
        self.before_sysv = {(k, v["cpid"], v["ctime"]) for k, v in sysv_table().items()}
        self.out = open(workdir / "stdout", "w+")
        self.err = open(workdir / "stderr", "w+")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(prefix + [sys.executable, "-m", "shmkit", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                     process_group=0)
        self.pid = self.proc.pid
        self.pids: set[int] = set()
        self.sent: list[tuple[int, bool, bool]] = []   # (signal, to the group, our handlers were in place)

    # ----- watching -----------------------------------------------------------------------------
    def registry(self) -> list[dict]:
        out = []
        for p in (self.state.glob("*.jsonl") if self.state else ()):
            try:
                text = p.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def collect(self) -> None:
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            for c in procfs.children(pid):
                if c not in self.pids:
                    self.pids.add(c)
                todo.append(c)
        self.pids |= {e["pid"] for e in self.registry() if e.get("kind") == "worker"}
        try:
            with open(os.path.join(tempfile.gettempdir(), f"shmkit-bench-{self.pid}", "pids")) as f:
                self.pids |= {int(x) for x in f.read().split()}
        except (OSError, ValueError):
            pass

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_until(self, pred, timeout: float = 120.0) -> bool:
        """Collects while waiting for pred(); False if the command ended or the time ran out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.collect()
            if pred():
                return True
            if not self.running():
                return False
            time.sleep(0.002)
        return False

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.running():
            self.collect()
            time.sleep(min(0.002, max(0.0, end - time.monotonic())))

    # ----- stopping -----------------------------------------------------------------------------
    def handlers_installed(self) -> bool:
        """shmkit.interrupt installs SIGTERM's handler last: caught means all three are."""
        return bool(_sig_caught(self.pid) & SIGTERM_BIT)

    def send(self, sig: int, group: bool = False) -> None:
        installed = self.handlers_installed()
        self.collect()
        try:
            (os.killpg if group else os.kill)(self.pid, sig)
        except ProcessLookupError:
            # the command (and its group) ended and was reaped before the signal went out: a
            # signal aimed at the end of a run may come too late; check_stopped() then asks
            # for the command's own normal outcome, which only an "end" trial accepts
            if self.proc.poll() is None:
                raise
        self.sent.append((sig, group, installed))

    def finish(self, timeout: float = 180.0) -> tuple[int, str, str]:
        end = time.monotonic() + timeout
        while self.running() and time.monotonic() < end:
            self.collect()
            time.sleep(0.005)
        if self.running():
            self.kill()
            raise AssertionError(f"the command did not end within {timeout} s of its signal")
        self.out.seek(0)
        self.err.seek(0)
        out, err = self.out.read(), self.err.read()
        self.out.close()
        self.err.close()
        return self.proc.returncode, out, err

    def kill(self) -> None:
        """Whatever a failed trial left running: SIGKILL everything carrying the marker."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for pid in self.marked():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ----- what is left -------------------------------------------------------------------------
    def marked(self) -> list[int]:
        """Live (not zombie) processes whose environment carries this trial's marker."""
        mark = f"SHMKIT_TRIAL={self.marker}".encode()
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if mark in env.split(b"\0") and procfs.alive(int(d)):
                out.append(int(d))
        return out

    def leftovers(self) -> list[str]:
        pid = self.pid
        left = [f"process {p}: {_cmdline(p)}" for p in self.marked()]
        marks = (f"shmkit-{pid}-", f"shmkit-bench-{pid}-")
        left += [f"/dev/shm/{n}" for n in set(os.listdir("/dev/shm")) - self.before_shm if n.startswith(marks)]
        tmp = tempfile.gettempdir()
        left += [os.path.join(tmp, n) for n in set(os.listdir(tmp)) - self.before_tmp
                 if n.startswith(marks) or n == f"shmkit-bench-{pid}"]
        ours = self.pids | {pid}
        left += [f"SysV shmid {k} key {v['key']:#x} creator {v['cpid']} nattch {v['nattch']}"
                 for k, v in sysv_table().items()
                 if v["cpid"] in ours and (k, v["cpid"], v["ctime"]) not in self.before_sysv]
        if self.state is not None:
            left += [str(p) for p in self.state.glob("*.jsonl")]
        return left


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def check_stopped(trial: Trial, rc: int, err: str, finished_ok=None) -> str:
    """The outcome of a stopped trial, as the signal contract says it must be (shmkit.interrupt):
    exit 128 + the signal's number (the first one's, or the second one's when both were pending
    together), one line on stderr naming the interruption, no traceback. Two outcomes are
    allowed besides, each only where it is the truth:
    - the interpreter's own outcome (killed by the signal, whose $? in a shell is 128 + n too, or
      a failed start-up) only if shmkit's handlers were not yet in place when the signal was sent:
      nothing of the command exists yet then;
    - `finished_ok(rc, out)` says the command completed (its normal status and output), for a
      signal aimed at the very end of a run, which may come after the command decided.
    Returns which of the three happened."""
    sig, _, installed = trial.sent[0]
    # Two signals pending together (the second sent while the process could not yet take the
    # first: in an fsync, say) are taken lowest number first (kernel/signal.c: next_signal), and
    # Python runs the handlers of the signals tripped meanwhile in number order too: the status
    # may then name the second signal.
    if rc == 128 + sig or any(rc == 128 + s for s, _, _ in trial.sent[1:]):
        lines = err.strip().splitlines()
        assert lines and "interrupted" in lines[-1], err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        return "stopped"
    if not installed and (rc == -sig or (sig == signal.SIGINT and rc == 1 and "init_import_site" in err)):
        # the interpreter's own behaviour: SIG_DFL, or its KeyboardInterrupt (a Ctrl-C while
        # it imports site ends it with "Fatal Python error: init_import_site", status 1)
        return "died before shmkit's handlers were in place"
    if finished_ok is not None and finished_ok(rc):
        return "finished before the signal"
    raise AssertionError(f"exit status {rc} after {signal.Signals(sig).name} "
                         f"(handlers in place: {installed}):\n{err[-3000:]}")
