"""The compact record (docs/record.md, format 2, "Compact processes"): what is written to disk
loses nothing. The live test keeps every observation as the manager made it (hooked before
anything is written), writes the validate record, reads it back, and checks that every step's
rebuilt maps and VMAs of every process equal what was observed, fork children included. The
offline tests cover the cases the bundled runs rarely show: VMAs that come, go, change shape or
gain a counter, a maps line that is not the kernel's layout, a process that exits, and records
of another format."""
from __future__ import annotations

import copy
import json
import os
import sys

import pytest

from shmkit import record
from tests.helpers import shmkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIVE = ["fork-cow-private", "fork-file-mappings", "posix-shm-open-in-child", "mremap-grow-move"]


def _round_trip(x):
    """What JSON keeps of an in-memory value (tuples become lists)."""
    return json.loads(json.dumps(x, default=record._default))


# --------------------------------------------------------------------------------------------
# Live: the observations themselves


@pytest.fixture(scope="module")
def observed_and_read(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("live runs need Linux")
    from shmkit import manager, spec
    from shmkit.probe import load_or_probe
    from shmkit.validate import summary, validate_experiment

    seen: dict[str, list] = {}
    original = manager.Manager.observe

    def observe(self):
        out = original(self)
        seen.setdefault(self.run.run_id, []).append(copy.deepcopy(out))
        return out

    profile, probed = load_or_probe("/nonexistent/shmkit-test-probe.json")   # probes now, stores nothing
    manager.Manager.observe = observe
    try:
        results = [validate_experiment(spec.load(os.path.join(ROOT, "experiments", f"{n}.toml")), profile)
                   for n in LIVE]
    finally:
        manager.Manager.observe = original
    doc = record.document("validate", results, profile, "test")
    doc["summary"] = summary(results)
    path = tmp_path_factory.mktemp("compact") / "v.json"
    record.write_json(doc, str(path))
    return doc, seen, path


@pytest.mark.live
def test_every_rebuilt_view_equals_the_observation(observed_and_read):
    doc, seen, path = observed_and_read
    back = record.read_json(str(path))
    for mem, r in zip(doc["experiments"], back["experiments"]):
        live = r["live"]
        assert live["status"] == "ok", f"{live['path']}: {live['status']}"
        views = seen[live["run_id"]]
        assert len(views) == 1 + len(live["steps"])          # the initial view, then one per step
        forked = False
        for i, (obs, got) in enumerate(zip(views, [live["initial"]] + live["steps"])):
            obs = _round_trip(obs)
            assert set(got["processes"]) == set(obs), f"{live['path']} view {i}"
            for name, p in obs.items():
                q = got["processes"][name]
                assert q["maps"] == p["maps"], f"{live['path']} view {i} {name}: maps"
                assert q["vmas"] == p["vmas"], f"{live['path']} view {i} {name}: vmas"
                assert q == p, f"{live['path']} view {i} {name}"
            forked |= len(obs) > 1
        if "fork" in live["path"] or "child" in live["path"]:
            assert forked, f"{live['path']}: no view with a second process"
        # the model's record comes back as it was made, too
        assert r["predicted"] == _round_trip(mem["predicted"])
        assert record.normalise(r["live"]) == _round_trip(record.normalise(mem["live"]))


@pytest.mark.live
def test_the_written_record_is_compact(observed_and_read):
    """Every process on disk is compact (none fell back to the full form), and the file is a
    small fraction of the format 1 record, which held every view in full."""
    doc, _seen, path = observed_and_read
    raw = json.loads(path.read_text())
    assert raw["format"] == record.FORMAT == 2
    for e in raw["experiments"]:
        for side in ("live", "predicted"):
            rec = e[side]
            for view in [rec["initial"]] + rec["steps"]:
                for name, p in view["processes"].items():
                    assert "interp" in p and "maps" not in p, f"{rec['path']} {side} {view.get('index')} {name}"
    full = len(json.dumps({**doc, "format": 1}, indent=1, default=record._default))
    assert path.stat().st_size * 8 < full, (path.stat().st_size, full)


# --------------------------------------------------------------------------------------------
# Offline: synthetic records

PAGE = 4096
LIB = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _vma(start, pages, perms="r--p", path="", inode=0, dev="00:00", offset=0, **smaps):
    counters = {k: 0 for k in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
                                "Private_Dirty", "Referenced", "Anonymous")}
    counters.update(smaps)
    return {"start": start, "end": start + pages * PAGE, "perms": perms, "offset": offset, "dev": dev,
            "inode": inode, "path": path, "smaps_kb": counters, "vmflags": ["rd", "mr"]}


def _proc(pid, vmas, lines=None):
    return {"pid": pid, "maps": lines or [record._render(v) for v in vmas], "vmas": vmas,
            "regions": {}}


def _synthetic() -> dict:
    base = 0x7F0000000000
    interp = [_vma(0x555500000000, 2, path="/usr/bin/python3", inode=11, dev="fe:00", Rss=8),
              _vma(base, 4, path=LIB, inode=12, dev="fe:00", Rss=16, Referenced=16),
              _vma(base + 4 * PAGE, 1, "rw-p", Rss=4, Anonymous=4),
              _vma(0x7FFC00000000, 33, "rw-p", path="[stack]", Rss=12, Anonymous=12)]
    mine = _vma(0x7E0000000000, 4, "rw-p", Rss=16, Anonymous=16)
    step1 = copy.deepcopy(interp)
    step1[1]["smaps_kb"]["Referenced"] = 0                      # a counter changed
    kid = copy.deepcopy(step1 + [mine])
    kid.sort(key=lambda v: v["start"])
    for v in kid:
        v["smaps_kb"]["Pss"] = v["smaps_kb"]["Rss"] // 2
    step3 = copy.deepcopy(step1)
    del step3[2]                                                # an interpreter VMA went
    step3[0]["smaps_kb"]["AnonHugePages"] = 0                   # a counter came: replaced in full
    step3[1]["path"] = LIB + " (deleted)"                       # a field changed
    step3.insert(2, _vma(base + 4 * PAGE, 2, "r--p"))          # same start, new end: a new VMA
    odd = [record._render(v) for v in step3]
    odd[3] = odd[3].replace("  ", " ", 3)                       # not the kernel's padding
    return {
        "path": "synthetic.toml", "status": "ok", "prefix": "shmkit-1-ab-",
        "initial": {"processes": {"main": _proc(100, interp)}, "dev_shm": [], "sysv": []},
        "steps": [
            {"index": 1, "do": "mmap", "in": "main", "processes": {"main": _proc(100, sorted(
                step1 + [mine], key=lambda v: v["start"]))}, "dev_shm": [], "sysv": []},
            {"index": 2, "do": "fork", "in": "main", "processes": {
                "main": _proc(100, sorted(step1 + [mine], key=lambda v: v["start"])),
                "kid": _proc(101, kid)}, "dev_shm": [], "sysv": []},
            {"index": 3, "do": "touch", "in": "kid", "processes": {
                "main": _proc(100, step3, odd), "kid": _proc(101, kid)}, "dev_shm": [], "sysv": []},
            {"index": 4, "do": "exit", "in": "kid", "processes": {"main": _proc(100, step3, odd)},
             "dev_shm": [], "sysv": []},
        ],
    }


def test_a_synthetic_record_comes_back_exactly():
    rec = _synthetic()
    doc = {"format": 2, "kind": "run", "experiments": [rec]}
    text = record.dumps(record.compact_document(doc))
    raw = json.loads(text)["experiments"][0]
    steps = raw["steps"]
    assert all("interp" in p for s in steps for p in s["processes"].values())
    assert steps[0]["processes"]["main"]["interp"] == {
        "from": {"step": 0}, "set": [[0x7F0000000000, 0x7F0000004000, {"smaps_kb": {"Referenced": 0}}]]}
    assert steps[1]["processes"]["kid"]["interp"]["from"] == {"step": 2, "process": "main"}
    three = steps[2]["processes"]["main"]
    assert three["interp"]["drop"] and three["interp"]["add"] and three["interp"]["set"]
    assert list(three["maps_verbatim"]) == ["3"]
    assert record.loads(text)["experiments"][0] == _round_trip(rec)


def test_a_model_record_is_stored_as_changes_to_the_live_one():
    live = _synthetic()
    pred = copy.deepcopy(live)
    for v in pred["initial"]["processes"]["main"]["vmas"]:
        v["vmflags"] = []                                       # the model keeps no VmFlags
    doc = {"format": 2, "kind": "validate", "experiments": [{"path": "x", "live": live, "predicted": pred}]}
    text = record.dumps(record.compact_document(doc))
    raw = json.loads(text)["experiments"][0]["predicted"]["initial"]["processes"]["main"]
    assert raw["interp"]["from"] == {"record": "live", "step": 0} and "add" not in raw["interp"]
    back = record.loads(text)["experiments"][0]
    assert back["live"] == _round_trip(live) and back["predicted"] == _round_trip(pred)


def test_what_would_not_come_back_is_written_in_full():
    rec = _synthetic()
    rec["steps"][0]["processes"]["main"]["maps"].append("an extra line")   # one line too many
    out = record.compact(rec)
    assert "interp" not in out["steps"][0]["processes"]["main"]
    assert "interp" in out["steps"][1]["processes"]["main"]
    assert record.expand(out) == rec


def test_a_format_1_record_is_read_as_it_is():
    rec = _synthetic()
    doc = {"format": 1, "kind": "run", "experiments": [rec]}
    assert record.loads(json.dumps(doc)) == _round_trip(doc)


def test_another_format_is_refused_in_one_line(tmp_path):
    with pytest.raises(record.RecordError, match="format 3"):
        record.loads('{"format": 3, "kind": "validate", "experiments": []}')
    bad = tmp_path / "v.json"
    bad.write_text('{"format": 3, "kind": "validate", "experiments": []}')
    res = shmkit("validate", "--compare", str(bad), str(bad))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr
    assert str(bad) in lines[0] and "format 3" in lines[0]
    res = shmkit("predict", os.path.join(ROOT, "experiments", "mmap-private-anon.toml"),
                 "--snapshot", str(bad), state=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "format 3" in lines[0]


def test_a_broken_reference_is_refused_not_a_traceback(tmp_path):
    rec = record.compact(_synthetic())
    rec["steps"][1]["processes"]["kid"]["interp"]["from"] = {"step": 9, "process": "nobody"}
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"format": 2, "kind": "validate",
                               "experiments": [{"path": "x", "live": rec, "predicted": None}]}))
    with pytest.raises(record.RecordError):
        record.read_json(str(bad))
    res = shmkit("validate", "--compare", str(bad), str(bad))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
