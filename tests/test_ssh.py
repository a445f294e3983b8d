"""`shmkit matrix --target ssh:HOST` (shmkit/ssh.py; docs/kernels.md) against an sshd of the test's own.

The sshd is Debian's openssh-server, started on 127.0.0.1 on a free port with a host key and an
authorized key generated into the test's temp directory (root login by key only, StrictModes
and PAM off) and an ssh_config for the client there too; nothing of the machine's ssh setup
(/etc/ssh, ~/.ssh) is read or written. Debian's sshd wants its privilege separation directory
/run/sshd, which a host without the service lacks: it runs in a mount namespace of its own with
a private tmpfs on /run. Its sessions get TMPDIR pointed into the test's directory (sshd's
SetEnv), so "nothing left on the remote" is checked on a directory nobody else uses.

Each run installs the wheel into a fresh venv on the "remote" (this machine), with the
dependencies from the package index pip is configured for: a minute or two here."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmkit import record
from shmkit.cli import bundled_dir
from tests.interrupts import DEFAULT_SIGNALS

EXP = bundled_dir()
SET = ["mmap-private-anon.toml", "mmap-shared-file.toml"]
SSHD = "/usr/sbin/sshd"
ALIAS = "shmkit-test-sshd"


def _skip_reason() -> str | None:
    for tool, pkg in ((SSHD, "openssh-server"), ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"),
                      ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: {pkg})"
    if os.geteuid() != 0:
        return "the test's sshd logs in as root and mounts a private /run: needs root"
    if not (Path(__file__).resolve().parent.parent / "pyproject.toml").exists():
        return "ssh targets need shmkit's source tree to build the wheel"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """sshd -D on 127.0.0.1, everything it uses in `d`; stopped by stop()."""

    def __init__(self, d: Path):
        self.d = d
        self.remote_tmp = d / "remote-tmp"
        self.remote_tmp.mkdir(mode=0o700)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "shmkit-test", "-f", str(d / key)],
                           check=True, capture_output=True, stdin=subprocess.DEVNULL)
        self.proc = None
        for _ in range(5):              # another process may take the free port first
            self.port = _free_port()
            if self._start():
                break
        else:
            raise RuntimeError(f"the test's sshd did not start: {self.log()}")
        host_pub = (d / "host_key.pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = d / "ssh_config"
        self.config.write_text(self.host(ALIAS, self.port))

    def host(self, alias: str, port: int) -> str:
        return (f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
                f"  IdentityFile {self.d / 'client_key'}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.d / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n  ControlMaster no\n  ControlPath none\n")

    def _start(self) -> bool:
        conf = self.d / "sshd_config"
        conf.write_text(f"HostKey {self.d / 'host_key'}\nAuthorizedKeysFile {self.d / 'client_key.pub'}\n"
                        "ListenAddress 127.0.0.1\nPidFile none\nStrictModes no\nUsePAM no\n"
                        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                        "KbdInteractiveAuthentication no\nX11Forwarding no\nAllowTcpForwarding no\n"
                        f"SetEnv TMPDIR={self.remote_tmp}\n")
        self.logfile = self.d / f"sshd-{os.urandom(3).hex()}.log"
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount -t tmpfs -o size=1m,mode=0755 shmkit-test-sshd /run && mkdir -m 0755 /run/sshd '
                 '&& exec "$0" -D -e -f "$1" -p "$2"', SSHD, str(conf), str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(300):
            if "Server listening" in self.log():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        self.stop()
        return False

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sshd(tmp_path):
    s = Sshd(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _env(tmp_path: Path, sshd: Sshd | None = None) -> dict:
    env = dict(os.environ, SHMKIT_CACHE=str(tmp_path / "cache"), SHMKIT_STATE=str(tmp_path / "state"))
    if sshd is not None:
        env["SHMKIT_SSH_CONFIG"] = str(sshd.config)
    return env


def _matrix(tmp_path, *args, env, timeout=1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmkit", "matrix", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def _nothing_left(tmp_path: Path, sshd: Sshd) -> None:
    assert list(sshd.remote_tmp.iterdir()) == []
    runs = tmp_path / "cache" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.live
@pytest.mark.slow
def test_ssh_target_validates_there_and_leaves_nothing(tmp_path, sshd):
    """Two bundled experiments validated over ssh: the column is the remote kernel release and
    host name, how "ssh"; its cells say what the record that came back says; that record was
    made by a validate run from the copy sent to the remote directory; the directory, the
    venv and everything validate made there are gone."""
    out = tmp_path / "out"
    uname = os.uname()
    res = _matrix(tmp_path, "--no-host", "--target", f"ssh:{ALIAS}", "--out", str(out),
                  "--html", str(tmp_path / "kernels.html"), *(str(EXP / f) for f in SET), env=_env(tmp_path, sshd))
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "Accepted publickey for root from 127.0.0.1" in sshd.log()
    assert "nothing is left there" in res.stderr
    mdoc = json.loads((out / "matrix.json").read_text())
    (col,) = mdoc["columns"]
    assert col["how"] == "ssh" and col["target"] == f"ssh:{ALIAS}" and col["error"] is None
    assert col["label"] == f"{uname.release} on {uname.nodename}"
    assert sorted(col["results"]) == sorted(SET)
    doc = record.read_json(str(out / col["record"]))
    assert doc["host"]["release"] == uname.release
    for e in doc["experiments"]:
        # run from the copy in the remote's mktemp -d directory, in the TMPDIR sshd gave it
        assert e["path"].startswith(f"{sshd.remote_tmp}/shmkit-ssh."), e["path"]
        c = e["comparison"]
        name = os.path.basename(e["path"])
        assert col["results"][name] == {"status": e["status"], "matched": c["matched"], "fields": c["fields"],
                                        "first": c.get("first") or (c["checks"][0] if c.get("checks") else None)}
        assert e["status"] == "match", f"{name} over ssh: {c.get('first')}"
        assert f"match {c['matched']}/{c['fields']}" in next(ln for ln in res.stdout.splitlines() if name in ln)
    assert col["label"].split(" on ")[0] in res.stdout and "(ssh," in res.stdout
    assert f"{col['label']}<br>(ssh," in (tmp_path / "kernels.html").read_text()
    _nothing_left(tmp_path, sshd)


def test_unreachable_target_is_one_line_and_exit_1(tmp_path, sshd):
    """A target whose port nobody listens on: ssh's own reason on one line, "no record" in the
    table, exit 1, and no wheel built (the connection fails first)."""
    port = _free_port()
    cfg = tmp_path / "refused_config"
    cfg.write_text(sshd.host("refused", port))
    res = _matrix(tmp_path, "--no-host", "--target", "ssh:refused", "--ssh-config", str(cfg),
                  str(EXP / SET[0]), env=_env(tmp_path), timeout=300)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ssh:refused:")]
    assert lines == [f"ssh:refused: ssh failed: ssh: connect to host 127.0.0.1 port {port}: Connection refused"], res.stdout
    assert "no record" in res.stdout
    assert "building a wheel" not in res.stderr
    _nothing_left(tmp_path, sshd)


@pytest.mark.parametrize("args,said", [
    (["--target", "host.example"], "--target host.example: not an ssh target"),
    (["--target", "ssh:-oProxyCommand=x"], "not a host name ssh takes"),
    (["--target", "ssh:"], "not a host name ssh takes"),
    (["--target", "ssh:h", "--ssh-config", "/nonexistent/ssh_config"], "--ssh-config /nonexistent/ssh_config: no such file"),
])
def test_bad_ssh_target_is_one_line_exit_2(tmp_path, args, said):
    res = _matrix(tmp_path, "--no-host", *args, str(EXP / SET[0]), env=_env(tmp_path), timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "accepted:" in lines[0], res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopped_run_leaves_nothing_on_the_remote(tmp_path, sshd, sig):
    """Ctrl-C: the local side closes the session's stdin, the remote driver stops and its trap
    removes the directory before shmkit exits 130. SIGKILL: ssh dies with shmkit
    (PR_SET_PDEATHSIG), the remote sees its stdin end and the trap removes the directory."""
    proc = subprocess.Popen([*DEFAULT_SIGNALS, "--", sys.executable, "-m", "shmkit", "matrix", "--no-host",
                             "--target", f"ssh:{ALIAS}", str(EXP / SET[0])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path, sshd))
    try:
        for _ in range(6000):           # until the remote directory holds the venv being made
            dirs = list(sshd.remote_tmp.glob("shmkit-ssh.*"))
            if dirs and (dirs[0] / "venv").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        (remote,) = dirs
        assert (remote.stat().st_mode & 0o777) == 0o700
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert list(sshd.remote_tmp.iterdir()) == []
    else:
        for _ in range(1200):           # the remote notices the session's end by itself
            if not list(sshd.remote_tmp.iterdir()):
                break
            time.sleep(0.1)
        assert list(sshd.remote_tmp.iterdir()) == []


def test_remote_without_python3_is_one_line_and_leaves_nothing(tmp_path):
    """The remote side's own checks, without an sshd: a stand-in `ssh` runs the remote command
    here, as a login shell would, with a PATH that has sh, mktemp and rm but no python3. The
    directory mktemp made is removed by the trap, the reason is one line, exit 1, no wheel."""
    remote_bin = tmp_path / "remote-bin"
    remote_bin.mkdir()
    for tool in ("sh", "mktemp", "rm"):
        os.symlink(shutil.which(tool), remote_bin / tool)
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir(mode=0o700)
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    # the destination is the argument before the command, which is the last one (after "--")
    (fake / "ssh").write_text(f'#!/bin/sh\nfor last; do :; done\n'
                              f'exec env -i PATH={remote_bin} TMPDIR={remote_tmp} /bin/sh -c "$last"\n')
    os.chmod(fake / "ssh", 0o700)
    env = dict(_env(tmp_path), PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    res = _matrix(tmp_path, "--no-host", "--target", "ssh:nowhere", str(EXP / SET[0]), env=env, timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ssh:nowhere:")]
    assert lines == [f"ssh:nowhere: python3 not found on the remote host (PATH {remote_bin})"], res.stdout
    assert "no record" in res.stdout and "building a wheel" not in res.stderr
    assert list(remote_tmp.iterdir()) == []
