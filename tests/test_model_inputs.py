"""The model's inputs (the kernel profile with the probed values) are assembled in one place,
shmkit.probe.load_or_probe, and validate, predict, run's record and bench's model all take them
from there: two commands never feed the model different inputs on the same host."""
from __future__ import annotations

import json

from shmkit import record
from shmkit.bench import model as bench_model
from tests.helpers import shmkit

EXP = '''
about = "one page"
[[step]]
do = "mmap"
as = "a"
length = "1 page"
prot = "rw"
flags = ["private", "anonymous"]
'''


def _probed(tmp_path):
    from shmkit.probe import run_probes

    probed = run_probes()
    probed["marker"] = "from the test"     # proves which file the command read
    p = tmp_path / "probed.json"
    p.write_text(json.dumps(probed))
    return p, probed


def test_predict_run_and_validate_record_the_same_probed_inputs(tmp_path):
    p, probed = _probed(tmp_path)
    exp = tmp_path / "e.toml"
    exp.write_text(EXP)
    hosts = {}
    for cmd in ("predict", "run", "validate"):
        out = tmp_path / f"{cmd}.json"
        res = shmkit(cmd, str(exp), "--probed", str(p), "--json", str(out))
        assert res.returncode == 0, res.stderr
        hosts[cmd] = record.read_json(str(out))["host"]
    for cmd, host in hosts.items():
        assert host["probed"] == probed, cmd


def test_bench_model_uses_the_same_inputs(monkeypatch):
    from shmkit import probe

    seen = []

    def fake(path=None):
        seen.append(path)
        return {"marker": "load_or_probe"}, {}

    monkeypatch.setattr(probe, "load_or_probe", fake)
    monkeypatch.setattr(bench_model, "_CACHE", {})
    profile, _devices = bench_model.host()
    assert profile == {"marker": "load_or_probe"} and seen == [None]
