"""The command line as a user meets it: bad input gets one clear line naming
file, step and field, exit status 2, no traceback, and nothing created."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers import shmkit, spawn

GOOD_HEAD = 'about = "x"\n'

BAD = {
    "malformed": ('about = "x"\n[[step]\ndo = 1', "line 2, column"),
    "unknown_op": (GOOD_HEAD + '[[step]]\ndo = "mmapp"\n', "step 1 (do=mmapp): do:"),
    "unknown_field": (GOOD_HEAD + '[[step]]\ndo = "mmap"\nas = "b"\nlength = 4096\nprot = "r"\n'
                      'flags = ["private", "anonymous"]\ncolour = "red"\n', "step 1 (do=mmap): colour:"),
    "wrong_type": (GOOD_HEAD + '[[step]]\ndo = "mmap"\nas = "b"\nlength = true\nprot = "r"\n'
                   'flags = ["private", "anonymous"]\n', "step 1 (do=mmap): length:"),
    "unknown_handle": (GOOD_HEAD + '[[step]]\ndo = "touch"\nregion = "nope"\n', "step 1 (do=touch): region:"),
    "wrong_process": (GOOD_HEAD + '[[step]]\ndo = "fork"\nchild = "kid"\n[[step]]\ndo = "mmap"\nas = "b"\n'
                      'length = 4096\nprot = "r"\nflags = ["private", "anonymous"]\n'
                      '[[step]]\ndo = "touch"\nin = "kid"\nregion = "b"\n', "step 3 (do=touch): region:"),
    "page_range": (GOOD_HEAD + '[[step]]\ndo = "mmap"\nas = "b"\nlength = "4 pages"\nprot = "r"\n'
                   'flags = ["private", "anonymous"]\n[[step]]\ndo = "touch"\nregion = "b"\npages = "2..9"\n',
                   "step 2 (do=touch): pages:"),
    "impossible_size": (GOOD_HEAD + '[[step]]\ndo = "mmap"\nas = "b"\nlength = "-3 pages"\nprot = "r"\n'
                        'flags = ["private", "anonymous"]\n', "step 1 (do=mmap): length:"),
    "too_big_for_dev_shm": (GOOD_HEAD + '[[step]]\ndo = "shm_open"\nas = "s"\nname = "x"\ncreate = true\n'
                            'size = "900 TiB"\n', "step 1 (do=shm_open): size:"),
}


def _created_by(pid: int) -> list[str]:
    """Objects named after a shmkit process (every name carries its pid)."""
    import tempfile

    mark = f"shmkit-{pid}-"
    found = [n for n in os.listdir("/dev/shm") if n.startswith(mark)]
    found += [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mark)]
    return found


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, case):
    text, where = BAD[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    state = tmp_path / "state"
    state.mkdir()
    proc = spawn("run", str(path), state=state)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith(f"{path}: ") and where in lines[0] and "; accepted: " in lines[0]
    assert stdout == ""
    assert _created_by(proc.pid) == []
    assert list(state.iterdir()) == []


def test_missing_file_is_a_clear_error(tmp_path):
    res = shmkit("run", str(tmp_path / "nope.toml"), state=tmp_path)
    assert res.returncode == 2 and "no such file" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["run", "predict", "validate"])
def test_nothing_to_do_is_an_error(tmp_path, command):
    """An empty directory (or one with no *.toml) is not 'all 0 experiments passed': exit 2, one
    line naming the directory, and the bundled set is NOT run in its place."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no experiment here")
    state = tmp_path / "state"
    state.mkdir()
    res = shmkit(command, str(empty), state=state, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{empty}: ") and "no experiment" in lines[0], res.stderr
    assert "; accepted: " in lines[0] and "Traceback" not in res.stderr
    assert res.stdout == "" and list(state.iterdir()) == []


def test_bundled_experiments_are_found_where_the_install_puts_them():
    """A checkout (editable install) finds experiments/ beside shmkit/; a wheel ships the same
    files as shmkit/experiments (pyproject.toml package-dir). Both give the same set."""
    from pathlib import Path

    from shmkit.cli import bundled_dir, experiment_files

    top = Path(__file__).resolve().parent.parent / "experiments"
    assert bundled_dir() == top
    files = experiment_files([])
    assert len(files) >= 80 and files == sorted(str(p) for p in top.glob("*.toml"))


def test_one_bad_file_among_good_ones_runs_nothing(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD_HEAD + '[[step]]\ndo = "memfd"\nas = "m"\nname = "m"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD["unknown_op"][0])
    state = tmp_path / "state"
    state.mkdir()
    res = shmkit("run", str(good), str(bad), state=state)
    assert res.returncode == 2 and str(bad) in res.stderr and res.stdout == ""


@pytest.mark.live
def test_run_writes_the_json_record(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(GOOD_HEAD + '[[step]]\ndo = "mmap"\nas = "b"\nlength = "2 pages"\nprot = "rw"\n'
                   'flags = ["private", "anonymous"]\n[[step]]\ndo = "touch"\nregion = "b"\naccess = "write"\n')
    out = tmp_path / "rec.json"
    res = shmkit("run", str(exp), "--json", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == 2 and doc["kind"] == "run"
    assert doc["host"]["page_size"] == os.sysconf("SC_PAGE_SIZE")
    (e,) = doc["experiments"]
    assert e["steps"][1]["faults"] == {"minor": 2, "major": 0}
    assert "step  2 [main] touch" in res.stdout and "faults: 2 minor, 0 major" in res.stdout


@pytest.mark.parametrize("case", ["unknown_op", "page_range", "too_big_for_dev_shm"])
def test_predict_refuses_bad_input_like_run(tmp_path, case):
    text, where = BAD[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    res = shmkit("predict", str(path), state=tmp_path)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"{path}: ") and where in res.stderr


def test_predict_refuses_a_snapshot_that_is_not_a_record(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(GOOD_HEAD + '[[step]]\ndo = "memfd"\nas = "m"\nname = "m"\n')
    snap = tmp_path / "snap.json"
    snap.write_text('{"not": "a record"}')
    res = shmkit("predict", str(exp), "--snapshot", str(snap), state=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"{snap}: --snapshot: ") and "accepted:" in res.stderr


@pytest.mark.live
def test_predict_from_a_run_snapshot_agrees_with_the_run(tmp_path):
    """predict --snapshot RUN.json starts from the run's own initial view; its record is the
    same format, and its normal form equals the run's."""
    from shmkit import record
    from shmkit.compare import differences

    exp = tmp_path / "e.toml"
    exp.write_text(GOOD_HEAD + '[[step]]\ndo = "mmap"\nas = "b"\nlength = "4 pages"\nprot = "rw"\n'
                   'flags = ["private", "anonymous"]\n[[step]]\ndo = "touch"\nregion = "b"\n'
                   'pages = "0..2"\naccess = "write"\n[[step]]\ndo = "read"\nregion = "b"\n')
    run_json, pred_json = tmp_path / "run.json", tmp_path / "pred.json"
    assert shmkit("run", str(exp), "--json", str(run_json)).returncode == 0
    res = shmkit("predict", str(exp), "--snapshot", str(run_json), "--json", str(pred_json))
    assert res.returncode == 0, res.stderr
    assert "why: 2 × do_anonymous_page" in res.stdout and "(predicted by the model)" in res.stdout
    live = record.read_json(str(run_json))["experiments"][0]
    doc = record.read_json(str(pred_json))
    assert doc["format"] == 2 and doc["kind"] == "predict"
    pred = doc["experiments"][0]
    assert [s["faults"] for s in pred["steps"]] == [{"minor": 0, "major": 0}, {"minor": 2, "major": 0},
                                                   {"minor": 2, "major": 0}]
    assert not differences(record.normalise(live), record.normalise(pred))


@pytest.mark.live
def test_predict_from_a_fresh_worker(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(GOOD_HEAD + '[[step]]\ndo = "shm_open"\nas = "s"\nname = "obj"\ncreate = true\n'
                   'size = "2 pages"\n[[step]]\ndo = "mmap"\nas = "m"\nshm = "s"\nlength = "2 pages"\n'
                   'prot = "rw"\nflags = ["shared"]\n[[step]]\ndo = "touch"\nregion = "m"\naccess = "write"\n')
    state = tmp_path / "state"
    state.mkdir()
    proc = spawn("predict", str(exp), state=state)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "faults: 2 minor, 0 major" in stdout
    # the name as the normal form shows it: the handle (prefix mode), the name itself (hermetic)
    assert "/dev/shm/<shm:obj>" in stdout or ("isolation: hermetic" in stdout and "/dev/shm/obj" in stdout)
    assert _created_by(proc.pid) == []     # the snapshot's worker and run dir are gone


def test_isolation_is_one_option_of_every_command_that_runs_experiments():
    """--isolation is declared once (cli._isolation_option) for run, predict and validate."""
    import argparse

    from shmkit.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    opts = []
    for cmd in ("run", "predict", "validate"):
        assert p.parse_args([cmd, "--isolation", "prefix"]).isolation == "prefix"
        assert p.parse_args([cmd]).isolation is None
        (o,) = [a for a in sub.choices[cmd]._actions if "--isolation" in a.option_strings]
        opts.append((o.choices, o.default, o.help))
    assert opts[0] == opts[1] == opts[2] and opts[0][0] == ("auto", "hermetic", "prefix")
