"""shmkit.damon on a fake /sys tree (reading, which contexts clear accessed bits, the pause and
its restore on every path), the "not compared" part of shmkit.compare, and, live, the
--pause-damon option of the command line (skipped without a running kdamond or without root)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shmkit import damon
from shmkit.compare import (
    NotCompared, count_fields, count_not_compared, damon_not_compared, differences, masked,
)

ADMIN = "kernel/mm/damon/admin/kdamonds"


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def _kdamond(root: Path, index: int, state: str, ops: str, pid_target: int = 0,
             actions=("pageout",)) -> None:
    k = f"{ADMIN}/{index}"
    _write(root, f"{k}/state", state)
    _write(root, f"{k}/pid", "81" if state == "on" else "-1")
    c = f"{k}/contexts/0"
    _write(root, f"{k}/contexts/nr_contexts", "1")
    _write(root, f"{c}/operations", ops)
    _write(root, f"{c}/monitoring_attrs/intervals/sample_us", "500000")
    _write(root, f"{c}/monitoring_attrs/intervals/aggr_us", "5000000")
    _write(root, f"{c}/targets/nr_targets", "1")
    _write(root, f"{c}/targets/0/pid_target", str(pid_target))
    _write(root, f"{c}/targets/0/regions/nr_regions", "1")
    _write(root, f"{c}/targets/0/regions/0/start", "4294967296")
    _write(root, f"{c}/targets/0/regions/0/end", "10066329600")
    _write(root, f"{c}/schemes/nr_schemes", str(len(actions)))
    for i, a in enumerate(actions):
        _write(root, f"{c}/schemes/{i}/action", a)
        _write(root, f"{c}/schemes/{i}/ops_filters/nr_filters", "2")
        _write(root, f"{c}/schemes/{i}/ops_filters/0/type", "anon")
        _write(root, f"{c}/schemes/{i}/ops_filters/0/allow", "N")
        _write(root, f"{c}/schemes/{i}/ops_filters/0/matching", "Y")
        _write(root, f"{c}/schemes/{i}/ops_filters/1/type", "unmapped")
        _write(root, f"{c}/schemes/{i}/ops_filters/1/allow", "Y")
        _write(root, f"{c}/schemes/{i}/ops_filters/1/matching", "Y")


def _fake(tmp_path: Path, *kdamonds, modules=None) -> Path:
    root = tmp_path / "sys"
    (root / ADMIN).mkdir(parents=True)
    _write(root, f"{ADMIN}/nr_kdamonds", str(len(kdamonds)))
    for i, (state, ops, *rest) in enumerate(kdamonds):
        _kdamond(root, i, state, ops, *rest)
    for name, enabled in (modules or {}).items():
        _write(root, f"module/{name}/parameters/enabled", enabled)
        _write(root, f"module/{name}/parameters/kdamond_pid", "90" if enabled == "Y" else "-1")
    return root


def _state(root: Path, index: int = 0) -> str:
    return (root / ADMIN / str(index) / "state").read_text().strip()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def test_read_damon_of_this_projects_host_configuration(tmp_path):
    root = _fake(tmp_path, ("on", "paddr"))
    assert damon.read_damon(str(root)) == {
        "kdamonds": [{"index": 0, "state": "on", "pid": 81, "contexts": [{
            "operations": "paddr", "sample_us": 500000, "aggr_us": 5000000,
            "targets": [{"pid": 0, "regions": [[4294967296, 10066329600]]}],
            "schemes": [{"action": "pageout", "filters": ["anon reject", "unmapped allow"]}]}]}],
        "modules": {}}


def test_read_damon_without_damon_is_none(tmp_path):
    assert damon.read_damon(str(tmp_path)) is None


def test_read_damon_modules(tmp_path):
    root = _fake(tmp_path, modules={"damon_reclaim": "Y", "damon_lru_sort": "N"})
    state = damon.read_damon(str(root))
    assert state["modules"] == {"damon_reclaim": {"enabled": True, "kdamond_pid": 90},
                                "damon_lru_sort": {"enabled": False, "kdamond_pid": -1}}
    assert damon.clearers(state) == ["damon_reclaim (paddr, pid 90)"]


@pytest.mark.parametrize("kdamond, pids, clears", [
    (("on", "paddr"), set(), True),
    (("off", "paddr"), set(), False),
    (("on", "vaddr", 4242), set(), False),        # another process's page tables
    (("on", "vaddr", 4242), {4242}, True),        # one of ours
    (("on", "fvaddr", 4242), {1, 4242}, True),
])
def test_which_contexts_clear_our_accessed_bits(tmp_path, kdamond, pids, clears):
    state = damon.read_damon(str(_fake(tmp_path, kdamond)))
    assert bool(damon.clearers(state, pids)) is clears


def test_watch_notices_damon_switched_during_the_run(tmp_path):
    root = _fake(tmp_path, ("off", "paddr"))
    with damon.Watch(str(root)) as w:
        _write(root, f"{ADMIN}/0/state", "on")
        _write(root, f"{ADMIN}/0/pid", "99")
    assert w.clearers() == ["kdamond 0 context 0 (paddr, pid 99)",
                            "DAMON was switched on or off during the run"]
    with damon.Watch(str(root)) as w:
        pass
    assert w.clearers() == ["kdamond 0 context 0 (paddr, pid 99)"]


def test_profile_records_damon(tmp_path):
    from shmkit.profile import KernelProfile, read_profile

    root = _fake(tmp_path, ("on", "paddr"))
    p = read_profile(str(tmp_path / "noproc"), str(root))
    assert p.damon["kdamonds"][0]["contexts"][0]["operations"] == "paddr"
    d = json.loads(json.dumps(p.to_dict()))
    assert KernelProfile.from_dict(d) == p and d["damon"] == p.damon


# --------------------------------------------------------------------------------------------
# Pausing
# --------------------------------------------------------------------------------------------

def _pause(root: Path, lines: list) -> damon.Pause:
    return damon.Pause(str(root), say=lines.append)


def test_pause_turns_off_what_runs_and_back_on(tmp_path):
    root = _fake(tmp_path, ("on", "paddr"), ("off", "vaddr"), modules={"damon_reclaim": "Y"})
    lines = []
    with _pause(root, lines) as p:
        assert (_state(root, 0), _state(root, 1)) == ("off", "off")
        assert (root / "module/damon_reclaim/parameters/enabled").read_text() == "N"
    assert (_state(root, 0), _state(root, 1)) == ("on", "off")      # the one that was off stays off
    assert (root / "module/damon_reclaim/parameters/enabled").read_text() == "Y"
    assert p.account() == {"paused": [
        {"what": "kdamond 0", "operations": ["paddr"], "pid_before": 81, "restored": True},
        {"what": "damon_reclaim", "operations": ["paddr"], "pid_before": 90, "restored": True}],
        "notes": []}
    assert "turned off kdamond 0 (paddr), damon_reclaim (paddr)" in lines[0]
    assert f"echo on > {root}/{ADMIN}/0/state" in lines[0]          # the way back after SIGKILL
    assert lines[-1] == "shmkit: --pause-damon: turned kdamond 0, damon_reclaim back on"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_pause_restores_on_an_exception_and_on_ctrl_c(tmp_path, exc):
    root = _fake(tmp_path, ("on", "paddr"))
    with pytest.raises(exc):
        with _pause(root, []):
            assert _state(root) == "off"
            raise exc("boom")
    assert _state(root) == "on"


def test_pause_with_nothing_running_says_so(tmp_path):
    root = _fake(tmp_path, ("off", "paddr"))
    lines = []
    with _pause(root, lines) as p:
        pass
    assert _state(root) == "off"
    assert p.account() == {"paused": [], "notes": ["no DAMON context was running: nothing paused"]}
    assert lines == ["shmkit: --pause-damon: no DAMON context was running; nothing paused"]


def test_pause_leaves_a_kdamond_someone_else_restarted(tmp_path):
    root = _fake(tmp_path, ("on", "paddr"))
    lines = []
    with _pause(root, lines) as p:
        _write(root, f"{ADMIN}/0/state", "on")
    assert p.account()["paused"][0]["restored"] is False
    assert "kdamond 0 was turned back on by someone else during the run" in p.account()["notes"]


def test_a_failed_restore_is_an_error_saying_the_command(tmp_path):
    root = _fake(tmp_path, ("on", "paddr"))
    state = root / ADMIN / "0" / "state"
    with pytest.raises(damon.DamonError, match=f"echo on > {state}"):
        with _pause(root, []):
            state.unlink()
            state.mkdir()           # cannot be written any more


def test_two_pauses_do_not_overlap(tmp_path):
    """The second pauser waits for the first to restore; its own pause then starts afresh."""
    root = _fake(tmp_path, ("on", "paddr"))
    first_lines, second_lines, order = [], [], []
    with _pause(root, first_lines):
        t = threading.Thread(target=lambda: _second(root, second_lines, order))
        t.start()
        time.sleep(0.3)
        order.append("first ends")
    t.join(10)
    assert order == ["first ends", "second paused"]
    assert second_lines[0] == "shmkit: --pause-damon: waiting for another shmkit run that paused DAMON"
    assert _state(root) == "on"


def _second(root, lines, order):
    with _pause(root, lines) as p:
        order.append("second paused")
        assert p.account()["paused"][0]["what"] == "kdamond 0"


# --------------------------------------------------------------------------------------------
# Not compared
# --------------------------------------------------------------------------------------------

def _rec(ref_main: int, ref_kid: int) -> dict:
    def proc(ref):
        return {"maps": ["a"], "vmas": [{"smaps_kb": {"Rss": 8, "Referenced": ref}, "vmflags": ["rd"]}]}
    return {"initial": {"main": ["a"]},
            "steps": [{"index": 1, "do": "fork", "result": "ok", "perturbed": False,
                       "processes": {"main": proc(ref_main), "kid": proc(ref_kid)}}]}


def test_not_compared_fields_are_left_out_and_counted():
    skip = damon_not_compared(["kdamond 0 context 0 (paddr, pid 81)"])
    a, b = _rec(8, 0), _rec(8, 2048)
    assert [d.where for d in differences(a, b)] == ["processes.kid.vmas[0].smaps_kb.Referenced"]
    assert differences(a, b, skip) == []
    assert count_fields(a) - count_fields(a, skip) == count_not_compared(a, skip[0]) == 2
    assert skip[0].account(2) == {"field": "smaps_kb.Referenced", "count": 2,
                                  "why": "host DAMON clears accessed bits",
                                  "known_difference": "damon-accessed-bits",
                                  "cause": ["kdamond 0 context 0 (paddr, pid 81)"]}
    m = masked(b, skip)
    assert m["steps"][0]["processes"]["kid"]["vmas"][0]["smaps_kb"] == {
        "Rss": 8, "Referenced": "<not compared: host DAMON clears accessed bits>"}
    assert b["steps"][0]["processes"]["kid"]["vmas"][0]["smaps_kb"]["Referenced"] == 2048


def test_without_damon_everything_is_compared():
    assert damon_not_compared([]) == ()
    assert masked(_rec(1, 2), ()) == _rec(1, 2)


def test_not_compared_names_a_known_difference():
    from model.known_differences import by_id

    (n,) = damon_not_compared(["x"])
    assert isinstance(n, NotCompared) and by_id(n.known_difference).test == "test_damon_accessed_bits"


def test_validate_accounts_for_what_it_did_not_compare(monkeypatch):
    """validate_experiment with a DAMON context running: Referenced is left out, and the
    comparison lists how many fields and why."""
    from shmkit import validate

    class FakeWatch:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def clearers(self, pids=frozenset()):
            return ["kdamond 0 context 0 (paddr, pid 81)"]

    monkeypatch.setattr(validate.damon, "Watch", FakeWatch)
    if not sys.platform.startswith("linux"):
        pytest.skip("live runs need Linux")
    from shmkit import spec
    from shmkit.profile import read_profile

    exp = spec.loads('about = "x"\n[[step]]\ndo = "mmap"\nas = "b"\nlength = "2 pages"\nprot = "rw"\n'
                     'flags = ["private", "anonymous"]\n[[step]]\ndo = "touch"\nregion = "b"\n'
                     'access = "write"\n', "x.toml")
    r = validate.validate_experiment(exp, read_profile().to_dict())
    (n,) = r["comparison"]["not_compared"]
    assert n["field"] == "smaps_kb.Referenced" and n["count"] == 2      # one VMA, two steps
    assert n["cause"] == ["kdamond 0 context 0 (paddr, pid 81)"]
    total = validate.summary([r])["not_compared"]
    assert total == [{**n, "experiments": 1}]


def test_html_report_shows_damon_and_what_was_not_compared():
    from shmkit.html_report import render_html

    host = {"damon": {"kdamonds": [{"index": 0, "state": "on", "pid": 81, "contexts": [
        {"operations": "paddr", "sample_us": 500000, "aggr_us": 5000000, "targets": [],
         "schemes": [{"action": "pageout", "filters": ["anon reject"]}]}]}], "modules": {}}}
    n = {"field": "smaps_kb.Referenced", "count": 7, "experiments": 2,
         "why": "host DAMON clears accessed bits", "known_difference": "damon-accessed-bits",
         "cause": ["kdamond 0 context 0 (paddr, pid 81)"]}
    doc = {"experiments": [], "host": host, "damon_pause": {"paused": [
        {"what": "kdamond 0", "operations": ["paddr"], "pid_before": 81, "restored": True}], "notes": []},
        "summary": {"experiments": 0, "matching": 0, "fields": 0, "matched": 0, "match_rate": None,
                    "not_compared": [n]}}
    html = render_html(doc)
    assert "DAMON kdamond 0 context 0</td><td>on, operations paddr, sampling 500000 µs, " \
           "schemes: pageout (filters: anon reject)" in html
    assert "DAMON clears accessed bits</td><td>yes: kdamond 0 context 0 (paddr, pid 81)" in html
    assert "paused by --pause-damon: kdamond 0 (turned back on: yes)" in html
    assert "not compared: smaps_kb.Referenced (7 fields in 2 experiments): host DAMON clears accessed bits" in html


# --------------------------------------------------------------------------------------------
# Live: --pause-damon on this host
# --------------------------------------------------------------------------------------------

def _live_damon():
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return None
    state = damon.read_damon()
    return state if damon.clearers(state) else None


live_damon = pytest.mark.skipif(_live_damon() is None,
                                reason="needs root and a running DAMON context on physical memory")

EXP = ('about = "x"\n[[step]]\ndo = "mmap"\nas = "b"\nlength = "4 pages"\nprot = "rw"\n'
       'flags = ["private", "anonymous"]\n[[step]]\ndo = "touch"\nregion = "b"\naccess = "write"\n')


def _on() -> list[str]:
    return [k["state"] for k in (damon.read_damon() or {}).get("kdamonds", [])]


@pytest.mark.live
@live_damon
def test_run_pause_damon_says_so_records_it_and_restores(tmp_path):
    before = _on()
    exp = tmp_path / "e.toml"
    exp.write_text(EXP)
    out = tmp_path / "run.json"
    res = subprocess.run([sys.executable, "-m", "shmkit", "run", "--pause-damon", "--quiet",
                          "--json", str(out), str(exp)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "--pause-damon: turned off kdamond" in res.stderr
    assert "back on" in res.stderr
    acct = json.loads(out.read_text())["damon_pause"]
    assert acct["paused"] and all(p["restored"] for p in acct["paused"])
    assert _on() == before


@pytest.mark.live
@live_damon
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_pause_damon_restores_after_a_signal(tmp_path, sig, status):
    """A run stopped by Ctrl-C or SIGTERM while DAMON is paused turns it back on."""
    before = _on()
    exp = tmp_path / "e.toml"
    exp.write_text(EXP)
    proc = subprocess.Popen([sys.executable, "-m", "shmkit", "run", "--pause-damon", str(exp), str(exp),
                             str(exp), str(exp), str(exp), str(exp)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while "off" not in _on() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "off" in _on(), "the run never paused DAMON"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "back on" in err
    assert _on() == before
