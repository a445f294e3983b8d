"""What a benchmark run shows: goals, the Markdown summary, the PNG plots."""
from __future__ import annotations

import os
from collections import defaultdict

from shmkit.bench.matrix import DESCRIPTION, SHM

MiB = 1 << 20
GOALS = {
    "memcpy": "best shared-memory transport >= 0.5x the same-run memcpy, at every size >= 1 MiB",
    "pipe": "best shared-memory transport >= 2x the pipe at 1 MiB",
    "mp_pipe": "best shared-memory transport >= 5x multiprocessing.Pipe at 1 MiB",
    "latency": "64 B round trip <= 10 us with the fastest synchronisation",
}


def hsize(n: int) -> str:
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def gbs(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.2f} GB/s"


def us(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e6:.2f} us"


def series_table(doc: dict) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for b in doc["benchmarks"]:
        if b.get("median") is not None:
            out[b["series"]][b["size"]] = b
    return out


def _best(doc, pred, size, pattern="throughput", key=max):
    cands = [b for b in doc["benchmarks"] if b["pattern"] == pattern and b["size"] == size
             and b.get("median") is not None and pred(b)]
    if not cands:
        return None
    return key(cands, key=lambda b: b["median"])


def is_shm(b) -> bool:
    return b["transport"] in SHM


def goals(doc: dict) -> list[dict]:
    """Each goal as a ratio measured in this run, with the benchmarks it compares."""
    out = []
    sizes = sorted({b["size"] for b in doc["benchmarks"]})
    rows = []
    for size in [s for s in sizes if s >= MiB]:
        best = _best(doc, lambda b: is_shm(b) and b.get("ratio_memcpy") is not None, size)
        cross = _best(doc, lambda b: is_shm(b) and b.get("ratio_memcpy") is not None
                      and b["placement"] == "cross" and b["consumer"] == "copy", size)
        mem = _best(doc, lambda b: b["transport"] == "memcpy", size)
        if best and mem:
            rows.append({"size": size, "best": best["id"], "best_label": best["label"],
                         "ratio": best["ratio_memcpy"], "memcpy": mem["median"], "value": best["median"],
                         "cross_copy": cross["id"] if cross else None,
                         "cross_copy_ratio": cross["ratio_memcpy"] if cross else None})
    out.append({"goal": "memcpy", "text": GOALS["memcpy"], "target": 0.5, "rows": rows,
                "met": bool(rows) and all(r["ratio"] >= 0.5 for r in rows)})
    best = _best(doc, is_shm, MiB)
    pipe = _best(doc, lambda b: b["transport"] == "pipe", MiB)
    mpp = _best(doc, lambda b: b["transport"] == "mp-pipe", MiB)
    for name, base, target in (("pipe", pipe, 2.0), ("mp_pipe", mpp, 5.0)):
        row = None
        if best and base:
            row = {"size": MiB, "best": best["id"], "best_label": best["label"], "value": best["median"],
                   "baseline": base["id"], "baseline_label": base["label"], "baseline_value": base["median"],
                   "ratio": best["median"] / base["median"]}
        out.append({"goal": name, "text": GOALS[name], "target": target, "rows": [row] if row else [],
                    "met": bool(row) and row["ratio"] >= target})
    lat = _best(doc, is_shm, 64, pattern="latency", key=min)
    row = None
    if lat:
        row = {"size": 64, "best": lat["id"], "best_label": lat["label"], "value": lat["median"],
               "ratio": lat["median"] / 10e-6}
    out.append({"goal": "latency", "text": GOALS["latency"], "target": 10e-6, "rows": [row] if row else [],
                "met": bool(row) and row["value"] <= 10e-6})
    return out


def crossover(mine: dict[int, dict], base: dict[int, dict]) -> str:
    """The smallest size from which this series stays above the baseline (at every measured
    size from there up)."""
    common = sorted(set(mine) & set(base))
    if not common:
        return "-"
    above = [mine[s]["median"] > base[s]["median"] for s in common]
    if not above[-1]:
        return "never" if not any(above) else "not above at the largest size"
    i = len(above) - 1
    while i > 0 and above[i - 1]:
        i -= 1
    return f"{hsize(common[i])}" + (" (every size)" if i == 0 else "")


def summary_rows(doc: dict) -> list[dict]:
    table = series_table(doc)
    pipe = table.get("pipe/throughput/-/copy/-/cross", {})
    readipc = table.get("file-read/throughput/-/copy/spin/cross", {})
    rows = []
    for key, by in table.items():
        any_b = next(iter(by.values()))
        if any_b["pattern"] != "throughput" or any_b["transport"] == "memcpy":
            continue
        best = max(by.values(), key=lambda b: b.get("ratio_memcpy") or 0)
        big = {s: b for s, b in by.items() if s >= MiB}
        bestbig = max(big.values(), key=lambda b: b.get("ratio_memcpy") or 0) if big else None
        rows.append({"series": key, "label": any_b["label"], "transport": any_b["transport"],
                     "best_ratio": best.get("ratio_memcpy"), "best_size": best["size"],
                     "best_ratio_1mib": bestbig.get("ratio_memcpy") if bestbig else None,
                     "best_size_1mib": bestbig["size"] if bestbig else None,
                     "over_pipe": crossover(by, pipe) if key != "pipe/throughput/-/copy/-/cross" else "-",
                     "over_read": crossover(by, readipc) if key != "file-read/throughput/-/copy/spin/cross" else "-",
                     "at_1mib": by.get(MiB, {}).get("median")})
    rows.sort(key=lambda r: -(r["best_ratio"] or 0))
    return rows


def markdown(doc: dict) -> str:
    md = doc["metadata"]
    st = doc["settings"]
    lines = ["# shmkit bench", ""]
    lines.append(f"`{' '.join(doc['command']) or 'shmkit bench'}` — {doc['created']}, "
                 f"{doc['seconds']:.0f} s, status **{doc['status']}**"
                 + (" (quick smoke run: few values, not for conclusions)" if doc["quick"] else ""))
    lines.append("")
    lines.append(f"Machine: {md['cpu_model']}, {md['cpu_count']} CPUs"
                 + (" (virtual machine)" if md.get("hypervisor") else "")
                 + f", kernel {md['kernel']}, THP {md['thp_enabled']} (shmem {md['thp_shmem_enabled']}), "
                 f"ASLR {md['aslr']}, governor: {md['cpu_governor']}; {md['pinning']}.")
    lines.append(f"Method: {st['runs']} worker process(es) per benchmark x {st['values']} value(s) "
                 f"(+{st['warmups']} warm-up), each value >= {st['min_time'] * 1e3:.0f} ms; median shown.")
    lines.append("")
    lines.append("## Goals (ratios measured in this run)")
    lines.append("")
    lines.append("| goal | measured | met |")
    lines.append("|---|---|---|")
    for g in doc["goals"]:
        if g["goal"] == "memcpy":
            meas = "; ".join(f"{hsize(r['size'])}: {r['ratio']:.2f}x ({r['best_label']}, {gbs(r['value'])} vs "
                             f"memcpy {gbs(r['memcpy'])}; best cross-CPU copy-out "
                             f"{r['cross_copy_ratio']:.2f}x)" if r.get("cross_copy_ratio") is not None else
                             f"{hsize(r['size'])}: {r['ratio']:.2f}x ({r['best_label']})" for r in g["rows"])
        elif g["goal"] == "latency":
            meas = "; ".join(f"{us(r['value'])} ({r['best_label']})" for r in g["rows"])
        else:
            meas = "; ".join(f"{r['ratio']:.2f}x ({r['best_label']} {gbs(r['value'])} vs {r['baseline_label']} "
                             f"{gbs(r['baseline_value'])})" for r in g["rows"])
        lines.append(f"| {g['text']} | {meas or 'not measured'} | {'yes' if g['met'] else 'NO'} |")
    lines.append("")
    lines.append("## Throughput: best ratio to memcpy, and where each transport overtakes the pipe "
                 "and read IPC")
    lines.append("")
    lines.append("| series | best ratio to memcpy (size) | best at >= 1 MiB | at 1 MiB | "
                 "overtakes the pipe from | overtakes read IPC from |")
    lines.append("|---|---|---|---|---|---|")
    for r in summary_rows(doc):
        b1 = f"{r['best_ratio_1mib']:.2f}x ({hsize(r['best_size_1mib'])})" if r["best_ratio_1mib"] is not None else "-"
        lines.append(f"| {r['label']} | {r['best_ratio']:.2f}x ({hsize(r['best_size'])}) | {b1} | "
                     f"{gbs(r['at_1mib'])} | {r['over_pipe']} | {r['over_read']} |")
    lines.append("")
    lines.append("## Round trip at 64 B and 1 MiB")
    lines.append("")
    lines.append("| series | 64 B | 1 MiB | faults per round trip (A+B, 1 MiB) |")
    lines.append("|---|---|---|---|")
    table = series_table(doc)
    lat = [(k, v) for k, v in table.items() if next(iter(v.values()))["pattern"] == "latency"]
    lat.sort(key=lambda kv: kv[1].get(64, {}).get("median") or 1)
    for k, by in lat:
        f = by.get(MiB, {}).get("faults")
        ft = f"{sum(p['minor'] + p['major'] for p in f.values()):.1f}" if f else "-"
        lines.append(f"| {next(iter(by.values()))['label']} | {us(by.get(64, {}).get('median'))} | "
                     f"{us(by.get(MiB, {}).get('median'))} | {ft} |")
    lines.append("")
    lines.append("## Faults per message: measured (both processes) against the model")
    lines.append("")
    lines.append("| series | size | producer minor/major | model | consumer minor/major | model |")
    lines.append("|---|---|---|---|---|---|")
    for b in doc["benchmarks"]:
        if b.get("model") and "a" in (b["model"] or {}) and b["faults"] and b["pattern"] == "throughput" \
                and (b["state"] == "cold" or b["size"] in (64, MiB)):
            f, m = b["faults"], b["model"]
            lines.append(f"| {b['label']} | {hsize(b['size'])} | {_mm(f.get('a'))} | {_mm(m['a'])} | "
                         f"{_mm(f.get('b'))} | {_mm(m['b'])} |")
    agree = model_agreement(doc)
    lines.append("")
    lines.append(f"The model against the measurement, over all {agree['total']} shared-memory benchmarks: "
                 f"{agree['exact']} equal, {agree['close']} more within one fault per message (a mapping "
                 f"placed at another 64 KiB alignment for some messages: fault-around windows are aligned "
                 f"by address), {len(agree['differ'])} differ"
                 + (": " + "; ".join(f"{i} (measured {m}, model {p})" for i, m, p in agree["differ"][:6])
                    if agree["differ"] else "") + ".")
    warn = [b for b in doc["benchmarks"] if b.get("warnings") or b.get("error")]
    lines.append("")
    lines.append(f"## Stability: {len(warn)} of {len(doc['benchmarks'])} benchmark(s) flagged")
    lines.append("")
    for b in warn[:60]:
        msg = b["error"] or "; ".join(b["warnings"])
        lines.append(f"- {b['label']} {b['pattern']} {hsize(b['size'])}: {msg}")
    if len(warn) > 60:
        lines.append(f"- ... {len(warn) - 60} more in the JSON")
    lines.append("")
    c = doc.get("cleanup", {})
    lines.append(f"Cleanup: {len(c.get('swept', []))} object(s) swept after workers, "
                 f"{len(c.get('leftovers', []))} left at the end.")
    lines.append("")
    lines.append("Transports: " + "; ".join(f"**{k}** {v}" for k, v in DESCRIPTION.items()) + ".")
    return "\n".join(lines) + "\n"


def model_agreement(doc: dict) -> dict:
    exact = close = total = 0
    differ = []
    for b in doc["benchmarks"]:
        m, f = b.get("model"), b.get("faults")
        if not (m and "a" in m and f):
            continue
        total += 1
        gap = max(abs(f[p][k] - m[p][k]) for p in ("a", "b") if p in f for k in ("minor", "major"))
        if gap < 0.01:
            exact += 1
        elif gap <= 1.0:
            close += 1
        else:
            differ.append((b["id"], _pair(f), _pair(m)))
    return {"total": total, "exact": exact, "close": close, "differ": differ}


def _pair(f) -> str:
    return " / ".join(f"{p}: {_mm(f[p])}" for p in ("a", "b") if p in f)


def _mm(f) -> str:
    if not f:
        return "-"
    return f"{_num(f['minor'])}/{_num(f['major'])}"


def _num(x) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 0.05 else f"{x:.2f}"


# ----- plots ------------------------------------------------------------------------------------
def _plot_lines(ax, table, keys, metric, styles=None):
    for key in keys:
        by = table.get(key)
        if not by:
            continue
        xs = sorted(by)
        ys = [metric(by[s]) for s in xs]
        b0 = by[xs[0]]
        st = (styles or {}).get(key, {})
        ax.plot(xs, ys, marker=st.get("marker", "o"), ms=3, lw=st.get("lw", 1.3), ls=st.get("ls", "-"),
                color=st.get("color"), label=st.get("label", b0["label"]))


def _log_size_axes(axs, sizes) -> None:
    """Message sizes along x, a log y axis without minor ticks, a small legend."""
    for ax in axs:
        _axes_size(ax, sizes)
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(matplotlib_ticker().NullLocator())
        ax.set_xlabel("message size")
        ax.legend(fontsize=6.5, ncol=2)


def _axes_size(ax, sizes=None):
    ax.set_xscale("log", base=2)
    ticks = [64 * 4 ** k for k in range(11)]
    if sizes:
        ticks = [t for t in ticks if min(sizes) <= t <= max(sizes)] or sorted(sizes)
        ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)
    ax.set_xticks(ticks)
    ax.set_xticklabels([hsize(t).replace(" ", "") for t in ticks], rotation=45, fontsize=7)
    ax.xaxis.set_minor_locator(matplotlib_ticker().NullLocator())
    ax.grid(True, which="major", alpha=0.3)


def matplotlib_ticker():
    import matplotlib.ticker
    return matplotlib.ticker


def plots(doc: dict, outdir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = series_table(doc)
    keys = list(table)
    sizes = sorted({b["size"] for b in doc["benchmarks"]})
    memk = "memcpy/throughput/-/copy/-/one"
    roof = {memk: {"color": "black", "ls": "--", "lw": 2.5, "marker": "", "label": "memcpy (roofline)"}}
    tput = lambda b: b["median"] / 1e9       # noqa: E731
    lat = lambda b: b["median"] * 1e6        # noqa: E731
    files = []

    def pick(pattern, pred):
        return [k for k in keys if next(iter(table[k].values()))["pattern"] == pattern
                and pred(next(iter(table[k].values())))]

    ref = lambda b: (b["state"] in (None, "warm") and b["consumer"] == "copy"   # noqa: E731
                     and b["sync"] in (None, "spin", "mp-sem") and b["placement"] == "cross")
    var = lambda b: b["transport"] in SHM and not ref(b)    # noqa: E731

    fig, axs = plt.subplots(1, 2, figsize=(15, 6), sharey=True)
    _plot_lines(axs[0], table, [memk] + pick("throughput", lambda b: ref(b) and b["transport"] != "memcpy"),
                tput, roof)
    axs[0].set_title("Throughput: transports (warm, copy-out, spin, two CPUs)")
    _plot_lines(axs[1], table, [memk] + pick("throughput", var)
                + pick("throughput", lambda b: b["transport"] == "pipe"), tput, roof)
    axs[1].set_title("Throughput: cold, in-place, synchronisation, one CPU")
    _log_size_axes(axs, sizes)
    axs[0].set_ylabel("GB/s (log)")
    fig.suptitle(_title(doc), fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, outdir, "throughput.png"))
    plt.close(fig)

    fig, axs = plt.subplots(1, 2, figsize=(15, 6), sharey=True)
    _plot_lines(axs[0], table, pick("latency", ref), lat)
    axs[0].set_title("Round trip: transports (warm, copy-out, spin, two CPUs)")
    _plot_lines(axs[1], table, pick("latency", var) + pick("latency", lambda b: b["transport"] == "pipe"), lat)
    axs[1].set_title("Round trip: synchronisation, cold, one CPU")
    _log_size_axes(axs, sizes)
    axs[0].set_ylabel("microseconds per round trip (log)")
    fig.suptitle(_title(doc), fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, outdir, "latency.png"))
    plt.close(fig)

    fig, axs = plt.subplots(1, 2, figsize=(15, 6))
    shmk = pick("throughput", lambda b: b["transport"] in SHM and b["consumer"] == "copy"
                and b["placement"] == "cross" and b["sync"] in ("spin", "mp-sem") and not b.get("chunk")
                and (b["state"] == "cold" or b["transport"] in ("anon", "mmap-file")))
    for ax, who, title in ((axs[0], "a", "producer"), (axs[1], "b", "consumer")):
        for i, key in enumerate(shmk):
            by = table[key]
            xs = sorted(s for s in by if by[s].get("faults") and who in by[s]["faults"])
            if not xs:
                continue
            color = f"C{i % 10}"
            ys = [by[s]["faults"][who]["minor"] + by[s]["faults"][who]["major"] for s in xs]
            ax.plot(xs, ys, marker="o", ms=3, color=color, label=f"{by[xs[0]]['label']} (measured)")
            mx = [s for s in xs if isinstance(by[s].get("model"), dict) and who in by[s]["model"]]
            if mx:
                my = [by[s]["model"][who]["minor"] + by[s]["model"][who]["major"] for s in mx]
                ax.plot(mx, my, marker="x", ms=7, ls=":", color=color, label=f"{by[xs[0]]['label']} (model)")
        _axes_size(ax, sizes)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("message size")
        ax.set_ylabel(f"faults per message in the {title} (minor + major)")
        ax.set_title(f"Faults per message, {title}: measured (getrusage) and the model's prediction")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(_title(doc), fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, outdir, "faults.png"))
    plt.close(fig)
    return files


def _title(doc) -> str:
    md = doc["metadata"]
    return (f"shmkit bench{' --quick' if doc['quick'] else ''} — {md['cpu_model']}, {md['cpu_count']} CPUs, "
            f"Linux {md['kernel']} — {doc['created']}")


def _save(fig, outdir, name) -> str:
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=110)
    return path


def terminal(doc: dict) -> str:
    """The goals and the per-transport table, for the terminal."""
    text = markdown(doc)
    keep, on = [], False
    for line in text.splitlines():
        if line.startswith("## Goals") or line.startswith("## Throughput"):
            on = True
        elif line.startswith("## Round trip"):
            on = False
        if on:
            keep.append(line)
    return "\n".join(keep)
