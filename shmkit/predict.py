"""`shmkit predict`: the model's record of an experiment, in the same format as `shmkit run`.

The model (model/, pure Python) needs plain data from the live host: the kernel profile and
an initial snapshot of the worker (its maps, as the live side records them before the first
step, and the padded edge). That snapshot comes from a live record (`snapshot_from_record`: the
prediction then starts from exactly the state the live run started from) or from a fresh
worker started for the purpose (`fresh_snapshot`). Names (files, POSIX names, SysV keys) are
the run's real names, so the record normalises like a live one.
"""
from __future__ import annotations

import os
import pwd
import tempfile
import time

from model.kernel import Kernel
from model.resolve import Names, Skip
from shmkit import record, registry

RLIMIT_NAMES = {"AS": "as", "DATA": "data", "MEMLOCK": "memlock", "STACK": "stack",
                "NOFILE": "nofile", "FSIZE": "fsize", "CORE": "core"}


def _dev(st_dev: int) -> str:
    return f"{os.major(st_dev):02x}:{os.minor(st_dev):02x}"


def host_devices(run_dir: str) -> dict:
    """Device numbers as maps prints them: the run directory's filesystem, /dev/shm, and the
    kernel's internal shm mount (where memfd, shared anonymous memory and SysV live)."""
    fd = os.memfd_create("shmkit-probe-dev", os.MFD_CLOEXEC)
    try:
        shmem = _dev(os.fstat(fd).st_dev)
    finally:
        os.close(fd)
    disk = os.stat(run_dir).st_dev
    return {"disk": _dev(disk), "tmpfs": _dev(os.stat("/dev/shm").st_dev), "shmem": shmem,
            "disk_readahead_kb": _readahead_kb(disk), "disk_io_pages": _io_pages(disk)}


def _readahead_kb(st_dev: int) -> int | None:
    """The backing device's read_ahead_kb (mm/backing-dev.c: bdi->ra_pages), which sizes
    mmap read-around (do_sync_mmap_readahead: ra_pages)."""
    try:
        with open(f"/sys/class/bdi/{os.major(st_dev)}:{os.minor(st_dev)}/read_ahead_kb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _io_pages(st_dev: int) -> int | None:
    """The backing device's bdi->io_pages (block/blk-settings.c blk_apply_bdi_limits:
    max_sectors in pages, /sys/block/DEV/queue/max_sectors_kb), which lets a readahead
    request larger than read_ahead_kb go up to it (mm/readahead.c force_page_cache_ra,
    ractl_max_pages). A partition's queue is its disk's."""
    base = f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}"
    for path in (f"{base}/queue/max_sectors_kb", f"{base}/../queue/max_sectors_kb"):
        try:
            with open(path) as f:
                return int(f.read()) // 4
        except (OSError, ValueError):
            continue
    return None


def process_inputs(run_dir: str) -> dict:
    """What the model needs to know of the machine and the process that ran an experiment,
    beyond the kernel profile: the devices (run directory's filesystem, /dev/shm, the internal
    shm mount; the disk's read_ahead_kb and io_pages), the uid, the effective capabilities and
    the umask. The live record keeps them ("inputs"), so that a record predicted again
    elsewhere (`validate --replay` of a guest's record on the host) sees that machine's."""
    return {"devices": host_devices(run_dir), "uid": os.getuid(), "caps": _cap_eff(), "umask": _umask()}


def _inputs_of(rec: dict, profile: dict, run_dir: str | None) -> dict:
    """The record's own inputs; a record made before they were kept (shmkit < 0.13) gets this
    process's when it was made here (same kernel release), else what its profile says (the
    devices of its temp dir and /dev/shm; read_ahead_kb and io_pages unknown: the kernel's
    defaults; every capability, as root in a guest has)."""
    if rec.get("inputs"):
        return rec["inputs"]
    if profile.get("release") in (None, os.uname().release):
        return process_inputs(run_dir or tempfile.gettempdir())
    here = process_inputs(run_dir or tempfile.gettempdir())
    devices = dict(here["devices"], disk_readahead_kb=None, disk_io_pages=None)
    def hexdev(d):     # mountinfo's "254:0" as maps prints it, "fe:00"
        try:
            ma, mi = (int(x) for x in str(d).split(":"))
        except ValueError:
            return None
        return f"{ma:02x}:{mi:02x}"
    devices["disk"] = hexdev((profile.get("tmpdir_mount") or {}).get("dev")) or devices["disk"]
    devices["tmpfs"] = hexdev((profile.get("dev_shm") or {}).get("dev")) or devices["tmpfs"]
    return {"devices": devices, "uid": 0, "caps": None, "umask": here["umask"]}


def snapshot_from_record(rec: dict, profile: dict, run_dir: str | None = None) -> dict:
    """The model's starting point from a live record's `initial` view and setup, and the
    machine inputs it kept (process_inputs)."""
    setup = rec["setup"]
    rl = {RLIMIT_NAMES[k]: list(v) for k, v in (profile.get("rlimits") or {}).items() if k in RLIMIT_NAMES}
    for name, soft, hard in setup.get("rlimits") or []:
        rl[name] = [soft, hard]
    user = setup.get("user")
    inputs = _inputs_of(rec, profile, run_dir)
    uid = inputs["uid"]
    if user is not None and uid == 0:
        uid = pwd.getpwnam(user).pw_uid
    procs = {n: {"pid": p["pid"], "vmas": p["vmas"]}
             for n, p in rec["initial"]["processes"].items()}
    privileged = inputs["uid"] == 0 and user is None
    iso = rec.get("isolation") or {}
    devices = dict(inputs["devices"])
    snap = {"processes": procs, "setup": setup, "rlimits": rl, "uid": uid,
            "privileged": privileged, "caps": inputs["caps"] if privileged else 0,
            "devices": devices, "umask": inputs["umask"], "isolation": iso.get("mode") or "prefix"}
    if snap["isolation"] == "hermetic":
        # the run's own tmpfs on /dev/shm and its IPC namespace's limits, as the live run read them
        if iso.get("dev_shm_dev"):
            devices["tmpfs"] = iso["dev_shm_dev"]
        snap["ipc_sysctl"] = dict(iso.get("ipc_sysctl") or {})
    return snap


def _cap_eff() -> int | None:
    """This process's effective capabilities (/proc/self/status CapEff), which root workers
    inherit: root in a container may lack some (measured here: no CAP_SYS_RESOURCE, so
    raising a hard rlimit is EPERM even as root). None: unreadable (the model then assumes
    every capability)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def model_step(k: Kernel, names: Names, step) -> tuple[dict, dict]:
    """Runs one step in the model and observes it: (the step's predicted record, the
    kernel's raw answer with its trace). The model receives the step's call (model.resolve),
    as the worker does."""
    regions = {h: (r.addr, r.length) for h, r in k.procs[step.proc].regions.items()}
    try:
        call = names.resolve(step.do, step.arg, regions)
    except Skip as e:
        call, out = None, {"result": e.result, "faults": None, "value": None, "yielded": [],
                           "trace": ["skipped: " + e.result["skipped"]]}
    else:
        out = k.step({"index": step.index, "do": step.do, "in": step.proc, "args": call})
    names.done(step.do, step.arg, out["result"], out["value"])
    view = k.observe()
    rec = record.step_record(
        step, result=out["result"], faults=out["faults"], value=out["value"], note=None, call=call,
        processes=view["processes"], system={"dev_shm": view["dev_shm"], "sysv": view["sysv"]},
        perturbed=None, trace=out["trace"], check=k.check(),
        yielded=[list(p) for p in out["yielded"]] if out["yielded"] else None)
    return rec, out


def predict(exp, profile: dict, snapshot: dict, pads: dict, run=None, on_step=None) -> dict:
    """The predicted record of one experiment (docs/record.md, "kind": "predict")."""

    mode = snapshot.get("isolation") or "prefix"
    run = run or registry.Run(user=exp.setup.user, isolation=mode)
    names = Names(run)      # the model side's naming: the same bookkeeping as the live side's
    if snapshot.get("ipc_sysctl"):
        # hermetic: the SysV limits are those of the run's own IPC namespace, not the host's
        profile = {**profile, "sysctl": {**(profile.get("sysctl") or {}), **snapshot["ipc_sysctl"]}}
    t0 = time.perf_counter()
    k = Kernel(profile, snapshot)
    initial = k.observe()
    rec = record.experiment_record(exp, run, initial=initial, pads=pads, cleaned=[], attempt=1, attempts=1)
    if mode == "hermetic":      # the device the model gave the run's /dev/shm (the live run's)
        rec["isolation"]["dev_shm_dev"] = (snapshot.get("devices") or {}).get("tmpfs")
    for step in exp.steps:
        st, out = model_step(k, names, step)
        rec["steps"].append(st)
        if on_step:
            on_step(step, out)
    rec["names"] = names.record()
    rec["model_seconds"] = time.perf_counter() - t0
    return rec


def fresh_snapshot(exp, profile: dict):
    """Start a worker for the experiment's setup, record its initial view, stop it.
    Returns (snapshot, pads, run): the run's prefix names the prediction's objects."""
    from shmkit import manager

    m = manager.Manager(exp)
    try:
        m.open()
        m.spawn_main()
        rec = {"setup": record.setup_record(exp.setup), "initial": {"processes": m.observe()},
               "isolation": {"mode": m.isolation, **m.ns}}
        pads = {"main": m.procs["main"].pads}
    finally:
        m.close()
    return snapshot_from_record(rec, profile, str(m.run.dir.parent)), pads, m.run
