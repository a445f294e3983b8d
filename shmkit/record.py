"""The observation record (JSON, "format": 2; schema in docs/record.md), its normal form,
and its compact JSON form.

A raw record holds what the kernel showed: real addresses, run-unique names,
inode numbers, shmids, pids. The normal form replaces every value that a run
or the kernel picks freely by a symbol (DESIGN.md "symbols"), so that two runs
of one experiment, or a run and a prediction, can be compared field by field:

- an address in the experiment's part of the address space becomes
  ``$edge±0x...``, relative to the 2 MiB boundary that the worker padded its
  free area to (see shmkit.worker); an address inside the interpreter's own
  VMAs (those present before the first step) becomes ``$interp``, except in the
  pieces of the harness's pads that a step's process yielded to it (the
  step's ``yielded``, model.pads): those are the experiment's from that step on;
- run-unique names become their handles: ``<disk:NAME>``, ``<tmpfs:NAME>``,
  ``/dev/shm/<shm:NAME>``, ``/memfd:<memfd:NAME>``, ``/SYSV<key:HANDLE>``;
- inode numbers of the run's objects and of internal shm files, shmids and pids
  become ``#N``, ``@N`` and process names, numbered by first appearance.

In the hermetic mode (record "isolation": {"mode": "hermetic"}, shmkit.isolation) the run has
its own /dev/shm and IPC namespace: POSIX names, memfd names, SysV keys and shmids are the
experiment's own or the fresh namespace's, the same in every run, and are compared as they
are (no ``<shm:...>``, ``<memfd:...>``, ``<key:...>`` or ``@N``), SysV rows in the order the
kernel lists them. File paths (the run's temp dir) and inode numbers are symbols in both modes,
and so is the device number of the run's own /dev/shm tmpfs (``<dev_shm>``: a new anonymous
device at every mount).

In memory a record always holds every process's full view (`maps` and `vmas`) at every
step. On disk (format 2) the interpreter's VMAs, which hardly change, are written once per
process and then as changes (`compact`, `expand`; docs/record.md "Compact processes").
"""
from __future__ import annotations

import bisect
import functools
import json
import re
from typing import Any

FORMAT = 2
READABLE_FORMATS = (1, 2)   # format 1 records hold every view in full: expanding them is a no-op


class Symbols:
    def __init__(self):
        self.inodes: dict[tuple[str, int], str] = {}
        self.shmids: dict[int, str] = {}

    def inode(self, dev: str, ino: int) -> str:
        key = (dev, ino)
        if key not in self.inodes:
            self.inodes[key] = f"#{len(self.inodes) + 1}"
        return self.inodes[key]

    def shmid(self, shmid: int) -> str:
        if shmid not in self.shmids:
            self.shmids[shmid] = f"@{len(self.shmids) + 1}"
        return self.shmids[shmid]


def interp_ranges(rec: dict) -> list[tuple[int, int]]:
    """The interpreter's own VMAs: those of `main` before the first step. A VMA inside one of
    them is the interpreter's at every step, in every process (a fork copies them)."""
    main = rec.get("initial", {}).get("processes", {}).get("main", {})
    return [(v["start"], v["end"]) for v in main.get("vmas", [])]


class Normaliser:
    def __init__(self, rec: dict):
        self.rec = rec
        self.sym = Symbols()
        pads = rec.get("pads", {}).get("main") or {}
        self.edge = pads.get("edge") if isinstance(pads, dict) else None
        self.interp = interp_ranges(rec)
        self.yielded: dict[str, list] = {}   # process -> pad pieces it yielded so far
        self.pids = {}
        prefix = rec.get("prefix", "")
        names = rec.get("names", {})
        iso = rec.get("isolation") or {}
        self.hermetic = iso.get("mode") == "hermetic"
        # the run's own /dev/shm tmpfs gets a new anonymous device number at every mount
        self.dev_shm_dev = iso.get("dev_shm_dev") if self.hermetic else None
        subs: list[tuple[str, str]] = []
        for path, handle in names.get("files", {}).items():
            kind = "tmpfs" if path.startswith("/dev/shm/") else "disk"
            subs.append((path, f"<{kind}:{handle}>"))
        if self.hermetic:           # exact names and keys: compared as they are
            names = {"files": names.get("files", {})}
        for real, handle in names.get("posix", {}).items():
            subs.append(("/dev/shm" + real, f"/dev/shm/<shm:{handle}>"))
            subs.append((real.lstrip("/"), f"<shm:{handle}>"))
        for real, handle in names.get("memfds", {}).items():
            subs.append((real, f"<memfd:{handle}>"))
        for key, handle in names.get("keys", {}).items():
            k = int(key)
            if k:
                subs.append((f"/SYSV{k & 0xFFFFFFFF:08x}", f"/SYSV<key:{handle}>"))
        subs.sort(key=lambda p: -len(p[0]))
        self.subs = subs
        self.keys = {int(k): h for k, h in names.get("keys", {}).items()}
        if self.hermetic:
            self.sym.shmid = lambda shmid: shmid      # a fresh namespace's, the same every run
        self.prefix = prefix

    def addr(self, x: int) -> str:
        """An experiment address, relative to the padded edge of the free area."""
        if self.edge is None:
            return f"{x:#x}"
        d = x - self.edge
        return "$edge" if d == 0 else f"$edge{'+' if d > 0 else '-'}{abs(d):#x}"

    def name(self, text: str) -> str:
        for real, sym in self.subs:
            if real in text:
                text = text.replace(real, sym)
        if self.prefix and self.prefix in text:
            text = re.sub(re.escape(self.prefix), "<run>-", text)
        return text

    def _internal(self, vma: dict) -> bool:
        p = vma["path"]
        return (vma["dev"] == "00:01" or p.startswith("/dev/zero") or p.startswith("/SYSV")
                or p.startswith("/memfd:") or bool(self.prefix and self.prefix in p)
                or p.startswith("/dev/shm/") or "<" in self.name(p))

    def enter(self, step: dict) -> None:
        """Before the processes of a step are normalised, in step order: the pad pieces its
        process yielded before the call, and a forked child's share of its parent's."""
        proc = step["in"]
        if step.get("yielded"):
            self.yielded.setdefault(proc, []).extend(tuple(p) for p in step["yielded"])
        if step["do"] == "fork" and step["result"] == "ok":
            self.yielded[step["args"]["child"]] = list(self.yielded.get(proc, []))

    def vma(self, v: dict, proc: str | None = None) -> dict:
        interp = self.is_interp(v, proc)
        start = "$interp" if interp else self.addr(v["start"])
        end = "$interp" if interp else self.addr(v["end"])
        ino = v["inode"]
        if self.hermetic and v["path"].startswith("/SYSV"):
            pass        # ipc/shm.c newseg: a segment's inode number is its shmid, compared as it is
        elif (ino or v["path"].startswith("/SYSV")) and self._internal(v):   # a shmid may be 0
            ino = self.sym.inode(v["dev"], ino)
        dev = "<dev_shm>" if self.dev_shm_dev and v["dev"] == self.dev_shm_dev else v["dev"]
        out = {"start": start, "end": end, "size": v["end"] - v["start"], "perms": v["perms"],
               "offset": v["offset"], "dev": dev, "inode": ino, "path": self.name(v["path"])}
        if not interp:
            out["smaps_kb"] = v.get("smaps_kb", {})
            out["vmflags"] = list(v.get("vmflags") or [])
        return out

    def line(self, v: dict, proc: str | None = None) -> str:
        n = self.vma(v, proc)
        return f"{n['start']}-{n['end']} {n['perms']} {n['offset']:08x} {n['dev']} {n['inode']} {n['path']}".rstrip()

    def is_interp(self, v: dict, proc: str | None = None) -> bool:
        mine = self.yielded.get(proc, ())
        return any(s <= v["start"] and v["end"] <= e for s, e in self.interp) \
            and not any(a < v["end"] and v["start"] < b for a, b in mine)

    def process(self, p: dict, proc: str | None = None) -> dict:
        """The experiment's part of a process's maps, in address order. The
        interpreter's own VMAs are left out of the normal form: their order and
        number vary from run to run under ASLR (2 MiB-aligned libraries leave
        gaps that later small mappings fill differently, and adjacent anonymous
        pieces merge or not); any change to them during a step is reported as a
        perturbation instead (shmkit.manager)."""
        mine = [v for v in p["vmas"] if not self.is_interp(v, proc)]
        return {
            "maps": [self.line(v, proc) for v in mine],
            "vmas": [self.vma(v, proc) for v in mine],
            "regions": {h: {**{k: r[k] for k in r if k not in ("addr",)}, "addr": self.addr(r["addr"])}
                        for h, r in sorted(p.get("regions", {}).items())},
        }

    def system(self, s: dict, procs: dict[int, str]) -> dict:
        shm = [{**e, "name": self.name("/" + e["name"]).lstrip("/")} for e in s.get("dev_shm", [])]
        sysv = []
        for row in s.get("sysv", []):
            r = dict(row)
            if not self.hermetic:
                r["key"] = self.keys.get(row["key"], row["key"]) if row["key"] else "private"
            r["shmid"] = self.sym.shmid(row["shmid"])
            r["cpid"] = procs.get(row["cpid"], "?")
            sysv.append(r)
        if self.hermetic:       # ids the same every run: the kernel's own order (IDR index)
            return {"dev_shm": shm, "sysv": sysv}
        # /proc/sysvipc/shm lists segments in IDR index order, and ipc_idr_alloc() allocates
        # indexes cyclically (idr_alloc_cyclic) across every process on the host: a later
        # segment can sit before an earlier one. The table is a set; its normal order is the
        # order the segments were made in (@1, @2, ...).
        sysv.sort(key=lambda r: int(r["shmid"][1:]))
        return {"dev_shm": shm, "sysv": sysv}

    def value(self, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = dict(v)
        if "addr" in out and isinstance(out["addr"], int):
            out["addr"] = self.addr(out["addr"])
        if "shmid" in out:
            out["shmid"] = self.sym.shmid(out["shmid"])
        if "pid" in out:
            out["pid"] = "<pid>"
        return out

    # a call's addresses within this distance of the edge are the experiment's (made from its
    # regions, which land at fixed offsets from the edge); an address given as a number stays
    CALL_ADDR_WINDOW = 1 << 44   # 16 TiB: the largest bundled mappings are 64 GiB apart (mmap-overcommit-guess)
    _CALL_ADDRS = ("addr", "base", "new_addr")
    _CALL_NAMES = ("path", "name")

    def call(self, c: dict | None) -> dict | None:
        """A step's call (model.resolve) in normal form: experiment addresses relative to the
        edge, real names as handles, shmids as @N (a raw negative shmid stays), SysV keys as
        their handles."""
        if not isinstance(c, dict):
            return c
        out = dict(c)
        for k in self._CALL_ADDRS:
            x = out.get(k)
            if isinstance(x, int) and x and self.edge is not None and abs(x - self.edge) < self.CALL_ADDR_WINDOW:
                out[k] = self.addr(x)
        for k in self._CALL_NAMES:
            if isinstance(out.get(k), str):
                out[k] = self.name(out[k])
        if isinstance(out.get("source"), list) and out["source"] and out["source"][0] == "file":
            out["source"] = ["file", self.name(out["source"][1])]
        if isinstance(out.get("shmid"), int) and out["shmid"] >= 0:
            out["shmid"] = self.sym.shmid(out["shmid"])
        if "key" in out and isinstance(out["key"], int):
            out["key"] = self.keys.get(out["key"], out["key"]) if out["key"] else "private"
        return out

    def experiment(self) -> dict:
        rec = self.rec
        procs: dict[int, str] = {}
        for name, p in rec.get("initial", {}).get("processes", {}).items():
            procs[p["pid"]] = name
        out = {"path": rec["path"], "status": rec["status"], "abort": rec.get("abort"),
               "initial": {n: self.process(p)["maps"] for n, p in sorted(
                   rec.get("initial", {}).get("processes", {}).items())}, "steps": []}
        for s in rec["steps"]:
            self.enter(s)
            for name, p in s["processes"].items():
                procs[p["pid"]] = name
            out["steps"].append({
                "index": s["index"], "do": s["do"], "in": s["in"], "result": s["result"],
                "faults": s["faults"], "value": self.value(s.get("value")), "call": self.call(s.get("call")),
                "perturbed": bool(s.get("perturbed")),
                "processes": {n: self.process(p, n) for n, p in sorted(s["processes"].items())},
                **self.system(s, procs),
            })
        return out


def normalise(rec: dict) -> dict:
    """The comparable form of one experiment's record (see module docstring)."""
    return Normaliser(rec).experiment()


# ----- constructors: the one definition of each record shape (docs/record.md) ----------------
# The live side (manager), the model side (predict) and the differential session build their
# records here, so the two sides can never disagree on a field's name or presence.

def setup_record(setup) -> dict:
    """An experiment's [setup] as the record keeps it (spec.Setup)."""
    out = {"aslr": setup.aslr, "layout": setup.layout, "rlimits": [list(r) for r in setup.rlimits],
           "user": setup.user}
    # the SysV limits of the run's own IPC namespace, when the experiment sets them (hermetic)
    out.update({k: getattr(setup, k) for k in ("shmmax", "shmall", "shmmni")
                if getattr(setup, k, None) is not None})
    return out


def experiment_record(exp, run, *, path: str | None = None, status: str = "ok", **more) -> dict:
    """One experiment's record head: what it is (spec.Experiment; `path` overrides its file),
    the run that named its objects (registry.Run), its steps (filled in as they run).
    `more`: initial, pads, ... as docs/record.md lists them."""
    return {"path": exp.path if path is None else path, "about": exp.about, "setup": setup_record(exp.setup),
            "run_id": run.run_id, "prefix": run.name_prefix, "isolation": {"mode": run.isolation},
            "status": status, "steps": [], **more}


def step_record(step, *, result, faults, value, note, processes: dict, system: dict,
                perturbed, call: dict | None = None, **more) -> dict:
    """One step's record, live or predicted: the step as written (index, do, in, args), its
    result, faults and value, the call the side received (model.resolve; None when the step
    was skipped before any call), every process's view and the system tables (dev_shm, sysv);
    `perturbed` is the live side's alone (None in a prediction). `more`: exit_status,
    yielded, trace, check, ... (docs/record.md)."""
    return {"index": step.index, "do": step.do, "in": step.proc, "args": step.raw,
            "result": result, "faults": faults, "value": value, "note": note, "call": call,
            "processes": processes, **system, "perturbed": perturbed,
            **{k: v for k, v in more.items() if v is not None}}


def document(kind: str, experiments: list[dict], host: dict, version: str) -> dict:
    return {"format": FORMAT, "kind": kind, "shmkit": version, "host": host, "experiments": experiments}


def write_json(doc: dict, path: str) -> None:
    """The document as JSON, its records compacted (`compact_document`)."""
    text = dumps(compact_document(doc))
    with open(path, "w") as f:
        f.write(text)


def _default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------------------------
# The compact JSON form (format 2; docs/record.md "Compact processes")
#
# A record in memory holds every process's full view at every step. Written out, the
# interpreter's VMAs (those inside `interp_ranges`: about 180 per process, and the same at
# nearly every step) are stored once per process and then only as changes; the experiment's
# own VMAs stay in full at every step; `maps` lines are rebuilt from the VMAs
# (procfs.render_maps_line), and a line that would not be rebuilt byte for byte is stored
# verbatim. compact() checks that expand() gives back exactly what it was given, process by
# process and record by record, and keeps in full whatever would not: nothing is lost.
# --------------------------------------------------------------------------------------------

class RecordError(ValueError):
    """A JSON document that this shmkit cannot read as a record."""


def _key(v: dict) -> tuple[int, int]:
    return (v["start"], v["end"])


def _copy_vma(v: dict) -> dict:
    c = dict(v)
    for k in ("smaps_kb", "vmflags"):
        x = c.get(k)
        if isinstance(x, (dict, list)):
            c[k] = x.copy()
    return c


class InterpRanges:
    """interp_ranges, sorted for lookup. They do not overlap (they were VMAs of one process)."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = sorted(ranges)
        self.starts = [s for s, _ in self.ranges]

    def split(self, vmas: list[dict]) -> tuple[list, list]:
        """(the interpreter's VMAs, the experiment's), as Normaliser.is_interp tells them apart."""
        interp, own = [], []
        for v in vmas:
            i = bisect.bisect_right(self.starts, v["start"]) - 1
            inside = i >= 0 and v["end"] <= self.ranges[i][1]
            (interp if inside else own).append(v)
        return interp, own


def _changes(old: dict, new: dict) -> dict | None:
    """The fields of `new` that differ from `old` (smaps_kb: only the counters that differ);
    None when the change is not a field update (a field or counter came or went)."""
    if old.keys() != new.keys():
        return None
    out = {}
    for k, x in new.items():
        if old[k] == x:
            continue
        if k == "smaps_kb" and isinstance(x, dict) and isinstance(old[k], dict):
            if old[k].keys() != x.keys():
                return None
            out[k] = {c: n for c, n in x.items() if old[k][c] != n}
        else:
            out[k] = x
    return out


def _delta(base: list[dict], now: list[dict]) -> dict:
    """`now` as changes to `base`: VMAs gone (`drop`: [start, end]), changed in place
    (`set`: [start, end, {field: value}]) and new (`add`: full VMAs)."""
    old = {_key(v): v for v in base}
    keys = {_key(v) for v in now}
    drop = [list(k) for k in old if k not in keys]
    sets, add = [], []
    for v in now:
        o = old.get(_key(v))
        ch = None if o is None else _changes(o, v)
        if ch is None:
            if o is not None:
                drop.append(list(_key(v)))
            add.append(v)
        elif ch:
            sets.append([v["start"], v["end"], ch])
    return {k: x for k, x in (("drop", drop), ("set", sets), ("add", add)) if x}


def _apply(base: list[dict], delta: dict) -> list[dict]:
    drop = {tuple(k) for k in delta.get("drop", [])}
    sets = {(s, e): ch for s, e, ch in delta.get("set", [])}
    out = []
    for v in base:
        k = _key(v)
        if k in drop:
            continue
        v = _copy_vma(v)
        for f, x in sets.get(k, {}).items():
            if f == "smaps_kb" and isinstance(v.get(f), dict):
                v[f].update(x)
            else:
                v[f] = x
        out.append(v)
    out += [_copy_vma(v) for v in delta.get("add", [])]
    out.sort(key=lambda v: v["start"])
    return out


def _render(v: dict) -> str:
    return _render_fields(v["start"], v["end"], v["perms"], v["offset"], v["dev"], v["inode"], v["path"])


@functools.lru_cache(maxsize=1 << 16)
def _render_fields(*fields) -> str:
    """A maps line from a VMA's fields (the interpreter's VMAs come back at every step)."""
    from shmkit.procfs import Vma, render_maps_line

    return render_maps_line(Vma(*fields, line=""))


def _full(p: dict) -> bool:
    return "interp" not in p


def _compact_process(p: dict, base: list[dict], frm: dict | None, interp: list, own: list) -> dict:
    if not _full(p) or "maps" not in p or len(p["maps"]) != len(p["vmas"]):
        return p
    try:
        verbatim = {str(i): line for i, (line, v) in enumerate(zip(p["maps"], p["vmas"]))
                    if line != _render(v)}
    except (KeyError, TypeError, ValueError):
        return p
    out = {}
    for k, x in p.items():
        if k == "vmas":
            out["vmas"] = own
            out["interp"] = {**({"from": frm} if frm else {}), **_delta(base, interp)}
            if verbatim:
                out["maps_verbatim"] = verbatim
        elif k != "maps":
            out[k] = x
    # the lines are rebuilt from these VMAs, or stored verbatim: equal VMAs give equal maps
    return out if _vmas(out, base) == p["vmas"] else p


def _vmas(cp: dict, base: list[dict]) -> list[dict]:
    return sorted(cp["vmas"] + _apply(base, cp["interp"]), key=lambda v: v["start"])


def _expand_process(cp: dict, base: list[dict]) -> dict:
    if _full(cp):
        return cp
    vmas = _vmas(cp, base)
    verbatim = cp.get("maps_verbatim", {})
    out = {}
    for k, x in cp.items():
        if k == "vmas":
            out["maps"] = [verbatim[str(i)] if str(i) in verbatim else _render(v)
                           for i, v in enumerate(vmas)]
            out["vmas"] = vmas
        elif k not in ("interp", "maps_verbatim"):
            out[k] = x
    return out


def _views(rec: dict) -> list[tuple[int, dict, str | None]]:
    """(reference, view, acting process) of the initial view (reference 0) and every step."""
    out = [(0, rec["initial"], None)] if isinstance(rec.get("initial"), dict) else []
    return out + [(s["index"], s, s.get("in")) for s in rec.get("steps", [])]




def compact(rec: dict, live: dict | None = None) -> dict:
    """One experiment's record (full, as in memory) in compact form. `live`: for the model's
    record of a validate entry, the live record, whose initial view the model started from:
    the model's initial processes are stored as changes to it."""
    ranges = InterpRanges(interp_ranges(rec))
    last: dict[str, int] = {}                       # process -> reference of its last view
    interp: dict[tuple[int, str], list] = {}        # (reference, process) -> its interpreter VMAs
    views = []
    for ref, view, acting in _views(rec):
        procs = view.get("processes")
        if not isinstance(procs, dict):
            views.append(view)
            continue
        parts = {n: ranges.split(p["vmas"]) if isinstance(p.get("vmas"), list) else None
                 for n, p in procs.items()}
        new = {}
        for name, p in procs.items():
            if parts[name] is None:
                new[name] = p
                continue
            if name in last:
                frm, base = {"step": last[name]}, interp[(last[name], name)]
            elif ref == 0 and live and name in (live.get("initial") or {}).get("processes", {}):
                frm, base = {"record": "live", "step": 0}, live["initial"]["processes"][name].get("vmas", [])
            elif acting in procs and acting != name and acting in last and parts[acting] is not None:
                frm, base = {"step": ref, "process": acting}, parts[acting][0]
            else:
                frm, base = None, []
            new[name] = _compact_process(p, base, frm, *parts[name])
        for name in procs:
            interp[(ref, name)] = parts[name][0] if parts[name] is not None else []
            last[name] = ref
        views.append({**view, "processes": new})
    if not views:
        return rec
    out = dict(rec)
    if isinstance(rec.get("initial"), dict):
        out["initial"], views = views[0], views[1:]
    out["steps"] = views
    try:
        same = expand(out, live) == rec
    except (KeyError, TypeError, ValueError):
        same = False
    return out if same else rec


def expand(rec: dict, live: dict | None = None) -> dict:
    """The full record (every process's `maps` and `vmas` at every step) from its compact form;
    a full record is returned as it is. `live`: the expanded live record of the same validate
    entry (the base of a model record's initial view)."""
    if rec is None or not any(not _full(p) for _, v, _a in _views(rec)
                              for p in (v.get("processes") or {}).values()):
        return rec
    done: dict[tuple[int, str], dict] = {}
    raw = {(ref, n): p for ref, v, _a in _views(rec) for n, p in (v.get("processes") or {}).items()}
    lives = (live or {}).get("initial", {}).get("processes", {})
    ranges = InterpRanges([])

    def view(ref: int, name: str, chain=()) -> dict:
        if (ref, name) in done:
            return done[(ref, name)]
        if (ref, name) in chain:
            raise RecordError(f"step {ref}: process {name}: its interpreter VMAs refer to themselves")
        cp = raw[(ref, name)]
        frm = cp.get("interp", {}).get("from") if not _full(cp) else None
        if frm is None:
            base = []
        elif frm.get("record") == "live":
            base = lives[name]["vmas"]       # every VMA: this record's ranges are not known yet
        else:
            base = ranges.split(view(frm["step"], frm.get("process", name), chain + ((ref, name),))["vmas"])[0]
        done[(ref, name)] = _expand_process(cp, base)
        return done[(ref, name)]

    out = dict(rec)
    if isinstance(rec.get("initial"), dict):
        procs = rec["initial"].get("processes") or {}
        if "main" in procs:
            view(0, "main")
        ranges = InterpRanges(interp_ranges({"initial": {"processes": {"main": done.get((0, "main"), {})}}}))
        out["initial"] = {**rec["initial"], "processes": {n: view(0, n) for n in procs}}
    out["steps"] = [{**s, "processes": {n: view(s["index"], n) for n in s["processes"]}}
                    if isinstance(s.get("processes"), dict) else s for s in rec.get("steps", [])]
    return out


def compact_document(doc: dict) -> dict:
    """A document (run, predict, validate) with every record compacted, as format 2."""
    def safe(rec: dict, live: dict | None = None) -> dict:
        try:
            return compact(rec, live)
        except (KeyError, TypeError, ValueError):   # not the shape compact() knows: kept in full
            return rec

    exps = []
    for e in doc.get("experiments", []):
        if "steps" in e:
            e = safe(e)
        elif isinstance(e.get("live"), dict):
            e = {**e, "live": safe(e["live"]),
                 **({"predicted": safe(e["predicted"], e["live"])} if e.get("predicted") else {})}
        exps.append(e)
    return {**doc, "format": FORMAT, "experiments": exps}


def expand_document(doc: dict) -> dict:
    exps = []
    for e in doc.get("experiments") or []:
        if not isinstance(e, dict):
            raise RecordError("an experiment is not a JSON object")
        if "steps" in e:
            e = expand(e)
        elif isinstance(e.get("live"), dict):
            live = expand(e["live"])
            e = {**e, "live": live,
                 **({"predicted": expand(e["predicted"], live)} if e.get("predicted") else {})}
        exps.append(e)
    return {**doc, "experiments": exps}


def loads(text: str) -> dict:
    """A record document from its JSON text, every record expanded. RecordError (a
    ValueError) when the text is not a record of a readable format."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise RecordError("not a JSON object")
    fmt = doc.get("format")
    if fmt not in READABLE_FORMATS:
        raise RecordError(f"record format {fmt!r} is not readable by this shmkit "
                          f"(it reads formats {', '.join(map(str, READABLE_FORMATS))})")
    try:
        return expand_document(doc)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise RecordError(f"a compact process refers to a view that is not there ({e!r})") from None


def read_json(path: str) -> dict:
    """A record document from a file: JSON text, or the same compressed with gzip (how
    `shmkit matrix` brings a guest's record back; told apart by gzip's magic bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        import gzip
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise RecordError(f"not a whole gzip file ({e})") from None
    try:
        return loads(data.decode())
    except UnicodeDecodeError as e:
        raise RecordError(f"not UTF-8 text ({e})") from None


def dumps(doc: dict) -> str:
    """JSON text a person can read: an object on one line when it holds nothing nested deeper
    than a flat dict or list (a VMA with its smaps counters, a region, a step's arguments), or
    when it is short; anything else indented by one space per level."""
    out: list[str] = []
    _encode(doc, 0, out)
    out.append("\n")
    return "".join(out)


def _plain(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return o


def _shallow(o, depth: int) -> bool:
    o = _plain(o)
    if isinstance(o, dict):
        return depth > 0 and all(_shallow(x, depth - 1) for x in o.values())
    if isinstance(o, list):
        return depth > 0 and all(_shallow(x, depth - 1) for x in o)
    return True


def _encode(o, level: int, out: list[str]) -> None:
    o = _plain(o)
    if not isinstance(o, (dict, list)) or not o:
        out.append(json.dumps(o, default=_default))
        return
    if _shallow(o, 3):
        one = json.dumps(o, default=_default)
        if len(one) <= 120 or (isinstance(o, dict) and _shallow(o, 2)):
            out.append(one)
            return
    pad = "\n" + " " * (level + 1)
    if isinstance(o, dict):
        out.append("{")
        for i, (k, x) in enumerate(o.items()):
            out.append(("," if i else "") + pad + json.dumps(str(k)) + ": ")
            _encode(x, level + 1, out)
        out.append("\n" + " " * level + "}")
    else:
        out.append("[")
        for i, x in enumerate(o):
            out.append(("," if i else "") + pad)
            _encode(x, level + 1, out)
        out.append("\n" + " " * level + "]")
