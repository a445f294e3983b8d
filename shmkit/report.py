"""The terminal account of a run: per step and process, what happened and what
the kernel shows, as changes from the previous step (full maps are in --json)."""
from __future__ import annotations

import os

from model.pages import pages_of
from shmkit.record import Normaliser

PAGE = os.sysconf("SC_PAGE_SIZE")


def _result(r) -> str:
    if r == "ok":
        return "ok"
    if isinstance(r, dict):
        if "errno" in r:
            return f"failed: {r['errno']}"
        if "signal" in r:
            return f"{r['signal']} on the access to page {r.get('page')} (caught; the process goes on)"
        if "skipped" in r:
            return f"skipped: {r['skipped']}"
        return str(r)
    return str(r)


def _faults(f) -> str:
    if f is None:
        return "faults: not measured"
    return f"faults: {f['minor']} minor, {f['major']} major"


def _args(raw: dict) -> str:
    skip = {"do", "in"}
    return " ".join(f"{k}={v}" for k, v in raw.items() if k not in skip)


def render(rec: dict, color: bool = False) -> str:
    n = Normaliser(rec)
    from shmkit.isolation import describe

    lines = [f"== {rec['path']}", f"   {rec['about']}", f"   {describe(rec)}"]
    if rec.get("attempts", 1) > 1:
        lines.append(f"   (attempts: {rec['attempts']})")
    prev: dict[str, set[str]] = {name: set(n.process(p)["maps"]) for name, p in
                                 rec.get("initial", {}).get("processes", {}).items()}
    prev_sys = None
    for s in rec["steps"]:
        head = f"step {s['index']:>2} [{s['in']}] {s['do']} {_args(s['args'])}"
        lines.append(head)
        n.enter(s)
        if s.get("yielded"):
            lines.append("         first, shmkit unmapped its padding in the way (model.pads): "
                         + ", ".join(f"{n.addr(a)}-{n.addr(b)}" for a, b in s["yielded"]))
        lines.append(f"         -> {_result(s['result'])}; {_faults(s['faults'])}")
        if s.get("value"):
            v = n.value(s["value"])
            if "bytes" in v:
                v = dict(v, bytes=" ".join(f"{b:#04x}x{c}" for b, c in v["bytes"]))
            lines.append(f"         value: {v}")
        if s.get("perturbed"):
            lines.append("         PERTURBED (the interpreter changed memory the step cannot explain):")
            lines += [f"           {p}" for p in s["perturbed"]]
        for name, p in sorted(s["processes"].items()):
            np_ = n.process(p, name)
            now = set(np_["maps"])
            if name not in prev:  # a new child: show what differs from its parent
                lines.append(f"         {name}: new process, a fork of {s['in']}")
                prev[name] = prev.get(s["in"], set())
            before = prev.get(name, set())
            added = [line for line in np_["maps"] if line not in before]
            removed = [line for line in sorted(before) if line not in now]
            regs = ", ".join(
                (f"{h} {r.get('present', '?')}/{pages_of(r['length'], PAGE)} present"
                 + (f" ({r['zero']} zero page)" if r.get("zero") else "")) if r["mapped"] else f"{h} unmapped"
                for h, r in np_["regions"].items())
            if added or removed or regs:
                lines.append(f"         {name}: {regs}")
            lines += [f"           + {line}" for line in added]
            lines += [f"           - {line}" for line in removed]
            prev[name] = now
        sysv = n.system(s, {})
        if sysv != prev_sys:
            for e in sysv["dev_shm"]:
                lines.append(f"         /dev/shm/{e['name']} size={e['size']} mode={e['mode']}")
            for e in sysv["sysv"]:
                lines.append(f"         SysV key={e['key']} size={e['size']} nattch={e['nattch']} perms={e['perms']}")
            if prev_sys and not sysv["dev_shm"] and not sysv["sysv"]:
                lines.append("         (no /dev/shm entry or SysV segment of this run left)")
            prev_sys = sysv
        if s.get("note"):
            lines.append(f"         note: {s['note']}")
        for t in s.get("trace") or []:
            lines.append(f"         why: {t}")
    if rec["status"] == "aborted":
        a = rec["abort"]
        lines.append(f"ABORTED at step {a.get('step')}: process '{a.get('process')}' "
                     + ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("process", "step")))
    if "model_seconds" not in rec:
        lines.append(f"   status: {rec['status']}; cleaned up: {len(rec.get('cleaned', []))} object(s)")
    return "\n".join(lines)


def render_prediction(rec: dict) -> str:
    """The model's account: the same layout as a run, each step with the kernel paths that
    produced it ("why")."""
    text = render(rec)
    head, _, rest = text.partition("\n")
    return head + " (predicted by the model)\n" + rest
