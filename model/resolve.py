"""One resolver: a step of an experiment file turned into the arguments of its system call.

Both consumers of a step take what `resolve` returns and nothing else: the live worker
(shmkit.worker) passes the numbers to the kernel, the model (model.kernel's sys_* methods)
reads them as the kernel does. This is gVisor's shape (pkg/sentry/syscalls/linux/sys_mmap.go
fills one memmap.MMapOpts that mm.MMap consumes): names become numbers here (prot, flags,
advice, cmd from the one table, model/flags.py; raw integers pass as given), a range becomes an
absolute address and a byte length, a handle becomes the real name, path or shmid the run gave
it. So a rule about a number (madvise_behavior_valid refusing an advice, msync refusing a bit)
is the model's to apply to the number, and the two sides cannot read a step differently.

resolve(op, args, regions, names, page_size) -> call:
  args     the step's normalised arguments (shmkit.spec Step.args; a missing key is None)
  regions  the acting process's regions on that side: {handle: (addr, length)}
  names    that side's naming (Names below, used by both sides): run (shmkit.registry.Run:
           posix_name, memfd_name, sysv_key, file_path), file(handle) -> path,
           shmid(handle) -> int | None, segment_size(handle) -> int | None
A region handle the process does not hold raises Skip: the step's result is {"skipped": ...}
on both sides, from this one message.

The call of each operation (every value a number, a string or a list; JSON as it is recorded
under "call" in each step, docs/record.md):
  range operations (munmap mprotect madvise msync mlock munlock touch read shmdt mremap):
    addr, length (bytes, as given: each call rounds up as the kernel does), region (the handle
    the range was given by, or null), whole (the whole region: munmap/shmdt mark it unmapped,
    mremap makes the handle follow the move)
  plus  mprotect: prot; madvise: advice; msync: flags; mlock: flags (MLOCK_ONFAULT or 0);
        touch/read: pages (accesses: at addr, addr + 1 page, ..., one in every page the range
        covers), base (page numbers of a fault count from it: the region's
        address, or addr's page), touch: access, value; mremap: new_length, flags, new_addr, follow (the
        handle given as region, with or without pages: it follows the moved range)
  mmap: as, addr, length, prot, flags, offset, source (null, ["file", path], or
        [fd|shm|memfd, handle])
  write: source, offset, length, value; fadvise: source, offset, length, advice (POSIX_FADV_*);
        seal: source, seals (F_SEAL_* bits); mlockall: flags (MCL_*); settle: path, seconds;
        memfd: flags (MFD_ALLOW_SEALING or 0); shmat: flags with SHM_REMAP/SHM_EXEC; shmctl:
        mode (IPC_SET's permission bits; absent for the other commands)
  others: see _OTHERS below.
"""
from __future__ import annotations

from collections.abc import Mapping

from model.flags import (F_SEAL, FADV, IPC_CREAT, IPC_EXCL, MADV, MAP, MCL, MFD_ALLOW_SEALING,
                         MLOCK_ONFAULT, MREMAP, MS, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC,
                         O_WRONLY, PAGE_SIZE, SHM_EXEC, SHM_RDONLY, SHM_REMAP, SHM_RND,
                         SHMCTL_CMD, bits, prot_of)

RANGE_OPS = ("munmap", "mprotect", "madvise", "msync", "mlock", "munlock", "touch", "read",
             "shmdt", "mremap")
SOURCES = ("file", "fd", "shm", "memfd")


class Skip(Exception):
    """The step names a region (or a handle: what="handle") its process does not hold (the
    call that made it failed). Its `result` is the one "skipped" result of both sides: the
    resolver's, the worker's (shmkit.worker fd_of) and the model's (model.kernel Kernel.fd)."""

    def __init__(self, handle: str, what: str = "region"):
        super().__init__(f"{what} '{handle}' does not exist (the call that made it failed)")
        self.result = {"skipped": str(self)}


def region_addr(regions: Mapping, handle: str) -> int:
    r = regions.get(handle)
    if r is None:
        raise Skip(handle)
    return r[0]


def address(regions: Mapping, addr) -> int:
    """A step's address (shmkit.spec: ("abs", N), ("rel", REGION, OFFSET) or None = 0), as the
    unsigned long the kernel receives."""
    if addr is None:
        return 0
    if addr[0] == "abs":
        return addr[1]
    return (region_addr(regions, addr[1]) + addr[2]) & ((1 << 64) - 1)


def accesses(addr: int, length: int, page_size: int = PAGE_SIZE) -> int:
    """The accesses a touch or read of [addr, addr + length) makes: one in every page the range
    covers (at addr + k pages, k = 0, 1, ...), none for a zero length."""
    if length <= 0:
        return 0
    return (addr + length - 1) // page_size - addr // page_size + 1


def _range(op: str, g, regions: Mapping, page_size: int) -> dict:
    addr_f, len_f = ("old_addr", "old_length") if op == "mremap" else ("addr", "length")
    handle = g("region")
    if handle is not None:
        r = regions.get(handle)
        if r is None:
            raise Skip(handle)
        pages = g("pages")
        if pages is None:
            addr, length = r[0], r[1]
        else:
            addr, length = r[0] + pages[0] * page_size, (pages[1] - pages[0]) * page_size
        return {"addr": addr, "length": length, "region": handle, "whole": pages is None}
    a = g(addr_f)
    rel = a[1] if a is not None and a[0] == "rel" else None
    return {"addr": address(regions, a), "length": g(len_f) or 0, "region": rel, "whole": False}


def _source(g, names) -> list | None:
    for kind in SOURCES:
        if g(kind) is not None:
            return ["file", names.file(g(kind))] if kind == "file" else [kind, g(kind)]
    return None


def _range_call(op, g, regions, names, page_size):
    c = _range(op, g, regions, page_size)
    if op == "mprotect":
        c["prot"] = prot_of(g("prot"))
    elif op == "madvise":
        advice = g("advice")
        c["advice"] = advice if isinstance(advice, int) else MADV[advice]
    elif op == "msync":
        c["flags"] = bits(MS, g("flags") or ("SYNC",))
    elif op == "mlock":
        c["flags"] = MLOCK_ONFAULT if g("onfault") else 0
    elif op in ("touch", "read"):
        c["pages"] = accesses(c["addr"], c["length"], page_size)
        c["base"] = region_addr(regions, c["region"]) if c["region"] else c["addr"] - c["addr"] % page_size
        if op == "touch":
            c["access"] = g("access") or "read"
            c["value"] = 1 if g("value") is None else g("value")
    elif op == "mremap":
        c.update(new_length=g("length"), flags=bits(MREMAP, g("flags") or ()),
                 new_addr=address(regions, g("addr")), follow=g("region"))
    return c


def _mmap(op, g, regions, names, page_size):
    return {"as": g("as"), "addr": address(regions, g("addr")), "length": g("length"),
            "prot": prot_of(g("prot") or "none"), "flags": bits(MAP, g("flags") or ()),
            "offset": g("offset") or 0, "source": _source(g, names)}


def _file(op, g, regions, names, page_size):
    c = {"path": names.run.file_path(g("name"), g("on") or "disk"), "size": g("size"),
         "fill": g("fill") or "zero", "seed": g("name"), "cache": g("cache") or "warm",
         "on": g("on") or "disk"}
    if g("value") is not None:
        c["value"] = g("value")
    return c


def _open(op, g, regions, names, page_size):
    c = {"path": names.file(g("file"))}
    if op == "open":
        c.update({"as": g("as"), "flags": {"r": O_RDONLY, "w": O_WRONLY, "rw": O_RDWR}[g("mode") or "rw"]})
    return c


def _shm_open(op, g, regions, names, page_size):
    flags = O_RDONLY if g("access") == "r" else O_RDWR
    flags |= (O_CREAT if g("create") else 0) | (O_EXCL if g("excl") else 0) \
        | (O_TRUNC if g("truncate") else 0)
    return {"as": g("as"), "name": names.run.posix_name(g("name")), "flags": flags,
            "mode": 0o600 if g("mode") is None else g("mode"), "size": g("size")}


def _shmget(op, g, regions, names, page_size):
    flags = (0o600 if g("mode") is None else g("mode")) | (IPC_CREAT if g("create") else 0) \
        | (IPC_EXCL if g("excl") else 0)
    return {"as": g("as"), "key": names.run.sysv_key(g("key") if g("key") is not None else "private"),
            "size": g("size"), "flags": flags}


def _shmid(g, names) -> int:
    seg = g("segment")
    if isinstance(seg, int):
        return seg                              # a raw shmid, as given
    shmid = names.shmid(seg)
    return -1 if shmid is None else shmid       # its shmget failed: the kernel says EINVAL


def _shmat(op, g, regions, names, page_size):
    seg = g("segment")
    return {"as": g("as"), "shmid": _shmid(g, names), "addr": address(regions, g("addr")),
            "flags": (SHM_RDONLY if g("readonly") else 0) | (SHM_RND if g("rnd") else 0)
            | (SHM_REMAP if g("remap") else 0) | (SHM_EXEC if g("exec") else 0),
            "size": None if isinstance(seg, int) else names.segment_size(seg)}


def _shmctl(op, g, regions, names, page_size):
    cmd = g("cmd")
    c = {"shmid": _shmid(g, names), "cmd": cmd if isinstance(cmd, int) else SHMCTL_CMD[cmd]}
    if g("mode") is not None:
        c["mode"] = g("mode")          # what IPC_SET writes: the step's permission bits
    return c


def _write(op, g, regions, names, page_size):
    """pwrite(2): `length` bytes of `value` at `offset` of the source (a file by name is
    opened O_RDWR for the call)."""
    return {"source": _source(g, names), "offset": g("offset") or 0, "length": g("length"),
            "value": 1 if g("value") is None else g("value")}


def _fadvise(op, g, regions, names, page_size):
    return {"source": _source(g, names), "offset": g("offset") or 0, "length": g("length") or 0,
            "advice": FADV[g("advice")]}


def _settle(op, g, regions, names, page_size):
    return {"path": names.file(g("file")) if g("file") is not None else None,
            "seconds": 0.2 if g("seconds") is None else g("seconds")}


_OTHERS = {
    "file": _file,
    "open": _open,
    "evict": _open,
    "mmap": _mmap,
    "shm_open": _shm_open,
    "shm_unlink": lambda op, g, r, names, ps: {"name": names.run.posix_name(g("name"))},
    "truncate": lambda op, g, r, names, ps: {"size": g("size"), "source": _source(g, names)},
    "memfd": lambda op, g, r, names, ps: {"as": g("as"), "name": names.run.memfd_name(g("name")),
                                          "size": g("size") or 0,
                                          "flags": MFD_ALLOW_SEALING if g("sealing") else 0},
    "write": _write,
    "fadvise": _fadvise,
    "seal": lambda op, g, r, names, ps: {"source": _source(g, names),
                                         "seals": bits(F_SEAL, g("seals") or ())},
    "mlockall": lambda op, g, r, names, ps: {"flags": bits(MCL, g("flags") or ())},
    "munlockall": lambda op, g, r, names, ps: {},
    "settle": _settle,
    "shmget": _shmget,
    "shmat": _shmat,
    "shmctl": _shmctl,
    "fork": lambda op, g, r, names, ps: {"child": g("child")},
    "exit": lambda op, g, r, names, ps: {},
    "rlimit": lambda op, g, r, names, ps: {"resource": g("resource"), "soft": g("soft"),
                                           "hard": g("hard")},
}
# one entry per operation: adding an operation is adding its entry
RESOLVERS = {**{op: _range_call for op in RANGE_OPS}, **_OTHERS}


def resolve(op: str, args: Mapping, regions: Mapping, names, page_size: int = PAGE_SIZE) -> dict:
    """The system-call arguments of one step (see the module docstring). Raises Skip."""
    fn = RESOLVERS.get(op)
    if fn is None:
        raise KeyError(f"operation {op!r} has no resolver (model/resolve.py RESOLVERS)")
    return fn(op, args.get, regions, names, page_size)


class Names:
    """A side's naming for `resolve`, kept once for both sides (the live side:
    shmkit.manager.Manager, the model's: shmkit.predict): the run's naming rules (`run`:
    shmkit.registry.Run's posix_name, memfd_name, sysv_key, file_path), the names the steps
    created (file paths, POSIX and memfd names, SysV keys, the shmid each shmget returned) and
    from them a handle's file, shmid and segment size, and the record's "names"."""

    def __init__(self, run) -> None:
        self.run = run
        self.files: dict[str, str] = {}     # path -> handle
        self.posix: dict[str, str] = {}     # real POSIX name -> handle
        self.memfds: dict[str, str] = {}    # real memfd name -> handle
        self.keys: dict[int, str] = {}      # real SysV key -> handle
        self.shmids: dict[str, int] = {}    # handle -> the shmid its shmget returned
        self.sizes: dict[str, int] = {}     # handle -> the size its shmget asked for

    def resolve(self, op: str, args: Mapping, regions: Mapping, page_size: int = PAGE_SIZE,
                note=None) -> dict:
        """`resolve` with this naming, then the names the call creates are kept; `note`
        (the live side's registry, shmkit.registry.Run.note) is handed the entry of each object
        the call may create, before the call is made. Raises Skip."""
        call = resolve(op, args, regions, self, page_size)
        g = args.get
        entry = None
        if op == "file":
            self.files[call["path"]] = g("name")
            entry = {"kind": "file", "path": call["path"]}
        elif op == "shm_open":
            self.posix[call["name"]] = g("name")
            if g("create"):
                entry = {"kind": "posix", "name": call["name"]}
        elif op == "memfd":
            self.memfds[call["name"]] = g("name")
            entry = {"kind": "memfd", "name": call["name"]}
        elif op == "shmget":
            self.keys[call["key"]] = g("as")
            entry = {"kind": "sysv", "key": call["key"]}
        if entry is not None and note is not None:
            note(entry)
        return call

    def done(self, op: str, args: Mapping, result, value) -> None:
        """After the call: a successful shmget's shmid (and size) belong to its handle."""
        if op == "shmget" and result == "ok":
            self.shmids[args.get("as")] = value["shmid"]
            self.sizes[args.get("as")] = args.get("size")

    def record(self) -> dict:
        """The record's "names" (docs/record.md): every real name and its handle."""
        return {"posix": dict(self.posix), "files": dict(self.files),
                "keys": {str(k): h for k, h in self.keys.items()}, "memfds": dict(self.memfds),
                "shmids": {str(i): h for h, i in self.shmids.items()}}

    # what resolve asks of a side
    def file(self, handle: str) -> str:
        for path, h in self.files.items():
            if h == handle:
                return path
        return f"{self.run.dir}/missing-{handle}"

    def shmid(self, handle: str) -> int | None:
        return self.shmids.get(handle)

    def segment_size(self, handle: str) -> int | None:
        return self.sizes.get(handle)


class Direct(Names):
    """Naming for the model run on its own (model tests, shmkit.bench's model, the synthetic
    address space): a file's name is its path, a POSIX or memfd name is used as it is, and
    the shmids the model's shmget steps returned are kept per handle."""

    def __init__(self) -> None:
        super().__init__(self)

    def file_path(self, name: str, on: str) -> str:
        return name

    def posix_name(self, name: str) -> str:
        return name

    def memfd_name(self, name: str) -> str:
        return name

    def sysv_key(self, key) -> int:
        return 0 if key == "private" else key

    def file(self, handle: str) -> str:
        return handle


def run_step(kernel, step: dict, names: Direct) -> dict:
    """The model on its own: the step {"index", "do", "in", "args"} (args as in
    shmkit.spec Step.args) resolved against the model's own regions of that process, then
    model.kernel.Kernel.step of the call; a step whose region does not exist is skipped here,
    as on both sides of a run. Returns Kernel.step's answer, with the call."""
    proc = kernel.procs[step["in"]]
    regions = {h: (r.addr, r.length) for h, r in proc.regions.items()}
    try:
        call = names.resolve(step["do"], step["args"], regions)
    except Skip as e:
        return {"result": e.result, "faults": None, "value": None, "yielded": [], "trace": [],
                "call": None}
    out = kernel.step({**step, "args": call})
    names.done(step["do"], step["args"], out["result"], out["value"])
    return {**out, "call": call}
