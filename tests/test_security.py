"""A local user must not be able to steer `shmkit clean` (issue 9, CWE-377/CWE-59).

The attack replayed here worked on shmkit 0.x: user `nobody` created the registry
directory in the world-writable $TMPDIR first, wrote a registry naming a "run" whose
owner is gone, a "worker" that was in fact a live root process (with its true start
time) and a "file" that was a root-owned 0600 file, and root's `shmkit clean` killed
the process and unlinked the file. Each test below plants such state, runs the real
CLI as root, and checks on the machine that nothing was killed or removed; where the
registry directory or file cannot be trusted, that the command refused with exit 2 and
one line, doing nothing.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import posix_ipc
import pytest

from shmkit import procfs, registry
from tests.helpers import registry_entries, shmkit

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="replaying the attack needs root (the victim) and "
                                                  "user nobody (the attacker); run the suite as root")

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no user 'nobody' on this host to play the attacker")

EXP = '''
about = "one object of each named kind"
[[step]]
do = "shm_open"
as = "s"
name = "obj"
create = true
size = "1 page"
[[step]]
do = "file"
name = "f"
size = "1 page"
'''


def as_nobody(fn) -> None:
    """Runs fn() in a forked child that is user nobody (real, effective and saved uid and
    gid, no supplementary groups), as the attacker would be."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY.pw_gid, NOBODY.pw_gid, NOBODY.pw_gid)
            os.setresuid(NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_uid)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's setup failed (see stderr)"


@pytest.fixture
def shared():
    """A world-writable sticky directory, as /tmp is: where the attacker plants things."""
    d = Path(tempfile.mkdtemp(prefix="sectest-", dir="/tmp"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Victims:
    """What root owns and must still have afterwards: a live process, a 0600 file outside any
    run, a POSIX shm name that is no run's (it starts with "shmkit-", not with a run prefix)."""

    def __init__(self, where: Path):
        self.proc = subprocess.Popen(["sleep", "600"])
        self.start = registry.process_start(self.proc.pid)
        self.file = where / "precious"
        self.file.write_text("root's data\n")
        self.file.chmod(0o600)
        self.dir = where / "precious-dir"
        self.dir.mkdir(mode=0o700)
        (self.dir / "inside").write_text("x")
        self.posix = f"/shmkit-victim-{secrets.token_hex(4)}"
        posix_ipc.SharedMemory(self.posix, posix_ipc.O_CREX, mode=0o600, size=4096).close_fd()

    def entries(self, run_id: str, run_dir: str) -> list[dict]:
        """The forged registry: a run whose owner is gone, the live root process as its worker,
        the victims as its objects (directly, by traversal, and through /dev/shm)."""
        dead = subprocess.Popen(["true"])
        dead_start = registry.process_start(dead.pid)
        dead.wait()
        return [
            {"kind": "run", "run": run_id, "owner": dead.pid, "owner_start": dead_start, "dir": run_dir},
            {"kind": "worker", "pid": self.proc.pid, "start": self.start, "name": "main"},
            {"kind": "worker", "pid": os.getpid(), "start": registry.process_start(os.getpid()), "name": "kid"},
            {"kind": "file", "path": str(self.file)},
            {"kind": "file", "path": f"{run_dir}/../{self.file.name}"},
            {"kind": "file", "path": f"{run_dir}/../{self.dir.name}"},
            {"kind": "file", "path": f"/dev/shm/{self.posix[1:]}"},
            {"kind": "posix", "name": self.posix},
            {"kind": "posix", "name": f"/shmkit-{run_id}-../{self.posix[1:]}"},
        ]

    def intact(self) -> list[str]:
        lost = []
        if self.proc.poll() is not None:
            lost.append(f"root's process {self.proc.pid} was killed ({self.proc.returncode})")
        if not self.file.exists():
            lost.append(f"root's file {self.file} was removed")
        if not (self.dir / "inside").exists():
            lost.append(f"root's directory {self.dir} was emptied")
        if not os.path.exists(f"/dev/shm/{self.posix[1:]}"):
            lost.append(f"root's POSIX shm {self.posix} was removed")
        return lost

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        try:
            posix_ipc.unlink_shared_memory(self.posix)
        except posix_ipc.ExistentialError:
            pass


@pytest.fixture
def victims(tmp_path):
    v = Victims(tmp_path)
    try:
        yield v
    finally:
        v.close()


def _write(path: Path, entries: list[dict], mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write("".join(json.dumps(e) + "\n" for e in entries))
    os.chmod(path, mode)   # past the umask


def _refused(res, *words: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback, nothing on stdout."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "accepted:" in lines[0], lines[0]
    assert "removed" not in res.stdout, res.stdout


def _env(**kw) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SHMKIT_STATE", "TMPDIR")}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _cli(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmkit", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# ----- (a) a registry directory pre-created by another user ---------------------------------------
@needs_root
@needs_nobody
def test_old_default_location_planted_by_nobody_is_never_read(shared, victims):
    """The exact attack: nobody creates $TMPDIR/shmkit-registry with a forged registry. Root's
    registry is not in $TMPDIR any more, so clean does not even look there."""
    rid = "4242-abcdef"
    forged = victims.entries(rid, str(shared / f"shmkit-{rid}"))

    def plant():
        d = shared / "shmkit-registry"
        d.mkdir(mode=0o777)
        d.chmod(0o777)
        _write(d / f"{rid}.jsonl", forged, 0o666)

    as_nobody(plant)
    res = _cli("clean", env=_env(TMPDIR=shared))
    assert res.returncode == 0, res.stderr
    assert victims.intact() == []
    assert (shared / "shmkit-registry" / f"{rid}.jsonl").exists(), "clean must not touch another user's files"
    assert registry.registry_path() != shared / "shmkit-registry"


@needs_root
@needs_nobody
@pytest.mark.parametrize("mode", [0o700, 0o755, 0o777])
def test_registry_dir_created_by_nobody_is_refused(shared, victims, mode):
    rid = "4243-abcdef"
    state = shared / "state"
    forged = victims.entries(rid, str(shared / f"shmkit-{rid}"))

    def plant():
        state.mkdir()
        state.chmod(mode)
        _write(state / f"{rid}.jsonl", forged)
        # a prefix-named "run dir" of nobody's, so a removal would show
        (shared / f"shmkit-{rid}").mkdir()
        (shared / f"shmkit-{rid}" / "f").write_text("x")

    as_nobody(plant)
    res = _cli("clean", env=_env(SHMKIT_STATE=state))
    _refused(res, str(state), f"owned by uid {NOBODY.pw_uid}")
    assert victims.intact() == []
    assert (state / f"{rid}.jsonl").exists()
    assert (shared / f"shmkit-{rid}" / "f").exists()


@needs_root
@needs_nobody
@pytest.mark.parametrize("cmd", ["run", "predict", "validate"])
def test_commands_that_write_refuse_a_foreign_registry_and_create_nothing(shared, tmp_path, cmd):
    state = shared / "state"
    as_nobody(lambda: state.mkdir(mode=0o755))
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    res = _cli(cmd, str(exp), env=_env(SHMKIT_STATE=state, TMPDIR=tmp))
    _refused(res, str(state), f"owned by uid {NOBODY.pw_uid}")
    assert list(state.iterdir()) == [], "nothing written into the foreign directory"
    assert list(tmp.iterdir()) == [], "no run directory made"


# ----- (b) a symlinked registry directory ------------------------------------------------------------
@needs_root
@needs_nobody
def test_symlinked_registry_dir_is_refused(shared, tmp_path, victims):
    """nobody points a link at a directory root trusts (its own, 0700, with a dead run whose
    temp dir would be removed): even so, a link is not the directory; nothing happens."""
    real = tmp_path / "real-state"
    real.mkdir(mode=0o700)
    rid = "4244-abcdef"
    run_dir = tmp_path / f"shmkit-{rid}"
    run_dir.mkdir(mode=0o700)
    _write(real / f"{rid}.jsonl", victims.entries(rid, str(run_dir)))
    link = shared / "state"
    as_nobody(lambda: link.symlink_to(real))
    res = _cli("clean", env=_env(SHMKIT_STATE=link))
    _refused(res, str(link), "symbolic link")
    assert victims.intact() == []
    assert run_dir.exists() and (real / f"{rid}.jsonl").exists()
    # the same through root's own link: a link is refused whoever made it
    own = tmp_path / "own-link"
    own.symlink_to(real)
    _refused(_cli("clean", env=_env(SHMKIT_STATE=own)), "symbolic link")
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _refused(_cli("run", str(exp), env=_env(SHMKIT_STATE=own, TMPDIR=tmp)), "symbolic link")
    assert list(tmp.iterdir()) == [] and sorted(p.name for p in real.iterdir()) == [f"{rid}.jsonl"]
    assert run_dir.exists()


# ----- (c) forged entries in root's own registry -----------------------------------------------------
@needs_root
@needs_nobody
def test_forged_entries_in_a_trusted_registry_touch_nothing_outside_the_run(shared, tmp_path, victims):
    """Root's own registry (0700 dir, 0600 file) with entries naming things that are not the
    run's: only the run's own prefix-named temp dir goes; the victims, a link planted in the
    run dir, a prefix-named dir of nobody's and a prefix-named link all stay."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    rid = "4245-abcdef"
    run_dir = tmp_path / f"shmkit-{rid}"
    run_dir.mkdir(mode=0o700)
    (run_dir / "own").write_text("the run's own file")
    (run_dir / "link").symlink_to(victims.file)
    entries = victims.entries(rid, str(run_dir)) + [
        {"kind": "file", "path": str(run_dir / "own")},
        {"kind": "file", "path": str(run_dir / "link")},
    ]
    _write(state / f"{rid}.jsonl", entries)
    # a second dead run whose "dir" is a prefix-named link to root's directory
    rid2 = "4246-abcdef"
    (tmp_path / f"shmkit-{rid2}").symlink_to(victims.dir)
    _write(state / f"{rid2}.jsonl", victims.entries(rid2, str(tmp_path / f"shmkit-{rid2}")))
    # a third whose prefix-named dir belongs to nobody (the run had no user)
    rid3 = "4247-abcdef"
    nobodys = shared / f"shmkit-{rid3}"

    def plant():
        nobodys.mkdir()
        (nobodys / "theirs").write_text("x")

    as_nobody(plant)
    _write(state / f"{rid3}.jsonl", victims.entries(rid3, str(nobodys)))

    res = _cli("clean", env=_env(SHMKIT_STATE=state))
    assert res.returncode == 0, res.stderr
    assert victims.intact() == [], res.stdout
    assert not run_dir.exists(), "the run's own dir is provably its own and goes"
    assert f"file {run_dir / 'own'}" in res.stdout and f"file {run_dir / 'link'}" in res.stdout
    assert (tmp_path / f"shmkit-{rid2}").is_symlink() and (victims.dir / "inside").exists()
    assert (nobodys / "theirs").exists()
    assert "worker" not in res.stdout and "POSIX" not in res.stdout, res.stdout
    assert list(state.iterdir()) == []


# ----- (d) an untrusted registry file or directory mode in root's own directory ---------------------
@needs_root
@needs_nobody
@pytest.mark.parametrize("how", ["world-writable", "group-writable", "owned-by-nobody", "symlink", "dir-777"])
def test_untrusted_registry_file_refuses_everything(tmp_path, victims, how):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # a genuine dead run, which a trusted registry would have cleaned
    good = "4248-abcdef"
    good_dir = tmp_path / f"shmkit-{good}"
    good_dir.mkdir(mode=0o700)
    dead = subprocess.Popen(["true"])
    start = registry.process_start(dead.pid)
    dead.wait()
    _write(state / f"{good}.jsonl", [{"kind": "run", "run": good, "owner": dead.pid, "owner_start": start,
                                      "dir": str(good_dir)}])
    bad = "4249-abcdef"
    entries = victims.entries(bad, str(tmp_path / f"shmkit-{bad}"))
    words = [str(state)]
    if how == "world-writable":
        _write(state / f"{bad}.jsonl", entries, 0o602)
        words.append("writable by group or others")
    elif how == "group-writable":
        _write(state / f"{bad}.jsonl", entries, 0o620)
        words.append("writable by group or others")
    elif how == "owned-by-nobody":
        _write(state / f"{bad}.jsonl", entries)
        os.chown(state / f"{bad}.jsonl", NOBODY.pw_uid, NOBODY.pw_gid)
        words.append(f"owned by uid {NOBODY.pw_uid}")
    elif how == "symlink":
        _write(tmp_path / "elsewhere.jsonl", entries)
        (state / f"{bad}.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
        words.append("cannot be opened safely")
    else:
        _write(state / f"{bad}.jsonl", entries)
        state.chmod(0o777)
        words.append("writable by group or others")
    res = _cli("clean", env=_env(SHMKIT_STATE=state))
    _refused(res, *words)
    assert victims.intact() == []
    assert good_dir.exists() and (state / f"{good}.jsonl").exists(), "refusing means doing nothing"


# ----- what shmkit makes, and who it proves to be a worker -------------------------------------------
@needs_root
def test_registry_is_made_0700_its_files_0600_and_never_twice(tmp_path, monkeypatch):
    state = tmp_path / "new" / "state"
    monkeypatch.setenv("SHMKIT_STATE", str(state))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    old = os.umask(0)   # the modes must not depend on the caller's umask
    try:
        run = registry.Run()
        run.open()
    finally:
        os.umask(old)
    try:
        assert oct(state.stat().st_mode & 0o7777) == oct(0o700)
        assert oct(run.reg_path.stat().st_mode & 0o7777) == oct(0o600)
        assert oct(run.dir.stat().st_mode & 0o7777) == oct(0o700)
        again = registry.Run(run_id=run.run_id)
        with pytest.raises(registry.UnsafeState, match="cannot create the registry file"):
            again.open()   # O_EXCL: an existing registry file is never reused
        assert again.cleanup() == [] and run.dir.exists()
    finally:
        run.cleanup()
    assert not run.dir.exists() and not run.reg_path.exists() and state.is_dir()


def test_default_registry_is_not_in_tmpdir(monkeypatch, tmp_path):
    monkeypatch.delenv("SHMKIT_STATE", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert registry.registry_path() == Path("/run/shmkit")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert registry.registry_path() == tmp_path / "shmkit"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    assert registry.registry_path() == tmp_path / "st" / "shmkit"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", "relative")   # the XDG spec: relative paths are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.registry_path() == tmp_path / "home" / ".local" / "state" / "shmkit"
    monkeypatch.setenv("SHMKIT_STATE", str(tmp_path / "x"))
    assert registry.registry_path() == tmp_path / "x"


def test_a_killed_owner_not_yet_reaped_is_gone():
    """A SIGKILLed run's owner stays a zombie until its parent waits for it; clean must not
    keep the run for that (it did, and the run's objects stayed)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        start = registry.process_start(pid)
        deadline = time.monotonic() + 60
        while registry.alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert registry.process_start(pid) == start, "the zombie's /proc entry is still there"
        assert not registry.alive(pid, start)
    finally:
        os.waitpid(pid, 0)
    assert not registry.alive(pid, start)


def _fake_proc(root: Path, pid: int, start: int, uids: tuple[int, int], argv: list[str]) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    # /proc/PID/stat: field 22 is the start time; the command name may hold spaces and ')'
    rest = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} (py thon) x) " + " ".join(rest) + "\n")
    (d / "status").write_text(f"Name:\tpython\nUid:\t{uids[0]}\t{uids[1]}\t{uids[1]}\t{uids[1]}\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_is_worker_of_needs_start_uid_and_command_line_to_agree(tmp_path):
    cfg = json.dumps({"name": "main", "run": "77-aaaaaa"})
    worker = ["/usr/bin/python3", "-m", "shmkit.worker", "5", cfg]
    _fake_proc(tmp_path, 10, 500, (0, 0), worker)
    _fake_proc(tmp_path, 11, 500, (0, 0), ["sleep", "600"])
    _fake_proc(tmp_path, 12, 500, (0, 1000), worker)          # effective uid not ours
    _fake_proc(tmp_path, 13, 500, (1000, 1000), worker)       # the run's user
    _fake_proc(tmp_path, 14, 500, (0, 0), ["/usr/bin/python3", "-c", "x", "-m", "shmkit.worker", "5", cfg])
    ok = registry.is_worker_of
    assert ok(10, 500, "77-aaaaaa", {0}, str(tmp_path))
    assert not ok(10, 501, "77-aaaaaa", {0}, str(tmp_path)), "another start time: a reused pid"
    assert not ok(10, None, "77-aaaaaa", {0}, str(tmp_path)), "no recorded start time: no proof"
    assert not ok(10, 500, "77-bbbbbb", {0}, str(tmp_path)), "a worker of another run"
    assert not ok(11, 500, "77-aaaaaa", {0}, str(tmp_path)), "not a shmkit worker"
    assert not ok(12, 500, "77-aaaaaa", {0}, str(tmp_path))
    assert ok(13, 500, "77-aaaaaa", {0, 1000}, str(tmp_path))
    assert not ok(13, 500, "77-aaaaaa", {0}, str(tmp_path))
    assert not ok(14, 500, "77-aaaaaa", {0}, str(tmp_path)), "the module must be what python runs"
    assert not ok(99, 500, "77-aaaaaa", {0}, str(tmp_path)), "gone"


@pytest.mark.live
def test_a_real_worker_is_proved_to_be_its_runs_and_no_other(tmp_path, monkeypatch):
    """The manager's command line and the registry's proof agree on the live side."""
    from shmkit import manager
    from shmkit.spec import ExperimentBuilder

    monkeypatch.setenv("SHMKIT_STATE", str(tmp_path / "state"))
    exp = ExperimentBuilder(about="a worker").memfd(as_="_x", name="x").build()
    m = manager.Manager(exp)
    m.run.open()
    try:
        m.spawn_main()
        pid = m.procs["main"].pid
        start = registry.process_start(pid)
        uids = {os.geteuid()}
        assert registry.is_worker_of(pid, start, m.run.run_id, uids)
        assert not registry.is_worker_of(pid, start, m.run.run_id + "0", uids)
        assert not registry.is_worker_of(os.getpid(), registry.process_start(os.getpid()), m.run.run_id, uids)
    finally:
        m.shutdown()
        m.run.cleanup()


PR_GET_CHILD_SUBREAPER = 37     # uapi/linux/prctl.h


@pytest.fixture
def subreaper():
    """This test process as the orphans' subreaper (PR_SET_CHILD_SUBREAPER) for one test, then
    as it was; the pids the test appends to the yielded list are reaped at the end."""
    import ctypes

    from shmkit import libc
    from shmkit.manager import PR_SET_CHILD_SUBREAPER

    was = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(was))
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    adopted: list[int] = []
    try:
        yield adopted
    finally:
        for pid in adopted:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        libc.prctl(PR_SET_CHILD_SUBREAPER, was.value)


@needs_root
def test_a_killed_run_is_still_cleaned_and_its_worker_killed(tmp_path, subreaper):
    """The positive side: a run whose manager was SIGKILLed while a worker lives on is cleaned
    by `shmkit clean`: the worker killed, every object gone. The main worker dies with the
    manager (PR_SET_PDEATHSIG); a forked one would see its socket close and exit, so it is
    stopped first, as a worker stuck in a step would be.

    The workers have a process group of their own (shmkit.manager). A stopped member of a
    process group that becomes orphaned gets SIGHUP + SIGCONT (kernel/exit.c
    kill_orphaned_pgrp), which kills a worker; with this test process as the subreaper
    (kernel/exit.c find_new_reaper) the workers' new parent is in their session and outside
    their group, so the group is never orphaned (will_become_orphaned_pgrp) and the kid can be
    stopped while the manager still lives. Stopped then, it cannot reach the end of its step
    and exit before the check, however loaded the machine (stopped only after the manager's
    death, it often had: the manager notes a step's objects before it sends the step)."""
    state = tmp_path / "state"
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP + '[[step]]\ndo = "fork"\nchild = "kid"\n'
                   '[[step]]\ndo = "file"\nin = "kid"\nname = "big"\nsize = "64 MiB"\nfill = "random"\n')
    # the prefix mode's `clean` (a hermetic run needs none: tests/test_hermetic.py); the
    # manager waits for the stopped kid (its ready message or its step) up to --timeout
    env = _env(SHMKIT_STATE=state, SHMKIT_ISOLATION="prefix")
    proc = subprocess.Popen([sys.executable, "-m", "shmkit", "run", str(exp), "--attempts", "1",
                             "--timeout", "3600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    entries, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        entries = registry_entries(state) if state.exists() else []
        if any(e.get("kind") == "worker" and e["name"] == "kid" for e in entries):
            break
        time.sleep(0.05)
    worker = next((e for e in entries if e.get("kind") == "worker" and e["name"] == "kid"), None)
    run = next((e for e in entries if e.get("kind") == "run"), None)
    assert worker and run, (proc.poll(), entries)
    prefix = f"shmkit-{run['run']}-"
    main = next(e for e in entries if e.get("kind") == "worker" and e["name"] == "main")
    subreaper += [main["pid"], worker["pid"]]
    try:
        # the kid is noted once forked; the run goes on only through it (its ready message,
        # then its file step), so it is stopped before the run can end
        os.kill(worker["pid"], signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while procfs.process_state(worker["pid"]) not in ("T", None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procfs.process_state(worker["pid"]) == "T", procfs.process_state(worker["pid"])
        assert proc.poll() is None, "the run ended before its kid was stopped"
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while registry.alive(main["pid"], main["start"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not registry.alive(main["pid"], main["start"]), "PR_SET_PDEATHSIG did not end the main worker"
        assert registry.is_worker_of(worker["pid"], worker["start"], run["run"], {os.geteuid()}), \
            procfs.process_state(worker["pid"])
        res = shmkit("clean", state=state)
        assert res.returncode == 0, res.stderr
        assert f"removed worker pid {worker['pid']}" in res.stdout, res.stdout
        assert f"removed dir {run['dir']}" in res.stdout, res.stdout
        assert not Path(run["dir"]).exists()
        assert [n for n in os.listdir("/dev/shm") if n.startswith(prefix)] == []
        assert list(state.glob("*.jsonl")) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if registry.process_start(worker["pid"]) == worker["start"]:
            os.kill(worker["pid"], signal.SIGKILL)
        shmkit("clean", state=state)


# ----- shmkit bench: its lock file in /run/lock and its run directory in $TMPDIR --------------------
@needs_root
@needs_nobody
@pytest.mark.parametrize("how", ["symlink", "owned-by-nobody", "world-writable", "fifo"])
def test_bench_lock_file_planted_by_nobody_is_refused(shared, victims, how):
    """/run/lock is world-writable and this host has fs.protected_symlinks = 0: a lock file
    planted as a link to root's file would be truncated by root's `shmkit bench`."""
    from shmkit.bench.cli import BadInput
    from shmkit.bench.runner import open_own_file

    lock = shared / "shmkit-bench.lock"

    def plant():
        if how == "symlink":
            lock.symlink_to(victims.file)
        elif how == "fifo":
            os.mkfifo(lock, 0o666)
        else:
            lock.write_text("")
            lock.chmod(0o666 if how == "world-writable" else 0o644)

    as_nobody(plant)
    if how == "world-writable":
        os.chown(lock, 0, 0)   # root's, but anyone may write it
    with pytest.raises(BadInput) as e:
        open_own_file(str(lock), "lock file")
    assert str(lock) in str(e.value) and "accepted:" in str(e.value) and "\n" not in str(e.value)
    assert victims.file.read_text() == "root's data\n"


@needs_root
def test_bench_lock_file_of_our_own_is_used(tmp_path):
    from shmkit.bench.runner import open_own_file

    fd = open_own_file(str(tmp_path / "lock"), "lock file")
    try:
        assert oct(os.fstat(fd).st_mode & 0o7777) == oct(0o644 & ~_umask())
    finally:
        os.close(fd)
    os.close(open_own_file(str(tmp_path / "lock"), "lock file"))   # and again, existing


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@needs_root
@needs_nobody
def test_bench_run_dir_planted_by_nobody_steers_nothing(shared, monkeypatch):
    """nobody creates $TMPDIR/shmkit-bench-<dead pid>/pids naming root's process: the sweep of
    stale benchmarks must not remove that process's private SysV segment, and a benchmark whose
    own pid's directory was planted refuses to start."""
    import sysv_ipc

    from shmkit.bench import cleanup
    from shmkit.bench.cli import BadInput

    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    dead = subprocess.Popen(["true"])
    dead.wait()
    seg = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
    try:
        d = cleanup.rundir(dead.pid)

        def plant():
            os.mkdir(d, 0o755)
            with open(os.path.join(d, "pids"), "w") as f:
                f.write(f"{os.getppid()}\n")   # the test process: the segment's creator

        as_nobody(plant)
        assert not cleanup.trusted_dir(d)
        cleanup.sweep(dead.pid, keep_dir=False)
        cleanup.sweep_stale()
        assert any(s["shmid"] == seg.id for s in cleanup.sysv_segments()), "root's segment was removed"
        assert os.path.exists(os.path.join(d, "pids"))
        with pytest.raises(BadInput, match="not this user's own directory"):
            cleanup.make_rundir(d)
    finally:
        seg.remove()
