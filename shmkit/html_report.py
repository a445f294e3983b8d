"""The validation report as one self-contained HTML file (no script, no external resource):
a summary (match rate, the host's kernel profile, which values were read and which probed),
then per experiment and step the observed and predicted maps side by side with differences
highlighted, fault counts observed/predicted, the model's explanation, and two small plots
(faults per step; the experiment's part of the address space after each step), drawn as
small inline SVG."""
from __future__ import annotations

import html
import math
import os
import time

from shmkit import record

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2.2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.ok{color:#176b1b;font-weight:600}.bad{color:#b00020;font-weight:600}.warn{color:#8a5a00;font-weight:600}
.maps{display:grid;grid-template-columns:1fr 1fr;gap:8px}
pre{margin:0;font:12px/1.35 ui-monospace,monospace;white-space:pre-wrap;background:#f7f7f7;padding:6px}
.only{background:#ffe1e1}.diff{background:#fff3c4}.step{margin:1em 0;padding:.4em .8em;border-left:4px solid #ddd}
.step.bad{border-left-color:#b00020}.why{color:#444;font-size:12px}.plots{display:flex;gap:12px;flex-wrap:wrap}
.plots svg{max-width:620px;height:auto}
"""


def _e(x) -> str:
    return html.escape(str(x))


# Both plots are drawn here as a few SVG elements (bars are <rect>s, labels <text>s): a plot
# is 1-4 kB, where matplotlib's SVG of the same plot was 30 kB (glyph outlines, one <path>
# and clip path per bar) and took a second to draw.
W, H = 380, 170
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 22, 32
COLORS = {"observed": "#4477aa", "predicted": "#ee8866", "r": "#88ccee", "w": "#cc6677"}


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Whole tick values covering [lo, hi], 1, 2 or 5 times a power of ten apart (both plots
    count whole things: faults, pages)."""
    raw = max(hi - lo, 1) / most
    mag = 10 ** math.floor(math.log10(raw))
    step = max(1, next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))
    first = math.floor(lo / step) * step
    out = []
    t = first
    while t <= hi + step * 1e-9 and len(out) < 4 * most:
        out.append(round(t, 10))
        t += step
    if out[-1] < hi:
        out.append(round(out[-1] + step, 10))
    return out


def _frame(title: str, xlabel: str, ylabel: str, body: list[str], title_x: float | None = None) -> str:
    x0, y1 = LEFT, H - BOTTOM
    where = f'x="{W / 2}" text-anchor="middle"' if title_x is None else f'x="{title_x}"'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'font-family="sans-serif" font-size="10" role="img"><title>{_e(title)}</title>'
            f'<text {where} y="13" font-size="11">{_e(title)}</text>'
            + "".join(body)
            + f'<path d="M{x0} {TOP}V{y1}H{W - RIGHT}" fill="none" stroke="#333" stroke-width="0.8"/>'
            f'<text x="{(x0 + W - RIGHT) / 2}" y="{H - 4}" text-anchor="middle">{_e(xlabel)}</text>'
            f'<text transform="translate(11 {(TOP + y1) / 2})rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>'
            "</svg>")


def _faults_svg(idx: list[int], obs: list[int], pre: list[int]) -> str:
    ticks = _ticks(0, max(obs + pre + [1]))
    top, plot_w, plot_h = ticks[-1], W - LEFT - RIGHT, H - TOP - BOTTOM
    y = lambda v: H - BOTTOM - v / top * plot_h   # noqa: E731
    body = []
    for t in ticks:
        body.append(f'<path d="M{LEFT} {_n(y(t))}H{W - RIGHT}" stroke="#ddd" stroke-width="0.5"/>'
                    f'<text x="{LEFT - 4}" y="{_n(y(t) + 3.5)}" text-anchor="end">{_n(t)}</text>')
    gw = plot_w / max(len(idx), 1)
    every = max(1, math.ceil(len(idx) / 20))
    for i, step in enumerate(idx):
        x = LEFT + i * gw
        for k, (label, vals) in enumerate((("observed", obs), ("predicted", pre))):
            if i < len(vals) and vals[i]:
                body.append(f'<rect x="{_n(x + gw * (0.1 + 0.4 * k))}" y="{_n(y(vals[i]))}" width="{_n(gw * 0.4)}" '
                            f'height="{_n(H - BOTTOM - y(vals[i]))}" fill="{COLORS[label]}"/>')
        if i % every == 0:
            body.append(f'<text x="{_n(x + gw / 2)}" y="{H - BOTTOM + 12}" text-anchor="middle">{step}</text>')
    for k, label in enumerate(("observed", "predicted") if pre else ("observed",)):
        lx = W - RIGHT - 130 + 66 * k       # the legend beside the title, clear of the bars
        body.append(f'<rect x="{lx}" y="5" width="8" height="8" fill="{COLORS[label]}"/>'
                    f'<text x="{lx + 11}" y="12.5" font-size="9">{label}</text>')
    return _frame("faults per step (minor + major)", "step", "faults", body, title_x=LEFT)


def _layout_svg(rows: list[tuple[int, list[tuple[float, float, bool]]]]) -> str:
    """rows: (step, [(first page, pages, writable), ...]) of the acting process after each step."""
    spans = [(a, a + n) for _, vs in rows for a, n, _w in vs]
    body = []
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    if not spans:
        body.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no VMA of the experiment</text>')
        return _frame("VMAs of the acting process (red: writable)", "pages from $edge", "step", body)
    ticks = _ticks(min(a for a, _ in spans), max(b for _, b in spans))
    lo, hi = ticks[0], ticks[-1]
    x = lambda p: LEFT + (p - lo) / ((hi - lo) or 1) * plot_w   # noqa: E731
    for t in ticks:
        body.append(f'<text x="{_n(x(t))}" y="{H - BOTTOM + 12}" text-anchor="middle">{_n(t)}</text>')
    rh = plot_h / max(len(rows), 1)
    every = max(1, math.ceil(len(rows) / 12))
    for i, (step, vs) in enumerate(rows):
        ry = TOP + i * rh
        if i % every == 0:
            body.append(f'<text x="{LEFT - 4}" y="{_n(ry + rh / 2 + 3.5)}" text-anchor="end">{step}</text>')
        for a, n, writable in vs:
            body.append(f'<rect x="{_n(x(a))}" y="{_n(ry + rh * 0.1)}" width="{_n(max(x(a + n) - x(a), 0.5))}" '
                        f'height="{_n(rh * 0.8)}" fill="{COLORS["w" if writable else "r"]}" '
                        'stroke="#333" stroke-width="0.4"/>')
    return _frame("VMAs of the acting process (red: writable)", "pages from $edge", "step", body)


def _plots(nl: dict, nm: dict | None) -> str:
    steps = nl["steps"]
    idx = [s["index"] for s in steps]
    obs = [(s["faults"] or {}).get("minor", 0) + (s["faults"] or {}).get("major", 0) for s in steps]
    pre = [((p["faults"] or {}).get("minor", 0) + (p["faults"] or {}).get("major", 0)) for p in (nm or {"steps": []})["steps"]]
    # address-space layout of the acting process after each step (offsets from $edge)
    rows = []
    for s in steps:
        p = s["processes"].get(s["in"]) or next(iter(s["processes"].values()), None)
        vs = []
        for v in (p or {}).get("vmas", []):
            a, b = _off(v["start"]), _off(v["end"])
            if a is not None and b is not None:
                vs.append((a / 4096, (b - a) / 4096, "w" in v["perms"]))
        rows.append((s["index"], vs))
    return f'<div class="plots">{_faults_svg(idx, obs, pre)}{_layout_svg(rows)}</div>'


def _off(sym: str):
    if not isinstance(sym, str) or not sym.startswith("$edge"):
        return None
    rest = sym[5:]
    return 0 if not rest else int(rest[1:], 16) * (1 if rest[0] == "+" else -1)


def _maps_pair(live: list[str], pred: list[str]) -> str:
    ls, ps = set(live), set(pred)
    a = "\n".join(f'<span class="only">{_e(x)}</span>' if x not in ps else _e(x) for x in live) or "(none)"
    b = "\n".join(f'<span class="only">{_e(x)}</span>' if x not in ls else _e(x) for x in pred) or "(none)"
    return f'<div class="maps"><div><b>observed</b><pre>{a}</pre></div><div><b>predicted</b><pre>{b}</pre></div></div>'


def _faults(f) -> str:
    return "not measured" if f is None else f"{f['minor']} minor, {f['major']} major"


def _interp(rec: dict) -> str:
    """The interpreter's own VMAs, which the comparison leaves out: how many, and the maps lines
    of them that steps added or removed (collapsed; every field is in the JSON record)."""
    ranges = record.InterpRanges(record.interp_ranges(rec))

    def lines(p: dict) -> list[str]:
        mine = {id(v) for v in ranges.split(p.get("vmas", []))[0]}
        return [line for line, v in zip(p.get("maps", []), p.get("vmas", [])) if id(v) in mine]

    procs = rec.get("initial", {}).get("processes", {})
    prev = {n: set(lines(p)) for n, p in procs.items()}
    out = []
    for s in rec.get("steps", []):
        for name, p in s.get("processes", {}).items():
            now = lines(p)
            before = prev.get(name, prev.get(s.get("in"), set()))
            diff = [f"+ {x}" for x in now if x not in before] + [f"- {x}" for x in sorted(before - set(now))]
            if diff:
                out.append(f"step {s['index']} [{name}]" + ("" if name in prev else " (new process)") + ":")
                out += [f"  {d}" for d in diff]
            prev[name] = set(now)
    head = (f"The interpreter's own VMAs ({len(procs.get('main', {}).get('vmas', []))} in main before "
            "step 1) are not compared and not in the maps below (README, \"Exact observations\")")
    if not out:
        return f'<p class="why">{_e(head)}; no step added or removed one.</p>'
    return (f'<details class="why"><summary>{_e(head)}; steps that added or removed one: '
            f'{sum(1 for x in out if not x.startswith(" "))}</summary><pre>{_e(chr(10).join(out))}</pre></details>')


def _experiment(r: dict) -> str:
    stem = os.path.splitext(os.path.basename(r["path"]))[0]
    c = r["comparison"]
    status = {"match": '<span class="ok">match</span>', "mismatch": '<span class="bad">MISMATCH</span>'}.get(
        r["status"], f'<span class="warn">{_e(r["status"])}</span>')
    from shmkit.isolation import describe

    parts = [f'<h2 id="exp-{_e(stem)}">{_e(stem)} — {status}</h2>', f"<p>{_e(r['about'])}</p>",
             f'<p class="isolation">{_e(describe(r.get("live") or {}))}</p>',
             f"<p>{c['matched']} of {c['fields']} fields match; live {c.get('live_seconds', 0):.2f} s, "
             f"model {1000 * c.get('model_seconds', 0):.1f} ms</p>"]
    parts += [f'<p class="warn">{_not_compared(n)}</p>' for n in c.get("not_compared") or []]
    if not r.get("predicted"):
        return "\n".join(parts)
    nl, nm = record.normalise(r["live"]), record.normalise(r["predicted"])
    parts.append(_plots(nl, nm))
    parts.append(_interp(r["live"]))
    by_step: dict = {}
    for d in c["differences"]:
        by_step.setdefault(d["step"], []).append(d)
    traces = {s["index"]: s.get("trace") or [] for s in r["predicted"]["steps"]}
    for sl, sp in zip(nl["steps"], nm["steps"]):
        diffs = by_step.get(sl["index"], [])
        args = " ".join(f"{k}={v}" for k, v in next(s for s in r["live"]["steps"] if s["index"] == sl["index"])["args"].items()
                        if k not in ("do", "in"))
        fcls = "" if sl["faults"] == sp["faults"] else "diff"
        rows = [f'<div class="step{" bad" if diffs else ""}"><b>step {sl["index"]} [{_e(sl["in"])}] {_e(sl["do"])}</b> {_e(args)}',
                f'<div>result: observed <code>{_e(sl["result"])}</code>, predicted <code>{_e(sp["result"])}</code>; '
                f'faults: <span class="{fcls}">observed {_faults(sl["faults"])}, predicted {_faults(sp["faults"])}</span></div>']
        for t in traces.get(sl["index"], []):
            rows.append(f'<div class="why">why: {_e(t)}</div>')
        for name in sorted(set(sl["processes"]) | set(sp["processes"])):
            ml = sl["processes"].get(name, {}).get("maps", [])
            mp = sp["processes"].get(name, {}).get("maps", [])
            rows.append(f"<div>{_e(name)}:</div>" + _maps_pair(ml, mp))
        if diffs:
            rows.append("<ul>" + "".join(f"<li>{_e(d['where'])}: observed <code>{_e(d['live'])}</code>, "
                                          f"predicted <code>{_e(d['model'])}</code></li>" for d in diffs[:40]) + "</ul>")
        rows.append("</div>")
        parts.append("\n".join(rows))
    return "\n".join(parts)


def _not_compared(n: dict) -> str:
    where = f" in {n['experiments']} experiments" if "experiments" in n else ""
    return (f"not compared: {_e(n['field'])} ({n['count']} fields{where}): {_e(n['why'])} "
            f"({_e(', '.join(n.get('cause') or []))}; known difference "
            f"<code>{_e(n['known_difference'])}</code>)")


def _damon_rows(host: dict, pause: dict | None) -> str:
    """The host's DAMON (profile key "damon"), one row per kdamond and module, and what
    --pause-damon did."""
    from shmkit.damon import clearers

    state = host.get("damon")
    if state is None and "damon" not in host:
        return ""
    rows = []
    for k in (state or {}).get("kdamonds", []):
        for i, c in enumerate(k.get("contexts", [])):
            schemes = ", ".join(f"{s.get('action')}" + (f" (filters: {'; '.join(s['filters'])})" if s.get("filters") else "")
                                for s in c.get("schemes", [])) or "none"
            rows.append(f"<tr><td>DAMON kdamond {k['index']} context {i}</td><td>{_e(k.get('state'))}, "
                        f"operations {_e(c.get('operations'))}, sampling {_e(c.get('sample_us'))} µs, "
                        f"schemes: {_e(schemes)}</td><td>read</td></tr>")
    for name, m in sorted((state or {}).get("modules", {}).items()):
        rows.append(f"<tr><td>DAMON module {_e(name)}</td><td>{'on' if m.get('enabled') else 'off'}</td>"
                    "<td>read</td></tr>")
    if not rows:
        rows.append(f"<tr><td>DAMON</td><td>{'no DAMON interface' if state is None else 'no kdamond'}</td>"
                    "<td>read</td></tr>")
    running = clearers(state)
    rows.append("<tr><td>DAMON clears accessed bits</td><td>"
                + (_e("yes: " + ", ".join(running)) if running else "no") + "</td><td>derived</td></tr>")
    if pause is not None:
        what = ", ".join(f"{p['what']} (turned back on: {'yes' if p.get('restored') else 'no'})"
                         for p in pause.get("paused", [])) or "nothing was running"
        notes = "; ".join(pause.get("notes") or [])
        rows.append(f"<tr><td>DAMON during the runs</td><td>paused by --pause-damon: {_e(what)}"
                    f"{_e('; ' + notes) if notes else ''}</td><td>shmkit</td></tr>")
    return "".join(rows)


def render_html(doc: dict) -> str:
    from shmkit.validate import summary

    results = doc["experiments"]
    sm = doc.get("summary") or summary(results)
    host = doc.get("host", {})
    probed = doc.get("probed") or host.get("probed") or {}
    rate = f"{100 * sm['match_rate']:.2f}%" if sm.get("match_rate") is not None else "-"
    read_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(host.get(k))}</td><td>read</td></tr>" for k in (
        "release", "machine", "page_size", "thp_enabled", "thp_shmem_enabled", "thp_use_zero_page")) + "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(v)}</td><td>read</td></tr>" for k, v in (host.get("sysctl") or {}).items())
    probed_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td><td>probed</td></tr>" for k, v in probed.items()
                          if k not in ("kernel", "boot_id", "when"))
    unreadable = ", ".join(host.get("unreadable") or []) or "none"
    if host.get("sysctl"):
        from model.kernel import effective_mmap_min_addr
        read_rows += (f"<tr><td>mmap_min_addr in effect</td><td>{effective_mmap_min_addr(host)}</td>"
                      "<td>derived: max(vm.mmap_min_addr, CONFIG_LSM_MMAP_MIN_ADDR)</td></tr>")
    read_rows += _damon_rows(host, doc.get("damon_pause"))
    if not probed_rows:
        probed_rows = '<tr><td colspan="3">no value probed (run <code>shmkit probe</code>)</td></tr>'
    index = "".join(
        f'<tr><td><a href="#exp-{_e(os.path.splitext(os.path.basename(r["path"]))[0])}">'
        f'{_e(os.path.splitext(os.path.basename(r["path"]))[0])}</a></td><td>{r["comparison"].get("steps", "-")}</td>'
        f'<td>{r["comparison"]["matched"]}/{r["comparison"]["fields"]}</td>'
        f'<td class="{"ok" if r["status"] == "match" else "bad"}">{_e(r["status"])}</td>'
        f'<td>{_e(r["comparison"].get("first") or "")}</td></tr>' for r in results)
    body = [f"<h1>shmkit validate — model against the live kernel</h1>",
            f"<p><b>{sm['matching']} of {sm['experiments']}</b> experiments match on every field; "
            f"{sm['matched']} of {sm['fields']} fields ({rate}). Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
            f"by shmkit {_e(doc.get('shmkit'))}.</p>",
            *(f'<p class="warn">{_not_compared(n)}</p>' for n in sm.get("not_compared") or []),
            "<h2>Host kernel profile</h2><table><tr><th>value</th><th>setting</th><th>source</th></tr>"
            f"{read_rows}{probed_rows}</table><p>Unreadable here (not guessed): {_e(unreadable)}</p>",
            "<h2>Experiments</h2><table><tr><th>experiment</th><th>steps</th><th>fields matched</th><th>result</th>"
            f"<th>first difference</th></tr>{index}</table>"]
    body += [_experiment(r) for r in results]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>shmkit validate</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_html(doc: dict, path: str) -> None:
    text = render_html(doc)
    with open(path, "w") as f:
        f.write(text)


def render_matrix_html(mdoc: dict) -> str:
    """The kernels view of `shmkit matrix`: experiments by kernels, each cell the result and the
    fields matched (the first difference beside a mismatch), then each kernel's profile as read
    inside it (release, soft-dirty, THP, where the temp files and /dev/shm are)."""
    from shmkit.matrix import cell, header

    cols = mdoc["columns"]
    head = "".join(f"<th>{_e(header(c)).replace(chr(10), '<br>')}</th>" for c in cols)
    body = []
    for name in mdoc["experiments"]:
        tds = []
        for c in cols:
            res = c["results"].get(name)
            text, first = cell(res)
            cls = "" if res is None else ("ok" if res["status"] == "match" else "bad")
            tds.append(f'<td class="{cls}">{_e(text)}' + (f"<br><small>{_e(first)}</small>" if first else "") + "</td>")
        body.append(f"<tr><td>{_e(name)}</td>{''.join(tds)}</tr>")
    tot = []
    for c in cols:
        sm = c["summary"]
        if sm is None:
            tot.append(f'<td class="bad">no record: {_e(c["error"])}</td>')
        else:
            rate = f" ({100 * sm['match_rate']:.2f}%)" if sm.get("match_rate") is not None else ""
            tot.append(f"<td>{sm['matching']}/{sm['experiments']} experiments; {sm['matched']}/{sm['fields']} fields{rate}</td>")
    keys = sorted({k for c in cols for k in (c.get("profile") or {})})
    prof = "".join(f"<tr><td>{_e(k)}</td>" + "".join(f"<td>{_e((c.get('profile') or {}).get(k))}</td>" for c in cols)
                   + "</tr>" for k in keys)
    recs = "".join(f"<td>{_e(c.get('record') or '-')}</td>" for c in cols)
    page = [f"<h1>shmkit matrix — the model against {len(cols)} kernel(s)</h1>",
            f"<p>Generated {_e(mdoc.get('date'))} by shmkit {_e(mdoc.get('shmkit'))} "
            f"(commit {_e(mdoc.get('commit') or 'unknown')}). Two records compare with "
            "<code>shmkit validate --compare A B</code>.</p>",
            f'<h2 id="kernels">Kernels</h2><table><tr><th>experiment</th>{head}</tr>{"".join(body)}'
            f"<tr><th>all</th>{''.join(tot)}</tr><tr><th>record</th>{recs}</tr></table>",
            f"<h2>Profile read in each kernel</h2><table><tr><th>value</th>{head}</tr>{prof}</table>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>shmkit matrix</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(page) + "</body></html>\n")


def write_matrix_html(mdoc: dict, path: str) -> None:
    text = render_matrix_html(mdoc)
    with open(path, "w") as f:
        f.write(text)
