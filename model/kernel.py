"""The model kernel: processes, their address spaces, the objects behind them, and one method
per experiment operation, each following the system call it models.

    k = Kernel(profile, snapshot)        # plain data from the live host (see from_snapshot)
    out = k.step(step)                   # {"result", "faults", "value", "trace"}
    view = k.observe()                   # processes (maps, smaps, regions), /dev/shm, SysV

System calls and their kernel functions:
  mmap      mm/mmap.c do_mmap, mm/vma.c mmap_region           -> model.kernel.Kernel.sys_mmap
  munmap    mm/vma.c do_vmi_munmap                             -> sys_munmap
  mprotect  mm/mprotect.c do_mprotect_pkey, mprotect_fixup     -> sys_mprotect
  madvise   mm/madvise.c                                       -> sys_madvise
  msync     mm/msync.c                                         -> sys_msync
  mlock     mm/mlock.c do_mlock, apply_vma_lock_flags          -> sys_mlock / sys_munlock
  mremap    mm/mremap.c                                        -> sys_mremap
  fork      kernel/fork.c dup_mmap, mm/memory.c copy_page_range -> sys_fork
  shm*      ipc/shm.c (model.ipc)                              -> sys_shmget/shmat/shmdt/shmctl
  shm_open  mm/shmem.c on /dev/shm (glibc shm_open = open)     -> sys_shm_open / sys_shm_unlink
Faults: model.memory. /proc rendering: model.proc.
"""
from __future__ import annotations

import itertools
from collections import Counter

from model import ipc
from model.flags import (MAP, MAP_TYPE, PAGE_SHIFT, PAGE_SIZE, PTE_ANON, PTE_DIRTY, PTE_FILE,
                         PTE_KIND, PTE_NONE, PTE_WRITE, PTE_YOUNG, VM_ACCOUNT, VM_DONTCOPY,
                         VM_GROWSDOWN, VM_HUGEPAGE, VM_LOCKED, VM_LOCKONFAULT, VM_MAYEXEC,
                         VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_NOHUGEPAGE, VM_NORESERVE,
                         VM_RAND_READ, VM_READ, VM_SEQ_READ, VM_SHARED, VM_WRITE, VM_EXEC,
                         calc_vm_prot_bits, map_flags, prot_of)
from model.memory import Fault, Memory
from model.mm import TASK_SIZE, AddressSpace, page_align
from model.objects import DISK, SHMEM, TMPFS, AnonPages, Inode
from model.proc import maps_line, residency, vma_record
from model.vma import AnonVma, OpenFile, Vma

RLIM_INFINITY = None


class StepError(Exception):
    """The call failed: result is {"errno": NAME} (or {"skipped": ...})."""

    def __init__(self, result: dict, faults=None):
        super().__init__(result)
        self.result, self.faults = result, faults


def errno(name: str, faults=None):
    return StepError({"errno": name}, faults)


class Region:
    __slots__ = ("addr", "length", "mapped", "kind")

    def __init__(self, addr, length, kind):
        self.addr, self.length, self.mapped, self.kind = addr, length, True, kind

    def copy(self):
        r = Region(self.addr, self.length, self.kind)
        r.mapped = self.mapped
        return r


class Process:
    def __init__(self, name: str, pid: int, mm: AddressSpace, rlimits: dict, privileged: bool, uid: int):
        self.name, self.pid, self.mm = name, pid, mm
        self.rlimits = dict(rlimits)          # name -> [soft, hard] in bytes, None = unlimited
        self.privileged = privileged          # CAP_IPC_LOCK, CAP_SYS_RESOURCE, CAP_IPC_OWNER...
        self.uid = uid
        self.fds: dict[str, OpenFile] = {}
        self.regions: dict[str, Region] = {}
        self.alive = True

    def rlimit(self, name: str):
        return self.rlimits.get(name, [None, None])[0]


def effective_mmap_min_addr(profile: dict) -> int:
    """security/min_addr.c update_mmap_min_addr(): mmap_min_addr = max(vm.mmap_min_addr,
    CONFIG_LSM_MMAP_MIN_ADDR) when CONFIG_SECURITY is set. Measured: 64 KiB here although the
    sysctl reads 4096."""
    config = profile.get("config") or {}
    lsm = config.get("LSM_MMAP_MIN_ADDR")
    return max((profile.get("sysctl") or {}).get("mmap_min_addr") or 4096,
               lsm if isinstance(lsm, int) and config.get("SECURITY") else 0)


class Kernel:
    def __init__(self, profile: dict, snapshot: dict):
        self.profile = profile
        sysctl = profile.get("sysctl", {})
        self.max_map_count = sysctl.get("max_map_count") or 65530
        self.mmap_min_addr = effective_mmap_min_addr(profile)
        self.overcommit = sysctl.get("overcommit_memory") or 0
        self.shmmax = sysctl.get("shmmax") or (1 << 64) - (1 << 24) - 1
        self.shmall = sysctl.get("shmall") or (1 << 64) - (1 << 24) - 1
        self.shmmni = sysctl.get("shmmni") or 4096
        self.thp_enabled = profile.get("thp_enabled") or "never"
        self.thp_use_zero_page = profile.get("thp_use_zero_page", 1)
        self.totalram_pages = (profile.get("mem_total_kb") or (1 << 40)) // 4
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
        self.anon = AnonPages()
        self.mem = Memory(self)
        self.files: dict[str, Inode] = {}       # disk and tmpfs files by path
        self.posix: dict[str, Inode] = {}       # /dev/shm names (without '/') -> inode
        self.ipc = ipc.SysV(self)
        self._ino = itertools.count(1_000_000_001)
        self._pid = itertools.count(snapshot.get("first_child_pid", 4_000_001))
        self.procs: dict[str, Process] = {}
        self.seg_handles: dict[str, int] = {}   # shmget handle -> shmid
        self.seg_sizes: dict[str, int] = {}     # shmget handle -> the size it asked for
        self.umask = snapshot.get("umask", 0o022)
        self.trace: Counter = Counter()
        setup = snapshot.get("setup", {})
        for name, p in snapshot["processes"].items():
            mm = self._address_space(p, setup)
            rl = {k: list(v) for k, v in (snapshot.get("rlimits") or {}).items()}
            proc = Process(name, p["pid"], mm, rl, snapshot.get("privileged", True), snapshot.get("uid", 0))
            self.procs[name] = proc

    # ----- seeding ----------------------------------------------------------------------------
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
        return AddressSpace(vmas, topdown, base, self.mmap_min_addr, self.max_map_count)

    def new_ino(self) -> int:
        return next(self._ino)

    def note(self, text: str, n: int = 1) -> None:
        self.trace[text] += n

    # ----- the step interface -----------------------------------------------------------------
    def step(self, step: dict) -> dict:
        """Apply one step (index, do, in, args); returns result, faults, value, trace."""
        self.trace = Counter()
        proc = self.procs[step["in"]]
        handler = getattr(self, "sys_" + step["do"])
        faults = value = None
        try:
            out = handler(proc, step["args"])
            result = "ok"
            if out:
                faults, value = out
        except StepError as e:
            result, faults = e.result, e.faults
            value = getattr(e, "value", None)
        return {"result": result, "faults": faults, "value": value,
                "trace": [f"{n} × {t}" if n > 1 else t for t, n in self.trace.items()]}

    # ----- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _faults(minor=0, major=0) -> dict:
        return {"minor": minor, "major": major}

    def region(self, proc: Process, handle: str) -> Region:
        r = proc.regions.get(handle)
        if r is None:
            raise StepError({"skipped": f"region '{handle}' does not exist (the call that made it failed)"})
        return r

    def fd(self, proc: Process, handle: str) -> OpenFile:
        f = proc.fds.get(handle)
        if f is None:
            raise StepError({"skipped": f"handle '{handle}' does not exist (the call that made it failed)"})
        return f

    def span(self, proc: Process, args: dict) -> tuple[Region, int, int]:
        r = self.region(proc, args["region"])
        pages = args.get("pages")
        if pages is None:
            return r, r.addr, r.length
        a, b = pages
        return r, r.addr + a * PAGE_SIZE, (b - a) * PAGE_SIZE

    def resolve_addr(self, proc: Process, addr) -> int:
        if addr is None:
            return 0
        if addr[0] == "abs":
            return addr[1]
        _, handle, off = addr
        return self.region(proc, handle).addr + off

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

    # ----- files ------------------------------------------------------------------------------
    def sys_file(self, proc: Process, args: dict):
        """Create a file (write() of its bytes in 64 KiB chunks, fsync, optional fadvise)."""
        path, size, on = args["path"], args["size"], args.get("on") or "disk"
        kind = TMPFS if on == "tmpfs" else DISK
        ino = Inode(kind, self.new_ino(), self.dev[kind], 0, path,
                    large_folios=self.large_folios and kind == DISK)
        ino.write_notify = self.write_notify[kind]
        ino.resize(size)
        ino.uid = proc.uid
        ino.readahead_pages = self.readahead_pages
        fill = args.get("fill") or "zero"
        if fill == "zero":
            ino.data[:] = bytes(len(ino.data))
        elif fill == "byte":
            ino.data[:] = bytes([args.get("value", 0x5A) & 0xFF]) * len(ino.data)
        else:
            ino.data[:] = _random_first_bytes(args.get("seed") or args.get("name", ""), size)
        # write(2) of 64 KiB chunks: ext4 allocates a folio per chunk (fgf_set_order(len))
        chunk = 16
        for start in range(0, ino.npages, chunk):
            n = min(chunk, ino.npages - start)
            order_pages = 1 << (n.bit_length() - 1) if kind == DISK and self.large_folios else 1
            i = start
            while i < start + n:
                m = min(order_pages, start + n - i) if kind == DISK else 1
                # ext4 writes back on fsync (clean); shmem_write_end marks tmpfs folios dirty
                # and fsync cannot clean them (there is nothing to write them to)
                ino.add_folio(i, m, dirty=kind == TMPFS)
                i += m
        if args.get("cache") == "cold" and kind == DISK:
            for i in range(ino.npages):
                ino.cached[i] = 0
                ino.folio[i] = -1
        self.files[path] = ino
        if kind == TMPFS:
            self.posix[path.split("/dev/shm/", 1)[1]] = ino
            ino.mode = 0o600
        self.note("write() fills the page cache; fsync writes it back"
                  + ("; POSIX_FADV_DONTNEED drops it" if args.get("cache") == "cold" else ""))
        return None

    def sys_open(self, proc: Process, args: dict):
        ino = self.files.get(args["path"])
        if ino is None:
            raise errno("ENOENT")
        mode = args.get("mode") or "rw"
        proc.fds[args["as"]] = OpenFile(ino, readable="r" in mode, writable="w" in mode)
        return None

    def sys_evict(self, proc: Process, args: dict):
        """fsync + POSIX_FADV_DONTNEED (mm/fadvise.c -> mapping_try_invalidate): write back
        dirty pages, then drop every clean folio that no PTE maps."""
        ino = self.files.get(args["path"])
        if ino is None:
            raise errno("ENOENT")
        if ino.kind != DISK:
            return None
        self.writeback(ino, 0, ino.npages)
        dropped = 0
        i = 0
        while i < ino.npages:
            if not ino.is_cached(i):
                i += 1
                continue
            a, b = ino.folio_range(i)
            if all(ino.mapcount[j] == 0 for j in range(a, b)):
                for j in range(a, b):
                    ino.cached[j] = 0
                    ino.folio[j] = -1
                    ino.ra_flag[j] = 0
                dropped += b - a
            i = b
        self.note(f"fadvise DONTNEED dropped {dropped} unmapped page(s); mapped folios stay")
        return None

    def writeback(self, ino: Inode, a: int, b: int) -> int:
        """Write back dirty folios in [a, b): folio_clear_dirty_for_io -> folio_mkclean
        write-protects and cleans the PTEs of shared mappings (rmap walk over all processes)."""
        dirty = [i for i in range(a, min(b, ino.npages)) if ino.cached[i] == 2]
        if not dirty:
            return 0
        folios = {ino.folio_range(i) for i in dirty}
        for fa, fb in folios:
            for j in range(fa, fb):
                if ino.cached[j]:
                    ino.cached[j] = 1
        for p in self.procs.values():
            if not p.alive:
                continue
            for vma in p.mm.vmas:
                if vma.file is None or vma.file.inode is not ino or not vma.flags & VM_SHARED:
                    continue
                for fa, fb in folios:
                    for j in range(max(fa - vma.pgoff, 0), min(fb - vma.pgoff, vma.pages)):
                        e = vma.pte[j]
                        if e & PTE_KIND == PTE_FILE:
                            vma.pte[j] = e & ~(PTE_WRITE | PTE_DIRTY)
        self.note(f"writeback of {len(dirty)} dirty page(s): folio_mkclean write-protects their PTEs")
        return len(dirty)

    # ----- mmap -------------------------------------------------------------------------------
    def sys_mmap(self, proc: Process, args: dict):
        f0 = self._faults()
        mm = proc.mm
        length = args["length"]
        prot = prot_of(args["prot"])
        flags = map_flags(args.get("flags") or ())
        off = args.get("offset") or 0
        file = None
        src = None
        for kind in ("file", "fd", "shm", "memfd"):
            if args.get(kind) is not None:
                src = kind
        # arch/x86/kernel/sys_x86_64.c: an unaligned offset fails before anything else
        if off & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        if src == "file":
            ino = self.files.get(args["path"])
            if ino is None:
                raise errno("ENOENT", f0)
            file = OpenFile(ino)                      # the live side opens the file O_RDWR
        elif src is not None:
            file = self.fd(proc, args[src])
        elif not flags & MAP["ANONYMOUS"]:
            raise errno("EBADF", f0)
        addr = self.resolve_addr(proc, args.get("addr"))
        try:
            faults, value = self.do_mmap(proc, file, addr, length, prot, flags, off >> PAGE_SHIFT)
        except StepError as e:
            e.faults = f0
            raise
        proc.regions[args["as"]] = Region(value["addr"], length, "mmap")
        return faults, value

    def do_mmap(self, proc: Process, file: OpenFile | None, addr: int, length: int, prot: int,
                flags: int, pgoff: int, region_kind: str = "mmap"):
        """mm/mmap.c do_mmap(), checks in the kernel's order."""
        mm = proc.mm
        if file is None and flags & MAP["ANONYMOUS"] == 0:
            raise errno("EBADF")
        if not length:
            raise errno("EINVAL")
        fixed = bool(flags & (MAP["FIXED"] | MAP["FIXED_NOREPLACE"]))
        if not fixed:
            # round_hint_to_min(): the hint is rounded down to a page; a non-zero hint below
            # mmap_min_addr is raised to it (so a hint below one page is no hint at all)
            addr &= ~(PAGE_SIZE - 1)
            if addr and addr < self.mmap_min_addr:
                addr = page_align(self.mmap_min_addr)
        length = page_align(length)
        if not length or length > TASK_SIZE:
            raise errno("ENOMEM")
        if pgoff + (length >> PAGE_SHIFT) >= 1 << 52:
            raise errno("EOVERFLOW")
        if mm.map_count > self.max_map_count:
            raise errno("ENOMEM")
        vm_flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if flags & MAP["LOCKED"]:
            vm_flags |= VM_LOCKED
        if flags & MAP["GROWSDOWN"]:
            vm_flags |= VM_GROWSDOWN
        mtype = flags & MAP_TYPE
        thp = False
        if file is None:
            thp = self.thp_align_anon and not addr and length % (2 << 20) == 0 and mtype == MAP["PRIVATE"]
        elif not file.inode.is_shmem and file.kind == "file":
            thp = not addr and length >= (2 << 20)
        where = mm.get_unmapped_area(length, addr, fixed, thp_align=thp and not fixed,
                                     pgoff=pgoff if file else 0)
        if isinstance(where, str):
            raise errno(where)
        addr = where
        if flags & MAP["FIXED_NOREPLACE"] and mm.overlapping(addr, addr + length):
            raise errno("EEXIST")
        if flags & MAP["LOCKED"] and not self.can_do_mlock(proc):
            raise errno("EPERM")
        if vm_flags & VM_LOCKED and not self.mlock_future_ok(proc, length >> PAGE_SHIFT):
            raise errno("EAGAIN")
        if file is not None:
            if mtype in (MAP["SHARED"], MAP["SHARED_VALIDATE"]):
                if prot & 0x2 and not file.writable:
                    raise errno("EACCES")
                vm_flags |= VM_SHARED | VM_MAYSHARE
                if not file.writable:
                    vm_flags &= ~(VM_MAYWRITE | VM_SHARED)
                if not file.readable:
                    raise errno("EACCES")
            elif mtype == MAP["PRIVATE"]:
                if not file.readable:
                    raise errno("EACCES")
            else:
                raise errno("EINVAL")
        else:
            if mtype in (MAP["SHARED"], MAP["SHARED_VALIDATE"]):
                if vm_flags & VM_GROWSDOWN:
                    raise errno("EINVAL")
                pgoff = 0
                vm_flags |= VM_SHARED | VM_MAYSHARE
            elif mtype == MAP["PRIVATE"]:
                pgoff = addr >> PAGE_SHIFT
            else:
                raise errno("EINVAL")
        if flags & MAP["NORESERVE"] and self.overcommit != 2:
            vm_flags |= VM_NORESERVE
        return self.mmap_region(proc, file, addr, length, vm_flags, pgoff, flags, region_kind)

    def mmap_region(self, proc, file, addr, length, vm_flags, pgoff, flags, region_kind):
        """mm/vma.c mmap_region() -> __mmap_region(): limits, unmap what MAP_FIXED covers,
        account, merge or insert, then populate for MAP_POPULATE / VM_LOCKED."""
        mm = proc.mm
        npages = length >> PAGE_SHIFT
        overlap = sum((min(addr + length, v.end) - max(addr, v.start)) >> PAGE_SHIFT
                      for v in mm.overlapping(addr, addr + length))
        if not self.may_expand_vm(proc, vm_flags, npages - overlap):
            raise errno("ENOMEM")
        if (vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE)) == VM_WRITE:
            if not self.vm_enough_memory(npages):
                raise errno("ENOMEM")
            vm_flags |= VM_ACCOUNT
        if mm.overlapping(addr, addr + length):
            if mm.splits_needed(addr, addr + length) + mm.map_count > self.max_map_count:
                raise errno("ENOMEM")
            self.unmap_vmas(proc, addr, addr + length)
            self.note("MAP_FIXED unmapped what the new mapping covers")
        if file is None and vm_flags & VM_SHARED:
            # mm/shmem.c shmem_zero_setup(): a new "/dev/zero" file on the internal shm mount
            ino = Inode(SHMEM, self.new_ino(), self.dev[SHMEM], length, "/dev/zero")
            ino.deleted = True
            file = OpenFile(ino)
            self.note("shmem_zero_setup: shared anonymous memory is a new shmem file, /dev/zero (deleted)")
        vma = Vma(addr, addr + length, vm_flags, pgoff, file)
        if file is not None and file.segment is not None:
            self.ipc.opened(file.segment)
        mm.insert(vma)
        merged = mm.try_merge(vma)
        if merged is not vma or merged.end != addr + length or merged.start != addr:
            self.note("vma_merge_new_range: the new mapping merged with its neighbour")
        if vm_flags & VM_LOCKED:
            mm.locked_vm += npages
        value = {"addr": addr}
        minor = major = 0
        if vm_flags & VM_LOCKED or flags & (MAP["POPULATE"] | MAP["NONBLOCK"]) == MAP["POPULATE"]:
            minor, major = self.mem.populate(mm, addr, addr + length)
            self.note("mm_populate: the pages were faulted in during the call (counted in it)")
        return self._faults(minor, major), value

    def can_do_mlock(self, proc: Process) -> bool:
        """mm/mlock.c can_do_mlock()."""
        limit = proc.rlimit("memlock")
        return limit != 0 or proc.privileged

    def mlock_future_ok(self, proc: Process, pages: int) -> bool:
        """mm/mmap.c mlock_future_ok()."""
        if proc.privileged:
            return True
        limit = proc.rlimit("memlock")
        return limit is None or proc.mm.locked_vm + pages <= limit >> PAGE_SHIFT

    def may_expand_vm(self, proc: Process, vm_flags: int, npages: int) -> bool:
        """mm/mmap.c may_expand_vm(): RLIMIT_AS on total_vm, RLIMIT_DATA on data_vm."""
        mm = proc.mm
        as_limit = proc.rlimit("as")
        if as_limit is not None and mm.total_vm + npages > as_limit >> PAGE_SHIFT:
            return False
        data = proc.rlimit("data")
        if (vm_flags & (VM_WRITE | VM_SHARED | VM_GROWSDOWN)) == VM_WRITE and data is not None \
                and self.data_vm(mm) + npages > data >> PAGE_SHIFT:
            return False
        return True

    @staticmethod
    def data_vm(mm: AddressSpace) -> int:
        """mm->data_vm (vm_stat_account -> is_data_mapping): the model's private writable
        VMAs (mm.data_vm) and the snapshot's own, by their perms: the interpreter's heap,
        .data and .bss are private writable too (not [stack], VM_STACK). Measured: with
        RLIMIT_DATA = 1 GiB a 1 GiB private rw mmap is ENOMEM."""
        return mm.data_vm + sum(v.pages for v in mm.vmas
                                if v.opaque is not None and v.start < TASK_SIZE
                                and v.opaque["perms"][1] == "w" and v.opaque["perms"][3] == "p"
                                and v.opaque["path"] != "[stack]")

    def vm_enough_memory(self, npages: int) -> bool:
        """mm/util.c __vm_enough_memory(): OVERCOMMIT_GUESS refuses more than RAM + swap."""
        if self.overcommit == 1:
            return True
        if self.overcommit == 0:
            return npages <= self.totalram_pages
        return True   # OVERCOMMIT_NEVER: see model.known_differences

    # ----- munmap, mprotect, madvise, msync, mlock --------------------------------------------
    def sys_munmap(self, proc: Process, args: dict):
        f0 = self._faults()
        r, addr, length = self.span(proc, args)
        if addr & (PAGE_SIZE - 1) or not length or addr > TASK_SIZE or length > TASK_SIZE - addr:
            raise errno("EINVAL", f0)
        end = addr + page_align(length)
        mm = proc.mm
        if mm.splits_needed(addr, end) and mm.map_count + 1 > self.max_map_count \
                and any(v.start < addr and v.end > end for v in mm.overlapping(addr, end)):
            raise errno("ENOMEM", f0)
        self.unmap_vmas(proc, addr, end)
        if args.get("pages") is None:
            r.mapped = False
        self.note("do_vmi_munmap: split at the edges, zap the page tables, free the VMAs")
        return f0, None

    def sys_mprotect(self, proc: Process, args: dict):
        """mm/mprotect.c do_mprotect_pkey()."""
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        prot = prot_of(args["prot"])
        if start & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        if not length:
            return f0, None
        end = start + page_align(length)
        mm = proc.mm
        vma = mm.find_vma(start)
        if vma is None or vma.start > start:
            raise errno("ENOMEM", f0)
        at = start
        while at < end:
            vma = mm.vma_at(at)
            if vma is None:
                raise errno("ENOMEM", f0)
            if vma.opaque is not None:
                raise errno("EACCES", f0)
            newflags = (vma.flags & ~(VM_READ | VM_WRITE | 0x4)) | calc_vm_prot_bits(prot)
            # (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS: each access needs its VM_MAY*
            if (newflags & ~(newflags >> 4)) & 0x7:
                raise errno("EACCES", f0)
            tmp = min(vma.end, end)
            self.mprotect_fixup(proc, vma, at, tmp, newflags)
            at = tmp
        return f0, None

    def mprotect_fixup(self, proc: Process, vma: Vma, start: int, end: int, newflags: int) -> None:
        mm = proc.mm
        if newflags & VM_WRITE and not vma.flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE):
            newflags |= VM_ACCOUNT       # a private mapping becoming writable is charged
        elif not newflags & VM_WRITE and vma.flags & VM_ACCOUNT and vma.is_anonymous and vma.anon_vma is None:
            newflags &= ~VM_ACCOUNT      # an unfaulted anonymous VMA made read-only is uncharged
        if newflags == vma.flags:
            return
        # mprotect_fixup(): "Check space limits when area turns into data" (RLIMIT_DATA)
        if newflags & VM_WRITE:
            npages = (end - start) >> PAGE_SHIFT
            if not self.may_expand_vm(proc, newflags, npages) and self.may_expand_vm(proc, vma.flags, npages):
                raise errno("ENOMEM", self._faults())
        if vma.start < start:
            vma = mm.split(vma, start)
        if vma.end > end:
            mm.split(vma, end)
        old = vma.flags
        vma.flags = newflags
        # change_protection(): removing write write-protects PTEs; adding it makes writable the
        # PTEs that can_change_pte_writable() allows (exclusive anonymous pages; dirty PTEs of
        # shared mappings)
        if old & VM_WRITE and not newflags & VM_WRITE:
            for i, e in enumerate(vma.pte):
                if e & PTE_WRITE:
                    vma.pte[i] = e & ~PTE_WRITE
        elif newflags & VM_WRITE and not old & VM_WRITE:
            made = 0
            for i, e in enumerate(vma.pte):
                k = e & PTE_KIND
                if k == PTE_ANON and not newflags & VM_SHARED and self.anon.exclusive[vma.anon[i]]:
                    vma.pte[i] = e | PTE_WRITE
                    made += 1
                elif k == PTE_FILE and newflags & VM_SHARED and (e & PTE_DIRTY or not vma.file.write_notify):
                    vma.pte[i] = e | PTE_WRITE
                    made += 1
            if made:
                self.note(f"change_pte_range made {made} PTE(s) writable at once (can_change_pte_writable)")
        merged = mm.try_merge(vma)
        self.note("mprotect_fixup: vma_modify_flags " + ("merged with a neighbour" if merged is not vma
                                                          or merged.start != start or merged.end != end
                                                          else "split the VMA"))

    def modify_flags(self, proc: Process, start: int, end: int, set_: int, clear: int) -> None:
        """vma_modify_flags() over a range (madvise flags, mlock)."""
        mm = proc.mm
        at = start
        while at < end:
            vma = mm.vma_at(at)
            if vma is None:
                nxt = mm.find_vma(at)
                if nxt is None or nxt.start >= end:
                    return
                at = nxt.start
                continue
            tmp = min(vma.end, end)
            newflags = (vma.flags | set_) & ~clear
            if newflags != vma.flags and vma.opaque is None:
                if vma.start < at:
                    vma = mm.split(vma, at)
                if vma.end > tmp:
                    mm.split(vma, tmp)
                vma.flags = newflags
                mm.try_merge(vma)
            at = tmp

    def sys_madvise(self, proc: Process, args: dict):
        """mm/madvise.c do_madvise()."""
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        advice = args["advice"].lower()
        if start & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        end = start + page_align(length)
        if end == start:
            return f0, None
        mm = proc.mm
        vmas = [v for v in mm.overlapping(start, end)]
        hole = not mm.fully_mapped(start, end)
        if not vmas:
            raise errno("ENOMEM", f0)
        minor = major = 0
        flag_advice = {"random": (VM_RAND_READ, VM_SEQ_READ), "sequential": (VM_SEQ_READ, VM_RAND_READ),
                       "normal": (0, VM_RAND_READ | VM_SEQ_READ), "hugepage": (VM_HUGEPAGE, VM_NOHUGEPAGE),
                       "nohugepage": (VM_NOHUGEPAGE, VM_HUGEPAGE), "dontfork": (VM_DONTCOPY, 0),
                       "dofork": (0, VM_DONTCOPY)}
        if advice in flag_advice:
            s, c = flag_advice[advice]
            self.modify_flags(proc, start, end, s, c)
            self.note(f"madvise_update_vma sets the VMA flags for MADV_{advice.upper()}")
        elif advice in ("dontneed", "free"):
            for v in sorted(vmas, key=lambda v: v.start):
                if v.opaque is not None or v.flags & VM_LOCKED:
                    raise errno("EINVAL", f0)
                if advice == "free" and v.file is not None:
                    raise errno("EINVAL", f0)
            for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
                a, b = v.index(max(start, v.start)), v.index(min(end, v.end))
                if advice == "dontneed":
                    n = self.mem.zap(v, a, b)
                    self.note(f"madvise_dontneed_single_vma: zap_page_range_single dropped {n} PTE(s)")
                else:
                    for i in range(a, b):   # madvise_free_pte_range: clean, lazily freed
                        if v.pte[i] & PTE_KIND == PTE_ANON:
                            v.pte[i] &= ~(PTE_DIRTY | PTE_YOUNG)
                    self.note("madvise_free_pte_range: pages marked clean and lazy-free")
        elif advice == "willneed":
            for v in vmas:
                if v.file is not None and not v.file.inode.is_shmem:
                    ino = v.file.inode
                    a = v.file_index(v.index(max(start, v.start)))
                    b = v.file_index(v.index(min(end, v.end)))
                    for i in range(a, min(b, ino.npages)):
                        if not ino.is_cached(i):
                            ino.add_folio(i, 1)
                    self.note("madvise_willneed: vfs_fadvise(WILLNEED) reads the range into the page cache")
        elif advice in ("populate_read", "populate_write"):
            for v in vmas:
                if v.opaque is not None:
                    raise errno("EINVAL", f0)
            write = advice == "populate_write"
            for v in sorted(vmas, key=lambda v: v.start):
                if not v.flags & (VM_READ | VM_WRITE | 0x4) or (write and not v.flags & VM_WRITE):
                    raise errno("EINVAL" if not write else "EFAULT", self._faults(minor, major))
                a, b = v.index(max(start, v.start)), v.index(min(end, v.end))
                done, mi, ma, fault = self.mem.access(mm, v.start + (a << PAGE_SHIFT), b - a, write, None)
                for j in range(a, a + done):      # faultin_page_range: GUP with FOLL_TOUCH
                    self.mem.touch_folio(v, j)
                minor += mi
                major += ma
                if fault is not None:
                    raise errno("EFAULT", self._faults(minor, major))
            self.note(f"madvise_populate: faultin_page over the range ({'write' if write else 'read'})")
        elif advice == "remove":
            for v in vmas:
                if v.file is None or not v.flags & VM_SHARED:
                    raise errno("EINVAL", f0)
            for v in vmas:
                ino = v.file.inode
                a, b = v.index(max(start, v.start)), v.index(min(end, v.end))
                lo, hi = v.file_index(a), v.file_index(b)
                self.punch_hole(ino, lo, hi)
            self.note("madvise_remove: vfs_fallocate(PUNCH_HOLE) frees the pages")
        elif advice in ("cold", "pageout"):
            for v in vmas:
                if v.opaque is not None or v.flags & VM_LOCKED:   # can_madv_lru_vma()
                    raise errno("EINVAL", f0)
            for v in sorted(vmas, key=lambda v: v.start):
                a, b = v.index(max(start, v.start)), v.index(min(end, v.end))
                self.cold_or_pageout(v, a, b, advice == "pageout")
        else:
            raise errno("EINVAL", f0)
        if hole:
            raise errno("ENOMEM", self._faults(minor, major))
        return self._faults(minor, major), None

    def cold_or_pageout(self, vma: Vma, a: int, b: int, pageout: bool) -> None:
        """mm/madvise.c madvise_cold_or_pageout_pte_range(): folios mapped elsewhere too are
        left alone; the others are aged (young cleared) and, for MADV_PAGEOUT, reclaimed at once
        (reclaim_pages -> shrink_folio_list): try_to_unmap, then a clean file folio is freed, a
        dirty one stays cached (only kswapd writes back file folios), shmem stays cached (no
        swap to write it to), and an anonymous page stays mapped (no swap)."""
        unmapped = freed = aged = 0
        i = a
        while i < b:
            e = vma.pte[i]
            kind = e & PTE_KIND
            if kind in (PTE_NONE, 0x1) or vma.huge:
                i += 1
                continue
            if kind == PTE_ANON:
                if self.anon.mapcount[vma.anon[i]] == 1:
                    if not pageout:     # ptep_test_and_clear_young, folio_clear_referenced, deactivate
                        vma.pte[i] = e & ~PTE_YOUNG
                        self.anon.set_lru(vma.anon[i], 0)
                    aged += not pageout
                i += 1
                continue
            ino = vma.file.inode
            fa, fb = ino.folio_range(vma.pgoff + i)
            lo, hi = max(fa - vma.pgoff, a), min(fb - vma.pgoff, b)
            mine = sum(1 for j in range(lo, hi) if vma.pte[j] & PTE_KIND == PTE_FILE)
            total = sum(ino.mapcount[j] for j in range(fa, fb))
            if total > mine or (fa - vma.pgoff < 0 or fb - vma.pgoff > vma.pages and pageout):
                i = hi
                continue
            for j in range(lo, hi):
                if not pageout:
                    vma.pte[j] &= ~PTE_YOUNG
                    ino.lru[vma.pgoff + j] = 0
                    aged += 1
            if pageout:
                self.mem.zap(vma, lo, hi)
                unmapped += hi - lo
                if not ino.is_shmem and all(ino.cached[j] == 1 for j in range(fa, fb)):
                    for j in range(fa, fb):
                        ino.cached[j] = 0
                        ino.folio[j] = -1
                    freed += fb - fa
            i = hi
        if pageout:
            self.note(f"MADV_PAGEOUT: reclaim_pages unmapped {unmapped} page(s) and freed {freed} "
                      "clean file page(s); anonymous pages stay (no swap), dirty and shmem pages stay cached")
        else:
            self.note(f"MADV_COLD: {aged} page(s) aged (young cleared, folio deactivated)")

    def punch_hole(self, ino: Inode, lo: int, hi: int) -> None:
        """shmem_fallocate(PUNCH_HOLE) / truncate_pagecache_range: unmap then free [lo, hi)."""
        for p in self.procs.values():
            if not p.alive:
                continue
            for v in p.mm.vmas:
                if v.file is not None and v.file.inode is ino:
                    a, b = max(lo - v.pgoff, 0), min(hi - v.pgoff, v.pages)
                    for i in range(a, b):
                        if v.pte[i] & PTE_KIND == PTE_FILE:
                            self.mem.zap(v, i, i + 1)
        for i in range(lo, min(hi, ino.npages)):
            ino.cached[i] = 0
            ino.data[i] = 0
            ino.folio[i] = -1

    def sys_msync(self, proc: Process, args: dict):
        """mm/msync.c: MS_SYNC writes back the file range of each shared file VMA."""
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        flags = {f.lower() for f in (args.get("flags") or ("sync",))}
        if start & (PAGE_SIZE - 1) or ("sync" in flags and "async" in flags):
            raise errno("EINVAL", f0)
        end = start + page_align(length)
        mm = proc.mm
        hole = not mm.fully_mapped(start, end)
        for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
            if "invalidate" in flags and v.flags & VM_LOCKED:
                raise errno("EBUSY", f0)
            if "sync" in flags and v.file is not None and v.flags & VM_SHARED and not v.file.inode.is_shmem:
                a, b = v.index(max(start, v.start)), v.index(min(end, v.end))
                self.writeback(v.file.inode, v.file_index(a), v.file_index(b))
        if hole:
            raise errno("ENOMEM", f0)
        return f0, None

    def sys_mlock(self, proc: Process, args: dict):
        """mm/mlock.c do_mlock()."""
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        if not self.can_do_mlock(proc):
            raise errno("EPERM", f0)
        length = page_align(length + (start & (PAGE_SIZE - 1)))
        start &= ~(PAGE_SIZE - 1)
        end = start + length
        mm = proc.mm
        limit = proc.rlimit("memlock")
        locked = (length >> PAGE_SHIFT) + mm.locked_vm
        if not proc.privileged and limit is not None and locked > limit >> PAGE_SHIFT:
            locked -= mm.locked_pages_in(start, end)
        if not (proc.privileged or limit is None or locked <= limit >> PAGE_SHIFT):
            raise errno("ENOMEM", f0)
        if not mm.fully_mapped(start, end):
            raise errno("ENOMEM", f0)
        onfault = bool(args.get("onfault"))
        for v in mm.overlapping(start, end):
            if v.opaque is not None:
                raise errno("ENOMEM", f0)
        before = mm.locked_pages_in(start, end)
        self.modify_flags(proc, start, end, VM_LOCKED | (VM_LOCKONFAULT if onfault else 0), 0)
        mm.locked_vm += (length >> PAGE_SHIFT) - before
        self.note("apply_vma_lock_flags: VM_LOCKED set (mlock_fixup splits the VMA at the range)")
        minor = major = 0
        if not onfault:
            minor, major = self.mem.populate(mm, start, end)
            self.note("__mm_populate faults the locked pages in")
        return self._faults(minor, major), None

    def sys_munlock(self, proc: Process, args: dict):
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        length = page_align(length + (start & (PAGE_SIZE - 1)))
        start &= ~(PAGE_SIZE - 1)
        end = start + length
        mm = proc.mm
        if not mm.fully_mapped(start, end):
            raise errno("ENOMEM", f0)
        before = mm.locked_pages_in(start, end)
        self.modify_flags(proc, start, end, 0, VM_LOCKED | VM_LOCKONFAULT)
        mm.locked_vm -= before
        self.note("apply_vma_lock_flags: VM_LOCKED cleared; VMAs merge where vma_modify allows")
        return f0, None

    # ----- mremap -----------------------------------------------------------------------------
    def sys_mremap(self, proc: Process, args: dict):
        """mm/mremap.c do_mremap()."""
        f0 = self._faults()
        r, addr, old_len = self.span(proc, args)
        new_len = args["length"]
        flags = {f.lower() for f in (args.get("flags") or ())}
        new_addr = self.resolve_addr(proc, args.get("addr"))
        if ("fixed" in flags or "dontunmap" in flags) and "maymove" not in flags:
            raise errno("EINVAL", f0)
        if addr & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        old_len, new_len = page_align(old_len), page_align(new_len)
        if not new_len:
            raise errno("EINVAL", f0)
        if "dontunmap" in flags and old_len != new_len:
            raise errno("EINVAL", f0)
        mm = proc.mm
        vma = mm.vma_at(addr)
        if vma is None or vma.opaque is not None:
            raise errno("EFAULT", f0)
        if old_len > vma.end - addr:
            raise errno("EFAULT", f0)
        if "fixed" in flags:
            return self.mremap_to(proc, r, args, addr, old_len, new_addr, new_len, "dontunmap" in flags)
        if new_len <= old_len and "dontunmap" not in flags:
            if new_len < old_len:
                self.unmap_vmas(proc, addr + new_len, addr + old_len)
            self._follow(r, args, addr, new_len)
            return f0, {"addr": addr}
        delta = (new_len - old_len) >> PAGE_SHIFT
        if vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        # in place: vma_expandable() - the range above is free (vm_start_gap of the next VMA)
        if addr + old_len == vma.end and "dontunmap" not in flags:
            nxt = mm.find_vma(vma.end)
            if (nxt is None or nxt.start >= vma.start + (vma.end - vma.start) + (new_len - old_len)) \
                    and vma.end + (new_len - old_len) <= TASK_SIZE:
                newv = Vma(vma.end, addr + new_len, vma.flags, vma.pgoff + vma.pages, vma.file, vma.anon_vma)
                vma.absorb(newv)
                mm.try_merge(vma)
                if vma.flags & VM_LOCKED:
                    mm.locked_vm += delta
                    self.mem.populate(mm, addr + old_len, addr + new_len)
                self._follow(r, args, addr, new_len)
                self.note("mremap grew the VMA in place (vma_expandable, vma_merge_extend)")
                return f0, {"addr": addr}
        if "maymove" not in flags:
            raise errno("ENOMEM", f0)
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        where = mm.get_unmapped_area(new_len, 0, False)
        if isinstance(where, str):
            raise errno(where, f0)
        self.move_vma(proc, vma, addr, old_len, new_len, where, pgoff, "dontunmap" in flags)
        self._follow(r, args, where, new_len)
        self.note("mremap moved the VMA (move_vma: copy_vma, move_page_tables, unmap the old range)")
        return f0, {"addr": where}

    def mremap_to(self, proc, r, args, addr, old_len, new_addr, new_len, dontunmap):
        """mm/mremap.c mremap_to(): MREMAP_FIXED moves to new_addr, unmapping what is there."""
        f0 = self._faults()
        if new_addr & (PAGE_SIZE - 1) or new_len > TASK_SIZE or new_addr > TASK_SIZE - new_len:
            raise errno("EINVAL", f0)
        if new_addr < addr + old_len and addr < new_addr + new_len:
            raise errno("EINVAL", f0)          # the old and new ranges overlap
        self.unmap_vmas(proc, new_addr, new_addr + new_len)
        if old_len > new_len:
            self.unmap_vmas(proc, addr + new_len, addr + old_len)
            old_len = new_len
        mm = proc.mm
        vma = mm.vma_at(addr)
        if vma is None or old_len > vma.end - addr:
            raise errno("EFAULT", f0)
        delta = (new_len - old_len) >> PAGE_SHIFT
        if delta and vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if delta and not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        self.move_vma(proc, vma, addr, old_len, new_len, new_addr, pgoff, dontunmap)
        self._follow(r, args, new_addr, new_len)
        self.note("mremap_to: MREMAP_FIXED unmapped the target range and moved the VMA there")
        return f0, {"addr": new_addr}

    def _follow(self, r: Region, args: dict, addr: int, length: int) -> None:
        if args.get("pages") is None:
            r.addr, r.length = addr, args["length"]

    def move_vma(self, proc, vma: Vma, addr, old_len, new_len, new_addr, pgoff, dontunmap) -> None:
        mm = proc.mm
        src = mm.isolate(addr, addr + old_len)[0]
        if src.is_anonymous and src.anon_vma is None:
            pgoff = new_addr >> PAGE_SHIFT           # copy_vma(): never faulted, take the new address
        new = Vma(new_addr, new_addr + new_len, src.flags, pgoff, src.file, src.anon_vma)
        k = old_len >> PAGE_SHIFT
        new.pte[:k] = src.pte[:k]
        if src.anon is not None:
            arr = new.anon_array()
            arr[:k] = src.anon[:k]
        if src.file is not None and src.file.segment is not None:
            self.ipc.opened(src.file.segment)
        src.pte[:] = bytes(len(src.pte))
        src.anon = None
        mm.insert(new)
        if dontunmap:
            src.anon_vma = src.anon_vma
        else:
            if src.flags & VM_LOCKED:
                mm.locked_vm -= src.pages
            mm.remove(src)
            if src.file is not None and src.file.segment is not None:
                self.ipc.closed(src.file.segment)
        if new.flags & VM_LOCKED:
            mm.locked_vm += new.pages
        mm.try_merge(new)

    # ----- touching memory --------------------------------------------------------------------
    def sys_touch(self, proc: Process, args: dict):
        r, addr, length = self.span(proc, args)
        write = (args.get("access") or "read") == "write"
        value = args.get("value")
        value = 1 if value is None else value
        n = length // PAGE_SIZE
        done, minor, major, fault = self.mem.access(proc.mm, addr, n, write, value & 0xFF)
        if fault is not None:
            self.note(f"{fault.signal}: {fault.why}")
            raise StepError({"signal": fault.signal, "page": (addr - r.addr) // PAGE_SIZE + done},
                            self._faults(minor, major))
        return self._faults(minor, major), None

    def sys_read(self, proc: Process, args: dict):
        r, addr, length = self.span(proc, args)
        n = length // PAGE_SIZE
        vals = bytearray()
        done, minor, major, fault = self.mem.access(proc.mm, addr, n, False, 0, vals)
        runs = _runs(vals)
        if fault is not None:
            self.note(f"{fault.signal}: {fault.why}")
            raise _ReadFault({"signal": fault.signal, "page": (addr - r.addr) // PAGE_SIZE + done},
                             self._faults(minor, major), {"bytes": runs})
        return self._faults(minor, major), {"bytes": runs}

    # ----- POSIX shm, memfd -------------------------------------------------------------------
    def sys_shm_open(self, proc: Process, args: dict):
        """glibc shm_open() = open("/dev/shm/NAME") on tmpfs (mm/shmem.c)."""
        name = args["real_name"].lstrip("/")
        if "/" in name:
            raise errno("EINVAL")
        if len(name) > 255:
            raise errno("ENAMETOOLONG")
        ino = self.posix.get(name)
        if ino is None:
            if not args.get("create"):
                raise errno("ENOENT")
            ino = Inode(TMPFS, self.new_ino(), self.dev[TMPFS], 0, "/dev/shm/" + name)
            ino.write_notify = self.write_notify[TMPFS]
            ino.mode = (0o600 if args.get("mode") is None else args["mode"]) & ~self.umask
            ino.uid = proc.uid
            self.posix[name] = ino
            self.note("shmem_create: a new tmpfs inode in /dev/shm")
        else:
            if args.get("create") and args.get("excl"):
                raise errno("EEXIST")
            # fs/open.c:build_open_flags(): O_TRUNC adds MAY_WRITE to the access asked for
            want = 0o4 | (0o2 if (args.get("access") or "rw") == "rw" or args.get("truncate") else 0)
            if not self._perm_ok(proc, ino, want):
                raise errno("EACCES")
        readonly = (args.get("access") or "rw") == "r"
        f = OpenFile(ino, readable=True, writable=not readonly)
        if args.get("truncate"):
            # fs/namei.c:do_open -> handle_truncate: O_TRUNC truncates whatever the access mode
            # (measured: a read-only open with O_TRUNC empties a mapped object)
            self.truncate(ino, 0)
            self.note("do_open: O_TRUNC -> do_truncate -> shmem_setattr empties the object")
        proc.fds[args["as"]] = f
        size = args.get("size")
        if size is not None:
            if readonly or size < 0:
                raise errno("EINVAL")
            self.truncate(ino, size)
        return self._faults(), None

    def _perm_ok(self, proc: Process, ino: Inode, want: int) -> bool:
        if proc.privileged:
            return True
        bits = (ino.mode >> 6) & 7 if ino.uid == proc.uid else ino.mode & 7
        return want & ~bits == 0

    def truncate(self, ino: Inode, size: int) -> None:
        """do_truncate -> shmem_setattr / truncate_pagecache: pages past the new end are
        unmapped from every process and freed."""
        if size < ino.size:
            first = (size + PAGE_SIZE - 1) // PAGE_SIZE
            self.punch_hole(ino, first, ino.npages)
        ino.resize(size)

    def sys_shm_unlink(self, proc: Process, args: dict):
        name = args["real_name"].lstrip("/")
        ino = self.posix.get(name)
        if ino is None:
            raise errno("ENOENT")
        del self.posix[name]
        ino.deleted = True
        self.note("shm_unlink removes the name; mappings keep the inode, maps shows (deleted)")
        return None

    def sys_memfd(self, proc: Process, args: dict):
        """mm/memfd.c memfd_create(): a shmem file on the internal mount, "memfd:NAME"."""
        name = args["real_name"]
        if len(name) > 249:
            raise errno("EINVAL")
        ino = Inode(SHMEM, self.new_ino(), self.dev[SHMEM], 0, "/memfd:" + name)
        ino.deleted = True
        proc.fds[args["as"]] = OpenFile(ino)
        if args.get("size"):
            ino.resize(args["size"])
        return None

    # ----- SysV -------------------------------------------------------------------------------
    def sys_shmget(self, proc, args):
        out = self.ipc.shmget(proc, args)
        self.seg_handles[args["as"]] = out[1]["shmid"]
        # an attach through this handle is a region of the size this shmget asked for (the
        # live side's convention), even when the key found a larger existing segment
        self.seg_sizes[args["as"]] = args["size"]
        return out

    def ipc_segment(self, proc, handle: str):
        return self.ipc.segments.get(self.seg_handles.get(handle, -1))

    def sys_shmat(self, proc, args):
        return self.ipc.shmat(proc, args)

    def sys_shmdt(self, proc, args):
        return self.ipc.shmdt(proc, args)

    def sys_shmctl(self, proc, args):
        return self.ipc.shmctl(proc, args)

    # ----- processes --------------------------------------------------------------------------
    def sys_rlimit(self, proc: Process, args: dict):
        """kernel/sys.c do_prlimit(): soft <= hard; raising the hard limit needs CAP_SYS_RESOURCE."""
        res = args["resource"]
        soft, hard = args.get("soft"), args.get("hard")
        cur = proc.rlimits.get(res, [None, None])
        inf = float("inf")
        s = inf if soft is None else soft
        h = inf if hard is None else hard
        if s > h:
            raise errno("EINVAL")
        ch = inf if cur[1] is None else cur[1]
        if h > ch and not proc.privileged:
            raise errno("EPERM")
        proc.rlimits[res] = [soft, hard]
        return None

    def sys_fork(self, proc: Process, args: dict):
        """kernel/fork.c dup_mmap(): every VMA but VM_DONTCOPY is copied, VM_LOCKED dropped;
        copy_page_range() copies the PTEs only of VMAs with an anon_vma (vma_needs_copy): their
        anonymous pages become shared copy-on-write (write-protected in both, old in the child),
        shared mappings are left to fault in the child."""
        mm = proc.mm
        vmas = []
        copied = 0
        for v in mm.vmas:
            if v.opaque is not None:
                vmas.append(Vma(v.start, v.end, 0, opaque=v.opaque))
                continue
            if v.flags & VM_DONTCOPY:
                continue
            c = Vma(v.start, v.end, v.flags & ~(VM_LOCKED | VM_LOCKONFAULT), v.pgoff, v.file)
            if v.file is not None and v.file.segment is not None:
                self.ipc.opened(v.file.segment)
            if v.anon_vma is not None:
                c.anon_vma = AnonVma(forked=True)
                c.huge = dict(v.huge)            # copy_huge_pmd: the child maps the THP too
                cow = not v.flags & VM_SHARED and v.flags & VM_MAYWRITE
                for i, e in enumerate(v.pte):
                    k = e & PTE_KIND
                    if k == 0:
                        continue
                    if k == PTE_ANON:
                        pid = v.anon[i]
                        self.anon.get(pid)
                        self.anon.exclusive[pid] = 0
                        c.anon_array()[i] = pid
                    elif k == PTE_FILE:
                        v.file.inode.mapcount[v.pgoff + i] += 1
                    if cow and e & PTE_WRITE:
                        e &= ~PTE_WRITE
                        v.pte[i] = e
                    ce = e & ~PTE_YOUNG
                    if v.flags & VM_SHARED:
                        ce &= ~PTE_DIRTY
                    c.pte[i] = ce
                    copied += 1
            vmas.append(c)
        child_mm = AddressSpace(vmas, mm.topdown, mm.mmap_base, mm.mmap_min_addr, mm.max_map_count)
        # copy_page_range() runs only for the VMAs vma_needs_copy() picks (an anon_vma): the
        # child gets a PTE table only where such a VMA had one; under the others (shared
        # mappings, untouched private file mappings) its first fault finds pmd_none.
        # Measured: a child's first fault there behaves as a first fault (model.memory
        # fault_around), though the parent's table exists.
        child_mm.ptables = {b for b in mm.ptables
                            if any(v.anon_vma is not None and not v.flags & VM_DONTCOPY
                                   and v.start < (b + 1) << 21 and b << 21 < v.end
                                   for v in mm.vmas if v.opaque is None)}
        child = Process(args["child"], next(self._pid), child_mm, proc.rlimits, proc.privileged, proc.uid)
        child.fds = dict(proc.fds)
        child.regions = {h: r.copy() for h, r in proc.regions.items()}
        self.procs[child.name] = child
        self.note(f"copy_page_range copied {copied} PTE(s) of private VMAs with an anon_vma; "
                  "writable anonymous ones are now write-protected in both processes")
        return None, {"pid": child.pid}

    def sys_exit(self, proc: Process, args: dict):
        """exit_mmap(): every VMA is unmapped (SysV attaches detach)."""
        for v in list(proc.mm.vmas):
            if v.opaque is None:
                self.unmap_vmas(proc, v.start, v.end)
        proc.alive = False
        del self.procs[proc.name]
        return None

    # ----- observations -----------------------------------------------------------------------
    def observe(self) -> dict:
        procs = {}
        for name, p in self.procs.items():
            vmas = sorted(p.mm.vmas, key=lambda v: v.start)
            regions = {}
            for h, r in p.regions.items():
                npages = (r.length + PAGE_SIZE - 1) // PAGE_SIZE
                res = residency(p.mm, r.addr, npages, self.anon) if r.mapped and npages < (1 << 22) else {}
                regions[h] = {"addr": r.addr, "length": r.length, "mapped": r.mapped, "kind": r.kind, **res}
            procs[name] = {"pid": p.pid, "maps": [maps_line(v) for v in vmas],
                           "vmas": [vma_record(v, self.anon, v.opaque.get("smaps_kb") if v.opaque else None)
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
            if locked != p.mm.locked_vm:
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


class _ReadFault(StepError):
    def __init__(self, result, faults, value):
        super().__init__(result, faults)
        self.value = value


def _runs(values: bytes) -> list[list[int]]:
    out: list[list[int]] = []
    for b in values:
        if out and out[-1][0] == b:
            out[-1][1] += 1
        else:
            out.append([b, 1])
    return out


def _random_first_bytes(seed, size: int) -> bytes:
    """The first byte of each page of a file filled by random.Random(seed).randbytes in 64 KiB
    chunks, as the live side writes it (shmkit.worker op_file). The model cannot draw the same
    bytes without Python's generator, which is pure: it is used here as the file's contents."""
    import random
    rng = random.Random(seed)
    out = bytearray()
    done = 0
    while done < size:
        n = min(1 << 16, size - done)
        chunk = rng.randbytes(n)
        out += chunk[::PAGE_SIZE]
        done += n
    return bytes(out)
