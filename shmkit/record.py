"""The observation record (JSON, "format": 1; schema in docs/record.md) and its
normal form.

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
"""
from __future__ import annotations

import json
import re
from typing import Any

FORMAT = 1


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


class Normaliser:
    def __init__(self, rec: dict):
        self.rec = rec
        self.sym = Symbols()
        pads = rec.get("pads", {}).get("main") or {}
        self.edge = pads.get("edge") if isinstance(pads, dict) else None
        initial = rec.get("initial", {}).get("processes", {})
        main = initial.get("main", {})
        self.interp = [(v["start"], v["end"]) for v in main.get("vmas", [])]
        self.yielded: dict[str, list] = {}   # process -> pad pieces it yielded so far
        self.pids = {}
        prefix = rec.get("prefix", "")
        names = rec.get("names", {})
        subs: list[tuple[str, str]] = []
        for path, handle in names.get("files", {}).items():
            kind = "tmpfs" if path.startswith("/dev/shm/") else "disk"
            subs.append((path, f"<{kind}:{handle}>"))
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
                or p.startswith("/memfd:") or self.prefix in p or "<" in self.name(p))

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
        ino = self.sym.inode(v["dev"], v["inode"]) if v["inode"] and self._internal(v) else v["inode"]
        out = {"start": start, "end": end, "size": v["end"] - v["start"], "perms": v["perms"],
               "offset": v["offset"], "dev": v["dev"], "inode": ino, "path": self.name(v["path"])}
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
            r["key"] = self.keys.get(row["key"], row["key"]) if row["key"] else "private"
            r["shmid"] = self.sym.shmid(row["shmid"])
            r["cpid"] = procs.get(row["cpid"], "?")
            sysv.append(r)
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
                "faults": s["faults"], "value": self.value(s.get("value")),
                "perturbed": bool(s.get("perturbed")),
                "processes": {n: self.process(p, n) for n, p in sorted(s["processes"].items())},
                **self.system(s, procs),
            })
        return out


def normalise(rec: dict) -> dict:
    """The comparable form of one experiment's record (see module docstring)."""
    return Normaliser(rec).experiment()


def document(kind: str, experiments: list[dict], host: dict, version: str) -> dict:
    return {"format": FORMAT, "kind": kind, "shmkit": version, "host": host, "experiments": experiments}


def write_json(doc: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False, default=_default)
        f.write("\n")


def _default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
