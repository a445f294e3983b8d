"""The model's prediction of the faults per message of the shared-memory transports.

model.kernel.Kernel (pure Python, used here as a library) is driven with a synthetic snapshot
(two processes: the worker and its forked peer) and the steps one message takes, as the live
C loop does them:

  cold  producer: create (shm_open+ftruncate | shmget | memfd_create+ftruncate | a new disk
        file), mmap MAP_SHARED rw at the address the live run used, write every page, munmap;
        consumer: open/attach, mmap read-only at its live address, read every page, munmap,
        unlink/IPC_RMID
  warm  the ring is mapped (MAP_POPULATE) and prefaulted by both at setup; then each message
        writes its slot's pages in the producer and reads them in the consumer

Three messages are stepped and the last one is the prediction (the steady state the measured
values see, after warm-ups). Latency (a round trip) is one message each way: each process is
the producer of one and the consumer of the other.

The live address matters: fault-around maps the 16-page window aligned to 64 KiB of *address*
around a read fault, so a consumer's faults depend on where its mapping landed.
"""
from __future__ import annotations

import os
import tempfile

PAGE = 4096


_CACHE: dict = {}


def host() -> tuple[dict, dict]:
    """The host's kernel profile (with the probed values: the same model inputs validate and
    predict use, shmkit.probe.load_or_probe) and device numbers, read once."""
    if "host" not in _CACHE:
        from shmkit.predict import host_devices
        from shmkit.probe import load_or_probe
        _CACHE["host"] = (load_or_probe()[0], host_devices(tempfile.gettempdir()))
    return _CACHE["host"]


class _Sim:
    def __init__(self, profile: dict, devices: dict, fork: bool = True):
        from model.kernel import Kernel
        from model.synthetic import snapshot
        self.k = Kernel(profile, snapshot("/bin/python3", devices))
        self.i = 0
        if fork:
            self.step("fork", "main", child="peer")

    def step(self, do, proc, **args):
        self.i += 1
        out = self.k.step({"index": self.i, "do": do, "in": proc, "args": args})
        if out["result"] != "ok":
            raise RuntimeError(f"model: {do} in {proc}: {out['result']}")
        return out["faults"] or {"minor": 0, "major": 0}


def _hint(addr: int | None):
    return ("abs", addr) if addr else None


def _add(acc: dict, f: dict) -> None:
    acc["minor"] += f["minor"]
    acc["major"] += f["major"]


def _cold_message(sim: _Sim, transport: str, size: int, prod: str, cons: str, tag: str,
                  paddr: int | None, caddr: int | None) -> tuple[dict, dict]:
    """Faults of one cold message in the producer and the consumer."""
    length = (size + PAGE - 1) // PAGE * PAGE
    p = {"minor": 0, "major": 0}
    c = {"minor": 0, "major": 0}
    st = sim.step
    if transport in ("posix", "mp-shm"):
        name = f"/shmkit-bench-model-{tag}"
        _add(p, st("shm_open", prod, **{"as": "ps" + tag}, real_name=name, create=True, excl=True, size=size))
        _add(p, st("mmap", prod, **{"as": "pm" + tag}, length=length, prot="rw", flags=("SHARED",),
                   shm="ps" + tag, addr=_hint(paddr)))
        _add(p, st("touch", prod, region="pm" + tag, access="write", value=1))
        _add(p, st("munmap", prod, region="pm" + tag))
        _add(c, st("shm_open", cons, **{"as": "cs" + tag}, real_name=name,
                   access="rw" if transport == "mp-shm" else "r"))
        _add(c, st("mmap", cons, **{"as": "cm" + tag}, length=length,
                   prot="rw" if transport == "mp-shm" else "r", flags=("SHARED",), shm="cs" + tag,
                   addr=_hint(caddr)))
        st("shm_unlink", cons, real_name=name)
        _add(c, st("touch", cons, region="cm" + tag, access="read"))
        _add(c, st("munmap", cons, region="cm" + tag))
    elif transport == "memfd":
        _add(p, st("memfd", prod, **{"as": "pf" + tag}, real_name="shmkit-bench-model-" + tag, size=size))
        _add(p, st("mmap", prod, **{"as": "pm" + tag}, length=length, prot="rw", flags=("SHARED",),
                   memfd="pf" + tag, addr=_hint(paddr)))
        _add(p, st("touch", prod, region="pm" + tag, access="write", value=1))
        _add(p, st("munmap", prod, region="pm" + tag))
        # SCM_RIGHTS: the peer receives the same open file
        sim.k.procs[cons].fds["cf" + tag] = sim.k.procs[prod].fds["pf" + tag]
        _add(c, st("mmap", cons, **{"as": "cm" + tag}, length=length, prot="r", flags=("SHARED",),
                   memfd="cf" + tag, addr=_hint(caddr)))
        _add(c, st("touch", cons, region="cm" + tag, access="read"))
        _add(c, st("munmap", cons, region="cm" + tag))
    elif transport == "sysv":
        _add(p, st("shmget", prod, **{"as": "g" + tag}, size=size, real_key=0, create=True, mode=0o600))
        _add(p, st("shmat", prod, **{"as": "pm" + tag}, segment="g" + tag, addr=_hint(paddr), size=length))
        _add(p, st("touch", prod, region="pm" + tag, access="write", value=1))
        _add(p, st("shmdt", prod, region="pm" + tag))
        _add(c, st("shmat", cons, **{"as": "cm" + tag}, segment="g" + tag, readonly=True, addr=_hint(caddr),
                   size=length))
        st("shmctl", cons, segment="g" + tag, cmd="rmid")
        _add(c, st("touch", cons, region="cm" + tag, access="read"))
        _add(c, st("shmdt", cons, region="cm" + tag))
    elif transport == "mmap-file":
        # a new file per message: open(O_CREAT)+ftruncate makes a sparse file whose pages are
        # not in the page cache; the model's nearest file is one whose pages are not cached
        path = os.path.join(tempfile.gettempdir(), f"shmkit-bench-model-{tag}")
        st("file", prod, path=path, name="f" + tag, size=size, on="disk", cache="cold", fill="zero")
        _add(p, st("mmap", prod, **{"as": "pm" + tag}, length=length, prot="rw", flags=("SHARED",),
                   file="f" + tag, path=path, addr=_hint(paddr)))
        _add(p, st("touch", prod, region="pm" + tag, access="write", value=1))
        _add(p, st("munmap", prod, region="pm" + tag))
        _add(c, st("open", cons, **{"as": "co" + tag}, path=path, mode="r"))
        _add(c, st("mmap", cons, **{"as": "cm" + tag}, length=length, prot="r", flags=("SHARED",),
                   fd="co" + tag, addr=_hint(caddr)))
        _add(c, st("touch", cons, region="cm" + tag, access="read"))
        _add(c, st("munmap", cons, region="cm" + tag))
        sim.k.files.pop(path, None)         # unlink: the next message makes a new file
    else:
        raise ValueError(transport)
    return p, c


def _warm(sim: _Sim, transport: str, size: int, slots: int, channels: int,
          addrs: tuple[int | None, int | None]) -> list[tuple[dict, dict]]:
    """Set up the ring, then step three rounds of messages over every slot; returns the
    (producer, consumer) faults of each message of the last round, per channel."""
    slot = (size + PAGE - 1) // PAGE * PAGE if size >= PAGE else (size + 63) // 64 * 64
    ring = slots * slot
    total = (channels * ring + PAGE - 1) // PAGE * PAGE
    st = sim.step
    procs = ("main", "peer")
    if transport == "anon":
        # mapped before fork: fork copies no page table of a shared mapping (no anon_vma)
        st("mmap", "main", **{"as": "ring"}, length=total, prot="rw", flags=("SHARED", "ANONYMOUS", "POPULATE"),
           addr=_hint(addrs[0]))
        st("fork", "main", child="peer")
        names = {"main": "ring", "peer": "ring"}
    elif transport in ("posix", "mp-shm"):
        st("shm_open", "main", **{"as": "s"}, real_name="/shmkit-bench-model-ring", create=True, excl=True, size=total)
        st("mmap", "main", **{"as": "ring"}, length=total, prot="rw", flags=("SHARED",) + (("POPULATE",) if transport == "posix" else ()),
           shm="s", addr=_hint(addrs[0]))
        st("shm_open", "peer", **{"as": "s2"}, real_name="/shmkit-bench-model-ring")
        st("mmap", "peer", **{"as": "ring2"}, length=total, prot="rw", flags=("SHARED",) + (("POPULATE",) if transport == "posix" else ()),
           shm="s2", addr=_hint(addrs[1]))
        st("shm_unlink", "main", real_name="/shmkit-bench-model-ring")
        names = {"main": "ring", "peer": "ring2"}
    elif transport == "memfd":
        st("memfd", "main", **{"as": "f"}, real_name="shmkit-bench-model-ring", size=total)
        st("mmap", "main", **{"as": "ring"}, length=total, prot="rw", flags=("SHARED", "POPULATE"), memfd="f",
           addr=_hint(addrs[0]))
        sim.k.procs["peer"].fds["f"] = sim.k.procs["main"].fds["f"]
        st("mmap", "peer", **{"as": "ring2"}, length=total, prot="rw", flags=("SHARED", "POPULATE"), memfd="f",
           addr=_hint(addrs[1]))
        names = {"main": "ring", "peer": "ring2"}
    elif transport == "sysv":
        st("shmget", "main", **{"as": "g"}, size=total, real_key=0, create=True, mode=0o600)
        st("shmat", "main", **{"as": "ring"}, segment="g", addr=_hint(addrs[0]), size=total)
        st("touch", "main", region="ring", access="write", value=32)     # sysv_ipc's init_character
        st("shmat", "peer", **{"as": "ring2"}, segment="g", addr=_hint(addrs[1]), size=total)
        st("shmctl", "main", segment="g", cmd="rmid")
        names = {"main": "ring", "peer": "ring2"}
    elif transport == "mmap-file":
        path = os.path.join(tempfile.gettempdir(), "shmkit-bench-model-ring")
        st("file", "main", path=path, name="ring", size=total, on="disk", fill="zero")
        st("mmap", "main", **{"as": "ring"}, length=total, prot="rw", flags=("SHARED", "POPULATE"), file="ring",
           path=path, addr=_hint(addrs[0]))
        st("mmap", "peer", **{"as": "ring2"}, length=total, prot="rw", flags=("SHARED", "POPULATE"), file="ring",
           path=path, addr=_hint(addrs[1]))
        names = {"main": "ring", "peer": "ring2"}
    else:
        raise ValueError(transport)
    for pr in procs:                     # the prefault of both (a read of every page)
        st("touch", pr, region=names[pr], access="read")
    out = []
    for rnd in range(3):
        out = []
        for ch in range(channels):
            prod, cons = procs[ch], procs[1 - ch]
            for sl in range(slots):
                a = (ch * ring + sl * slot) // PAGE
                b = (ch * ring + sl * slot + size + PAGE - 1) // PAGE
                p = st("touch", prod, region=names[prod], pages=(a, b), access="write", value=rnd + 2)
                c = st("touch", cons, region=names[cons], pages=(a, b), access="read")
                out.append((ch, p, c))
    return out


def predict(series, size: int, slots: int, live: dict | None) -> dict | None:
    """{"a": {"minor", "major"}, "b": {...}} per message (throughput: a produces, b consumes)
    or per round trip (latency: each produces one message and consumes one); None for
    transports that are not shared memory."""
    t = series.transport
    if t not in ("anon", "posix", "sysv", "memfd", "mmap-file", "mp-shm"):
        return None
    if series.state == "cold" and t == "anon":
        return None
    profile, devices = host()
    sim = _Sim(profile, devices, fork=not (t == "anon" and series.state != "cold"))
    latency = series.pattern == "latency"
    la = (live or {}).get("a", {}).get("addr") or [0, 0]
    lb = (live or {}).get("b", {}).get("addr") or [0, 0]
    if series.state == "cold":
        a = {"minor": 0, "major": 0}
        b = {"minor": 0, "major": 0}
        for m in range(3):
            a = {"minor": 0, "major": 0}
            b = {"minor": 0, "major": 0}
            p, c = _cold_message(sim, t, size, "main", "peer", f"{m}a", la[0], lb[1])
            _add(a, p)
            _add(b, c)
            if latency:
                p, c = _cold_message(sim, t, size, "peer", "main", f"{m}b", lb[0], la[1])
                _add(b, p)
                _add(a, c)
        return {"a": a, "b": b}
    pieces = 1
    if getattr(series, "chunk", None) and size > series.chunk:
        pieces, size = size // series.chunk, series.chunk      # a message is `pieces` slot hand-offs
    msgs = _warm(sim, t, size, slots, 2 if latency else 1, (live or {}).get("ring") or (None, None))
    n = slots / pieces
    a = {"minor": 0, "major": 0}
    b = {"minor": 0, "major": 0}
    for ch, p, c in msgs:
        if ch == 0:
            _add(a, p)
            _add(b, c)
        else:
            _add(b, p)
            _add(a, c)
    return {"a": {k: v / n for k, v in a.items()}, "b": {k: v / n for k, v in b.items()}}
