"""shmkit bench: the --quick smoke run CI runs (JSON, plots, summary exist and are sane), compare,
bad input, the lock, and cleanup on every path (SIGKILLed worker, Ctrl-C). No test asserts
anything about speed: the figures are checked by running the benchmark (docs/bench.md)."""
from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from shmkit.bench import cleanup, report, stats
from shmkit.bench.cli import BadInput, parse_size
from shmkit.bench.matrix import SHM, SIZES_FULL, Series, select, series_list, slots_for
from shmkit.bench.runner import lock_path
from shmkit.procfs import children
from tests.interrupts import Trial, check_stopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def bench(*args, env=None, **kw) -> subprocess.Popen:
    e = dict(os.environ)
    e.pop("PYTEST_XDIST_WORKER", None)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "shmkit", "bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=e, **kw)


def ours(pid: int) -> list[str]:
    """Every object a benchmark orchestrator `pid` could have left."""
    left = [n for n in os.listdir("/dev/shm") if n.startswith(cleanup.prefix(pid))]
    if os.path.exists(cleanup.rundir(pid)):
        left.append(cleanup.rundir(pid))
    return left


def sysv_by(pids: set[int]) -> list[dict]:
    return [s for s in cleanup.sysv_segments() if s["cpid"] in pids]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    p = bench("--quick", "--out", str(out), env={"PYTEST_XDIST_WORKER": os.environ.get("PYTEST_XDIST_WORKER", "")})
    stdout, stderr = p.communicate(timeout=1500)   # may queue behind a full run (the lock)
    with open(out / "bench.json") as f:
        doc = json.load(f)
    return {"out": out, "rc": p.returncode, "stdout": stdout, "stderr": stderr, "doc": doc, "pid": p.pid}


def test_quick_run_completes_and_leaves_nothing(quick):
    assert quick["rc"] == 0, quick["stderr"][-2000:]
    assert "Traceback" not in quick["stderr"]
    doc = quick["doc"]
    assert doc["status"] == "ok"
    assert doc["cleanup"]["leftovers"] == []
    assert ours(quick["pid"]) == []
    pids = {r["pid"] for b in doc["benchmarks"] for r in b["runs"]} | \
           {r.get("peer_pid") for b in doc["benchmarks"] for r in b["runs"]}
    assert sysv_by(pids) == []


def test_quick_json_is_versioned_and_complete(quick):
    doc = quick["doc"]
    assert doc["format"] == 1 and doc["kind"] == "shmkit-bench" and doc["quick"] is True
    for k in ("kernel", "cpu_model", "cpu_count", "thp_enabled", "thp_shmem_enabled", "aslr", "cpu_governor",
              "pinning", "python", "loadavg_start"):
        assert k in doc["metadata"], k
    transports = {b["transport"] for b in doc["benchmarks"]}
    assert transports == {"memcpy", "pipe", "socketpair", "file-read", "anon", "posix", "sysv", "memfd",
                          "mmap-file", "mp-pipe", "mp-shm"}
    sizes = set(doc["settings"]["sizes"])
    for b in doc["benchmarks"]:
        assert b["error"] is None and b["errors"] == 0, b["id"]
        assert b["size"] in sizes
        assert b["values"] and all(v > 0 for v in b["values"]), b["id"]
        assert b["median"] > 0 and b["min"] <= b["median"] <= b["max"]
        assert isinstance(b["warnings"], list)
        assert len(b["runs"]) == doc["settings"]["runs"]
        for r in b["runs"]:
            assert len(r["values"]) == doc["settings"]["values"] and len(r["warmups"]) == doc["settings"]["warmups"]
        if b["pattern"] == "throughput":
            assert b["unit"] == "B/s" and b["ratio_memcpy"] > 0
        else:
            assert b["unit"] == "s" and b["ratio_memcpy"] is None
        if b["transport"] != "memcpy":
            assert set(b["faults"]) == {"a", "b"}     # getrusage in both processes
        if b["transport"] in SHM:
            assert set(b["model"]) == {"a", "b"}, (b["id"], b["model"])


def test_model_predicts_the_cold_faults_exactly(quick):
    """A cold message of the C transports: the model's faults per message are the measured ones
    (the producer's write faults, the consumer's fault-around windows or SysV page faults)."""
    seen = 0
    for b in quick["doc"]["benchmarks"]:
        if b["state"] == "cold" and b["transport"] in ("posix", "sysv", "memfd"):
            assert b["faults"] == b["model"], (b["id"], b["faults"], b["model"])
            seen += 1
    assert seen >= 3


def test_warm_transports_take_no_fault_per_message(quick):
    for b in quick["doc"]["benchmarks"]:
        if b["state"] == "warm" and b["transport"] in ("anon", "posix", "sysv", "memfd"):
            assert all(f["minor"] == 0 and f["major"] == 0 for f in b["faults"].values()), b["id"]
            assert all(f["minor"] == 0 and f["major"] == 0 for f in b["model"].values()), b["id"]


def test_quick_goals_plots_and_summary(quick):
    doc, out = quick["doc"], quick["out"]
    goals = {g["goal"]: g for g in doc["goals"]}
    assert set(goals) == {"memcpy", "pipe", "mp_pipe", "latency"}
    for g in goals.values():
        assert g["rows"], g
        assert isinstance(g["met"], bool)
        for r in g["rows"]:
            assert r["ratio"] > 0 and r["best"]
    for name in ("throughput.png", "latency.png", "faults.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 20_000, name
    md = (out / "summary.md").read_text()
    for heading in ("## Goals", "best ratio to memcpy", "overtakes the pipe from", "overtakes read IPC from",
                    "## Faults per message", "## Stability"):
        assert heading in md
    rows = doc["summary"]
    assert {r["transport"] for r in rows} >= {"anon", "posix", "sysv", "memfd", "mmap-file", "pipe", "mp-pipe"}
    assert all(r["best_ratio"] > 0 for r in rows)
    assert "## Goals" in quick["stdout"]


def test_compare_a_run_with_itself(quick, tmp_path):
    path = str(quick["out"] / "bench.json")
    p = bench("compare", path, path)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "1.00x" in stdout and "0 significantly different" in stdout


@pytest.mark.parametrize("args,where", [
    (["--sizes", "12"], "--sizes"),
    (["--sizes", "1MB"], "--sizes"),
    (["--runs", "0"], "--runs"),
    (["--min-time", "x"], "--min-time"),
    (["--transports", "carrier-pigeon"], "--transports"),
    (["--frobnicate"], "unrecognized"),
    (["--out", "/proc/version/x"], "--out"),
    (["compare", "only-one.json"], "required"),
    (["compare", "/nonexistent/a.json", "/nonexistent/b.json"], "cannot read"),
    (["compare", "pyproject.toml", "pyproject.toml"], "not JSON"),
])
def test_bad_input_is_one_line_exit_2(args, where):
    p = bench(*args)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and where in lines[0], stderr
    assert "Traceback" not in stderr
    assert ours(p.pid) == []


def test_compare_refuses_another_kind_of_json(tmp_path):
    other = tmp_path / "validate.json"
    other.write_text(json.dumps({"format": 1, "kind": "validate", "experiments": []}))
    p = bench("compare", str(other), str(other))
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "not a shmkit bench result" in stderr


def test_refuses_a_full_run_inside_an_xdist_worker(tmp_path):
    p = bench("--out", str(tmp_path), env={"PYTEST_XDIST_WORKER": "gw7"})
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 2
    assert len(stderr.strip().splitlines()) == 1 and "pytest-xdist" in stderr and "--quick" in stderr
    assert os.listdir(tmp_path) == [] and ours(p.pid) == []


def _wait_for(pred, timeout=60.0, step=0.0005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_sigkilled_worker_pair_leaves_nothing(tmp_path):
    """SIGKILL the worker while its cold POSIX objects exist: the orchestrator reports the
    benchmark as failed, sweeps by prefix, goes on, and leaves nothing."""
    p = bench("--quick", "--transports", "posix,sysv", "--pattern", "throughput", "--sizes", "1MiB",
              "--min-time", "0.3", "--out", str(tmp_path))
    mark = cleanup.prefix(p.pid)
    seen = _wait_for(lambda: [n for n in os.listdir("/dev/shm") if n.startswith(mark)], timeout=120)
    assert seen, "no object of the run ever appeared in /dev/shm"
    workers = _children(p.pid)
    peers = [c for w in workers for c in _children(w)]
    for w in workers:
        os.kill(w, signal.SIGKILL)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 1, (stdout, stderr)
    assert "failed" in stderr and "Traceback" not in stderr
    assert ours(p.pid) == []
    assert sysv_by(set(workers) | set(peers)) == []
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert any(b["error"] for b in doc["benchmarks"])
    assert doc["cleanup"]["leftovers"] == []


SEED = int(os.environ.get("SHMKIT_INTERRUPT_SEED", "20261203"))
# Five workers of a second or more each (memcpy, then posix and sysv, warm and cold): a signal
# sent while one of the first three runs is sent well before the benchmark can end.
LONG_BENCH = ["bench", "--quick", "--transports", "sysv,posix", "--pattern", "throughput", "--sizes", "1MiB",
              "--min-time", "0.1", "--no-plots"]


def _workers(t: Trial) -> list[int]:
    return [c for c in children(t.pid) if "shmkit.bench.worker" in _cmd(c)]


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _stop_bench(t: Trial, trial: dict) -> None:
    """"start": a random moment of the first 0.8 s; "early": in the 0.4 s after the handlers were
    installed (the lock, the metadata, the first spawn); "worker": up to 0.3 s after the k-th
    worker appeared (its start, its peer's fork, the objects, a value); "objects": a few ms after
    the first POSIX object of the run appeared; "twice": "worker", then a second signal into the
    cleanup the first one started."""
    kind, mark = trial["kind"], cleanup.prefix(t.pid)
    if kind == "start":
        t.sleep(trial["start"])
    elif kind == "early":
        assert t.wait_until(t.handlers_installed), "the benchmark ended before installing its handlers"
        t.sleep(trial["start"] / 2)
    elif kind == "objects":
        assert t.wait_until(lambda: any(n.startswith(mark) for n in os.listdir("/dev/shm")), timeout=600), \
            "no object of the run ever appeared in /dev/shm"
        t.sleep(trial["delay"])
    else:
        seen: set[int] = set()

        def kth() -> bool:
            seen.update(_workers(t))
            return len(seen) >= trial["k"]

        assert t.wait_until(kth, timeout=600), f"the benchmark ended before its worker {trial['k']}"
        t.sleep(trial["again"])
    t.send(trial["sig"], trial["group"])
    if kind == "twice":
        t.sleep(trial["again"])
        if t.running():
            t.send(trial["second"], trial["group"])


def test_a_signal_at_any_moment_of_a_benchmark_kills_the_pair_and_removes_everything(tmp_path):
    """9 trials (SIGINT or SIGTERM, to the orchestrator or its process group, seeded): exit
    128 + n, one line on stderr, no worker or peer left, nothing in /dev/shm, the SysV table or
    the run directory, no bench.json (nor its temp file), every time; and the lock released."""
    rng = random.Random(f"{SEED}:bench")
    kinds = ["start"] + ["early"] * 2 + ["worker"] * 3 + ["objects"] + ["twice"] * 2
    outcomes: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        trial = {"kind": kind, "sig": rng.choice([signal.SIGINT, signal.SIGINT, signal.SIGTERM]),
                 "group": rng.random() < 0.5, "k": rng.randint(1, 3), "delay": rng.uniform(0, 0.05),
                 "start": rng.uniform(0, 0.8), "second": rng.choice([signal.SIGINT, signal.SIGTERM]),
                 "again": rng.uniform(0, 0.3)}
        out = tmp_path / f"out{i}"
        t = Trial([*LONG_BENCH, "--out", str(out)], tmp_path / f"trial{i}")
        what = f"trial {i} of seed {SEED}: {kind} {signal.Signals(trial['sig']).name}" + (
            " to the group" if trial["group"] else "")
        try:
            _stop_bench(t, trial)
            rc, stdout, stderr = t.finish(timeout=300)
            how = check_stopped(t, rc, stderr)
            if len(t.sent) > 1:
                how += f" (a second signal {signal.Signals(t.sent[1][0]).name} before it ended)"
            outcomes[how] = outcomes.get(how, 0) + 1
            assert t.leftovers() == [], what
            if how.startswith("stopped"):
                lines = [ln for ln in stderr.strip().splitlines() if "waiting for another shmkit bench" not in ln]
                assert len(lines) == 1, stderr
            assert not out.exists() or sorted(os.listdir(out)) == [], sorted(os.listdir(out))
        except BaseException as e:
            t.kill()
            raise AssertionError(f"{what}: {e}; left: {t.leftovers()}") from e
    print(f"bench: {outcomes}")
    assert sum(n for h, n in outcomes.items() if h.startswith("stopped")) >= 8, outcomes
    # the lock was released: it can be taken at once
    fd = os.open(lock_path(), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        pass        # another test's benchmark holds it now; that is the lock working
    finally:
        os.close(fd)


def test_a_second_benchmark_waits_for_the_lock(tmp_path):
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = bench("--quick", "--transports", "memcpy", "--sizes", "64", "--no-plots", "--out", str(tmp_path))
        import select
        ready, _, _ = select.select([p.stderr], [], [], 120)
        assert ready, "no word from the second benchmark"
        line = p.stderr.readline()
        assert "waiting for another shmkit bench" in line
        assert p.poll() is None and not (tmp_path / "bench.json").exists()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    assert (tmp_path / "bench.json").exists()


# ----- pure functions ---------------------------------------------------------------------------
def test_sizes_cover_64_bytes_to_64_mib_every_4x():
    assert SIZES_FULL[0] == 64 and SIZES_FULL[-1] == 64 << 20
    assert all(b == 4 * a for a, b in zip(SIZES_FULL, SIZES_FULL[1:]))


def test_parse_size():
    assert parse_size("64") == 64 and parse_size("4KiB") == 4096 and parse_size("1m") == 1 << 20
    for bad in ("63", "1 TiB", "x", "-4"):
        with pytest.raises(BadInput):
            parse_size(bad)


def test_grid_varies_one_factor_at_a_time():
    full = series_list(quick=False)
    keys = [s.key for s in full]
    assert len(keys) == len(set(keys))
    for sync in ("spin", "sem", "eventfd", "pipe"):
        assert Series("anon", "latency", "warm", "copy", sync) in full
    for t in ("posix", "sysv", "memfd", "mmap-file"):
        for st in ("warm", "cold"):
            for cons in ("copy", "inplace"):
                assert Series(t, "throughput", st, cons, "spin") in full
    assert all(s.transport == "memcpy" or s.pattern in ("throughput", "latency") for s in full)
    assert set(series_list(quick=True)) <= set(full)
    only = select(full, ["sysv"], ["latency"])
    assert {s.transport for s in only} == {"sysv", "memcpy"}


def test_slots():
    assert slots_for(Series("anon", "latency", "warm", "copy", "spin"), 1 << 20) == 1
    assert slots_for(Series("anon", "throughput", "warm", "copy", "sem", "same"), 64) == 1
    assert 2 <= slots_for(Series("anon", "throughput", "warm", "copy", "spin"), 64 << 20) <= 64
    assert slots_for(Series("anon", "throughput", "warm", "copy", "spin"), 64) == 64


def test_stability_warnings():
    quiet = stats.summarise([100.0, 101.0, 99.0], [0.1, 0.1, 0.1], 0.05)
    assert quiet["median"] == 100.0 and quiet["warnings"] == []
    noisy = stats.summarise([100.0, 200.0, 50.0], [0.1, 0.1, 0.01], 0.05)
    text = " ".join(noisy["warnings"])
    assert "standard deviation" in text and "shortest value" in text


def test_crossover():
    def by(vals):
        return {s: {"median": v} for s, v in zip((64, 256, 1024, 4096), vals)}
    assert report.crossover(by([1, 1, 3, 4]), by([2, 2, 2, 2])) == "1 KiB"
    assert report.crossover(by([3, 3, 3, 3]), by([2, 2, 2, 2])).startswith("64 B")
    assert report.crossover(by([1, 1, 1, 1]), by([2, 2, 2, 2])) == "never"
    assert report.crossover(by([3, 1, 3, 3]), by([2, 2, 2, 2])) == "1 KiB"
