"""What `shmkit bench` measures: the benchmarks (one per series and message size).

A series is everything but the size: transport, pattern (throughput or latency), state (warm:
the mapping is reused; cold: a new mapping per message), consumer (copy: copy-out into a private
buffer; inplace: read where it lies, a checksum), sync (how the two processes hand off a
message) and placement (cross: the two processes pinned to two CPUs; same: both on one CPU;
one: a single process). The grid varies one factor at a time around a reference (warm, copy,
spin, cross), so that each factor's effect is its own line, not hidden inside a transport.
"""
from __future__ import annotations

from dataclasses import dataclass

KiB, MiB = 1024, 1024 * 1024
SIZES_FULL = [64 * 4 ** k for k in range(11)]            # 64 B .. 64 MiB, every 4x
SIZES_QUICK = [64, MiB]

SHM = ("anon", "posix", "sysv", "memfd", "mmap-file", "mp-shm")
STREAM = ("pipe", "socketpair")
TRANSPORTS = ("memcpy", "pipe", "socketpair", "file-read", "anon", "posix", "sysv", "memfd", "mmap-file",
              "mp-pipe", "mp-shm")
SYNCS = ("spin", "sem", "eventfd", "pipe")
COLD_OK = ("posix", "sysv", "memfd", "mmap-file", "mp-shm")   # a new mapping can reach a running peer

DESCRIPTION = {
    "memcpy": "memcpy within one process (the roofline)",
    "pipe": "pipe(2), write()/read(), 1 MiB pipe buffer",
    "socketpair": "AF_UNIX stream socketpair, send/recv",
    "file-read": "a disk file: pwrite() by one process, pread() by the other (page cache)",
    "anon": "MAP_SHARED|MAP_ANONYMOUS ring inherited by fork",
    "posix": "POSIX shm (posix_ipc), shm_open + mmap",
    "sysv": "SysV shm (sysv_ipc), shmget + shmat",
    "memfd": "memfd_create, the fd passed to the peer with SCM_RIGHTS",
    "mmap-file": "mmap(MAP_SHARED) of a disk file",
    "mp-pipe": "multiprocessing.Pipe, send_bytes/recv_bytes_into (Python loop)",
    "mp-shm": "multiprocessing.shared_memory + multiprocessing.Semaphore (Python loop)",
}


@dataclass(frozen=True)
class Series:
    transport: str
    pattern: str                  # throughput | latency
    state: str | None = None      # warm | cold (shared-memory transports)
    consumer: str = "copy"        # copy | inplace
    sync: str | None = None       # spin | sem | eventfd | pipe | mp-sem; None: the fd itself
    placement: str = "cross"      # cross | same | one
    chunk: int | None = None      # ring slots of this many bytes: a larger message goes in pieces

    @property
    def key(self) -> str:
        return "/".join([self.transport, self.pattern, self.state or "-", self.consumer,
                         self.sync or "-", self.placement] + ([f"chunk{self.chunk}"] if self.chunk else []))

    def applies(self, size: int) -> bool:
        """A chunked series is only measured where the message is larger than a slot."""
        return not self.chunk or size > self.chunk

    @property
    def label(self) -> str:
        parts = [self.transport]
        if self.state:
            parts.append(self.state)
        if self.transport != "memcpy":
            parts.append("in-place" if self.consumer == "inplace" else "copy-out")
        if self.sync:
            parts.append(self.sync)
        if self.placement == "same":
            parts.append("same CPU")
        if self.chunk:
            parts.append(f"{self.chunk // KiB} KiB slots")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return {"transport": self.transport, "pattern": self.pattern, "state": self.state,
                "consumer": self.consumer, "sync": self.sync, "placement": self.placement, "chunk": self.chunk}


def slots_for(s: Series, size: int) -> int:
    """Slots of a ring: one in flight for ping-pong and on one CPU (the data stays in that
    CPU's cache); across CPUs, about 256 KiB of ring (2..64 slots) so the producer can run
    ahead and the consumer can take several messages per look at the counters."""
    if s.chunk:
        return 4
    if s.pattern == "latency" or s.placement == "same" or s.transport in STREAM:
        return 1
    slot = max(64, (size + 63) // 64 * 64) if size < 4096 else (size + 4095) // 4096 * 4096
    return max(2, min(64, (256 * KiB) // slot))


def series_list(quick: bool) -> list[Series]:
    S = Series
    out: list[Series] = [S("memcpy", "throughput", consumer="copy", placement="one")]
    for pat in ("throughput", "latency"):
        for t in STREAM:
            out.append(S(t, pat))
        out.append(S("file-read", pat, sync="spin"))
        out.append(S("mp-pipe", pat))
        for t in ("anon", "posix", "sysv", "memfd", "mmap-file"):
            for cons in ("copy", "inplace"):
                if pat == "throughput" or cons == "copy":     # a round trip: copy-out only
                    out.append(S(t, pat, "warm", cons, "spin"))
                if t in COLD_OK and (pat == "throughput" or cons == "copy"):
                    out.append(S(t, pat, "cold", cons, "spin"))
        for st in ("warm", "cold"):
            out.append(S("mp-shm", pat, st, "copy", "mp-sem"))
        # the synchronisation factor, on the anonymous ring
        for sy in ("sem", "eventfd", "pipe"):
            out.append(S("anon", pat, "warm", "copy", sy))
        # the slot-size factor: a large message streamed through four 64 KiB slots (256 KiB of
        # ring, resident in both CPUs' L2) instead of whole-message slots
        if pat == "throughput":
            for cons in ("copy", "inplace"):
                out.append(S("anon", pat, "warm", cons, "spin", chunk=64 * KiB))
        # the placement factor: both processes on one CPU (blocking hand-off only)
        for sy in ("sem", "eventfd"):
            for cons in ("copy", "inplace"):
                if pat == "throughput" or cons == "copy":
                    out.append(S("anon", pat, "warm", cons, sy, "same"))
        if pat == "latency":
            out.append(S("anon", pat, "warm", "copy", "pipe", "same"))
        out.append(S("pipe", pat, placement="same"))
    if quick:
        keep = {
            S("memcpy", "throughput", consumer="copy", placement="one"),
            S("pipe", "throughput"), S("pipe", "latency"), S("socketpair", "throughput"),
            S("file-read", "throughput", sync="spin"), S("mp-pipe", "throughput"),
            S("anon", "throughput", "warm", "copy", "spin"), S("anon", "throughput", "warm", "inplace", "spin"),
            S("anon", "latency", "warm", "copy", "spin"), S("anon", "latency", "warm", "copy", "eventfd"),
            S("anon", "latency", "warm", "copy", "sem"), S("anon", "latency", "warm", "copy", "pipe"),
            S("anon", "throughput", "warm", "inplace", "sem", "same"),
            S("posix", "throughput", "cold", "copy", "spin"), S("sysv", "throughput", "cold", "copy", "spin"),
            S("memfd", "throughput", "cold", "copy", "spin"), S("mmap-file", "throughput", "cold", "copy", "spin"),
            S("mmap-file", "throughput", "warm", "copy", "spin"), S("sysv", "throughput", "warm", "copy", "spin"),
            S("posix", "throughput", "warm", "copy", "spin"), S("memfd", "throughput", "warm", "copy", "spin"),
            S("mp-shm", "throughput", "warm", "copy", "mp-sem"), S("mp-shm", "throughput", "cold", "copy", "mp-sem"),
        }
        out = [s for s in out if s in keep]
    return out


def select(series: list[Series], transports: list[str] | None, patterns: list[str] | None) -> list[Series]:
    """Keep the chosen transports and patterns; memcpy (the roofline) always runs."""
    out = []
    for s in series:
        if patterns and s.pattern not in patterns and s.transport != "memcpy":
            continue
        if transports and s.transport not in transports and s.transport != "memcpy":
            continue
        out.append(s)
    return out
