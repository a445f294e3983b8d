"""`shmkit bench compare A.json B.json`: two runs side by side, benchmark by benchmark."""
from __future__ import annotations

import json

from shmkit.bench import FORMAT
from shmkit.bench.report import hsize


class BadInput(Exception):
    pass


def load(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise BadInput(f"{path}: cannot read it ({e.strerror}); accepted: a JSON file written by 'shmkit bench'")
    except ValueError as e:
        raise BadInput(f"{path}: not JSON ({e}); accepted: a JSON file written by 'shmkit bench'")
    if not isinstance(doc, dict) or doc.get("kind") != "shmkit-bench":
        raise BadInput(f"{path}: not a shmkit bench result (kind is "
                       f"{doc.get('kind') if isinstance(doc, dict) else type(doc).__name__!r}); "
                       "accepted: a JSON file written by 'shmkit bench'")
    if doc.get("format") != FORMAT:
        raise BadInput(f"{path}: format {doc.get('format')!r}; accepted: format {FORMAT}")
    if not isinstance(doc.get("benchmarks"), list):
        raise BadInput(f"{path}: no 'benchmarks' list; accepted: a JSON file written by 'shmkit bench'")
    return doc


def compare(a: dict, b: dict) -> dict:
    """Rows for benchmarks measured in both: B/A of the medians (for latency, A/B: > 1 means B
    is faster), and whether the difference is beyond both runs' spread."""
    bb = {x["id"]: x for x in b["benchmarks"] if x.get("median")}
    rows = []
    for x in a["benchmarks"]:
        y = bb.get(x["id"])
        if not x.get("median") or y is None:
            continue
        faster = y["median"] / x["median"] if x["pattern"] == "throughput" else x["median"] / y["median"]
        noise = max(x.get("rel_stdev") or 0, y.get("rel_stdev") or 0)
        overlap = not (x.get("max", 0) < y.get("min", 0) or y.get("max", 0) < x.get("min", 0))
        rows.append({"id": x["id"], "label": x["label"], "pattern": x["pattern"], "size": x["size"],
                     "a": x["median"], "b": y["median"], "speedup": faster,
                     "significant": (not overlap) and abs(faster - 1) > 2 * noise})
    only_a = sorted(set(x["id"] for x in a["benchmarks"]) - set(bb))
    only_b = sorted(set(bb) - set(x["id"] for x in a["benchmarks"]))
    host = {}
    for k in ("hostname", "kernel", "cpu_model", "cpu_count", "thp_enabled", "thp_shmem_enabled", "aslr",
              "cpu_governor", "pinning"):
        va, vb = a.get("metadata", {}).get(k), b.get("metadata", {}).get(k)
        if va != vb:
            host[k] = (va, vb)
    return {"rows": rows, "only_a": only_a, "only_b": only_b, "host": host}


def render(cmp: dict, pa: str, pb: str) -> str:
    out = [f"A = {pa}", f"B = {pb}", ""]
    out.append(f"{'benchmark':58} {'size':>8} {'A':>12} {'B':>12} {'B vs A':>9}")
    for r in cmp["rows"]:
        if r["pattern"] == "throughput":
            va, vb = f"{r['a'] / 1e9:.2f} GB/s", f"{r['b'] / 1e9:.2f} GB/s"
        else:
            va, vb = f"{r['a'] * 1e6:.2f} us", f"{r['b'] * 1e6:.2f} us"
        word = f"{r['speedup']:.2f}x" + (" *" if r["significant"] else "")
        out.append(f"{(r['label'] + ' ' + r['pattern'])[:58]:58} {hsize(r['size']):>8} {va:>12} {vb:>12} {word:>9}")
    out.append("")
    out.append("B vs A: > 1 means B is faster (higher throughput, shorter round trip); "
               "* beyond both runs' spread (value ranges do not overlap).")
    n_sig = sum(r["significant"] for r in cmp["rows"])
    out.append(f"{len(cmp['rows'])} benchmark(s) in both, {n_sig} significantly different; "
               f"{len(cmp['only_a'])} only in A, {len(cmp['only_b'])} only in B.")
    for k, (va, vb) in cmp["host"].items():
        out.append(f"host {k}: A {va!r}  B {vb!r}")
    return "\n".join(out)
