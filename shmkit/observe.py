"""What the manager reads of a worker after a step, from outside the worker.

Reading another process's /proc files does not fault its pages: the worker is
observed without being disturbed. Region residency comes from
/proc/PID/pagemap (fs/proc/task_mmu.c:pagemap_read): bit 63 "present", and,
when the reader may see page frame numbers (CAP_SYS_ADMIN), whether the page is
the shared zero page (mm/memory.c:do_anonymous_page maps it on a read fault of
private anonymous memory; smaps does not count it in Rss).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from shmkit.procfs import list_dev_shm, read_maps, read_smaps, read_sysvipc_shm

PAGE = os.sysconf("SC_PAGE_SIZE")
PM_PRESENT = 1 << 63
PM_EXCLUSIVE = 1 << 56
PFN_MASK = (1 << 55) - 1

SMAPS_KEEP = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
              "Referenced", "Anonymous", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped",
              "Swap", "Locked")


def zero_page_pfn() -> int | None:
    """The shared zero page's frame number, found by read-faulting a private
    anonymous page here and looking it up in our own pagemap; None when frame
    numbers are hidden (not CAP_SYS_ADMIN)."""
    import ctypes

    from shmkit import libc

    addr = libc.mmap(0, PAGE, 0x1, libc.MAP["PRIVATE"] | libc.MAP["ANONYMOUS"], -1, 0)
    try:
        ctypes.c_char.from_address(addr).value  # read fault: the zero page
        entry = _pagemap_entries(os.getpid(), addr, 1)[0]
    finally:
        libc.munmap(addr, PAGE)
    pfn = entry & PFN_MASK
    return pfn if entry & PM_PRESENT and pfn else None


def _pagemap_entries(pid: int, start: int, npages: int) -> list[int]:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        data = f.read(npages * 8)
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


@dataclass
class Residency:
    present: int
    zero: int | None
    exclusive: int

    def to_dict(self) -> dict:
        return {"present": self.present, "zero": self.zero, "exclusive": self.exclusive,
                "rss": None if self.zero is None else self.present - self.zero}


def residency(pid: int, start: int, npages: int, zero_pfn: int | None) -> Residency:
    entries = _pagemap_entries(pid, start, npages) if npages else []
    present = [e for e in entries if e & PM_PRESENT]
    zero = None if zero_pfn is None else sum(1 for e in present if e & PFN_MASK == zero_pfn)
    return Residency(len(present), zero, sum(1 for e in present if e & PM_EXCLUSIVE))


def process_view(pid: int) -> dict:
    """Maps (exact lines and records) with the smaps figures of each VMA."""
    text, vmas = read_maps(pid)
    smaps = {(e.vma.start, e.vma.end): e for e in read_smaps(pid)}
    records = []
    for v in vmas:
        e = smaps.get((v.start, v.end))
        fields = {k: e.fields.get(k, 0) for k in SMAPS_KEEP} if e else {}
        records.append({
            "start": v.start, "end": v.end, "perms": v.perms, "offset": v.offset, "dev": v.dev,
            "inode": v.inode, "path": v.path, "smaps_kb": fields,
            "vmflags": list(e.vmflags) if e else [],
        })
    return {"lines": text.splitlines(), "vmas": records}


def system_view(prefix: str, keys: set[int] | None, shmids: set[int] | None,
                dev_shm: str = "/dev/shm", segments: list | None = None) -> dict:
    """The run's own /dev/shm entries and SysV segments. Prefix mode: the host's, filtered by
    the run's prefix, keys and shmids. Hermetic mode (keys None): every entry of the run's own
    /dev/shm (dev_shm: /proc/PID/root/dev/shm) and every segment of its IPC namespace
    (segments: read there, shmkit.isolation.in_ipc_ns)."""
    shm = [{"name": e.name, "size": e.size, "mode": oct(e.mode & 0o7777)}
           for e in list_dev_shm(root=dev_shm, prefix=prefix)]
    sysv = []
    for s in (read_sysvipc_shm() if segments is None else segments):
        if keys is None or (s.key and s.key in keys) or s.shmid in shmids:
            sysv.append({"key": s.key, "shmid": s.shmid, "size": s.size, "nattch": s.nattch,
                         "perms": oct(s.perms), "cpid": s.cpid, "rss": getattr(s, "rss", None)})
    return {"dev_shm": shm, "sysv": sysv}
