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
    assert doc["format"] == 1 and doc["kind"] == "run"
    assert doc["host"]["page_size"] == os.sysconf("SC_PAGE_SIZE")
    (e,) = doc["experiments"]
    assert e["steps"][1]["faults"] == {"minor": 2, "major": 0}
    assert "step  2 [main] touch" in res.stdout and "faults: 2 minor, 0 major" in res.stdout
