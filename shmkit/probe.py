"""`shmkit probe`: kernel parameters that /proc and /sys do not show, measured by small probe
experiments of their own (never the bundled ones) on the live kernel:

- fault_around_pages: a read fault on a warm file maps this many pages (fault_around_bytes
  lives in debugfs, which is not mounted on most hosts);
- write_notify (per filesystem: disk, tmpfs): whether a write after a read fault on a shared
  mapping faults again (the filesystem has ->page_mkwrite);
- disk_large_folios: whether one write fault on a small file written in one write() maps its
  whole folio (the filesystem supports large folios);
- thp_align_anon: whether an anonymous mapping of 2 MiB is placed 2 MiB-aligned
  (__thp_get_unmapped_area).

The values are stored (with the kernel release and boot id they were measured on) and used
by `validate`; its report lists which profile values were read and which were probed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from shmkit import spec

PROBES = {
    "fault_around": """
about = "probe: pages one read fault maps (fault-around window)"
[[step]]
do = "file"
name = "p"
size = "64 pages"
[[step]]
do = "mmap"
as = "m"
file = "p"
length = "64 pages"
prot = "r"
flags = ["shared"]
[[step]]
do = "touch"
region = "m"
pages = "20"
access = "read"
""",
    "write_notify": """
about = "probe: does a write after a read fault fault again (->page_mkwrite)?"
[[step]]
do = "file"
name = "d"
size = "1 page"
[[step]]
do = "file"
name = "t"
size = "1 page"
on = "tmpfs"
[[step]]
do = "mmap"
as = "md"
file = "d"
length = "1 page"
prot = "rw"
flags = ["shared"]
[[step]]
do = "mmap"
as = "mt"
file = "t"
length = "1 page"
prot = "rw"
flags = ["shared"]
[[step]]
do = "touch"
region = "md"
access = "read"
[[step]]
do = "touch"
region = "md"
access = "write"
[[step]]
do = "touch"
region = "mt"
access = "read"
[[step]]
do = "touch"
region = "mt"
access = "write"
""",
    "large_folios": """
about = "probe: does one write fault map a whole small folio?"
[[step]]
do = "file"
name = "f"
size = "4 pages"
[[step]]
do = "mmap"
as = "m"
file = "f"
length = "4 pages"
prot = "rw"
flags = ["shared"]
[[step]]
do = "touch"
region = "m"
pages = "0"
access = "write"
""",
    "thp_align": """
about = "probe: is a 2 MiB anonymous mapping 2 MiB-aligned?"
[[step]]
do = "mmap"
as = "m"
length = "2 MiB"
prot = "rw"
flags = ["private", "anonymous"]
""",
}


def _present(rec: dict, step: int, region: str) -> int:
    return rec["steps"][step - 1]["processes"]["main"]["regions"][region]["present"]


def run_probes() -> dict:
    from shmkit import manager

    recs = {}
    for name, text in PROBES.items():
        rec = manager.run_experiment(spec.loads(text, f"probe-{name}.toml"))
        if rec["status"] != "ok":
            raise RuntimeError(f"probe {name}: live run {rec['status']}")
        recs[name] = rec
    wn = recs["write_notify"]["steps"]
    addr = recs["thp_align"]["steps"][0]["value"]["addr"]
    return {
        "fault_around_pages": _present(recs["fault_around"], 3, "m"),
        "write_notify": {"disk": wn[5]["faults"]["minor"] == 1, "tmpfs": wn[7]["faults"]["minor"] == 1},
        "disk_large_folios": _present(recs["large_folios"], 3, "m") > 1,
        "thp_align_anon": addr % (2 << 20) == 0,
        "kernel": os.uname().release, "boot_id": _boot_id(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def default_path() -> Path:
    base = os.environ.get("SHMKIT_STATE") or os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / ("probe.json" if os.environ.get("SHMKIT_STATE") else "shmkit/probe.json")


def load_or_probe(path: str | None = None) -> tuple[dict, dict]:
    """The model's inputs, assembled here alone: the kernel profile with the probed values
    (stored ones when they were measured on this kernel since this boot, otherwise probed now
    and stored). validate, predict, run's record and bench's model all take it from here."""
    from shmkit.profile import read_profile

    profile = read_profile().to_dict()
    p = Path(path) if path else default_path()
    probed = None
    if p.exists():
        try:
            probed = json.loads(p.read_text())
        except (OSError, ValueError):
            probed = None
        if path is None and probed and (probed.get("kernel") != os.uname().release
                                        or probed.get("boot_id") != _boot_id()):
            probed = None
    if probed is None:
        probed = run_probes()
        if path is None:
            try:
                p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)   # may be the registry directory too: ours alone
                p.write_text(json.dumps(probed, indent=1) + "\n")
            except OSError:
                pass
    profile["probed"] = probed
    return profile, probed
