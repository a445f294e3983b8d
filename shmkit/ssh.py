"""Other hosts: `shmkit validate` run on an ``ssh:HOST`` target of `shmkit matrix` (issue 13).

The system's OpenSSH client does the work, with the user's own ssh configuration (keys,
agent, ``Host`` aliases, ports, jump hosts: ``~/.ssh/config``, or the file given with
``--ssh-config``/``$SHMKIT_SSH_CONFIG``, passed as ``ssh -F``). shmkit adds only
``BatchMode=yes`` (never a password or host-key prompt), a connect timeout and keep-alives.

What runs on the remote host, as the ssh user, in one ssh session:

1. ``sh``: ``mktemp -d`` (a private directory, mode 0700, in the remote's ``$TMPDIR`` or /tmp)
   and a ``trap`` that removes that directory, and nothing else, when the session ends by any
   path (the end of the run, an error, SIGHUP/SIGINT/SIGTERM/SIGPIPE);
2. the remote ``python3`` runs the driver below: it receives (on stdin) a tar of the shmkit
   wheel built here from this very source tree, the experiment files and a manifest; makes a
   venv in the directory; ``pip install``\\ s the wheel there (its dependencies, posix_ipc,
   sysv_ipc, psutil, rich and matplotlib, from the remote's package index, ``--no-cache-dir``);
   runs ``python -m shmkit validate ... --json ... --progress-file ...`` with its state
   (probe store, registry) inside the directory; relays the progress lines and sends the
   record back gzip-compressed.

Nothing is left on the remote host: no pip cache, no bytecode outside the directory
(PYTHONDONTWRITEBYTECODE), no shmkit state; validate itself removes the kernel objects it
creates. The local side keeps the session's stdin open for the whole run: when it closes
(the run ends, Ctrl-C, or this process dies: ssh gets PR_SET_PDEATHSIG), the remote driver
stops validate with SIGTERM (validate's own cleanup) and exits, and the trap removes the
directory. Should the session end without the remote saying so, the local side removes the
directory itself with a second ssh command (only a path of mktemp's pattern, owned by the
ssh user, not a symlink).

The wheel is built once per `shmkit matrix` run (when the first target has answered) with ``pip wheel --no-deps`` from a copy of
the source tree, in a private directory under the cache (shmkit.guest's cache rules), removed
at the end of the run. It holds the compiled C helpers, so the remote needs the same CPython
minor version and architecture (pip says so in one line otherwise).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from shmkit.guest import GuestError, _kill_group, _run, _set_pdeathsig

__all__ = ["SshRun", "check_target", "check_ssh_config", "build_wheel", "source_tree", "run_ssh", "SSH_OPTIONS"]

# BatchMode: never prompt (no password, passphrase or host-key question: a target that would
# ask fails with ssh's own one-line reason). The keep-alives notice a dead connection in a
# minute. Everything else comes from the user's ssh configuration.
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
# mktemp -d's template on the remote; the local fallback cleanup removes only such a path
REMOTE_DIR = re.compile(r"/[A-Za-z0-9._/+-]*/shmkit-ssh\.[A-Za-z0-9]{10}")
# a destination as ssh takes it: a Host alias, [user@]host, or ssh://[user@]host[:port]
_DEST = re.compile(r"[A-Za-z0-9_.@:/\[\]%+-]+")


def check_target(spec: str) -> str:
    """An ``ssh:HOST`` target: the destination ssh is given; GuestError (bad input) otherwise."""
    accepted = ("accepted: ssh:HOST, where HOST is what you would give ssh: a Host of your ssh "
                "configuration, [USER@]HOST, or ssh://[USER@]HOST[:PORT]")
    if not spec.startswith("ssh:"):
        raise GuestError(f"--target {spec}: not an ssh target; {accepted}")
    dest = spec[len("ssh:"):]
    if not dest or dest.startswith("-") or not _DEST.fullmatch(dest):
        raise GuestError(f"--target {spec}: not a host name ssh takes; {accepted}")
    return dest


def check_ssh_config(path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise GuestError(f"--ssh-config {path}: no such file; accepted: an ssh_config file (ssh -F), "
                         "or none for your own ~/.ssh/config")


def source_tree() -> Path:
    """The source tree this shmkit runs from (a checkout or an editable install)."""
    here = Path(__file__).resolve().parent.parent
    if not ((here / "pyproject.toml").is_file() and (here / "setup.py").is_file()
            and (here / "experiments").is_dir()):
        raise GuestError(f"ssh targets run a wheel built from shmkit's source tree, and this shmkit "
                         f"({Path(__file__).resolve().parent}) is installed without one; accepted: "
                         "shmkit run from its source tree (pip install -e .)")
    return here


def build_wheel(work: Path, say: Callable[[str], None] = lambda s: None) -> Path:
    """A wheel of this shmkit (no dependencies) built in `work`, a private directory the caller
    made and removes. Built from a copy of the source tree, so the tree itself is not written."""
    src = source_tree()
    say(f"building a wheel of shmkit from {src} (pip wheel --no-deps), for the ssh targets")
    tree = work / "src"
    shutil.copytree(src, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".pytest_cache",
        ".hypothesis", "tests", "out"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-input", "-w", str(work / "dist"),
          str(tree)], "building the shmkit wheel for the ssh targets", timeout=1800)
    wheels = list((work / "dist").glob("shmkit-*.whl"))
    if len(wheels) != 1:
        raise GuestError(f"building the shmkit wheel: pip wheel gave {len(wheels)} wheels; expected one")
    shutil.rmtree(tree, ignore_errors=True)
    return wheels[0]


# The driver, run by the remote python3 as `python3 -c DRIVER DIR` (DIR: the mktemp directory).
# stdout carries one message a line ("host RELEASE NODENAME", "ready" for the payload, "step ...", "progress ...",
# "error ...", "status N"), and "record SIZE" followed by SIZE bytes of gzip JSON.
# Old-Python syntax on purpose: a too old python3 must still say what it is.
DRIVER = r'''
import gzip, json, os, shutil, signal, subprocess, sys, tarfile, threading, time
d = sys.argv[1]
out = sys.stdout.buffer
def say(s):
    out.write((s + "\n").encode("utf-8", "replace"))
    out.flush()
def stop(signum, frame):
    raise SystemExit(128 + signum)
for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
    signal.signal(s, stop)
u = os.uname()
say("host %s %s" % (u.release, u.nodename))
if sys.version_info < (3, 11):
    say("error the remote python3 is %d.%d (%s); shmkit needs 3.11 or later" % (sys.version_info[0], sys.version_info[1], sys.executable))
    sys.exit(3)
say("ready")
inp = sys.stdin.buffer
head = inp.readline().split()
if len(head) != 2 or head[0] != b"payload":
    say("error the local side sent no payload")
    sys.exit(3)
left = int(head[1])
with open(os.path.join(d, "payload.tar"), "wb") as f:
    while left > 0:
        b = inp.read(min(left, 1 << 16))
        if not b:
            break
        f.write(b)
        left -= len(b)
if left:
    say("error the payload was cut short")
    sys.exit(3)
pay = os.path.join(d, "payload")
with tarfile.open(os.path.join(d, "payload.tar")) as t:
    if hasattr(tarfile, "data_filter"):
        t.extractall(pay, filter="data")
    else:
        t.extractall(pay)
os.unlink(os.path.join(d, "payload.tar"))
with open(os.path.join(pay, "manifest.json")) as f:
    man = json.load(f)
gone = threading.Event()
def watch():
    # the local side holds stdin open for the whole run: EOF means it is gone
    try:
        while inp.read(1 << 16):
            pass
    except Exception:
        pass
    gone.set()
threading.Thread(target=watch, daemon=True).start()
# every temporary file of pip, venv and validate goes inside the private directory (TMPDIR),
# so that the trap's removal of that one directory leaves nothing, however the run ends
# (pip killed mid-install would leave its own tmp* directories in the remote's $TMPDIR)
os.makedirs(os.path.join(d, "tmp"), mode=0o700, exist_ok=True)
env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
           SHMKIT_STATE=os.path.join(d, "state"), TMPDIR=os.path.join(d, "tmp"))
prog = os.path.join(d, "progress")
seen = [0]
def relay():
    try:
        with open(prog, "rb") as f:
            lines = f.read().decode("utf-8", "replace").split("\n")[:-1]
    except OSError:
        return
    for ln in lines[seen[0]:]:
        say("progress " + ln)
    seen[0] = len(lines)
def run(cmd, log):
    with open(os.path.join(d, log), "wb") as lf:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=d)
        try:
            while p.poll() is None:
                if gone.is_set():
                    raise SystemExit(141)
                time.sleep(0.5)
                relay()
        finally:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    relay()
    return p.returncode
def last(log):
    try:
        with open(os.path.join(d, log), "rb") as f:
            lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    err = [l for l in lines if l.startswith("ERROR") or "Error" in l]
    return (err or lines or [""])[-1]
say("step python3 -m venv (%s %d.%d)" % (sys.executable, sys.version_info[0], sys.version_info[1]))
venv = os.path.join(d, "venv")
if run([sys.executable, "-m", "venv", venv], "venv.log") != 0:
    say("error python3 -m venv failed on the remote host (Debian: apt-get install python3-venv): " + last("venv.log"))
    sys.exit(3)
py = os.path.join(venv, "bin", "python")
say("step pip install %s (its dependencies from the remote's package index)" % man["wheel"])
if run([py, "-m", "pip", "install", "--quiet", "--no-cache-dir", os.path.join(pay, man["wheel"])], "pip.log") != 0:
    say("error pip install of the shmkit wheel failed on the remote host: " + last("pip.log"))
    sys.exit(3)
files = [os.path.join(pay, f) for f in man["files"]]
say("step shmkit validate (%d experiments)" % len(files))
rec = os.path.join(d, "record.json")
rc = run([py, "-m", "shmkit", "validate"] + files + ["--json", rec, "--progress-file", prog]
         + man["validate_args"], "validate.log")
if not os.path.exists(rec):
    say("error validate exited %d on the remote host and wrote no record: %s" % (rc, last("validate.log")))
    sys.exit(3)
with open(rec, "rb") as f, gzip.open(rec + ".gz", "wb", compresslevel=1) as g:
    shutil.copyfileobj(f, g)
n = os.path.getsize(rec + ".gz")
say("status %d" % rc)
say("record %d" % n)
with open(rec + ".gz", "rb") as f:
    shutil.copyfileobj(f, out)
out.flush()
'''

# The remote command: sh makes the directory and owns its removal (the trap), then runs the
# driver. The removal says "removed DIR" so the local side knows no fallback is needed.
SH_SCRIPT = r'''umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/shmkit-ssh.XXXXXXXXXX") || { echo "error mktemp -d failed on the remote host"; exit 3; }
trap 'rm -rf -- "$d" && echo "removed $d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 141' PIPE
echo "dir $d"
command -v python3 >/dev/null 2>&1 || { echo "error python3 not found on the remote host (PATH $PATH)"; exit 3; }
PYTHONDONTWRITEBYTECODE=1 python3 -c "$1" "$d"
'''

# The local side's fallback: removes the directory only if it is still there, a directory
# (not a symlink) and owned by the ssh user.
SH_REMOVE = r'''d=$1
[ -d "$d" ] && [ ! -L "$d" ] && [ -O "$d" ] && rm -rf -- "$d"
[ -e "$d" ] || echo "removed $d"
'''


def _sh(script: str, *args: str) -> str:
    return "sh -c " + " ".join(shlex.quote(a) for a in (script, "sh", *args))


def ssh_command(dest: str, config: str | None, remote: str) -> list[str]:
    return ["ssh", *(["-F", config] if config else []), *SSH_OPTIONS, "-T", "--", dest, remote]


@dataclasses.dataclass
class SshRun:
    """What one ssh target gave back."""

    target: str                     # as given: ssh:HOST
    seconds: float
    release: str | None             # the remote kernel's (uname -r)
    nodename: str | None            # the remote's host name (uname -n)
    status: int | None              # validate's exit status there; None: none came back
    record: str | None              # the record (gzip JSON) in the local run directory
    error: str | None = None
    progress: list[str] = dataclasses.field(default_factory=list)
    remote_dir: str | None = None
    removed: bool = False           # the remote directory is known to be gone

    @property
    def label(self) -> str:
        if self.release and self.nodename:
            return f"{self.release} on {self.nodename}"
        return self.target


def _payload(wheel: Path, files: list[str], validate_args: list[str]) -> bytes:
    buf = io.BytesIO()
    names = [f"experiments/{i:03d}/{os.path.basename(f)}" for i, f in enumerate(files)]
    man = json.dumps({"wheel": wheel.name, "files": names, "validate_args": validate_args}).encode()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(man)
        t.addfile(info, io.BytesIO(man))
        t.add(str(wheel), arcname=wheel.name)
        for f, name in zip(files, names):
            t.add(os.path.abspath(f), arcname=name)
    return buf.getvalue()


def _first_line(stderr: str) -> str:
    """ssh's reason: the first line of its stderr, ssh's own notices (host keys added) aside."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    real = [ln for ln in lines if not ln.startswith(("Warning: Permanently added", "** "))]
    return (real or lines or ["(no message)"])[0]


def _reader(stdout, record_path: Path, events: "queue.Queue") -> None:
    """The session's stdout, as events: ("msg", kind, text) per line, ("record", size, complete)."""
    try:
        while True:
            line = stdout.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip("\n")
            kind, _, rest = text.partition(" ")
            if kind == "record" and rest.isdigit():
                size = int(rest)
                got = 0
                with open(record_path, "wb") as f:
                    while got < size:
                        b = stdout.read(min(size - got, 1 << 20))
                        if not b:
                            break
                        f.write(b)
                        got += len(b)
                events.put(("record", size, got == size))
                continue
            events.put(("msg", kind, rest))
    except (OSError, ValueError):
        pass
    finally:
        events.put(("eof", None, None))


def _remove_remote(dest: str, config: str | None, remote_dir: str) -> bool:
    """The local side's fallback removal of the remote directory (a path mktemp -d made)."""
    if not REMOTE_DIR.fullmatch(remote_dir) or "/../" in remote_dir:
        return False
    try:
        p = subprocess.run(ssh_command(dest, config, _sh(SH_REMOVE, remote_dir)), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"removed {remote_dir}" in p.stdout


def run_ssh(target: str, files: list[str], wheel: Callable[[], Path], work: Path, *, config: str | None = None,
            attempts: int = 3, step_timeout: float = 60.0, timeout: float | None = None,
            on_progress: Callable[[str], None] = lambda s: None) -> SshRun:
    """Runs validate on `files` on the ssh target (see the module's docstring) and returns what
    came back; the record is written into `work` (private), which the caller removes. `wheel`
    gives the wheel to install; it is called once the remote has answered, so a target that
    cannot be reached fails within ssh's ConnectTimeout, before any wheel is built."""
    dest = check_target(target)
    record_path = work / "record.json.gz"
    cmd = ssh_command(dest, config, _sh(SH_SCRIPT, DRIVER))
    run = SshRun(target, 0.0, None, None, None, None)
    t0 = time.monotonic()
    errlog = open(work / "ssh.err", "w+b")
    events: queue.Queue = queue.Queue()
    errors: list[str] = []
    complete = None
    proc = None
    reader = None
    try:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
                                    start_new_session=True, preexec_fn=_set_pdeathsig)
        except FileNotFoundError:
            raise GuestError("ssh not found; install OpenSSH's client (Debian: apt-get install openssh-client)") from None
        reader = threading.Thread(target=_reader, args=(proc.stdout, record_path, events), daemon=True)
        reader.start()
        ended = False
        while not ended:
            try:
                ev = events.get(timeout=0.5)
            except queue.Empty:
                if timeout is not None and time.monotonic() - t0 > timeout:
                    errors.append(f"did not finish within {timeout:.0f} s")
                    break
                continue
            if ev[0] == "eof":
                ended = True
            elif ev[0] == "record":
                complete = ev[2]
            else:
                kind, text = ev[1], ev[2]
                if kind == "dir":
                    run.remote_dir = text
                elif kind == "removed" and text == run.remote_dir:
                    run.removed = True
                elif kind == "host":
                    run.release, _, run.nodename = text.partition(" ")
                    on_progress(f"connected: {run.label}")
                elif kind == "ready":
                    payload = _payload(wheel(), files, ["--attempts", str(attempts), "--timeout", str(step_timeout)])
                    try:
                        proc.stdin.write(b"payload %d\n" % len(payload))
                        proc.stdin.write(payload)
                        proc.stdin.flush()
                    except OSError:
                        pass    # the session ended early: what it said, or ssh's stderr, says why
                elif kind == "step":
                    on_progress(text)
                elif kind == "progress":
                    run.progress.append(text)
                    on_progress(text)
                elif kind == "status":
                    run.status = int(text) if text.lstrip("-").isdigit() else None
                elif kind == "error":
                    errors.append(text)
    finally:
        # closing stdin tells the remote driver to stop (and the trap to remove the directory);
        # its "removed" line comes before the session ends
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    ev = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                if ev[0] == "msg" and ev[1] == "removed" and ev[2] == run.remote_dir:
                    run.removed = True
            _kill_group(proc)
            if reader is not None:
                reader.join(timeout=30)     # what the session said last (its pipe is at EOF now)
            while True:
                try:
                    ev = events.get_nowait()
                except queue.Empty:
                    break
                if ev[0] == "msg" and ev[1] == "removed" and ev[2] == run.remote_dir:
                    run.removed = True
            if run.remote_dir and not run.removed:
                run.removed = _remove_remote(dest, config, run.remote_dir)
        errlog.seek(0)
        stderr = errlog.read().decode("utf-8", "replace")
        errlog.close()
    run.seconds = time.monotonic() - t0
    if complete:
        run.record = str(record_path)
    if errors:
        run.error = errors[0]
    elif proc.returncode == 255 and run.release is None:
        run.error = f"ssh failed: {_first_line(stderr)}"
    elif complete is False:
        run.error = "the record was cut short on its way back"
    elif run.record is None:
        run.error = (f"no record came back (ssh exit {proc.returncode}"
                     + (f": {_first_line(stderr)}" if stderr.strip() else "") + ")")
    if run.remote_dir and not run.removed:
        left = f"{run.remote_dir} may be left on {dest}"
        run.error = f"{run.error}; {left}" if run.error else left
    return run
