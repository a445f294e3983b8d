"""The hermetic mode (shmkit.isolation, issue 11) against what the kernel must do, and the
prefix mode when asked for.

Checked on the live side, not against the model: the workers are in other IPC and mount
namespaces than the manager; their /dev/shm is another filesystem; a SIGKILLed manager leaves
nothing on the host (no /dev/shm name, no SysV segment, no temp dir, no registry file) with no
`shmkit clean`; shmids are the numbers ipc/util.c ipc_idr_alloc() gives in a fresh namespace
(worked out here by hand), the same over 5 runs.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from shmkit import isolation, manager, procfs
from shmkit.spec import ExperimentBuilder, SpecError, loads
from tests.helpers import kill_run, shmkit, start_in_long_step

HERMETIC_OK, WHY = isolation.probe()
needs_ns = pytest.mark.skipif(not HERMETIC_OK, reason=f"no namespaces here: {WHY}")


def _host_segments() -> list[tuple[int, int]]:
    with open("/proc/sysvipc/shm") as f:
        next(f)
        return [(int(x.split()[0]), int(x.split()[1])) for x in f]


def _wait(cond, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@needs_ns
def test_workers_run_in_their_own_ipc_and_mount_namespace():
    b = ExperimentBuilder(about="namespaces")
    b.shm_open(as_="s", name="/probe", create=True, size="1 page").fork(child="kid")
    m = manager.Manager(b.build(), isolate="hermetic")
    try:
        m.open()
        main = m.spawn_main()
        for step in m.exp.steps:
            m.take_step(step)
        for proc in m.procs.values():
            for ns in ("ipc", "mnt"):
                assert os.readlink(f"/proc/{proc.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        # the child shares its parent's namespaces (fork copies the nsproxy)
        assert isolation.ns_ids(m.procs["kid"].pid) == isolation.ns_ids(main.pid)
        # their /dev/shm is a tmpfs of their own: another device, holding the exact name,
        # which the host's /dev/shm does not have
        root = f"/proc/{main.pid}/root/dev/shm"
        assert os.stat(root).st_dev != os.stat("/dev/shm").st_dev
        assert os.listdir(root) == ["probe"]
        assert not os.path.exists("/dev/shm/probe") or os.stat("/dev/shm/probe").st_ino != \
            os.stat(f"{root}/probe").st_ino
    finally:
        m.close()


LONG = """about = "objects of every kind in the run's namespaces, then a step that lasts"
[[step]]
do = "shm_open"
as = "s"
name = "/NAME"
create = true
size = "4 pages"
[[step]]
do = "shmget"
as = "seg"
key = KEY
size = "4 pages"
create = true
[[step]]
do = "shmat"
as = "a"
segment = "seg"
[[step]]
do = "file"
name = "t"
size = "4 pages"
on = "tmpfs"
[[step]]
do = "file"
name = "d"
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
"""


@needs_ns
def test_sigkill_of_the_parent_leaves_nothing_without_clean(tmp_path):
    name = f"hermetic-{secrets.token_hex(4)}"
    key = 0x48000000 | secrets.randbits(24)
    exp = tmp_path / "long.toml"
    exp.write_text(LONG.replace("NAME", name).replace("KEY", str(key)))
    state = tmp_path / "state"
    state.mkdir()
    proc, entries = start_in_long_step(exp, state, "--isolation", "hermetic")
    try:
        run = next(e for e in entries if e["kind"] == "run")
        workers = [e["pid"] for e in entries if e.get("kind") == "worker"]
        run_dir = Path(run["dir"])
        main = workers[0]
        # mid-run: the objects exist, in the run's namespaces only
        assert name in os.listdir(f"/proc/{main}/root/dev/shm")
        assert name not in os.listdir("/dev/shm")
        inside = isolation.in_ipc_ns(main, _host_segments)
        assert [k for k, _ in inside] == [key]
        assert key not in [k for k, _ in _host_segments()]
        assert run_dir.is_dir() and (run_dir / "d").exists()
        # the registry never names a namespaced object: there is nothing for `clean` to do
        assert not [e for e in entries if e.get("kind") in ("posix", "sysv", "memfd")]
    except BaseException:
        proc.kill()
        raise
    kill_run(proc)                    # SIGKILL: no cleanup of its own

    def gone(pid):
        # a zombie has exited: the test process may be the orphans' subreaper (an in-process
        # run_experiment made it one), and then it reaps them here
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return not procfs.alive(pid)

    assert _wait(lambda: all(gone(p) for p in workers)), "the workers outlived the manager"
    assert _wait(lambda: not run_dir.exists()), f"{run_dir} left behind"
    assert _wait(lambda: list(state.glob("*.jsonl")) == []), "registry file left behind"
    assert name not in os.listdir("/dev/shm")
    assert key not in [k for k, _ in _host_segments()]
    # and `clean` finds nothing to do
    res = shmkit("clean", state=state)
    assert "nothing left" in res.stdout, res.stdout


def _shmids(rec) -> list[int]:
    return [s["value"]["shmid"] for s in rec["steps"] if s["do"] == "shmget" and s["result"] == "ok"]


@needs_ns
def test_same_shmids_over_five_runs_as_ipc_idr_alloc_gives_them(run):
    """A fresh namespace: ipc_init_ids() sets seq 0 and last_idx -1; idr_alloc_cyclic() goes on
    from the last index + 1, so the segment made after an IPC_RMID does not reuse the freed
    index: 0, 1, 2, then 3 (not 1). shmid = seq * 32768 + idx (IPCMNI_SHIFT 15)."""
    b = ExperimentBuilder(about="shmids")
    for h in ("a", "b", "c"):
        b.shmget(as_=h, key="private", size="1 page", create=True)
    b.shmctl(segment="b", cmd="rmid").shmget(as_="d", key=77, size="1 page", create=True)
    exp = b.build()
    seen = []
    for _ in range(5):
        rec = manager.run_experiment(exp, attempts=1, isolate="hermetic")
        assert rec["isolation"]["mode"] == "hermetic"
        seen.append(_shmids(rec))
    assert seen == [[0, 1, 2, 3]] * 5
    # and /proc/sysvipc/shm lists the run's own namespace: exactly its segments, with the key as given
    assert [(r["key"], r["shmid"]) for r in rec["steps"][-1]["sysv"]] == [(0, 0), (0, 2), (77, 3)]


@needs_ns
def test_the_ipc_idr_wraps_after_ipc_min_cycle_indexes():
    """ipc_idr_alloc: max_idx = max(in_use * 3/2, ipc_min_cycle = 64): with one segment at a
    time, indexes 0..63 are used in turn, then the cursor wraps to 0 and seq grows: 32768.
    Live against this hand-made rule, and the model against the live run."""
    from shmkit.profile import read_profile
    from shmkit.validate import validate_experiment

    b = ExperimentBuilder(about="cyclic shmid allocation wraps after 64 indexes")
    for i in range(66):
        b.shmget(as_=f"s{i}", key="private", size="1 page", create=True).shmctl(segment=f"s{i}", cmd="rmid")
    exp = b.build()
    out = validate_experiment(exp, read_profile().to_dict(), attempts=1)
    assert _shmids(out["live"]) == list(range(64)) + [32768, 32769]
    assert out["status"] == "match", out["comparison"]["first"]


@needs_ns
def test_sysv_limits_are_the_namespace_own(run):
    b = ExperimentBuilder(about="limits", shmmax=8192, shmmni=1, shmall=5)
    b.shmget(as_="a", key="private", size="2 pages", create=True)
    b.shmget(as_="b", key="private", size="3 pages", create=True)
    rec = run(b)
    # read back from the namespace's /proc/sys/kernel files, not copied from the setup
    assert rec["isolation"]["ipc_sysctl"] == {"shmmax": 8192, "shmall": 5, "shmmni": 1}
    assert rec["steps"][1]["result"] == {"errno": "EINVAL"}    # 3 pages > shmmax (checked first)
    with open("/proc/sys/kernel/shmmni") as f:                 # the host's stay as they were
        assert int(f.read()) != 1


def test_prefix_mode_is_used_when_asked(monkeypatch, run):
    monkeypatch.setenv("SHMKIT_ISOLATION", "prefix")
    b = ExperimentBuilder(about="prefix")
    b.shm_open(as_="s", name="/pfx", create=True, size="1 page")
    b.shmget(as_="g", key=5, size="1 page", create=True)
    rec = run(b)
    assert rec["isolation"] == {"mode": "prefix"}
    assert rec["prefix"].startswith("shmkit-")
    assert list(rec["names"]["posix"]) == ["/" + rec["prefix"] + "pfx"]
    assert rec["steps"][0]["dev_shm"][0]["name"] == rec["prefix"] + "pfx"
    assert [int(k) for k in rec["names"]["keys"]] != [5]           # run-unique key
    # the run removed its objects from the host's /dev/shm and SysV table
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(rec["prefix"])]
    assert not [k for k, _ in _host_segments() if str(k) in rec["names"]["keys"]]


def test_prefix_mode_validates_green(monkeypatch):
    from shmkit.profile import read_profile
    from shmkit.validate import validate_experiment
    from shmkit.cli import bundled_dir
    from shmkit.spec import load

    monkeypatch.setenv("SHMKIT_ISOLATION", "prefix")
    profile = read_profile().to_dict()
    for name in ("posix-shm-names.toml", "sysv-shmget-errors.toml", "posix-shm-open-in-child.toml"):
        out = validate_experiment(load(str(bundled_dir() / name)), profile)
        assert out["live"]["isolation"]["mode"] == "prefix"
        assert out["status"] == "match", (name, out["comparison"]["first"])


def test_limits_in_prefix_mode_are_refused_in_one_line(tmp_path):
    from shmkit.cli import bundled_dir

    res = shmkit("run", "--isolation", "prefix", str(bundled_dir() / "sysv-shmmax-einval.toml"),
                 state=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "setup: shmmax" in res.stderr and "hermetic" in res.stderr


@pytest.mark.parametrize("text, field", [
    ("shmmni = 32769", "shmmni"), ("shmmni = -1", "shmmni"), ('shmall = "x"', "shmall"),
    ('shmmax = "1.5 B"', "shmmax"), ("shmmax = true", "shmmax")])
def test_bad_limits_name_the_field(text, field):
    with pytest.raises(SpecError) as e:
        loads(f'about = "x"\n[setup]\n{text}\n[[step]]\ndo = "shmget"\nas = "a"\nsize = 1\ncreate = true\n',
              "f.toml")
    assert f"setup: {field}:" in str(e.value)


def test_limits_parse():
    exp = loads('about = "x"\n[setup]\nshmmax = "4 pages"\nshmmni = 2\nshmall = 3\n'
                '[[step]]\ndo = "shmget"\nas = "a"\nsize = 1\ncreate = true\n', "f.toml")
    assert (exp.setup.shmmax, exp.setup.shmmni, exp.setup.shmall) == (4 * os.sysconf("SC_PAGE_SIZE"), 2, 3)


def test_dev_shm_options_copy_the_host_size():
    text = ("25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1024k,nr_inodes=9\n"
            "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=2048k\n")
    assert isolation.dev_shm_options(text) == "mode=1777,size=2048k"


def test_guardian_removes_the_dir_only_if_it_is_still_the_same(tmp_path):
    """The guardian acts on what it holds: a directory swapped in under the run's name is not
    the run's, and stays."""
    from shmkit.registry import start_guardian

    run_dir = tmp_path / "shmkit-1-abcdef"
    run_dir.mkdir(mode=0o700)
    reg_dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    reg_fd = os.open("reg.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=reg_dfd)
    try:
        sock, proc = start_guardian(run_dir, reg_dfd, reg_fd, "reg.jsonl")
        run_dir.rename(tmp_path / "moved")
        (tmp_path / "shmkit-1-abcdef").mkdir()
        sock.close()
        proc.wait(timeout=60)
        assert (tmp_path / "shmkit-1-abcdef").is_dir() and (tmp_path / "moved").is_dir()
        assert not (tmp_path / "reg.jsonl").exists()       # the registry file was the same one
    finally:
        os.close(reg_fd)
        os.close(reg_dfd)
