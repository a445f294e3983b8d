"""shmkit validate as a user meets it: the table and exit status, the JSON record with the
comparison, a mismatch when the model is given a wrong kernel parameter, --compare of two hosts,
and bad input."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.helpers import shmkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = [os.path.join(ROOT, "experiments", n) for n in ("file-fault-around-warm.toml", "mmap-private-anon.toml")]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live runs need Linux")


def _probed(tmp_path, **override) -> str:
    """A probe file as `shmkit probe` writes it (measured now), with values overridden."""
    from shmkit.probe import run_probes

    p = run_probes()
    p.update(override)
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(p))
    return str(path)


@pytest.mark.live
def test_validate_matches_and_writes_the_record(tmp_path):
    out = tmp_path / "v.json"
    res = shmkit("validate", *EXP, "--json", str(out), "--probed", _probed(tmp_path), state=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 of 2 experiment(s) match on every field" in res.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == 2 and doc["kind"] == "validate"
    assert doc["summary"]["matching"] == 2 and doc["summary"]["match_rate"] == 1.0
    assert doc["probed"]["fault_around_pages"] == 16
    for r in doc["experiments"]:
        assert r["status"] == "match" and r["comparison"]["fields"] > 50
        assert r["comparison"]["differences"] == []
        assert r["live"]["steps"] and r["predicted"]["steps"]


@pytest.mark.live
def test_a_wrong_kernel_parameter_shows_as_a_mismatch_with_exit_1(tmp_path):
    """Told that fault-around maps 8 pages, the model mispredicts the warm file experiment;
    validate says where, and exits 1."""
    out = tmp_path / "v.json"
    res = shmkit("validate", EXP[0], "--json", str(out), "--probed", _probed(tmp_path, fault_around_pages=8),
                 state=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "MISMATCH" in res.stdout and "0 of 1 experiment(s) match" in res.stdout
    r = json.loads(out.read_text())["experiments"][0]
    assert r["status"] == "mismatch"
    wheres = {d["where"] for d in r["comparison"]["differences"]}
    assert "faults.minor" in wheres
    assert r["comparison"]["matched"] < r["comparison"]["fields"]


@pytest.mark.live
def test_compare_two_hosts(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert shmkit("validate", EXP[1], "--json", str(a), "--probed", _probed(tmp_path), state=tmp_path).returncode == 0
    assert shmkit("validate", EXP[1], "--json", str(b), "--probed", _probed(tmp_path), state=tmp_path).returncode == 0
    doc = json.loads(b.read_text())
    doc["host"]["release"] = "6.99.0-other"          # as if B came from another kernel
    b.write_text(json.dumps(doc))
    res = shmkit("validate", "--compare", str(a), str(b))
    assert res.returncode == 0, res.stderr
    c = json.loads(a.read_text())["experiments"][0]["comparison"]
    # 199 observed fields and 33 of the steps' calls (model/resolve.py), less those not
    # compared on this host (smaps Referenced while DAMON runs)
    assert c["fields"] + sum(n["count"] for n in c["not_compared"]) == 199 + 33
    assert "mmap-private-anon.toml" in res.stdout and f"{c['fields']}/{c['fields']}" in res.stdout.replace(" ", "")
    assert "release" in res.stdout and "6.99.0-other" in res.stdout


def test_compare_refuses_what_is_not_a_validate_record(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"kind": "run"}')
    res = shmkit("validate", "--compare", str(bad), str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"{bad}: --compare: ") and "accepted:" in res.stderr


def test_validate_refuses_bad_input_before_running_anything(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('about = "x"\n[[step]]\ndo = "mmapp"\n')
    res = shmkit("validate", str(bad), state=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith(f"{bad}: step 1 (do=mmapp)")
    assert "Traceback" not in res.stderr


NOEXEC_EXPERIMENT = """
about = "a file on a noexec mount: PROT_EXEC is EPERM in mmap, EACCES in mprotect"
[[step]]
do = "file"
name = "f"
size = "1 page"
[[step]]
do = "mmap"
as = "x"
file = "f"
length = "1 page"
prot = "rx"
flags = ["private"]
[[step]]
do = "mmap"
as = "r"
file = "f"
length = "1 page"
prot = "r"
flags = ["private"]
[[step]]
do = "mprotect"
region = "r"
prot = "rx"
"""


@pytest.mark.live
@pytest.mark.skipif(sys.platform.startswith("linux") and os.geteuid() != 0,
                    reason="mounting a tmpfs needs root")
def test_a_noexec_temp_dir_is_in_the_model(tmp_path, monkeypatch):
    """The model's path_noexec() rule (mm/mmap.c do_mmap clears VM_MAYEXEC on a noexec mount:
    PROT_EXEC is EPERM; mm/mprotect.c then refuses adding it, EACCES) reads the mount options
    of the temp dir from the profile. No mount here is noexec, so the test makes one: a private
    tmpfs (2 GiB: the preflight keeps a 1 GiB reserve; tmpfs allocates nothing up front) as
    TMPDIR, where the run's disk files go."""
    import subprocess

    probed = _probed(tmp_path)
    mnt = tmp_path / "noexec"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=2g", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        exp = tmp_path / "noexec.toml"
        exp.write_text(NOEXEC_EXPERIMENT)
        out = tmp_path / "v.json"
        monkeypatch.setenv("TMPDIR", str(mnt))
        res = shmkit("validate", str(exp), "--json", str(out), "--probed", probed, state=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        r = json.loads(out.read_text())["experiments"][0]
        assert [s["result"] for s in r["live"]["steps"]] == ["ok", {"errno": "EPERM"}, "ok",
                                                              {"errno": "EACCES"}]
        assert r["comparison"]["differences"] == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
