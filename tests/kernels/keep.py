"""Keep a kernel's validate record for tests/test_kernel_records.py.

    python tests/kernels/keep.py RECORD.json[.gz] [RECORD...]

Each record (from `shmkit matrix --out`, `shmkit validate --json`, in a guest or on another
host) is written to tests/kernels/RELEASE.json.gz with only what a replay needs: the host
profile, the probed values and each experiment's live run (the model's prediction and the
differences are dropped: the test computes them again with the model as it is). Experiments of
several records of one release are merged, a later record's run of an experiment replacing an
earlier one. Nothing else is changed: the live side is the kernel's, as measured."""
from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def slim(entry: dict) -> dict:
    c = entry.get("comparison", {})
    return {"path": os.path.basename(entry["path"]), "live": entry["live"],
            "status_then": entry.get("status"),
            "comparison": {"live_seconds": c.get("live_seconds", 0.0),
                           "not_compared": c.get("not_compared", [])}}


def main(paths: list[str]) -> int:
    sys.path.insert(0, str(HERE.parent.parent))
    from shmkit import record

    for p in paths:
        doc = record.read_json(p)
        if doc.get("kind") != "validate":
            print(f"{p}: not a validate record", file=sys.stderr)
            return 2
        release = doc["host"]["release"]
        out = HERE / f"{release}.json.gz"
        kept = {}
        if out.exists():
            old = record.read_json(str(out))
            kept = {e["path"]: e for e in old["experiments"]}
        for e in doc["experiments"]:
            kept[os.path.basename(e["path"])] = slim(e)
        # runs recorded before shmkit kept a run's machine inputs (devices, read_ahead_kb,
        # io_pages, uid, capabilities: shmkit.predict.process_inputs) get those of a later run
        # on the same kernel and guest setup, marked as such; without any they stay without
        # (the replay then assumes the kernel's defaults)
        known = next((e["live"]["inputs"] for e in kept.values() if e["live"].get("inputs")
                      and not e["live"]["inputs"].get("supplied")), None)
        if known is not None:
            for e in kept.values():
                if not e["live"].get("inputs"):
                    e["live"]["inputs"] = {**known, "supplied": "from another run of this kernel "
                                           "in the same guest setup (tests/kernels/keep.py)"}
        new = {"format": doc.get("format"), "kind": "validate", "shmkit": doc.get("shmkit"),
               "host": doc["host"], "probed": doc.get("probed"),
               "experiments": [kept[k] for k in sorted(kept)]}
        # the record's own compact form (record.compact_document: views repeated from the step
        # before are references), which record.read_json reads back whole
        out.write_bytes(gzip.compress(record.dumps(record.compact_document(new)).encode(), 9))
        print(f"{out}: {len(kept)} experiment(s) of {release}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
