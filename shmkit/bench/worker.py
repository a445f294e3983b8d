"""One benchmark run in its own processes (`python -m shmkit.bench.worker`, job as JSON on stdin).

The worker is role 0 (the producer of a stream, side A of a ping-pong); it forks its peer,
role 1 (the consumer, side B). Both are pinned to different CPUs when there are two. Setup
(mappings, prefaulting, attaching) happens before the first value; the hot loops run in
shmkit._bench with the GIL released, except for the Python-level transports
(multiprocessing.Pipe, multiprocessing.shared_memory) that measure what a Python user gets.

Each value: both processes meet at a barrier in shared memory, then run `loops` messages
(throughput) or round trips (latency), each bracketing its loop with CLOCK_MONOTONIC and
getrusage. Output (stdout, one JSON object): loops, calibration, warm-up and measured values,
each value with both processes' times, faults and stamp errors.

Every object is named with the job's prefix (shmkit-bench-<orchestrator pid>-<job>-) and is
removed by the worker on every path; names (POSIX shm, files) are unlinked as soon as both
processes hold them, SysV segments marked IPC_RMID as soon as both are attached, so a killed
pair leaves nothing but what the orchestrator sweeps by prefix and creator pid.
"""
from __future__ import annotations

import json
import mmap
import os
import resource
import signal
import socket
import struct
import sys
import time
import traceback

from shmkit import _bench

KIND = {"ring": 0, "stream": 1, "file": 2, "cold-posix": 3, "cold-sysv": 4, "cold-memfd": 5, "cold-file": 6}
SYNC = {None: 0, "spin": 1, "sem": 2, "eventfd": 3, "pipe": 4}
PAGE = mmap.PAGESIZE
RING_TRANSPORTS = ("anon", "posix", "sysv", "memfd", "mmap-file")
PIPE_BUF_BYTES = 1 << 20


def round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def anon(length: int, shared: bool) -> mmap.mmap:
    flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    return mmap.mmap(-1, max(length, PAGE), flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def send_msg(sock: socket.socket, obj) -> None:
    sock.sendall((json.dumps(obj) + "\n").encode())


class LineReader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def get(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("peer closed the control socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


class Pair:
    """The two processes of one benchmark run and everything they share."""

    def __init__(self, job: dict):
        self.job = job
        self.t = job["transport"]
        self.size = job["size"]
        self.latency = job["pattern"] == "latency"
        self.state = job.get("state")
        self.sync = job.get("sync")
        self.prefix = job["prefix"]
        self.rundir = job["rundir"]
        self.channels = 2 if self.latency else 1
        self.slots = job.get("slots") or 1
        self.slot_size = round_up(self.size, PAGE if self.size >= PAGE else 64)
        if job.get("chunk") and job["chunk"] < self.size:
            self.slot_size = job["chunk"]       # a message goes in pieces through smaller slots
        self.ring_bytes = self.slots * self.slot_size
        self.role = 0
        self.peer_pid = None
        self.keep = []          # objects whose buffers the C code uses
        self.names = []         # POSIX names and files still to unlink
        self.sysv = []          # sysv_ipc.SharedMemory objects still to remove
        self.fds = []
        self.data = [0, 0]
        self.fd01 = (-1, -1)
        self.foff1 = 0
        self.sfd = (-1,) * 8
        self.cb = None
        self.epoch = 0

    # ----- setup before fork ------------------------------------------------------------------
    def prepare(self) -> None:
        self.cbmap = anon(_bench.CB_SIZE, shared=True)
        self.cb = _bench.addr(self.cbmap)
        _bench.reset()
        t = self.t
        if t == "memcpy":
            return
        if self.sync in ("sem", "eventfd", "pipe"):
            self._make_sync()
        if t == "anon":
            self.region = anon(self.channels * self.ring_bytes, shared=True)
            base = _bench.addr(self.region)
            self.data = [base, base + self.ring_bytes]
        elif t == "pipe":
            self.pipes = [os.pipe() for _ in range(2)]
            for r, w in self.pipes:
                self.fds += [r, w]
                try:
                    import fcntl
                    fcntl.fcntl(w, 1031, PIPE_BUF_BYTES)          # F_SETPIPE_SZ
                except OSError:
                    pass
        elif t == "socketpair":
            self.sp = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            for s in self.sp:
                for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                    s.setsockopt(socket.SOL_SOCKET, opt, PIPE_BUF_BYTES)
        elif t == "memfd":                  # SCM_RIGHTS: the ring's fd (warm), every message's (cold)
            self.fdsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        elif t == "mp-pipe":
            import multiprocessing
            self.conns = multiprocessing.Pipe()
        elif t == "mp-shm":
            import multiprocessing
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()
            self.msem = [(multiprocessing.Semaphore(0), multiprocessing.Semaphore(self.slots))
                         for _ in range(self.channels)]

    def _make_sync(self) -> None:
        fds = []
        for c in range(2):
            if self.sync == "sem":
                _bench.sem_init(self.cb + getattr(_bench, f"CB_SEM_FULL{c}"), 0)
                _bench.sem_init(self.cb + getattr(_bench, f"CB_SEM_EMPTY{c}"), self.slots)
                fds += [-1] * 4
            elif self.sync == "eventfd":
                full, empty = os.eventfd(0), os.eventfd(0)
                os.eventfd_write(empty, self.slots)
                self.fds += [full, empty]
                fds += [full, full, empty, empty]
            else:
                fr, fw = os.pipe()
                er, ew = os.pipe()
                os.write(ew, b"x" * self.slots)
                self.fds += [fr, fw, er, ew]
                fds += [fr, fw, er, ew]
        self.sfd = tuple(fds)

    # ----- after fork -------------------------------------------------------------------------
    def buffers(self) -> None:
        """Private source and destination buffers of this process, allocated after fork
        (so no copy-on-write fault is left for the measured loop) and written once."""
        n = max(self.size, PAGE)
        if self.t in ("mp-pipe", "mp-shm"):
            self.src, self.dst = bytearray(n), bytearray(n)
        else:
            self.src, self.dst = anon(n, shared=False), anon(n, shared=False)
        self.src_addr, self.dst_addr = _bench.addr(self.src), _bench.addr(self.dst)
        _bench.fill(self.src_addr, n, self.role + 1)
        _bench.fill(self.dst_addr, n, 7)

    def fds_for_role(self) -> None:
        t = self.t
        if t == "pipe":
            (r0, w0), (r1, w1) = self.pipes
            self.fd01 = (w0, r1) if self.role == 0 else (r0, w1)
        elif t == "socketpair":
            fd = self.sp[self.role].fileno()
            self.fd01 = (fd, fd)
        elif t == "memfd" and self.state == "cold":
            fd = self.fdsock[self.role].fileno()
            self.fd01 = (fd, fd)

    def prefault(self, addr: int, length: int) -> None:
        _bench.touch_read(addr, length)

    # The worker creates the object, the peer attaches to it by its name/id/fd ("attach").
    def create(self, ctl: socket.socket) -> dict:
        t, total = self.t, self.channels * self.ring_bytes
        if self.state == "cold" or t in ("anon", "pipe", "socketpair", "memcpy", "mp-pipe"):
            return {}
        if t == "posix":
            import posix_ipc
            name = "/" + self.prefix + "ring"
            self.names.append(("posix", name))
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=total)
            self.region = mmap.mmap(shm.fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            shm.close_fd()
            self._set_ring(self.region)
            return {"name": name}
        if t == "sysv":
            import sysv_ipc
            shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o600, size=total)
            self.sysv.append(shm)
            self.keep.append(shm)
            self.data = [shm.address, shm.address + self.ring_bytes]
            return {"id": shm.id}
        if t == "memfd":
            fd = os.memfd_create(self.prefix + "ring", os.MFD_CLOEXEC)
            os.ftruncate(fd, total)
            self.region = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            self._set_ring(self.region)
            socket.send_fds(self.fdsock[0], [b"m"], [fd])
            os.close(fd)
            return {"fd": "sent"}
        if t in ("mmap-file", "file-read"):
            path = os.path.join(self.rundir, self.prefix + ("ring" if t == "mmap-file" else "read"))
            self.names.append(("file", path))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            chunk = bytes(65536)
            left = total
            while left > 0:
                left -= os.write(fd, chunk[:min(left, 65536)])
            os.fsync(fd)
            if t == "mmap-file":
                self.region = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
                self._set_ring(self.region)
                os.close(fd)
            else:
                self.file_fd = fd
                self.fds.append(fd)
                self.fd01 = (fd, fd)
                self.foff1 = self.ring_bytes
            return {"path": path}
        if t == "mp-shm":
            from multiprocessing import shared_memory
            name = self.prefix + "mpring"
            self.names.append(("posix", "/" + name))
            self.mshm = shared_memory.SharedMemory(name=name, create=True, size=total)
            return {"name": name}
        return {}

    def attach(self, info: dict, ctl: socket.socket) -> None:
        t, total = self.t, self.channels * self.ring_bytes
        if not info:
            return
        if t == "posix":
            import posix_ipc
            shm = posix_ipc.SharedMemory(info["name"])
            self.region = mmap.mmap(shm.fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            shm.close_fd()
            self._set_ring(self.region)
        elif t == "sysv":
            import sysv_ipc
            shm = sysv_ipc.attach(info["id"])
            self.keep.append(shm)
            self.data = [shm.address, shm.address + self.ring_bytes]
        elif t == "memfd":
            _, fds, _, _ = socket.recv_fds(self.fdsock[1], 16, 1)
            self.region = mmap.mmap(fds[0], total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            os.close(fds[0])
            self._set_ring(self.region)
        elif t == "mmap-file":
            fd = os.open(info["path"], os.O_RDWR | os.O_CLOEXEC)
            self.region = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            os.close(fd)
            self._set_ring(self.region)
        elif t == "file-read":
            fd = os.open(info["path"], os.O_RDWR | os.O_CLOEXEC)
            self.fds.append(fd)
            self.fd01 = (fd, fd)
            self.foff1 = self.ring_bytes
        elif t == "mp-shm":
            from multiprocessing import shared_memory
            self.mshm = shared_memory.SharedMemory(name=info["name"])

    def _set_ring(self, region) -> None:
        base = _bench.addr(region)
        self.data = [base, base + self.ring_bytes]

    def after_attach(self) -> None:
        """Both hold the object: drop its name so nothing outlives the pair."""
        self.drop_names()
        if self.data[0]:
            self.prefault(self.data[0], self.channels * self.ring_bytes)

    def drop_names(self) -> None:
        if getattr(self, "mshm", None) is not None and self.role == 0 and self.names:
            try:
                self.mshm.unlink()          # also tells multiprocessing's resource tracker
            except OSError:
                pass
            self.names = []
        for kind, name in self.names:
            try:
                if kind == "posix":
                    import posix_ipc
                    posix_ipc.unlink_shared_memory(name)
                else:
                    os.unlink(name)
            except (OSError, Exception):
                pass
        self.names = []
        for shm in self.sysv:
            try:
                shm.remove()
            except Exception:
                pass
        self.sysv = []

    # ----- one value --------------------------------------------------------------------------
    def cold_name(self) -> str:
        if self.t == "posix":
            return "/" + self.prefix + "c"
        if self.t == "mmap-file":
            return os.path.join(self.rundir, self.prefix + "c")
        return self.prefix + "c"

    def run(self, n: int, epoch: int) -> dict:
        t = self.t
        if t == "memcpy":
            return _bench.memcpy_loop(self.dst_addr, self.src_addr, self.size, n)
        if t == "mp-pipe":
            return self.run_mp_pipe(n, epoch)
        if t == "mp-shm":
            return self.run_mp_shm(n, epoch)
        if t in ("pipe", "socketpair"):
            kind = "stream"
        elif t == "file-read":
            kind = "file"
        elif self.state == "cold":
            kind = {"posix": "cold-posix", "sysv": "cold-sysv", "memfd": "cold-memfd",
                    "mmap-file": "cold-file"}[t]
        else:
            kind = "ring"
        return _bench.run(role=self.role, pattern=1 if self.latency else 0, n=n, size=self.size,
                          cb=self.cb, epoch=epoch, kind=KIND[kind], sync=SYNC[self.sync],
                          data0=self.data[0], data1=self.data[1], slots=self.slots,
                          slot_size=self.slot_size, fd0=self.fd01[0], fd1=self.fd01[1],
                          foff1=self.foff1, sfd=self.sfd, name=self.cold_name(),
                          inplace=1 if self.job.get("consumer") == "inplace" else 0,
                          src=self.src_addr, dst=self.dst_addr,
                          spin_limit=self.job.get("spin_limit", 20000),
                          pstore=self.job.get("pstore", 0))

    # Python-level transports: what a Python user writes.
    def _py_bracket(self, epoch, body, n):
        _bench.barrier(self.cb, epoch)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic_ns()
        errors = body(n)
        t1 = time.monotonic_ns()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return {"t0": t0, "t1": t1, "minflt": r1.ru_minflt - r0.ru_minflt,
                "majflt": r1.ru_majflt - r0.ru_majflt, "errors": errors, "checksum": 0,
                "send_addr": 0, "recv_addr": 0}

    def _seq(self, c: int) -> int:
        self.msg[c] += 1
        return ((c + 1) << 56) | self.msg[c]

    def run_mp_pipe(self, n: int, epoch: int) -> dict:
        conn = self.conns[self.role]
        src, dst, size = self.src, self.dst, self.size
        view = memoryview(src)[:size]
        pack, unpack = struct.pack_into, struct.unpack_from

        def send(c):
            s = self._seq(c)
            pack("<Q", src, 0, s)
            pack("<Q", src, size - 8, s)
            conn.send_bytes(view)

        def recv(c):
            s = self._seq(c)
            got = conn.recv_bytes_into(dst)
            return int(got != size or unpack("<Q", dst, 0)[0] != s or unpack("<Q", dst, size - 8)[0] != s)

        return self._py_bracket(epoch, lambda k: self._loop(k, send, recv), n)

    def run_mp_shm(self, n: int, epoch: int) -> dict:
        from multiprocessing import shared_memory
        src, dst, size, cold = self.src, self.dst, self.size, self.state == "cold"
        view = memoryview(src)[:size]
        dview = memoryview(dst)[:size]
        pack, unpack = struct.pack_into, struct.unpack_from
        buf = None if cold else self.mshm.buf

        def send(c):
            full, empty = self.msem[c]
            slot = self.msg[c] % self.slots
            s = self._seq(c)
            empty.acquire()
            if cold:
                shm = shared_memory.SharedMemory(name=f"{self.prefix}mp{c}-{slot}", create=True, size=size)
                shm.buf[:size] = view
                pack("<Q", shm.buf, 0, s)
                pack("<Q", shm.buf, size - 8, s)
                shm.close()
            else:
                off = c * self.ring_bytes + slot * self.slot_size
                buf[off:off + size] = view
                pack("<Q", buf, off, s)
                pack("<Q", buf, off + size - 8, s)
            full.release()

        def recv(c):
            full, empty = self.msem[c]
            slot = self.msg[c] % self.slots
            s = self._seq(c)
            full.acquire()
            if cold:
                shm = shared_memory.SharedMemory(name=f"{self.prefix}mp{c}-{slot}")
                dview[:] = shm.buf[:size]
                shm.close()
                shm.unlink()
            else:
                off = c * self.ring_bytes + slot * self.slot_size
                dview[:] = buf[off:off + size]
            empty.release()
            return int(unpack("<Q", dst, 0)[0] != s or unpack("<Q", dst, size - 8)[0] != s)

        try:
            return self._py_bracket(epoch, lambda k: self._loop(k, send, recv), n)
        finally:
            del view, dview, buf

    def _loop(self, n, send, recv) -> int:
        errors = 0
        if not self.latency:
            if self.role == 0:
                for _ in range(n):
                    send(0)
            else:
                for _ in range(n):
                    errors += recv(0)
        elif self.role == 0:
            for _ in range(n):
                send(0)
                errors += recv(1)
        else:
            for _ in range(n):
                errors += recv(0)
                send(1)
        return errors

    # ----- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        self.drop_names()            # names not yet dropped (an error before the peer attached)
        if getattr(self, "mshm", None) is not None:
            try:
                self.mshm.close()
            except Exception:
                pass


def peer_main(pair: Pair, ctl: socket.socket) -> None:
    """Role 1: follows the worker's commands until told to exit (or the worker goes)."""
    code = 0
    try:
        _bench.pdeathsig(signal.SIGKILL)
        if pair.job.get("cpus"):
            _bench.pin(pair.job["cpus"][1])
        pair.role = 1
        pair.msg = [0, 0]
        pair.fds_for_role()
        pair.buffers()
        rd = LineReader(ctl)
        while True:
            cmd = rd.get()
            op = cmd["op"]
            if op == "attach":
                pair.attach(cmd["info"], ctl)
                if pair.data[0]:
                    pair.prefault(pair.data[0], pair.channels * pair.ring_bytes)
                send_msg(ctl, {"ok": True, "ring": pair.data[0]})
            elif op == "run":
                send_msg(ctl, pair.run(cmd["n"], cmd["epoch"]))
            elif op == "exit":
                break
    except BaseException as e:     # noqa: BLE001 - reported to the worker, which reports it
        code = 1
        try:
            send_msg(ctl, {"error": f"peer: {type(e).__name__}: {e}"})
        except OSError:
            pass
    finally:
        try:
            pair.close()
        finally:
            os._exit(code)


class Worker:
    def __init__(self, job: dict):
        self.job = job
        self.pair = Pair(job)
        self.ctl = None
        self.pid = None
        self.rd = None
        self.ring = [0, 0]

    def start(self) -> None:
        job, pair = self.job, self.pair
        pair.prepare()
        if job["transport"] != "memcpy":
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = os.fork()
            if pid == 0:
                a.close()
                peer_main(pair, b)
            b.close()
            self.ctl, self.pid = a, pid
            self.rd = LineReader(a)
            with open(job["pidfile"], "a") as f:
                f.write(f"{pid}\n")
            pair.peer_pid = pid
        if job.get("cpus"):
            _bench.pin(job["cpus"][0])
        pair.msg = [0, 0]
        pair.fds_for_role()
        pair.buffers()
        if self.ctl is not None:
            info = pair.create(self.ctl)
            send_msg(self.ctl, {"op": "attach", "info": info})
            self.ring = [pair.data[0], self.reply()["ring"]]
            pair.after_attach()

    def reply(self) -> dict:
        r = self.rd.get()
        if "error" in r:
            raise RuntimeError(r["error"])
        return r

    def value(self, n: int) -> dict:
        self.pair.epoch += 1
        epoch = self.pair.epoch
        if self.ctl is not None:
            send_msg(self.ctl, {"op": "run", "n": n, "epoch": epoch})
        a = self.pair.run(n, epoch)
        b = self.reply() if self.ctl is not None else None
        return combine(self.job, n, a, b)

    def stop(self) -> None:
        if self.ctl is not None:
            try:
                send_msg(self.ctl, {"op": "exit"})
            except OSError:
                pass
            # a peer stuck in a hand-off (the worker failed mid-value) does not answer: kill it
            deadline = time.monotonic() + 5.0
            try:
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        os.kill(self.pid, signal.SIGKILL)
                        os.waitpid(self.pid, 0)
                        break
                    time.sleep(0.001)
            except ChildProcessError:
                pass
            self.ctl.close()
            self.ctl = None
        self.pair.close()


def combine(job: dict, n: int, a: dict, b: dict | None) -> dict:
    """One value from both processes' brackets."""
    if b is None:
        elapsed = a["t1"] - a["t0"]
    elif job["pattern"] == "latency":
        elapsed = a["t1"] - a["t0"]
    else:
        elapsed = max(a["t1"], b["t1"]) - min(a["t0"], b["t0"])
    out = {"seconds": elapsed / 1e9, "n": n,
           "a": {"minor": a["minflt"], "major": a["majflt"], "addr": [a["send_addr"], a["recv_addr"]]},
           "errors": a["errors"] + (b["errors"] if b else 0)}
    if b is not None:
        out["b"] = {"minor": b["minflt"], "major": b["majflt"], "addr": [b["send_addr"], b["recv_addr"]]}
    return out


def measure(job: dict) -> dict:
    w = Worker(job)
    res = {"pid": os.getpid(), "calibration": [], "warmups": [], "values": []}
    try:
        w.start()
        res["peer_pid"] = w.pid
        loops = job.get("loops")
        if not loops:
            loops = 1
            while True:
                v = w.value(loops)
                res["calibration"].append(v)
                if v["seconds"] >= job["min_time"] or loops >= job.get("max_loops", 1 << 26):
                    break
                # aim a little past min_time, at most 10x more at once
                factor = min(10.0, max(2.0, 1.2 * job["min_time"] / max(v["seconds"], 1e-9)))
                loops = int(loops * factor)
        res["loops"] = loops
        res["ring"] = w.ring
        for _ in range(job["warmups"]):
            res["warmups"].append(w.value(loops))
        for _ in range(job["values"]):
            res["values"].append(w.value(loops))
    finally:
        w.stop()
    return res


def main() -> int:
    job = json.loads(sys.stdin.read())
    _bench.pdeathsig(signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    try:
        res = measure(job)
    except BaseException as e:     # noqa: BLE001 - one JSON line for the orchestrator
        sys.stdout.write(json.dumps({"error": f"{type(e).__name__}: {e}",
                                     "trace": traceback.format_exc(limit=4)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
