"""The worker: one real process of an experiment, driven over a socket.

Role split as in pyperf's _worker.py / _manager.py: this module runs inside the
measured process and does as little as it can besides the step itself. The
manager (shmkit.manager) resolves names, writes the registry, reads /proc and
builds the observation record.

What makes its fault counts the step's own (measured on this kernel; see
README "Exact observations"):
- PYTHONMALLOC=malloc and mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB): every
  Python allocation comes from the brk heap, never from a new mmap, and the
  heap is grown and written once at start, so that allocating later faults no
  page and adds no VMA;
- gc disabled: a collection would walk (and, after fork, copy) objects;
- each measuring code path is run once before the first step (warm-up);
- page accesses run in C (shmkit._access) between two getrusage() calls;
- after a fork, both processes rewrite every page of the interpreter's own
  writable memory (never the experiment's) so that the copy-on-write faults
  of the interpreter are taken during the fork step, not during later steps;
- the address space below the interpreter's libraries is padded to a 2 MiB
  boundary at least 2 MiB away with PROT_NONE mappings of an empty memfd named
  "shmkit-pad", and the holes between its libraries are filled likewise, so
  that experiment mappings land at the same offsets from that boundary under
  ASLR (fault-around windows and THP blocks depend on the address); before a
  step that asks for an address, the manager names the pad pieces in its way
  and the worker unmaps them (model.pads: the pads yield).
"""
from __future__ import annotations

import fcntl
import gc
import os
import random
import resource
import signal
import socket
import sys

from model.pads import PAD_ALIGN, PAD_NAME, PAD_ROOM, subtract
from shmkit import libc, protocol
from shmkit import _access  # the C loops; imported before the first observation
from model.access import value_runs  # a read's "bytes", as the model gives them
from model.pages import page_align  # the model's rule, shared (model/pages.py)
from model.flags import seal_names  # F_GET_SEALS as the step's value
from model.resolve import Skip, resolve  # the one resolver (the manager resolves each step with it)

import posix_ipc  # noqa: E402  (imported now so that their .so mappings exist from the start)
import sysv_ipc  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
HEAP_RESERVE = 24 << 20

RLIMITS = {
    "as": resource.RLIMIT_AS, "data": resource.RLIMIT_DATA, "memlock": resource.RLIMIT_MEMLOCK,
    "stack": resource.RLIMIT_STACK, "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE, "core": resource.RLIMIT_CORE,
}


class StepFailed(Exception):
    """The step's call failed; result is its errno name (or another outcome)."""

    def __init__(self, result: dict, note: str | None = None):
        super().__init__(result)
        self.result = result
        self.note = note


def _errno_result(exc: OSError) -> dict:
    return {"errno": libc.errno_name(exc.errno or 0)}


# posix_ipc and sysv_ipc turn errno into exception classes and fixed messages
# (posix_ipc_module.c SharedMemory_init/my_shm_unlink; sysv_ipc memory.c
# shm_attach/shm_remove/SharedMemory_detach); this table turns them back.
_IPC_ERRNO = [
    (posix_ipc.ExistentialError, "already exists", "EEXIST"),
    (posix_ipc.ExistentialError, "No shared memory exists", "ENOENT"),
    (posix_ipc.PermissionsError, "", "EACCES"),
    (ValueError, "too long", "ENAMETOOLONG"),
    (ValueError, "Invalid parameter", "EINVAL"),
    (sysv_ipc.PermissionsError, "", "EACCES"),
    (sysv_ipc.ExistentialError, "", "EINVAL"),
    (sysv_ipc.NotAttachedError, "", "EINVAL"),
    (MemoryError, "", "ENOMEM"),
    (ValueError, "Invalid id, address, or flags", "EINVAL"),
    (OSError, "maximum number of files open", "EMFILE"),
    (OSError, "system limit on the total number of open files", "ENFILE"),
]


def _ipc_result(exc: BaseException) -> dict:
    if isinstance(exc, OSError) and exc.errno:
        return _errno_result(exc)
    msg = str(exc)
    for cls, text, name in _IPC_ERRNO:
        if isinstance(exc, cls) and text in msg:
            return {"errno": name}
    return {"error": f"{type(exc).__name__}: {msg}"}


class Region:
    __slots__ = ("addr", "length", "mapped", "keep", "kind")

    def __init__(self, addr: int, length: int, kind: str, keep=None):
        self.addr = addr
        self.length = length
        self.mapped = True
        self.keep = keep
        self.kind = kind


class Worker:
    def __init__(self, sock: socket.socket, name: str, config: dict):
        self.sock = sock
        self.name = name
        self.config = config
        self.regions: dict[str, Region] = {}
        self.fds: dict[str, int] = {}
        self.keep: dict[str, object] = {}
        self.children: dict[str, int] = {}
        self.interp: list[tuple[int, int]] = []
        self.pads: list[tuple[int, int]] = []      # what is left of the pads this worker mapped
        self.readbuf = bytearray(1 << 16)

    # ----- address-space control ---------------------------------------------------
    @staticmethod
    def own_maps():
        from shmkit.procfs import parse_maps

        with open("/proc/self/maps", "rb") as f:
            return parse_maps(f.read())

    def pad_address_space(self) -> dict:
        """Fill the holes among the interpreter's library mappings and pad the free
        side of that cluster to a 2 MiB boundary (see the module docstring)."""
        vmas = self.own_maps()
        anchor = next((i for i, v in enumerate(vmas) if "libc.so" in v.path), None)
        if anchor is None:
            return {"holes": [], "edge": None, "layout": self.config.get("layout", "topdown")}
        lo = hi = anchor
        limit = 64 << 20
        while lo > 0 and vmas[lo].start - vmas[lo - 1].end < limit and not vmas[lo - 1].path.startswith("["):
            lo -= 1
        while hi + 1 < len(vmas) and vmas[hi + 1].start - vmas[hi].end < limit \
                and vmas[hi + 1].path != "[stack]":
            hi += 1
        holes = [(vmas[i].end, vmas[i + 1].start) for i in range(lo, hi) if vmas[i + 1].start > vmas[i].end]
        # at least PAD_ROOM of pad between the edge and the libraries: an experiment may ask for
        # addresses just beyond its first mapping (the pads yield them, model.pads), and they
        # must never be a library's, whatever ASLR picked
        if self.config.get("layout") == "legacy":
            top = vmas[hi].end
            edge = (top + PAD_ROOM + PAD_ALIGN - 1) // PAD_ALIGN * PAD_ALIGN
            holes.append((top, edge))
        else:
            bottom = vmas[lo].start
            edge = (bottom - PAD_ROOM) // PAD_ALIGN * PAD_ALIGN
            holes.append((edge, bottom))
        fd = os.memfd_create(PAD_NAME, os.MFD_CLOEXEC)
        try:
            for start, end in holes:
                libc.mmap(start, end - start, 0, libc.MAP["PRIVATE"] | libc.MAP["FIXED_NOREPLACE"], fd, 0)
        finally:
            os.close(fd)
        self.pads = list(holes)
        return {"holes": holes, "edge": edge, "layout": self.config.get("layout", "topdown")}

    def yield_pads(self, pieces: list) -> str | None:
        """Unmap the pieces of pads the manager found in the way of the next step (model.pads);
        an error text, and nothing unmapped, if one is not inside this worker's own pads."""
        pieces = [(int(a), int(b)) for a, b in pieces]
        for a, b in pieces:
            if subtract([(a, b)], self.pads):
                return f"{a:#x}-{b:#x} is not a part of this worker's pads"
        for a, b in pieces:
            libc.munmap(a, b - a)
        self.pads = subtract(self.pads, pieces)
        return None

    def record_interpreter(self) -> None:
        """The interpreter's own mappings, as they are before the first step."""
        self.interp = [(v.start, v.end) for v in self.own_maps()]

    def rewrite_interpreter(self) -> int:
        """After fork: touch every page of the interpreter's own memory (never the
        experiment's) so that its faults happen during the fork step: write the
        writable private pages (breaking copy-on-write sharing), read the others
        (fork does not copy the page tables of file VMAs without an anon_vma, so
        the child would fault on the interpreter's code pages later)."""
        exp = sorted((r.addr, r.addr + _page_up(r.length)) for r in self.regions.values() if r.mapped)
        done = 0
        for v in self.own_maps():
            if v.perms[0] != "r" or v.path in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            writable = v.perms[1] == "w" and v.perms[3] == "p"
            if v.path not in ("[heap]", "[stack]") and not any(s < v.end and v.start < e for s, e in self.interp):
                continue
            pieces = [(v.start, v.end)]
            for s, e in exp:
                pieces = [p for a, b in pieces for p in ((a, min(b, s)), (max(a, e), b)) if p[0] < p[1]]
            for a, b in pieces:
                done += _access.rewrite(a, b - a, PAGE, writable)
        return done

    # ----- the loop ------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            try:
                msg, fds = protocol.recv(self.sock, with_fds=True)
            except (EOFError, ConnectionResetError):
                os._exit(0)  # the manager is gone: nothing more to do here
            cmd = msg["cmd"]
            if cmd == "step":
                refused = self.yield_pads(msg["yield"]) if msg.get("yield") else None
                if refused:
                    protocol.send(self.sock, {"error": refused})
                    continue
                reply = self.step(msg["op"], msg["args"], fds)
                if reply is not None and msg.get("yield"):
                    reply["yielded"] = msg["yield"]
                if reply is None:  # this is the new child after a fork
                    continue
                protocol.send(self.sock, reply)
                if msg["op"] == "exit" and reply["result"] == "ok":
                    os._exit(0)
            elif cmd == "reap":
                protocol.send(self.sock, self.reap(msg["pid"]))
            elif cmd == "ping":
                protocol.send(self.sock, {"pong": os.getpid(), "faults": _access.faults()})
            else:
                protocol.send(self.sock, {"error": f"unknown command {cmd!r}"})

    def reap(self, pid: int) -> dict:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return {"status": None}
        if os.WIFSIGNALED(status):
            return {"status": {"signal": signal.Signals(os.WTERMSIG(status)).name}}
        return {"status": {"exit": os.WEXITSTATUS(status)}}

    def regions_table(self) -> dict:
        return {h: (r.addr, r.length, r.mapped, r.kind) for h, r in self.regions.items()}

    def step(self, op: str, args: dict, fds: list[int]) -> dict | None:
        handler = getattr(self, "op_" + op)
        note = None
        faults = None
        value = None
        affected: list[tuple[int, int]] = []
        try:
            out = handler(args, fds) if op == "fork" else handler(args)
            if out is None and op == "fork":
                return None
            result, faults, value, affected, note = out
        except StepFailed as failed:
            result, note = failed.result, failed.note
        except libc.CallError as exc:
            result = _errno_result(exc)
        return {"result": result, "faults": faults, "value": value, "affected": affected,
                "note": note, "regions": self.regions_table(), "pid": os.getpid()}

    # ----- helpers used by operations ---------------------------------------------------
    # Every op_* receives the step's call as model.resolve made it (the manager resolves it
    # against this process's regions): numbers, absolute addresses, byte lengths, real names.
    def fd_of(self, handle: str) -> int:
        fd = self.fds.get(handle)
        if fd is None:
            raise StepFailed(Skip(handle, "handle").result)     # the model's words (model.resolve)
        return fd

    def _whole(self, args) -> Region | None:
        """The region a call over a whole region acts on (its handle is marked unmapped or
        follows a move), or None."""
        return self.regions.get(args["region"]) if args.get("whole") else None

    @staticmethod
    def measured(call, *a):
        f0 = _access.faults()
        try:
            res = call(*a)
        finally:
            f1 = _access.faults()
        return res, [f1[0] - f0[0], f1[1] - f0[1]]

    def measured_result(self, call, *a):
        """Runs call between two fault readings; a failing call is still measured."""
        f0 = _access.faults()
        try:
            res = call(*a)
            err = None
        except libc.CallError as exc:
            res, err = None, exc
        f1 = _access.faults()
        faults = [f1[0] - f0[0], f1[1] - f0[1]]
        if err is not None:
            return None, _errno_result(err), faults
        return res, "ok", faults

    # ----- operations ---------------------------------------------------------------------
    def op_noop(self, args):
        _, faults = self.measured(int, 0)
        return "ok", faults, None, [], None

    def op_file(self, args):
        path, size = args["path"], args["size"]
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:        # EMFILE under RLIMIT_NOFILE, ENOSPC, ...
            raise StepFailed(_errno_result(exc))
        try:
            # Every fill writes its bytes (zeros too: a sparse file would leave nothing
            # in the page cache, so cache="warm" would mean nothing).
            fill = args.get("fill", "zero")
            rng = random.Random(args.get("seed", 0))
            chunk = 1 << 16
            done = 0
            byte = 0 if fill == "zero" else args.get("value", 0x5A)
            block = bytes([byte]) * chunk
            failed = None
            while done < size:
                n = min(chunk, size - done)
                try:
                    # past RLIMIT_FSIZE write() is short, then EFBIG (SIGXFSZ: ignored by Python)
                    done += os.write(fd, rng.randbytes(n) if fill == "random" else block[:n])
                except OSError as exc:
                    failed = exc
                    break
            os.fsync(fd)              # what was written is on disk, as after a full file
            if failed is not None:
                raise StepFailed(_errno_result(failed))
            if args.get("cache") == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "ok", None, None, [], None

    def op_open(self, args):
        try:
            fd = os.open(args["path"], args["flags"] | os.O_CLOEXEC)
        except OSError as exc:
            raise StepFailed(_errno_result(exc))
        self.fds[args["as"]] = fd
        return "ok", None, None, [], None

    def op_evict(self, args):
        try:
            fd = os.open(args["path"], os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StepFailed(_errno_result(exc))
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "ok", None, None, [], None

    def op_mmap(self, args):
        source = args.get("source")
        fd, close_after = -1, False
        if source is not None:
            kind, ref = source
            if kind == "file":
                try:
                    fd, close_after = os.open(ref, os.O_RDWR | os.O_CLOEXEC), True
                except OSError as exc:    # EMFILE under RLIMIT_NOFILE
                    raise StepFailed(_errno_result(exc))
            else:
                fd = self.fd_of(ref)
        try:
            res, result, faults = self.measured_result(
                libc.mmap, args["addr"], args["length"], args["prot"], args["flags"], fd, args["offset"])
        finally:
            if close_after:
                os.close(fd)
        if result != "ok":
            return result, faults, None, [], None
        length = args["length"]
        self.regions[args["as"]] = Region(res, length, "mmap")
        return "ok", faults, {"addr": res}, [(res, res + _page_up(length))], None

    @staticmethod
    def _affected(args) -> list[tuple[int, int]]:
        start = args["addr"] - args["addr"] % PAGE
        return [(start, start + _page_up(args["addr"] + args["length"] - start))]

    def _range_call(self, call, args, *extra):
        _, result, faults = self.measured_result(call, args["addr"], args["length"], *extra)
        return result, faults, None, self._affected(args), None

    def op_munmap(self, args):
        out = self._range_call(libc.munmap, args)
        r = self._whole(args)
        if out[0] == "ok" and r is not None:
            r.mapped = False
        return out

    def op_mprotect(self, args):
        return self._range_call(libc.mprotect, args, args["prot"])

    def op_madvise(self, args):
        return self._range_call(libc.madvise, args, args["advice"])

    def op_msync(self, args):
        return self._range_call(libc.msync, args, args["flags"])

    def op_mlock(self, args):
        return self._range_call(libc.mlock, args, args["flags"])

    def op_munlock(self, args):
        return self._range_call(libc.munlock, args)

    def op_mremap(self, args):
        addr, length = args["addr"], args["length"]
        res, result, faults = self.measured_result(
            libc.mremap, addr, length, args["new_length"], args["flags"], args["new_addr"])
        affected = self._affected(args)
        if result != "ok":
            return result, faults, None, affected, None
        r = self.regions.get(args["follow"]) if args.get("follow") else None
        if r is not None:
            r.addr, r.length = res, args["new_length"]  # the handle follows the moved range (DESIGN.md)
        affected.append((res, res + _page_up(args["new_length"])))
        return "ok", faults, {"addr": res}, affected, None

    def op_touch(self, args):
        addr = args["addr"]
        write = args.get("access") == "write"
        done, signo, minf, majf, fault_addr = _access.touch(addr, args["pages"], PAGE, write, args.get("value", 1))
        # "page": the page (counted from the call's base: its region) whose access faulted
        first = (addr - args["base"]) // PAGE
        result = "ok" if not signo else {"signal": signal.Signals(signo).name, "page": first + done}
        return result, [minf, majf], None, self._affected(args), None

    def op_read(self, args):
        addr, n = args["addr"], args["pages"]
        if len(self.readbuf) < n:
            self.readbuf = bytearray(n)
        done, signo, minf, majf, fault_addr = _access.read(addr, n, PAGE, self.readbuf)
        values = value_runs(self.readbuf[:done])
        result = "ok" if not signo else {"signal": signal.Signals(signo).name,
                                         "page": (addr - args["base"]) // PAGE + done}
        return result, [minf, majf], {"bytes": values}, self._affected(args), None

    def op_shm_open(self, args):
        """glibc shm_open(3) called as is (libc.shm_open): its name rules and its errno are
        the step's result. `size` is our own ftruncate, so the object stays if it fails."""
        oflag = args["flags"]      # O_* of shm_open(3), model/flags.py (model.resolve)
        f0 = _access.faults()
        try:
            fd = libc.shm_open(args["name"], oflag, args["mode"])
        except OSError as exc:
            raise StepFailed(_errno_result(exc))
        self.fds[args["as"]] = fd
        if args.get("size") is not None:
            try:
                os.ftruncate(fd, args["size"])
            except OSError as exc:
                raise StepFailed(_errno_result(exc), note="shm_open succeeded; ftruncate failed")
        f1 = _access.faults()
        return "ok", [f1[0] - f0[0], f1[1] - f0[1]], None, [], None

    def op_shm_unlink(self, args):
        try:
            libc.shm_unlink(args["name"])
        except OSError as exc:
            raise StepFailed(_errno_result(exc))
        return "ok", None, None, [], None

    def op_truncate(self, args):
        """truncate(2) of a file by path, or ftruncate(2) of an open handle."""
        kind, ref = args["source"]
        try:
            if kind == "file":
                os.truncate(ref, args["size"])
            else:
                os.ftruncate(self.fd_of(ref), args["size"])
        except OSError as exc:        # EINVAL (read-only fd), EFBIG (RLIMIT_FSIZE), ...
            raise StepFailed(_errno_result(exc))
        return "ok", None, None, [], None

    def source_fd(self, source) -> tuple[int, bool]:
        """The descriptor of a file operation's object: a file by name is opened O_RDWR for the
        call (closed after it: the second value), a handle's own descriptor is used as is."""
        kind, ref = source
        if kind != "file":
            return self.fd_of(ref), False
        try:
            return os.open(ref, os.O_RDWR | os.O_CLOEXEC), True
        except OSError as exc:        # ENOENT, EMFILE under RLIMIT_NOFILE
            raise StepFailed(_errno_result(exc))

    def op_write(self, args):
        """pwrite(2) of `length` bytes of `value` at `offset`: one call (a short count, as past
        RLIMIT_FSIZE, is the step's value). The buffer is made before the fault bracket."""
        fd, close_after = self.source_fd(args["source"])
        data = bytes([args["value"]]) * args["length"]
        try:
            f0 = _access.faults()
            try:
                n = os.pwrite(fd, data, args["offset"])
            except OSError as exc:    # EPERM (F_SEAL_WRITE), EFBIG, EBADF (read-only), ...
                f1 = _access.faults()
                return _errno_result(exc), [f1[0] - f0[0], f1[1] - f0[1]], None, [], None
            f1 = _access.faults()
        finally:
            del data
            if close_after:
                os.close(fd)
        return "ok", [f1[0] - f0[0], f1[1] - f0[1]], {"written": n}, [], None

    def op_fadvise(self, args):
        fd, close_after = self.source_fd(args["source"])
        try:
            f0 = _access.faults()
            try:
                os.posix_fadvise(fd, args["offset"], args["length"], args["advice"])
                result = "ok"
            except OSError as exc:    # ESPIPE (a pipe), EINVAL (bad advice or length)
                result = _errno_result(exc)
            f1 = _access.faults()
        finally:
            if close_after:
                os.close(fd)
        return result, [f1[0] - f0[0], f1[1] - f0[1]], None, [], None

    def op_seal(self, args):
        """fcntl(F_ADD_SEALS), then F_GET_SEALS for the step's value."""
        fd = self.fd_of(args["source"][1])
        try:
            fcntl.fcntl(fd, libc.F_ADD_SEALS, args["seals"])
        except OSError as exc:        # EPERM (F_SEAL_SEAL, or no MFD_ALLOW_SEALING), EBUSY, EINVAL
            raise StepFailed(_errno_result(exc))
        return "ok", None, {"seals": seal_names(fcntl.fcntl(fd, libc.F_GET_SEALS))}, [], None

    def op_mlockall(self, args):
        flags = args["flags"]
        _, result, faults = self.measured_result(libc.mlockall, flags)
        populate = flags & libc.MCL["CURRENT"] and not flags & libc.MCL["ONFAULT"]
        if populate and result == "ok":
            # mm_populate(0, TASK_SIZE) faults in the interpreter's pages too
            return result, None, None, [], ("mlockall(MCL_CURRENT) faulted in every VMA of the "
                                            f"process ({faults[0]} minor, {faults[1]} major, the "
                                            "interpreter's among them); not an observation")
        return result, faults, None, [], None

    def op_munlockall(self, args):
        _, result, faults = self.measured_result(libc.munlockall)
        return result, faults, None, [], None

    def op_settle(self, args):
        """A pause; with a file, first wait (at most 10 s) until the block device that holds it
        has no read in flight (/sys/dev/block/MAJ:MIN/inflight), so that readahead started by
        earlier steps has completed: the page cache then holds uptodate, unlocked folios."""
        import time
        note = None
        if args.get("path"):
            note = _wait_reads_done(args["path"])
        time.sleep(args["seconds"])
        return "ok", None, None, [], note

    def op_memfd(self, args):
        try:
            fd = os.memfd_create(args["name"], os.MFD_CLOEXEC | args["flags"])
            if args.get("size"):
                os.ftruncate(fd, args["size"])
        except OSError as exc:
            raise StepFailed(_errno_result(exc))
        self.fds[args["as"]] = fd
        return "ok", None, None, [], None

    def op_shmget(self, args):
        try:
            shmid = libc.shmget(args["key"], args["size"], args["flags"])
        except libc.CallError as exc:
            raise StepFailed(_errno_result(exc))
        return "ok", None, {"shmid": shmid}, [], None

    def op_shmat(self, args):
        addr = args["addr"]
        f0 = _access.faults()
        try:
            obj = sysv_ipc.attach(args["shmid"], addr or None, args["flags"])
        except (sysv_ipc.Error, ValueError, MemoryError, OSError) as exc:
            raise StepFailed(_ipc_result(exc))
        f1 = _access.faults()
        ds = libc.shmctl(args["shmid"], libc.IPC_STAT) if args.get("size") is None else None
        size = args.get("size") or ds.segsz
        self.regions[args["as"]] = Region(obj.address, size, "shmat", keep=obj)
        return ("ok", [f1[0] - f0[0], f1[1] - f0[1]], {"addr": obj.address},
                [(obj.address, obj.address + _page_up(size))], None)

    def op_shmdt(self, args):
        _, result, faults = self.measured_result(libc.shmdt, args["addr"])
        r = self._whole(args)
        if result == "ok" and r is not None:
            r.mapped = False
        return result, faults, None, [(r.addr, r.addr + _page_up(r.length))] if r is not None else [], None

    def op_shmctl(self, args):
        ds = None
        if args["cmd"] == libc.IPC_SET:
            # IPC_SET writes uid, gid and mode (ipc_update_perm): the segment keeps its owner
            # (read from /proc/sysvipc/shm, which needs no permission), the mode is the step's
            ds = libc.ShmidDs()
            ds.uid, ds.gid = _sysv_owner(args["shmid"])
            ds.mode = args["mode"]
        try:
            ds = libc.shmctl(args["shmid"], args["cmd"], ds)
        except libc.CallError as exc:
            raise StepFailed(_errno_result(exc))
        value = None
        if args["cmd"] == libc.IPC_STAT:
            value = {"size": ds.segsz, "nattch": ds.nattch, "mode": oct(ds.mode & 0o7777)}
        return "ok", None, value, [], None

    def op_rlimit(self, args):
        res = RLIMITS[args["resource"]]
        inf = resource.RLIM_INFINITY
        soft = inf if args["soft"] is None else args["soft"]
        hard = inf if args["hard"] is None else args["hard"]
        try:
            # resource.prlimit, not setrlimit: CPython's setrlimit raises the same ValueError
            # for EPERM (raising the hard limit) as for EINVAL; prlimit keeps EPERM an OSError
            resource.prlimit(0, res, (soft, hard))
        except ValueError:
            raise StepFailed({"errno": "EINVAL"})
        except OSError as exc:
            raise StepFailed(_errno_result(exc))
        return "ok", None, None, [], None

    def op_exit(self, args):
        return "ok", None, None, [], None

    def op_fork(self, args, fds):
        if len(fds) != 1:
            return {"error": "fork without a channel"}, None, None, [], None
        child_fd = fds[0]
        f0 = _access.faults()
        pid = os.fork()
        if pid == 0:
            self.become_child(args["child"], child_fd)
            return None
        f1 = _access.faults()
        os.close(child_fd)
        self.children[args["child"]] = pid
        rewritten = self.rewrite_interpreter()
        return ("ok", None, {"pid": pid},
                [], f"fork's own faults are the interpreter's ({f1[0] - f0[0]} minor before the "
                    f"rewrite of {rewritten} interpreter pages); not an observation")

    def become_child(self, name: str, fd: int) -> None:
        self.sock.close()
        self.sock = socket.socket(fileno=fd)
        self.name = name
        self.children = {}
        pages = self.rewrite_interpreter()
        # run the measuring paths once more, now in this process
        self.op_noop({})
        protocol.send(self.sock, {"ready": os.getpid(), "rewritten": pages, "regions": self.regions_table()})


def _sysv_owner(shmid: int) -> tuple[int, int]:
    """uid and gid of a segment from /proc/sysvipc/shm (ipc/shm.c sysvipc_shm_proc_show:
    key shmid perms size cpid lpid nattch uid gid ...); (-1, -1) when it is not there (the
    call then fails on the shmid, as the kernel decides)."""
    with open("/proc/sysvipc/shm") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) > 8 and int(cols[1]) == shmid:
                return int(cols[7]), int(cols[8])
    return 0xFFFFFFFF, 0xFFFFFFFF


def _wait_reads_done(path: str, limit: float = 10.0) -> str | None:
    """Polls the reads in flight of the block device holding `path` until none are (twice in a
    row, 5 ms apart) or `limit` seconds pass. Returns a note when it cannot tell or gave up."""
    import time
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"settle: cannot stat the file ({exc.strerror}); paused only"
    where = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/inflight"
    deadline = time.monotonic() + limit
    quiet = 0
    while time.monotonic() < deadline:
        try:
            with open(where) as f:
                reads = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return f"settle: {where} unreadable (not a block device); paused only"
        quiet = quiet + 1 if reads == 0 else 0
        if quiet >= 2:
            return None
        time.sleep(0.005)
    return f"settle: reads still in flight on {where} after {limit:g} s"


def _page_up(n: int) -> int:
    return page_align(n, PAGE)


def _warm_up(w: Worker) -> None:
    """Run the code paths a step uses once (twice: first-call caches), on a scratch mapping;
    the calls come from the one resolver (model.resolve), as a step's do."""
    steps = [
        ("mmap", {"as": "_warm", "length": 2 * PAGE, "prot": "rw", "flags": ("PRIVATE", "ANONYMOUS")}),
        ("touch", {"region": "_warm", "access": "write", "value": 1}),
        ("touch", {"region": "_warm", "access": "read"}),
        ("read", {"region": "_warm"}),
        ("mprotect", {"region": "_warm", "pages": (0, 1), "prot": "r"}),
        ("madvise", {"region": "_warm", "advice": "dontneed"}),
        ("msync", {"region": "_warm", "flags": ("SYNC",)}),
        ("mlock", {"region": "_warm"}),
        ("munlock", {"region": "_warm"}),
        ("mremap", {"region": "_warm", "length": 2 * PAGE}),
        ("munmap", {"region": "_warm"}),
        ("munmap", {"region": "_warm", "pages": (0, 0)}),  # EINVAL path
    ]
    for _ in range(2):
        for op, args in steps:
            regions = {h: (r.addr, r.length) for h, r in w.regions.items()}
            w.step(op, resolve(op, args, regions, None, PAGE), [])
        w.step("noop", {}, [])
        w.regions.clear()
        # the file calls, on a scratch memfd; mlockall with no flag is EINVAL and changes nothing
        w.fds["_warm"] = os.memfd_create("shmkit-warm", os.MFD_CLOEXEC)
        for op, args in (("write", {"memfd": "_warm", "length": 1}),
                         ("fadvise", {"memfd": "_warm", "advice": "normal"})):
            w.step(op, resolve(op, args, {}, None, PAGE), [])
        os.close(w.fds.pop("_warm"))
        w.step("mlockall", resolve("mlockall", {"flags": ()}, {}, None, PAGE), [])


def _apply_persona(config: dict) -> None:
    want = 0
    if not config.get("aslr", True):
        want |= libc.ADDR_NO_RANDOMIZE
    if config.get("layout") == "legacy":
        want |= libc.ADDR_COMPAT_LAYOUT
    if not want:
        return
    current = libc.personality(0xFFFFFFFF)
    if current & want == want:
        return
    libc.personality(current | want)
    # The layout is chosen at exec (fs/binfmt_elf.c, arch/x86/mm/mmap.c:arch_pick_mmap_layout)
    os.execv(sys.executable, sys.orig_argv)


def _drop_user(user: str) -> None:
    import pwd

    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def _pin_to_one_cpu() -> None:
    """Run the worker (and the children it forks) on one CPU. Some kernel state is per CPU:
    a new page waits in that CPU's LRU batch (mm/swap.c folio_batch) until it is drained, and
    MADV_PAGEOUT/COLD drain only the calling CPU's batch (lru_add_drain) before isolating
    pages. Measured: a worker that moved CPUs between a touch and MADV_PAGEOUT kept its pages
    mapped in 1 run of 20. Workers spread over the allowed CPUs by pid."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    import json

    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[0])
    config = json.loads(argv[1])
    _apply_persona(config)
    # kernel/sys.c PR_SET_PDEATHSIG: die with the manager even if it is SIGKILLed
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != config["manager"]:
        os._exit(1)
    if config.get("isolation") == "hermetic":
        from shmkit import isolation

        try:
            isolation.enter(config)     # own IPC and mount namespaces, own /dev/shm, shm sysctls
        except (OSError, ValueError) as exc:
            protocol.send(socket.socket(fileno=fd), {"error": f"hermetic isolation failed: {exc}"})
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the manager's to handle
    _pin_to_one_cpu()
    libc.mallopt(libc.M_MMAP_MAX, 0)
    libc.mallopt(libc.M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(libc.M_TOP_PAD, 4 << 20)
    reserve = bytearray(HEAP_RESERVE)  # grows and writes the brk heap once
    del reserve
    gc.disable()
    sock = socket.socket(fileno=fd)
    w = Worker(sock, config.get("name", "main"), config)
    if config.get("cwd"):
        os.chdir(config["cwd"])
    _warm_up(w)
    pads = w.pad_address_space()
    for name, soft, hard in config.get("rlimits", []):
        inf = resource.RLIM_INFINITY
        resource.setrlimit(RLIMITS[name], (inf if soft is None else soft, inf if hard is None else hard))
    if config.get("user") and os.geteuid() == 0:
        _drop_user(config["user"])
    _warm_up(w)
    w.record_interpreter()
    # Map every page of the interpreter's own mappings now: a first call into a
    # library function not run by the warm-up (shmget, shm_open, ...) would
    # otherwise fault on its code page during a step (seen: libc r-xp Rss grew
    # during the first shmget of a run, depending on where ASLR put libc).
    w.rewrite_interpreter()
    w.op_noop({})
    protocol.send(sock, {"ready": os.getpid(), "pads": pads, "regions": {}})
    w.serve()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        os._exit(1)
