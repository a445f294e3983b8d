"""Runs that switch to the same user take turns (registry.user_lock): the kernel charges
SHM_LOCK to the user (mm/mlock.c:user_shm_lock), so two at once would see each other's charge.
The lock file is trusted only if it is ours, regular and writable by no one else."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import threading

import pytest

from shmkit import registry

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root"),
              pytest.mark.skipif(NOBODY is None, reason="no user 'nobody' on this host")]

EXP = '''
about = "a run as nobody"
[setup]
user = "nobody"
[[step]]
do = "mmap"
as = "a"
length = "1 page"
prot = "rw"
flags = ["private", "anonymous"]
'''


@pytest.fixture
def state(tmp_path, monkeypatch):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("SHMKIT_STATE", str(d))
    return d


def test_two_runs_as_the_same_user_take_turns(state):
    first = registry.Run(user="nobody")
    first.open()
    second = registry.Run(user="nobody")
    opened = threading.Event()

    def open_second():
        second.open()
        opened.set()

    t = threading.Thread(target=open_second, daemon=True)
    try:
        t.start()
        assert not opened.wait(1.0), "a second run as nobody started while the first one held the user"
        assert oct(os.stat(state / f"user-{NOBODY.pw_uid}.lock").st_mode & 0o777) == "0o600"
    finally:
        first.cleanup()
    assert opened.wait(60), "the second run never started after the first one ended"
    t.join(10)
    second.cleanup()


@pytest.mark.parametrize("plant", ["symlink", "foreign", "writable"])
def test_an_untrusted_user_lock_is_refused(state, tmp_path, plant):
    """A lock file that is a symlink, nobody's, or group/world-writable stops the run with one
    line and exit 2; the symlink's target is not touched."""
    lock = state / f"user-{NOBODY.pw_uid}.lock"
    target = tmp_path / "victim"
    target.write_text("precious")
    if plant == "symlink":
        lock.symlink_to(target)
    else:
        lock.write_text("")
        if plant == "foreign":
            os.chown(lock, NOBODY.pw_uid, NOBODY.pw_gid)
        else:
            os.chmod(lock, 0o666)
    exp = tmp_path / "e.toml"
    exp.write_text(EXP)
    env = dict(os.environ, SHMKIT_STATE=str(state), TMPDIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-m", "shmkit", "run", str(exp)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr)
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "user lock" in line, line
    assert target.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("shmkit-")] == []
