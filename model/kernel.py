"""The model kernel: processes, their address spaces, the objects behind them, and one method
per experiment operation, each following the system call it models.

    k = Kernel(profile, snapshot)        # plain data from the live host (see from_snapshot)
    out = k.step(step)                   # {"result", "faults", "value", "trace"}
    view = k.observe()                   # processes (maps, smaps, regions), /dev/shm, SysV

This file holds the core of Kernel: seeding from a snapshot, the step dispatch, the helpers
every system call uses (do_vmi_align_munmap's unmap_vmas, kernel/capability.c capable), the
SysV glue, observe() and check(). The system calls are methods of one mixin class per file
(as gVisor spreads one MemoryManager over many files), all inherited by Kernel:

  mmap      mm/mmap.c do_mmap, mm/vma.c mmap_region           -> model.mmap     MmapOps.sys_mmap
  munmap    mm/vma.c do_vmi_munmap                             -> model.mprotect MprotectOps.sys_munmap
  mprotect  mm/mprotect.c do_mprotect_pkey, mprotect_fixup     -> model.mprotect MprotectOps.sys_mprotect
  madvise   mm/madvise.c, mm/khugepaged.c                      -> model.madvise  MadviseOps.sys_madvise
  msync     mm/msync.c                                         -> model.files    FileOps.sys_msync
  mlock     mm/mlock.c do_mlock, apply_vma_lock_flags          -> model.mlock    MlockOps.sys_mlock / sys_munlock
  mremap    mm/mremap.c                                        -> model.mremap   MremapOps.sys_mremap
  fork      kernel/fork.c dup_mmap, mm/memory.c copy_page_range -> model.fork    ForkOps.sys_fork
  rlimit    kernel/sys.c do_prlimit                            -> model.fork     ForkOps.sys_rlimit
  files     fs/open.c, mm/filemap.c, mm/fadvise.c, mm/truncate.c -> model.files  FileOps
  shm_open  mm/shmem.c on /dev/shm (glibc shm_open = open)     -> model.files    FileOps.sys_shm_open
  memfd     mm/memfd.c memfd_create                            -> model.files    FileOps.sys_memfd
  shm*      ipc/shm.c (model.ipc)                              -> Kernel.sys_shmget/shmat/shmdt/shmctl
  touch     user loads and stores (faults: model.memory)       -> model.access   AccessOps.sys_touch / sys_read
  write     fs/read_write.c ksys_pwrite64, generic_perform_write -> model.fileio FileIO.sys_write
  fadvise   mm/fadvise.c generic_fadvise                       -> model.fileio   FileIO.sys_fadvise
  settle    (a pause of the live side; nothing in the model)   -> model.fileio   FileIO.sys_settle
  seal      mm/memfd.c memfd_add_seals                         -> model.seals    Seals.sys_seal
  mlockall  mm/mlock.c sys_mlockall, sys_munlockall            -> model.mlockall LockAll.sys_mlockall / sys_munlockall
  guard     mm/madvise.c madvise_guard_install/remove          -> model.guard    Guard.madvise_guard
Errors: model.errors. Processes and regions: model.process. Faults: model.memory. /proc
rendering: model.proc.
"""
from __future__ import annotations

import itertools
from collections import Counter

from model import ipc, pads
from model.access import AccessOps
from model.errors import StepError, errno  # errno: also re-exported, as before the split
from model.fileio import FileIO
from model.files import FileOps
from model.flags import PAGE_SHIFT, PTE_ANON, PTE_FILE, PTE_KIND, VM_LOCKED, VM_SOFTDIRTY
from model.fork import ForkOps
from model.guard import Guard
from model.madvise import MadviseOps
from model.memory import Memory
from model.mlock import MlockOps
from model.mlockall import LockAll
from model.mm import TASK_SIZE, AddressSpace
from model.mmap import MmapOps
from model.mprotect import MprotectOps
from model.mremap import MremapOps
from model.objects import DISK, SHMEM, TMPFS, AnonPages, Inode, lru_gen_enabled
from model.pages import pages_of
from model.proc import maps_line, residency, vma_record
from model.process import Process, Region
from model.resolve import Skip   # a missing handle: the one "skipped" message
from model.seals import Seals
from model.versions import (ANON_MERGE_UNFAULTED_SINCE, EXEC_READAHEAD_SINCE, FILE_FAULT_VMA_LOCK_SINCE,
                             HUGE_ZERO_WP_SINCE, LOCKONFAULT_MNEMONIC_SINCE, MAP_STACK_NOHUGEPAGE_SINCE,
                             PAGEMAP_PMD_EXCLUSIVE_ONCE_SINCE, PAGEMAP_PMD_EXCLUSIVE_PER_PAGE_SINCE,
                             THP_PAD_TOPDOWN_SINCE, release_of)
from model.vma import OpenFile, Vma


def effective_mmap_min_addr(profile: dict) -> int:
    """security/min_addr.c update_mmap_min_addr(): mmap_min_addr = max(vm.mmap_min_addr,
    CONFIG_LSM_MMAP_MIN_ADDR) when CONFIG_SECURITY is set. Measured: 64 KiB here although the
    sysctl reads 4096."""
    config = profile.get("config") or {}
    lsm = config.get("LSM_MMAP_MIN_ADDR")
    return max((profile.get("sysctl") or {}).get("mmap_min_addr") or 4096,
               lsm if isinstance(lsm, int) and config.get("SECURITY") else 0)


class Kernel(MmapOps, MprotectOps, MadviseOps, MlockOps, MremapOps, FileOps, AccessOps, ForkOps,
             FileIO, Seals, LockAll, Guard):
    def __init__(self, profile: dict, snapshot: dict):
        self.profile = profile
        sysctl = profile.get("sysctl", {})
        self.max_map_count = sysctl.get("max_map_count") or 65530
        self.mmap_min_addr = effective_mmap_min_addr(profile)
        self.overcommit = sysctl.get("overcommit_memory") or 0
        self.shmmax = sysctl.get("shmmax") or (1 << 64) - (1 << 24) - 1
        self.shmall = sysctl.get("shmall") or (1 << 64) - (1 << 24) - 1
        self.shmmni = sysctl.get("shmmni") or 4096
        self.vm_softdirty = VM_SOFTDIRTY if profile.get("soft_dirty") else 0
        self.thp_enabled = profile.get("thp_enabled") or "never"
        # the host's kernel release, for rules that changed between versions (model.versions)
        self.release = release_of(profile)
        self.huge_zero_wp_thp = self.release >= HUGE_ZERO_WP_SINCE
        # folio_mark_accessed() takes the multi-gen LRU path (model.objects.lru_gen_enabled)
        self.mglru = lru_gen_enabled(profile)
        # smaps VmFlags names VM_LOCKONFAULT "lf" (else "??"): model.versions
        self.lockonfault_named = self.release >= LOCKONFAULT_MNEMONIC_SINCE
        self.exec_readahead = self.release >= EXEC_READAHEAD_SINCE
        self.map_stack_nohugepage = self.release >= MAP_STACK_NOHUGEPAGE_SINCE
        # pagemap's PM_MMAP_EXCLUSIVE for a PMD-mapped THP (model.proc.residency)
        self.pmd_exclusive = ("first" if self.release >= PAGEMAP_PMD_EXCLUSIVE_ONCE_SINCE else
                              "page" if self.release >= PAGEMAP_PMD_EXCLUSIVE_PER_PAGE_SINCE else "head")
        # a file fault retried after dropping its lock counts minor (under the per-VMA lock)
        # or major (FAULT_FLAG_TRIED under the mmap lock): model.versions
        self.retry_counts_minor = self.release >= FILE_FAULT_VMA_LOCK_SINCE and \
            (profile.get("config") or {}).get("PER_VMA_LOCK", True) not in (False, None, "n")
        self.thp_use_zero_page = profile.get("thp_use_zero_page", 1)
        self.totalram_pages = (profile.get("mem_total_kb") or (1 << 40)) // 4
        self.total_swap_pages = (profile.get("swap_total_kb") or 0) // 4
        self._mmap_host_facts(profile)
        dev = snapshot.get("devices", {})
        self.dev = {DISK: dev.get("disk", "00:00"), TMPFS: dev.get("tmpfs", "00:00"),
                    SHMEM: dev.get("shmem", "00:01")}
        # values `shmkit probe` measured (none of them can be read from /proc or /sys); the
        # defaults are what this kernel (6.18, ext4) showed
        probed = profile.get("probed") or {}
        self.large_folios = probed.get("disk_large_folios", snapshot.get("disk_large_folios", True))
        fab = profile.get("fault_around_bytes")
        self.fault_around_pages = probed.get("fault_around_pages") or (fab // 4096 if fab else 16)
        self.write_notify = {DISK: True, TMPFS: False, SHMEM: False}
        self.write_notify.update({DISK: probed.get("write_notify", {}).get("disk", True),
                                  TMPFS: probed.get("write_notify", {}).get("tmpfs", False)})
        self.thp_align_anon = probed.get("thp_align_anon", True)
        # bdi->ra_pages of the disk's backing device (read_ahead_kb; the kernel default is 128)
        self.readahead_pages = (dev.get("disk_readahead_kb") or 128) // 4
        # bdi->io_pages (max_sectors_kb in pages): how far a request larger than ra_pages may
        # read (force_page_cache_ra, ractl_max_pages); unknown: no larger than ra_pages
        self.io_pages = dev.get("disk_io_pages") or 0
        self.anon = AnonPages(self.mglru)
        self.mem = Memory(self)
        self.files: dict[str, Inode] = {}       # disk and tmpfs files by path
        self.posix: dict[str, Inode] = {}       # /dev/shm names (without '/') -> inode
        self.ipc = ipc.SysV(self)
        self._ino = itertools.count(1_000_000_001)
        self._pid = itertools.count(snapshot.get("first_child_pid", 4_000_001))
        self.procs: dict[str, Process] = {}
        self.umask = snapshot.get("umask", 0o022)
        # the workers' effective capabilities (every process of a run has the same
        # credentials); None: all of them when privileged
        self.caps = snapshot.get("caps")
        self.trace: Counter = Counter()
        setup = snapshot.get("setup", {})
        for name, p in snapshot["processes"].items():
            mm = self._address_space(p, setup)
            rl = {k: list(v) for k, v in (snapshot.get("rlimits") or {}).items()}
            proc = Process(name, p["pid"], mm, rl, snapshot.get("privileged", True), snapshot.get("uid", 0))
            self.procs[name] = proc

    def _address_space(self, p: dict, setup: dict) -> AddressSpace:
        """Every VMA of the snapshot becomes an opaque VMA (kept, rendered as it was, never
        merged). mmap_base is where the first mappings went: the end of the highest mapping
        below the stack (top-down) or the start of the lowest one above TASK_SIZE/3 (legacy)."""
        vmas = []
        for v in p["vmas"]:
            opaque = {k: v[k] for k in ("perms", "offset", "dev", "inode", "path")}
            opaque["smaps_kb"] = v.get("smaps_kb", {})
            vma = Vma(v["start"], v["end"], 0, opaque=opaque)
            vmas.append(vma)
        topdown = setup.get("layout", "topdown") != "legacy"
        stack = next((v["start"] for v in p["vmas"] if v["path"] == "[stack]"), TASK_SIZE)
        below = [v["end"] for v in p["vmas"] if v["end"] <= stack and v["path"] != "[stack]"]
        if topdown:
            base = max(below) if below else TASK_SIZE
        else:
            from model.mm import legacy_base
            above = [v["start"] for v in p["vmas"] if v["start"] >= legacy_base()]
            base = min(above) if above else legacy_base()
        mm = AddressSpace(vmas, topdown, base, self.mmap_min_addr, self.max_map_count)
        mm.faulted_into_unfaulted = self.release >= ANON_MERGE_UNFAULTED_SINCE
        mm.thp_pad_topdown = self.release >= THP_PAD_TOPDOWN_SINCE
        gap = self.profile.get("stack_guard_gap_pages")
        if isinstance(gap, int):
            mm.stack_guard_gap = gap << PAGE_SHIFT
        return mm

    def new_ino(self) -> int:
        return next(self._ino)

    def note(self, text: str, n: int = 1) -> None:
        self.trace[text] += n

    def step(self, step: dict) -> dict:
        """Apply one step (index, do, in, args); returns result, faults, value, yielded (the
        pad pieces the harness unmapped before the step, model.pads), trace."""
        self.trace = Counter()
        proc = self.procs[step["in"]]
        handler = getattr(self, "sys_" + step["do"])
        # the harness's pads in the way of an address the step asks for go first (model.pads)
        yielded = pads.yield_for(self, proc, step["do"], step["args"])
        if yielded:
            self.note(f"shmkit unmapped {len(yielded)} piece(s) of its padding first: the step "
                      "finds the address space as it would be without padding (model.pads)")
        faults = value = None
        try:
            out = handler(proc, step["args"])
            result = "ok"
            if out:
                faults, value = out
        except StepError as e:
            result, faults = e.result, e.faults
            value = getattr(e, "value", None)
        return {"result": result, "faults": faults, "value": value, "yielded": yielded,
                "trace": [f"{n} × {t}" if n > 1 else t for t, n in self.trace.items()]}

    @staticmethod
    def _faults(minor=0, major=0) -> dict:
        return {"minor": minor, "major": major}

    def fd(self, proc: Process, handle: str) -> OpenFile:
        f = proc.fds.get(handle)
        if f is None:
            raise StepError(Skip(handle, "handle").result)      # the worker's words (model.resolve)
        return f

    @staticmethod
    def whole_region(proc: Process, args: dict) -> Region | None:
        """The region a call over a whole region acts on (model.resolve "whole"), or None."""
        return proc.regions.get(args["region"]) if args.get("whole") else None

    def zap_range(self, proc: Process, vma: Vma, a: int, b: int) -> int:
        return self.mem.zap(vma, a, b)

    def unmap_vmas(self, proc: Process, start: int, end: int) -> None:
        """Remove [start, end) from the address space: split, zap, drop (do_vmi_align_munmap).
        A SysV attach losing its last VMA is detached (shm_close)."""
        mm = proc.mm
        for vma in mm.isolate(start, end):
            if vma.opaque is not None:
                mm.remove(vma)
                continue
            self.mem.zap(vma, 0, vma.pages)
            if vma.flags & VM_LOCKED:
                mm.locked_vm -= vma.pages
            mm.remove(vma)
            if vma.file is not None and vma.file.segment is not None:
                self.ipc.closed(vma.file.segment)
        for b in range(start >> 21, ((end - 1) >> 21) + 1):
            if b in mm.ptables and not mm.overlapping(b << 21, (b + 1) << 21):
                mm.ptables.discard(b)       # free_pgtables: the PTE table goes with the last VMA

    def capable(self, proc: Process, cap: int) -> bool:
        """kernel/capability.c capable(): root workers hold what the manager held (CapEff)."""
        return proc.privileged and (self.caps is None or bool(self.caps >> cap & 1))

    def sys_shmget(self, proc, args):
        return self.ipc.shmget(proc, args)

    def sys_shmat(self, proc, args):
        return self.ipc.shmat(proc, args)

    def sys_shmdt(self, proc, args):
        return self.ipc.shmdt(proc, args)

    def sys_shmctl(self, proc, args):
        return self.ipc.shmctl(proc, args)

    def observe(self) -> dict:
        procs = {}
        for name, p in self.procs.items():
            vmas = sorted(p.mm.vmas, key=lambda v: v.start)
            regions = {}
            for h, r in p.regions.items():
                npages = pages_of(r.length)
                res = residency(p.mm, r.addr, npages, self.anon, self.pmd_exclusive) \
                    if r.mapped and npages < (1 << 22) else {}
                regions[h] = {"addr": r.addr, "length": r.length, "mapped": r.mapped, "kind": r.kind, **res}
            procs[name] = {"pid": p.pid, "maps": [maps_line(v) for v in vmas],
                           "vmas": [vma_record(v, self.anon, v.opaque.get("smaps_kb") if v.opaque else None,
                                               self.lockonfault_named)
                                    for v in vmas],
                           "regions": regions}
        shm = [{"name": n, "size": ino.size, "mode": oct(ino.mode & 0o7777)}
               for n, ino in sorted(self.posix.items())]
        return {"processes": procs, "dev_shm": shm, "sysv": self.ipc.rows()}

    def check(self) -> list[str]:
        """Recompute derived state from scratch and return every inconsistency: page mapcounts
        from the page tables, locked_vm from VMA flags, SysV nattch from attached VMAs, VMA
        order and overlap, page-cache folio bookkeeping."""
        problems = []
        anon_count = Counter()
        file_count: Counter = Counter()
        for p in self.procs.values():
            prev_end = 0
            locked = 0
            for v in sorted(p.mm.vmas, key=lambda v: v.start):
                if v.start < prev_end:
                    problems.append(f"{p.name}: VMAs overlap at {v.start:#x}")
                prev_end = v.end
                if v.opaque is not None:
                    continue
                if len(v.pte) != v.pages:
                    problems.append(f"{p.name}: {v!r} page table has {len(v.pte)} entries")
                if v.flags & VM_LOCKED:
                    locked += v.pages
                for i, e in enumerate(v.pte):
                    k = e & PTE_KIND
                    if k == PTE_ANON:
                        anon_count[v.anon[i]] += 1
                    elif k == PTE_FILE:
                        file_count[(id(v.file.inode), v.pgoff + i)] += 1
                        if not v.file.inode.is_cached(v.pgoff + i):
                            problems.append(f"{p.name}: {v!r} page {i} maps an uncached file page")
            if locked + p.mm.locked_vm_stale != p.mm.locked_vm:
                problems.append(f"{p.name}: locked_vm {p.mm.locked_vm} but VM_LOCKED VMAs hold {locked} pages")
        for pid in range(1, len(self.anon.mapcount)):
            if self.anon.mapcount[pid] != anon_count.get(pid, 0):
                problems.append(f"anonymous page {pid}: mapcount {self.anon.mapcount[pid]}, "
                                f"PTEs {anon_count.get(pid, 0)}")
        inodes = {id(i): i for i in list(self.files.values()) + list(self.posix.values())}
        for p in self.procs.values():
            for v in p.mm.vmas:
                if v.file is not None:
                    inodes[id(v.file.inode)] = v.file.inode
        for key, ino in inodes.items():
            for idx in range(len(ino.mapcount)):
                if ino.mapcount[idx] != file_count.get((key, idx), 0):
                    problems.append(f"{ino.name} page {idx}: mapcount {ino.mapcount[idx]}, "
                                    f"PTEs {file_count.get((key, idx), 0)}")
        problems += self.ipc.check()
        return problems
