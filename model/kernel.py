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
from array import array
from collections import Counter

from model import ipc, pads
from model.errors import StepError, errno
from model.fileio import FileIO
from model.guard import GUARD_SINCE, Guard
from model.mlockall import LockAll
from model.seals import Seals
from model.flags import (MAP, MAP_TYPE, PAGE_SHIFT, PAGE_SIZE, PTE_ANON, PTE_DIRTY, PTE_FILE,
                         PTE_KIND, PTE_NONE, PTE_WRITE, PTE_YOUNG, VM_ACCOUNT, VM_DONTCOPY,
                         VM_GROWSDOWN, VM_HUGEPAGE, VM_LOCKED, VM_LOCKONFAULT, VM_MAYEXEC,
                         VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_NOHUGEPAGE, VM_NORESERVE,
                         VM_RAND_READ, VM_READ, VM_SEQ_READ, VM_SHARED, VM_WRITE, VM_EXEC,
                         calc_vm_prot_bits, map_flags, prot_of)
from model.flags import MAP_HUGE_MASK, MAP_HUGE_SHIFT
from model.flags import (LEGACY_MAP_MASK, PROT_EXEC, PROT_WRITE, VM_ACCESS_FLAGS, VM_DONTEXPAND, VM_SOFTDIRTY,
                         VM_HUGETLB, VM_PKEY_BIT0, VM_PKEY_MASK, VM_SYNC, calc_vm_flag_bits)
from model.flags import (PMD_SIZE, PTE_ZERO, VM_DONTDUMP, VM_DONTEXPAND, VM_MERGEABLE,  # madvise, fork
                         VM_WIPEONFORK)
from model.memory import Fault, Memory
from model.mm import TASK_SIZE, AddressSpace
from model.pages import page_align, pages_of, span
from model.objects import DISK, SHMEM, TMPFS, AnonPages, Inode
from model.proc import maps_line, residency, vma_record
from model.vma import AnonVma, OpenFile, Vma

RLIM_INFINITY = None
# include/uapi/linux/capability.h
CAP_IPC_LOCK, CAP_SYS_RESOURCE = 14, 24


def _mount_has(mount: dict | None, option: str) -> bool:
    """Whether a mount of the kernel profile (dev_shm, tmpdir_mount) has an option."""
    return bool(mount) and option in (mount.get("options") or ())


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


class Kernel(FileIO, Seals, LockAll, Guard):
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
        # do_huge_zero_wp_pmd() exists from 6.13 on (an unknown release counts as new)
        self.huge_zero_wp_thp = tuple(profile.get("release_tuple") or (99,)) >= (6, 13)
        self.thp_use_zero_page = profile.get("thp_use_zero_page", 1)
        self.totalram_pages = (profile.get("mem_total_kb") or (1 << 40)) // 4
        self.total_swap_pages = (profile.get("swap_total_kb") or 0) // 4
        self._mmap_host_facts(profile)
        # the host's kernel release, for rules that changed between versions
        self.release = tuple(profile.get("release_tuple") or (6, 18))
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
        mm = AddressSpace(vmas, topdown, base, self.mmap_min_addr, self.max_map_count)
        gap = self.profile.get("stack_guard_gap_pages")
        if isinstance(gap, int):
            mm.stack_guard_gap = gap << PAGE_SHIFT
        return mm

    def new_ino(self) -> int:
        return next(self._ino)

    def note(self, text: str, n: int = 1) -> None:
        self.trace[text] += n

    # ----- the step interface -----------------------------------------------------------------
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
        return (r, *span(r.addr, r.length, args.get("pages")))

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
        """Create a file (write() of its bytes in 64 KiB chunks, fsync, optional fadvise).
        open(O_CREAT) allocates the descriptor first (alloc_fd: EMFILE, no file made). Past
        RLIMIT_FSIZE mm/filemap.c generic_write_check_limits() shortens the write that
        crosses the limit and fails the next with EFBIG: the file keeps the bytes below the
        limit (the live side still fsyncs them), and the step fails with EFBIG."""
        path, size, on = args["path"], args["size"], args.get("on") or "disk"
        self.alloc_fd(proc)
        limit = proc.rlimit("fsize")
        efbig = limit is not None and size > limit
        if efbig:
            size = limit
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
        if args.get("cache") == "cold" and kind == DISK and not efbig:
            for i in range(ino.npages):
                ino.cached[i] = 0
                ino.folio[i] = -1
        self.files[path] = ino
        if kind == TMPFS:
            self.posix[path.split("/dev/shm/", 1)[1]] = ino
            ino.mode = 0o600
        if efbig:
            raise errno("EFBIG")
        self.note("write() fills the page cache; fsync writes it back"
                  + ("; POSIX_FADV_DONTNEED drops it" if args.get("cache") == "cold" else ""))
        return None

    def sys_open(self, proc: Process, args: dict):
        """fs/open.c do_sys_openat2(): get_unused_fd_flags() (EMFILE) before the lookup."""
        self.alloc_fd(proc)
        ino = self.files.get(args["path"])
        if ino is None:
            raise errno("ENOENT")
        mode = args.get("mode") or "rw"
        proc.fds[args["as"]] = OpenFile(ino, readable="r" in mode, writable="w" in mode)
        return None

    def alloc_fd(self, proc: Process) -> None:
        """fs/file.c alloc_fd() (get_unused_fd_flags, before the path is looked up): EMFILE
        once the lowest free descriptor reaches RLIMIT_NOFILE. The model does not know the
        worker's descriptor table, so it decides only the limit 0, where every allocation
        fails; a limit between 1 and the worker's own descriptors is not predicted."""
        if proc.rlimit("nofile") == 0:
            raise errno("EMFILE")

    def newsize_ok(self, proc: Process, ino: Inode, size: int) -> None:
        """fs/attr.c inode_newsize_ok(): growing a file past RLIMIT_FSIZE is EFBIG (with a
        SIGXFSZ that Python processes ignore, so the call just fails)."""
        limit = proc.rlimit("fsize")
        if size > ino.size and limit is not None and size > limit:
            raise errno("EFBIG")

    def sys_evict(self, proc: Process, args: dict):
        """fsync + POSIX_FADV_DONTNEED (mm/fadvise.c -> mapping_try_invalidate): write back
        dirty pages, then drop every clean folio that no PTE maps. The live side opens the
        file first (alloc_fd: EMFILE)."""
        self.alloc_fd(proc)
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
    def _mmap_host_facts(self, profile: dict) -> None:
        """Host facts the mmap and mprotect rules need, all from the kernel profile."""
        # arch/x86/mm/pkeys.c execute_only_pkey(): only when arch_pkeys_enabled() (OSPKE)
        self.pkeys = bool(profile.get("pkeys"))
        # the default hstate's pool; None: no hugetlb (hstate_sizelog() finds no hstate)
        self.hugetlb = profile.get("hugetlb")
        # fs/namei.c path_noexec(): the mount of the run's disk files (the temp dir) and /dev/shm;
        # the internal shm mount of memfd, SysV and shared anonymous memory is never noexec
        self.noexec = {DISK: _mount_has(profile.get("tmpdir_mount"), "noexec"),
                       TMPFS: _mount_has(profile.get("dev_shm"), "noexec"), SHMEM: False}
        # filesystems whose file_operations have FOP_MMAP_SYNC and whose ->mmap refuses VM_SYNC
        # without DAX (ext4_file_mmap_prepare, xfs_file_mmap_prepare: daxdev_mapping_supported)
        disk = profile.get("tmpdir_mount") or {}
        self.disk_mmap_sync = disk.get("fstype") in ("ext4", "xfs")
        self.disk_dax = any(o in ("dax", "dax=always") for o in disk.get("options") or ())

    def sys_mmap(self, proc: Process, args: dict):
        """arch/x86/kernel/sys_x86_64.c sys_mmap -> mm/mmap.c ksys_mmap_pgoff -> do_mmap."""
        f0 = self._faults()
        length = args["length"]
        prot = prot_of(args["prot"])
        flags = map_flags(args.get("flags") or ())
        off = args.get("offset") or 0
        file = None
        src = None
        for kind in ("file", "fd", "shm", "memfd"):
            if args.get(kind) is not None:
                src = kind
        if src == "file":
            self.alloc_fd(proc)        # the live side opens the file (O_RDWR) before mmap()
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
        hugetlb = False
        if not flags & MAP["ANONYMOUS"]:
            # ksys_mmap_pgoff(): fget(fd); MAP_HUGETLB on a file that is not on hugetlbfs
            if file is None:
                raise errno("EBADF", f0)
            if flags & MAP["HUGETLB"]:
                raise errno("EINVAL", f0)
        else:
            file = None                               # MAP_ANONYMOUS: the fd is not looked at
            if flags & MAP["HUGETLB"]:
                # hstate_sizelog(0): the default hstate, none without hugetlb; the length is
                # rounded up to the huge page (ALIGN, in an unsigned long) and the mapping gets
                # a hugetlbfs file (hugetlb_file_setup(HUGETLB_ANON_FILE, VM_NORESERVE))
                # MAP_HUGE_2MB / MAP_HUGE_1GB: hstate_sizelog(log2 of the size), EINVAL when the
                # host has no hstate of that size
                hs = self.hstate_sizelog((flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK)
                if hs is None:
                    raise errno("EINVAL", f0)
                hsize = (hs.get("size_kb") or 2048) << 10
                length = ((length + hsize - 1) & ~(hsize - 1)) & ((1 << 64) - 1)
                hugetlb = hs
        addr = self.resolve_addr(proc, args.get("addr"))
        try:
            faults, value = self.do_mmap(proc, file, addr, length, prot, flags, off >> PAGE_SHIFT,
                                         hugetlb=hugetlb)
        except StepError as e:
            e.faults = f0
            raise
        proc.regions[args["as"]] = Region(value["addr"], args["length"], "mmap")
        return faults, value

    def do_mmap(self, proc: Process, file: OpenFile | None, addr: int, length: int, prot: int,
                flags: int, pgoff: int, region_kind: str = "mmap", hugetlb: dict | bool = False):
        """mm/mmap.c do_mmap(), checks in the kernel's order. hugetlb: an anonymous MAP_HUGETLB
        mapping, whose file (hugetlbfs, opened O_RDWR) the model does not build."""
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
        # "offset overflow?": pgoff + pages wrapping an unsigned long, which cannot happen on
        # 64-bit (pgoff < 2^52); a file's offset is checked below (file_mmap_ok)
        if pgoff + (length >> PAGE_SHIFT) >= 1 << 64:
            raise errno("EOVERFLOW")
        if mm.map_count > self.max_map_count:
            raise errno("ENOMEM")
        # PROT_EXEC alone takes the execute-only protection key (execute_only_pkey)
        pkey = VM_PKEY_BIT0 if prot == PROT_EXEC and self.pkeys else 0
        # mm->def_flags: VM_LOCKED (| VM_LOCKONFAULT) after mlockall(MCL_FUTURE)
        vm_flags = calc_vm_prot_bits(prot) | pkey | calc_vm_flag_bits(flags) | mm.def_flags \
            | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        mtype = flags & MAP_TYPE
        thp = False
        if file is None:
            thp = self.thp_align_anon and not addr and length % (2 << 20) == 0 \
                and mtype == MAP["PRIVATE"] and not hugetlb
        elif not file.inode.is_shmem and file.kind == "file":
            # ext4's f_op->get_unmapped_area is thp_get_unmapped_area, with the hint; whether it
            # pads is decided by the offset and length (model.mm.thp_pad_ok)
            thp = True
        if hugetlb and fixed and addr & (((hugetlb.get("size_kb") or 2048) << 10) - 1):
            raise errno("EINVAL")      # hugetlb_get_unmapped_area(): prepare_hugepage_range
        where = mm.get_unmapped_area(length, addr, fixed, thp_align=thp and not fixed,
                                     pgoff=pgoff if file else 0, map32=bool(flags & MAP["32BIT"]))
        if isinstance(where, str):
            raise errno(where)
        addr = where
        if flags & MAP["FIXED_NOREPLACE"] and mm.overlapping(addr, addr + length):
            raise errno("EEXIST")
        if flags & MAP["LOCKED"] and not self.can_do_mlock(proc):
            raise errno("EPERM")
        if vm_flags & VM_LOCKED and not self.mlock_future_ok(proc, length >> PAGE_SHIFT):
            raise errno("EAGAIN")
        if file is not None or hugetlb:
            # file_mmap_ok(): a regular file (ext4, tmpfs, shmem, hugetlbfs) may be mapped up to
            # MAX_LFS_FILESIZE (LLONG_MAX): pgoff past (LLONG_MAX - len) >> PAGE_SHIFT overflows
            maxsize = (1 << 63) - 1
            if length > maxsize or pgoff > (maxsize - length) >> PAGE_SHIFT:
                raise errno("EOVERFLOW")
            writable = file.writable if file is not None else True
            readable = file.readable if file is not None else True
            flags_mask = LEGACY_MAP_MASK
            if file is not None and file.inode.kind == DISK and self.disk_mmap_sync:
                flags_mask |= MAP["SYNC"]             # FOP_MMAP_SYNC
            if mtype == MAP["SHARED"]:
                flags &= LEGACY_MAP_MASK              # unknown flags are dropped, not refused
            if mtype in (MAP["SHARED"], MAP["SHARED_VALIDATE"]):
                if flags & ~flags_mask:
                    raise errno("ENOTSUP")            # EOPNOTSUPP (95, "ENOTSUP" by name)
                if prot & PROT_WRITE and not writable:
                    raise errno("EACCES")
                vm_flags |= VM_SHARED | VM_MAYSHARE
                if not writable:
                    vm_flags &= ~(VM_MAYWRITE | VM_SHARED)
            if mtype in (MAP["SHARED"], MAP["SHARED_VALIDATE"], MAP["PRIVATE"]):
                if not readable:
                    raise errno("EACCES")
                if file is not None and self.noexec.get(file.inode.kind):
                    if vm_flags & VM_EXEC:
                        raise errno("EPERM")
                    vm_flags &= ~VM_MAYEXEC
                if vm_flags & VM_GROWSDOWN:
                    raise errno("EINVAL")
            else:
                raise errno("EINVAL")
            if file is not None:
                vm_flags = self.memfd_check_seals_mmap(file, vm_flags)
        else:
            # MAP_SHARED_VALIDATE means nothing without a file: only SHARED and PRIVATE (and
            # MAP_DROPPABLE, not expressible) are types of anonymous mappings
            if mtype == MAP["SHARED"]:
                if vm_flags & VM_GROWSDOWN:
                    raise errno("EINVAL")
                pgoff = 0
                vm_flags |= VM_SHARED | VM_MAYSHARE
            elif mtype == MAP["PRIVATE"]:
                pgoff = addr >> PAGE_SHIFT
            else:
                raise errno("EINVAL")
        if flags & MAP["NORESERVE"]:
            if self.overcommit != 2:
                vm_flags |= VM_NORESERVE
            if hugetlb:
                vm_flags |= VM_NORESERVE              # hugetlb applies strict overcommit
        return self.mmap_region(proc, file, addr, length, vm_flags, pgoff, flags, region_kind,
                                hugetlb=hugetlb)

    def mmap_region(self, proc, file, addr, length, vm_flags, pgoff, flags, region_kind,
                    hugetlb: dict | bool = False):
        """mm/vma.c mmap_region() -> __mmap_region(): limits, account, the file's ->mmap, unmap
        what MAP_FIXED covers, merge or insert, then populate for MAP_POPULATE / VM_LOCKED."""
        mm = proc.mm
        npages = length >> PAGE_SHIFT
        overlap = sum((min(addr + length, v.end) - max(addr, v.start)) >> PAGE_SHIFT
                      for v in mm.overlapping(addr, addr + length))
        if not self.may_expand_vm(proc, vm_flags, npages - overlap):
            raise errno("ENOMEM")
        # accountable_mapping(): private writable, not MAP_NORESERVE, not hugetlbfs
        if (vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE)) == VM_WRITE and not hugetlb:
            if not self.vm_enough_memory(npages):
                raise errno("ENOMEM")
            vm_flags |= VM_ACCOUNT
        if hugetlb:
            self.hugetlbfs_file_mmap(vm_flags | VM_HUGETLB | VM_DONTEXPAND, pgoff, npages, hugetlb)
        if file is not None and vm_flags & VM_SYNC and file.inode.kind == DISK \
                and self.disk_mmap_sync and not self.disk_dax:
            # ext4_file_mmap_prepare(): !daxdev_mapping_supported() -> -EOPNOTSUPP. MAP_SYNC
            # set VM_SYNC in do_mmap (calc_vm_flag_bits) before MAP_SHARED dropped the flag, so
            # a plain MAP_SHARED or MAP_PRIVATE with MAP_SYNC fails here too (measured)
            raise errno("ENOTSUP")
        if file is None and vm_flags & VM_SHARED and not vm_flags & VM_NORESERVE \
                and not self.vm_enough_memory(npages):
            # shmem_zero_setup -> shmem_kernel_file_setup -> shmem_acct_size(): the whole
            # size is charged, writable or not (measured: a read-only one is refused too)
            raise errno("ENOMEM")
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
        # __mmap_complete() (6.1: the end of mmap_region()): "New (or expanded) vma always get
        # soft dirty status", with CONFIG_MEM_SOFT_DIRTY; smaps then prints "sd"
        merged.flags |= self.vm_softdirty
        if vm_flags & VM_LOCKED:
            mm.locked_vm += npages
        value = {"addr": addr}
        minor = major = 0
        # do_mmap(): populate when (vm_flags & (VM_LOCKED|VM_LOCKONFAULT)) == VM_LOCKED
        if vm_flags & (VM_LOCKED | VM_LOCKONFAULT) == VM_LOCKED \
                or flags & (MAP["POPULATE"] | MAP["NONBLOCK"]) == MAP["POPULATE"]:
            minor, major = self.mem.populate(mm, addr, addr + length)
            self.note("mm_populate: the pages were faulted in during the call (counted in it)")
        return self._faults(minor, major), value

    def hstate_sizelog(self, log: int) -> dict | None:
        """mm/hugetlb.c hstate_sizelog(): 0 is the default hstate, otherwise the hstate of
        2^log bytes (the profile's hugetlb_pools), None when the host has none."""
        if not log:
            return self.hugetlb
        size_kb = (1 << log) >> 10
        return next((p for p in self.profile.get("hugetlb_pools") or () if p.get("size_kb") == size_kb),
                    None)

    def hugetlbfs_file_mmap(self, vm_flags: int, pgoff: int, npages: int, h: dict) -> None:
        """fs/hugetlbfs/inode.c hugetlbfs_file_mmap(): the offset must be huge page aligned,
        then hugetlb_reserve_pages() (skipped for VM_NORESERVE) -> hugetlb_acct_memory() ->
        gather_surplus_pages(): ENOMEM when the free pages not yet reserved are too few and no
        surplus page may be allocated (vm.nr_overcommit_hugepages). A mapping that gets its
        pages is not modelled (no hugetlbfs file, no huge page faults): the step is skipped.
        h: the hstate's pool (the default one, or the MAP_HUGE_* size's)."""
        per = ((h.get("size_kb") or 2048) << 10) >> PAGE_SHIFT
        if pgoff & (per - 1):
            raise errno("EINVAL")
        if not vm_flags & VM_NORESERVE:
            need = -(-npages // per)
            avail = (h.get("free") or 0) - (h.get("rsvd") or 0)
            surplus_ok = (h.get("overcommit") or 0) > (h.get("surp") or 0)
            if need > avail and not surplus_ok:
                raise errno("ENOMEM")
        raise StepError({"skipped": "a MAP_HUGETLB mapping that gets its huge pages is not modelled"})

    def capable(self, proc: Process, cap: int) -> bool:
        """kernel/capability.c capable(): root workers hold what the manager held (CapEff)."""
        return proc.privileged and (self.caps is None or bool(self.caps >> cap & 1))

    def can_do_mlock(self, proc: Process) -> bool:
        """mm/mlock.c can_do_mlock()."""
        limit = proc.rlimit("memlock")
        return limit != 0 or self.capable(proc, CAP_IPC_LOCK)

    def mlock_future_ok(self, proc: Process, pages: int) -> bool:
        """mm/mmap.c mlock_future_ok()."""
        if self.capable(proc, CAP_IPC_LOCK):
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
        """mm/util.c __vm_enough_memory(). OVERCOMMIT_GUESS refuses a single request of more
        pages than totalram_pages() + total_swap_pages (MemTotal and SwapTotal of the profile);
        what is already committed does not count. Measured (23.6 GiB RAM, no swap): MemTotal's
        pages map, one page more is ENOMEM, and three 16 GiB requests in a row all succeed."""
        if self.overcommit == 1:
            return True
        if self.overcommit == 0:
            return npages <= self.totalram_pages + self.total_swap_pages
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
        done = [0, 0]           # faults of populate_vma_page_range() in the VMAs changed so far
        while at < end:
            vma = mm.vma_at(at)
            if vma is None:
                raise errno("ENOMEM", self._faults(*done))
            if vma.opaque is not None:
                raise errno("EACCES", self._faults(*done))
            # mask_off_old_flags = VM_ACCESS_FLAGS | VM_FLAGS_CLEAR (the pkey bits): the key
            # comes from arch_override_mprotect_pkey()
            newflags = (vma.flags & ~(VM_ACCESS_FLAGS | VM_PKEY_MASK)) | calc_vm_prot_bits(prot) \
                | self.override_mprotect_pkey(vma, prot)
            # (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS: each access needs its VM_MAY*
            if (newflags & ~(newflags >> 4)) & 0x7:
                raise errno("EACCES", self._faults(*done))
            tmp = min(vma.end, end)
            try:
                minor, major = self.mprotect_fixup(proc, vma, at, tmp, newflags)
            except StepError as e:
                e.faults = self._faults(*done)
                raise
            done[0] += minor
            done[1] += major
            at = tmp
        return self._faults(*done), None

    def override_mprotect_pkey(self, vma: Vma, prot: int) -> int:
        """arch/x86/mm/pkeys.c __arch_override_mprotect_pkey() for a plain mprotect: PROT_EXEC
        alone takes the execute-only key; any other prot on an execute-only VMA (access flags
        VM_EXEC, the execute-only key) goes back to key 0; otherwise the VMA keeps its key."""
        if self.pkeys and prot == PROT_EXEC:
            return VM_PKEY_BIT0
        if vma.flags & VM_ACCESS_FLAGS == VM_EXEC and vma.flags & VM_PKEY_MASK == VM_PKEY_BIT0:
            return 0
        return vma.flags & VM_PKEY_MASK

    def mprotect_fixup(self, proc: Process, vma: Vma, start: int, end: int, newflags: int) -> tuple[int, int]:
        """mm/mprotect.c mprotect_fixup(); returns the (minor, major) faults it took."""
        mm = proc.mm
        if newflags & VM_WRITE and not vma.flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE):
            newflags |= VM_ACCOUNT       # a private mapping becoming writable is charged
        elif not newflags & VM_WRITE and vma.flags & VM_ACCOUNT and vma.is_anonymous and vma.anon_vma is None:
            newflags &= ~VM_ACCOUNT      # an unfaulted anonymous VMA made read-only is uncharged
        if newflags == vma.flags:
            return 0, 0
        # mprotect_fixup(): "Check space limits when area turns into data" (RLIMIT_DATA)
        if newflags & VM_WRITE:
            npages = (end - start) >> PAGE_SHIFT
            if not self.may_expand_vm(proc, newflags, npages) and self.may_expand_vm(proc, vma.flags, npages):
                raise errno("ENOMEM", self._faults())
            # a private mapping made writable is charged: security_vm_enough_memory_mm()
            # (measured: a 64 GiB read-only private mapping made rw is ENOMEM)
            if newflags & VM_ACCOUNT and not vma.flags & VM_ACCOUNT and not self.vm_enough_memory(npages):
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
        if old & (VM_WRITE | VM_SHARED | VM_LOCKED) == VM_LOCKED and newflags & VM_WRITE:
            # "Private VM_LOCKED VMA becoming writable: trigger COW to avoid major fault on
            # access": populate_vma_page_range(vma, start, end, NULL), a write fault per page
            # that is not writable yet, counted to the caller (mm_account_fault); nothing for
            # VM_LOCKONFAULT; its error is ignored (a file VMA past EOF stops there). Without
            # FOLL_UNLOCKABLE a fault that reads the page cannot retry: a major fault.
            # Measured: the faults are mprotect's, the writes after take none.
            minor, major = self.mem.populate(mm, start, end, unlockable=False)
            if minor + major:
                self.note(f"mprotect_fixup: populate_vma_page_range broke COW on {minor + major} page(s) "
                          "of a locked private VMA made writable")
            return minor, major
        return 0, 0

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

    # madvise_vma_behavior(): the advices that only change vm_flags (madvise_update_vma), as
    # (flags set, flags cleared)
    MADV_VM_FLAGS = {
        "normal": (0, VM_RAND_READ | VM_SEQ_READ), "sequential": (VM_SEQ_READ, VM_RAND_READ),
        "random": (VM_RAND_READ, VM_SEQ_READ), "dontfork": (VM_DONTCOPY, 0), "dofork": (0, VM_DONTCOPY),
        "wipeonfork": (VM_WIPEONFORK, 0), "keeponfork": (0, VM_WIPEONFORK),
        "dontdump": (VM_DONTDUMP, 0), "dodump": (0, VM_DONTDUMP),
        "mergeable": (VM_MERGEABLE, 0), "unmergeable": (0, VM_MERGEABLE),
        "hugepage": (VM_HUGEPAGE, VM_NOHUGEPAGE), "nohugepage": (VM_NOHUGEPAGE, VM_HUGEPAGE)}

    def sys_madvise(self, proc: Process, args: dict):
        """mm/madvise.c do_madvise(): MADV_POPULATE_* go to madvise_populate(); every other advice
        goes through madvise_walk_vmas(), which visits the VMAs of the range in address order
        (madvise_vma_behavior on the part of each inside the range), stops at the first error
        (the VMAs visited before keep what was done to them) and, when the range has a hole,
        returns ENOMEM after visiting all of them."""
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        advice = args["advice"].lower()
        if advice in ("guard_install", "guard_remove") and self.release < GUARD_SINCE:
            raise errno("EINVAL", f0)        # madvise_behavior_valid(): unknown before 6.13
        if start & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        end = start + page_align(length)
        if end == start:
            return f0, None
        if advice in ("populate_read", "populate_write"):
            return self.madvise_populate(proc, start, end, advice == "populate_write")
        mm = proc.mm
        at, hole = start, False
        while at < end:
            vma = mm.find_vma(at)
            if vma is None:
                raise errno("ENOMEM", f0)
            if vma.start > at:
                hole = True
                at = vma.start
                if at >= end:
                    break
            tmp = min(vma.end, end)
            try:
                self.madvise_vma_behavior(proc, vma, at, tmp, advice)
            except StepError as e:
                e.faults = e.faults or f0
                raise
            at = tmp
        if hole:
            raise errno("ENOMEM", f0)
        return f0, None

    def madvise_vma_behavior(self, proc: Process, vma: Vma, start: int, end: int, advice: str) -> None:
        """mm/madvise.c madvise_vma_behavior() for [start, end) inside one VMA."""
        a, b = vma.index(start), vma.index(end)
        if advice in self.MADV_VM_FLAGS:
            set_, clear = self.MADV_VM_FLAGS[advice]
            if vma.opaque is not None:
                return
            if advice == "wipeonfork" and (vma.file is not None or vma.flags & VM_SHARED):
                raise errno("EINVAL")     # MADV_WIPEONFORK: private anonymous memory only
            if advice == "dodump" and vma.flags & VM_DONTEXPAND:
                raise errno("EINVAL")     # VM_SPECIAL (VM_IO, VM_DONTEXPAND, VM_PFNMAP, VM_MIXEDMAP)
            if advice == "mergeable" and vma.flags & (VM_SHARED | VM_MAYSHARE | VM_DONTEXPAND):
                set_ = 0                  # mm/ksm.c ksm_madvise: !vma_ksm_compatible() -> 0, flag not set
            self.modify_flags(proc, start, end, set_, clear)
            self.note(f"madvise_update_vma sets the VMA flags for MADV_{advice.upper()}"
                      + (" (ksm_madvise: ksmd merges nothing until /sys/kernel/mm/ksm/run is 1)"
                         if advice == "mergeable" and set_ else ""))
        elif advice in ("guard_install", "guard_remove"):
            self.madvise_guard(proc, vma, start, end, advice == "guard_install")
        elif advice in ("dontneed", "free", "dontneed_locked"):
            # madvise_dontneed_free_valid_vma(): not VM_LOCKED (nor VM_PFNMAP, nor hugetlb);
            # MADV_DONTNEED_LOCKED (5.18+) allows VM_LOCKED
            if vma.opaque is not None or (vma.flags & VM_LOCKED and advice != "dontneed_locked"):
                raise errno("EINVAL")
            if advice != "free":
                n = self.mem.zap(vma, a, b)
                self.note(f"madvise_dontneed_single_vma: zap_page_range_single dropped {n} PTE(s)")
            else:
                if not vma.is_anonymous:  # madvise_free_single_vma: anonymous VMAs only
                    raise errno("EINVAL")
                self.madvise_free(proc.mm, vma, a, b)
        elif advice == "willneed":
            if vma.file is not None and not vma.file.inode.is_shmem:
                ino = vma.file.inode
                # generic_fadvise(POSIX_FADV_WILLNEED) -> force_page_cache_ra(): nr_to_read is
                # clamped to max(bdi->io_pages, ra_pages) and read from the start of the range
                # (in 2 MiB chunks of do_page_cache_ra with no lookahead: order-0 folios, no
                # PG_readahead mark); the rest of a larger range stays uncached.
                # Measured: madvise-willneed-limit.toml (3,072 pages advised, 2,048 read).
                limit = max(self.io_pages, ino.readahead_pages)
                first = vma.file_index(a)
                end = min(vma.file_index(b), first + limit, ino.npages)
                for i in range(first, end):
                    if not ino.is_cached(i):
                        ino.add_folio(i, 1)
                self.note("madvise_willneed: vfs_fadvise(WILLNEED) -> force_page_cache_ra reads "
                          f"{max(0, end - first)} page(s) from the start of the range"
                          + (f" (at most max(io_pages, ra_pages) = {limit})"
                             if vma.file_index(b) - first > limit else ""))
        elif advice == "remove":
            # madvise_remove(): VM_LOCKED or no file -> EINVAL; a mapping that is not shared and
            # may-write (vma_is_shared_maywrite: private, or a read-only open) -> EACCES
            if vma.opaque is not None or vma.flags & VM_LOCKED or vma.file is None:
                raise errno("EINVAL")
            if vma.flags & (VM_SHARED | VM_MAYWRITE) != VM_SHARED | VM_MAYWRITE:
                raise errno("EACCES")
            self.fallocate_punch_hole(vma.file.inode, vma.file_index(a), vma.file_index(b))
        elif advice in ("cold", "pageout"):
            if vma.opaque is not None or vma.flags & VM_LOCKED:   # can_madv_lru_vma()
                raise errno("EINVAL")
            self.cold_or_pageout(vma, a, b, advice == "pageout", proc.mm)
        elif advice == "collapse":
            self.madvise_collapse(proc.mm, vma, a, b)
        else:
            raise errno("EINVAL")

    def madvise_free(self, mm, vma: Vma, a: int, b: int) -> None:
        """mm/madvise.c madvise_free_pte_range(): each present anonymous page mapped here gets
        its PTE cleaned and made old (clear_young_dirty_ptes) and its folio made lazy-free
        (folio_mark_lazyfree -> lru_lazyfree: PG_active, PG_referenced and PG_swapbacked
        cleared). Nothing is freed now: the page keeps its contents and stays mapped until
        reclaim discards it, unless it is written again first (model.kernel cold_or_pageout).
        A PMD-mapped THP wholly inside the range is made lazy-free whole
        (madvise_free_huge_pmd); one the range cuts is split first (split_anon_thp), and one
        mapped elsewhere too is left alone."""
        anon = self.anon
        whole, skip = set(), set()
        for h, kind in list(vma.huge.items()):
            if not (h < b and a < h + 512):
                continue
            if kind != "anon" or any(anon.mapcount[p] != 1 for p in vma.anon[h:h + 512]):
                skip.add(h)              # the huge zero page, or folio_maybe_mapped_shared
            elif a <= h and h + 512 <= b:
                whole.add(h)
            else:
                self.split_anon_thp(mm, vma, h)
        n = 0
        for i in range(a, b):
            e = vma.pte[i]
            if e & PTE_KIND != PTE_ANON:
                continue                 # none, or the zero page (no folio: vm_normal_folio)
            if skip and (((vma.start >> PAGE_SHIFT) + i) & ~511) - (vma.start >> PAGE_SHIFT) in skip:
                continue
            vma.pte[i] = e & ~(PTE_DIRTY | PTE_YOUNG)
            pid = vma.anon[i]
            anon.set_lru(pid, 0)
            anon.lazyfree.add(pid)
            n += 1
        self.note(f"madvise_free_pte_range: {n} page(s) cleaned and made lazy-free (still mapped)"
                  + (f", {len(whole)} THP(s) whole" if whole else ""))

    def split_anon_thp(self, mm, vma: Vma, h: int) -> None:
        """split_folio() of the PMD-mapped anonymous THP at page h (mm/huge_memory.c
        __folio_split: the PMD is split into PTEs, then remap_page() with
        RMP_USE_SHARED_ZEROPAGE maps every zero-filled subpage to the shared zero page
        (try_to_map_unused_to_zeropage) and frees it). Measured: a THP of which one page was
        written keeps that page and shows 511 zero-page entries."""
        del vma.huge[h]
        if mm is not None:
            mm.ptables.add((vma.start + (h << PAGE_SHIFT)) >> 21)
        zeroed = 0
        for j in range(h, h + 512):
            pid = vma.anon[j]
            if self.anon.data[pid] == 0:
                self.anon.put(pid)
                self.anon.lazyfree.discard(pid)
                vma.anon[j] = 0
                vma.pte[j] = PTE_ZERO
                zeroed += 1
        self.note(f"split_folio: a THP split, {zeroed} zero-filled page(s) remapped to the shared zero page")

    def madvise_populate(self, proc: Process, start: int, end: int, write: bool):
        """mm/madvise.c madvise_populate() -> mm/gup.c faultin_page_range(): GUP with FOLL_TOUCH
        and FOLL_MADV_POPULATE (and FOLL_WRITE) from start, VMA by VMA: no VMA at the address ->
        ENOMEM; a VMA that check_vma_flags() refuses (no VM_READ for a read, no VM_WRITE for a
        write) -> EINVAL (__get_user_pages turns it into -EINVAL for FOLL_MADV_POPULATE); a fault
        that ends in SIGBUS or SIGSEGV -> EFAULT. What was populated before the error stays, and
        its faults count. A page already mapped as needed takes no fault and its PTE is left as
        it is (follow_page_pte does not make it young); FOLL_TOUCH marks every folio accessed
        (folio_mark_accessed) and, for a write, dirties a clean one (folio_mark_dirty; the model
        keeps an anonymous page's dirtiness in its PTE)."""
        mm = proc.mm
        minor = major = 0
        at = start
        while at < end:
            v = mm.vma_at(at)
            if v is None:
                raise errno("ENOMEM", self._faults(minor, major))
            if v.opaque is not None or not v.flags & (VM_WRITE if write else VM_READ):
                raise errno("EINVAL", self._faults(minor, major))
            stop = min(end, v.end)
            a, b = v.index(at), v.index(stop)
            j = a
            while j < b:
                e = v.pte[j]
                if e & PTE_KIND and (not write or e & PTE_WRITE):
                    if write and not e & PTE_DIRTY:
                        if e & PTE_KIND == PTE_FILE:
                            if v.file.inode.cached[v.file_index(j)] != 2:
                                v.file.inode.mark_dirty(v.file_index(j))
                        elif e & PTE_KIND == PTE_ANON:
                            v.pte[j] = e | PTE_DIRTY
                    self.mem.touch_folio(v, j)
                    j += 1
                    continue
                k = j + 1                         # a run of pages that need a fault
                while k < b and not (v.pte[k] & PTE_KIND and (not write or v.pte[k] & PTE_WRITE)):
                    k += 1
                done, mi, ma, fault = self.mem.access(mm, v.start + (j << PAGE_SHIFT), k - j, write, None)
                for i in range(j, j + done):
                    self.mem.touch_folio(v, i)
                minor += mi
                major += ma
                if fault is not None:
                    raise errno("EFAULT", self._faults(minor, major))
                j = k
            at = stop
        self.note(f"madvise_populate: faultin_page_range over the range ({'write' if write else 'read'})")
        return self._faults(minor, major), None

    def madvise_collapse(self, mm, vma: Vma, a: int, b: int) -> None:
        """mm/khugepaged.c madvise_collapse(). thp_vma_allowable_order(TVA_FORCED_COLLAPSE)
        first: VM_NOHUGEPAGE, or no 2 MiB-aligned block that fits in the VMA
        (thp_vma_suitable_order), -> EINVAL; the sysfs THP mode does not matter. Then each
        2 MiB-aligned block wholly inside [a, b) (none for a small range: 0, nothing done):
        already PMD-mapped -> done (SCAN_PMD_MAPPED); no PTE table under it -> SCAN_PMD_NULL;
        a VMA without anon_vma -> SCAN_PAGE_ANON (hugepage_vma_revalidate); otherwise
        collapse_huge_page(): a new THP gets a copy of every present page (zeros for none and
        zero-page entries: madvise_collapse sets no max_ptes_none limit and needs no writable
        page), is mapped by one PMD (dirty, young) and the old pages lose this mapping. Every
        block is tried; if any failed the call returns the last failure's errno
        (madvise_collapse_errno: EINVAL for these). The model collapses private anonymous
        memory only: a shmem or file VMA is refused with EINVAL (true of a disk file without
        CONFIG_READ_ONLY_THP_FOR_FS; shmem collapses on the kernel: model/known_differences.py)."""
        if vma.opaque is not None or not vma.is_anonymous or vma.flags & VM_NOHUGEPAGE:
            raise errno("EINVAL")
        first = (vma.start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        if first + PMD_SIZE > vma.end:
            raise errno("EINVAL")
        base = vma.start >> PAGE_SHIFT
        h = a + (-(base + a)) % 512                  # the first 2 MiB-aligned page at or after a
        blocks = fails = 0
        while h + 512 <= b:
            blocks += 1
            kind = vma.huge.get(h)
            block = (vma.start + (h << PAGE_SHIFT)) >> 21
            if kind is not None:
                pass                                  # SCAN_PMD_MAPPED
            elif block not in mm.ptables or vma.anon_vma is None:
                fails += 1                            # SCAN_PMD_NULL / SCAN_PAGE_ANON
            else:
                self.collapse_huge_page(mm, vma, h)
            h += 512
        self.note(f"madvise_collapse: {blocks - fails} of {blocks} 2 MiB block(s) PMD-mapped")
        if fails:
            raise errno("EINVAL")

    def collapse_huge_page(self, mm, vma: Vma, h: int) -> None:
        """mm/khugepaged.c collapse_huge_page() for the block at page h of an anonymous VMA."""
        from array import array
        anon = self.anon
        old = vma.anon_array()[h:h + 512]
        values = bytes(anon.data[p] if vma.pte[h + j] & PTE_KIND == PTE_ANON else 0
                       for j, p in enumerate(old))
        for j, p in enumerate(old):
            if vma.pte[h + j] & PTE_KIND == PTE_ANON:
                anon.put(p)                           # __collapse_huge_page_copy_succeeded
        first = anon.new_run(512, 0)
        anon.data[first:first + 512] = values
        vma.anon[h:h + 512] = array("q", range(first, first + 512))
        pte = PTE_ANON | PTE_DIRTY | PTE_YOUNG | (PTE_WRITE if vma.flags & VM_WRITE else 0)
        vma.pte[h:h + 512] = bytes([pte]) * 512
        vma.huge[h] = "anon"
        mm.ptables.discard((vma.start + (h << PAGE_SHIFT)) >> 21)   # the PMD maps the THP now

    def cold_or_pageout(self, vma: Vma, a: int, b: int, pageout: bool, mm=None) -> None:
        """mm/madvise.c madvise_cold_or_pageout_pte_range(): folios mapped elsewhere too are
        left alone; the others are aged (young cleared) and, for MADV_PAGEOUT, reclaimed at once
        (reclaim_pages -> shrink_folio_list): try_to_unmap, then a clean file folio is freed, a
        dirty one stays cached (only kswapd writes back file folios), shmem stays cached (no
        swap to write it to), and an anonymous page stays mapped (no swap) unless it is lazy-free
        (MADV_FREE, !PG_swapbacked): try_to_unmap_one() discards a lazy-free page whose PTE is
        still clean, and one written since (dirty PTE) is made swap-backed again and kept.
        A PMD-mapped anonymous THP (not mapped elsewhere) that the range covers whole is aged
        as one folio, or for MADV_PAGEOUT discarded whole if lazy-free and clean, else split
        (shrink_folio_list: add_to_swap fails without swap -> split_folio_to_list); one the
        range cuts is split first (split_folio). A split maps zero-filled subpages to the
        shared zero page (split_anon_thp)."""
        unmapped = freed = aged = discarded = 0
        whole = set()
        for h, kind in sorted(vma.huge.items()):
            if not (h < b and a < h + 512):
                continue
            ids = vma.anon[h:h + 512] if kind == "anon" else None
            if ids is None or any(self.anon.mapcount[p] != 1 for p in ids):
                whole.add(h)             # the huge zero page, or folio_likely_mapped_shared
                continue
            if not (a <= h and h + 512 <= b):
                self.split_anon_thp(mm, vma, h)
                continue
            whole.add(h)
            if not pageout:
                for j in range(h, h + 512):
                    vma.pte[j] &= ~PTE_YOUNG
                    self.anon.set_lru(vma.anon[j], 0)
                aged += 512
            elif ids[0] in self.anon.lazyfree and not any(vma.pte[j] & PTE_DIRTY for j in range(h, h + 512)):
                self.anon.lazyfree.difference_update(ids)
                self.mem.zap(vma, h, h + 512)
                discarded += 512
            else:
                self.anon.lazyfree.difference_update(ids)
                whole.discard(h)
                self.split_anon_thp(mm, vma, h)
        i = a
        while i < b:
            e = vma.pte[i]
            kind = e & PTE_KIND
            if kind in (PTE_NONE, PTE_ZERO) or (whole and self.mem.huge_block(vma, i) is not None):
                i += 1
                continue
            if kind == PTE_ANON:
                pid = vma.anon[i]
                if self.anon.mapcount[pid] == 1:
                    if not pageout:     # ptep_test_and_clear_young, folio_clear_referenced, deactivate
                        vma.pte[i] = e & ~PTE_YOUNG
                        self.anon.set_lru(pid, 0)
                    elif pid in self.anon.lazyfree:
                        self.anon.lazyfree.discard(pid)
                        if not e & PTE_DIRTY:
                            self.mem.zap(vma, i, i + 1)
                            discarded += 1
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
            if discarded:
                self.note(f"MADV_PAGEOUT: try_to_unmap_one discarded {discarded} clean lazy-free page(s)")
        else:
            self.note(f"MADV_COLD: {aged} page(s) aged (young cleared, folio deactivated)")

    def fallocate_punch_hole(self, ino: Inode, lo: int, hi: int) -> None:
        """vfs_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) over file pages [lo, hi)
        (madvise_remove). shmem (shmem_fallocate): unmap and free the pages. A disk file
        (ext4_punch_hole -> truncate_pagecache_range): unmap_mapping_range over the range (a
        dirty PTE dirties its folio), folios wholly inside leave the page cache, and a large
        folio that straddles an end goes through truncate_inode_partial_folio(): its part in the
        range is zeroed, then try_folio_split_or_unmap() -- splitting a file folio unmaps all of
        it from every process first, and when the split fails it is unmapped anyway. Measured:
        a clean folio splits and its pages in the range are dropped (the next read is a major
        fault); a dirty one (ext4 buffer heads still dirty, filemap_release_folio fails) does
        not split and stays cached whole and dirty, its punched pages reading back as zeros
        without I/O. The model makes the pieces of a split folio single pages."""
        if ino.is_shmem:
            self.punch_hole(ino, lo, hi)
            self.note("madvise_remove: shmem_fallocate(PUNCH_HOLE) unmaps and frees the pages")
            return
        hi = min(hi, ino.npages)
        if lo >= hi:
            return
        self.unmap_file_pages(ino, lo, hi)
        keep = set()
        for edge in sorted({lo, hi - 1}):
            if not ino.is_cached(edge):
                continue
            fa, fb = ino.folio_range(edge)
            if lo <= fa and fb <= hi:
                continue                      # wholly inside: truncate_inode_folio
            self.unmap_file_pages(ino, fa, fb)
            inside = range(max(fa, lo), min(fb, hi))
            for j in inside:
                ino.data[j] = 0               # folio_zero_range
            if ino.cached[fa] == 2:           # the split fails: the folio stays whole
                keep.update(inside)
            else:
                for j in range(fa, fb):
                    ino.folio[j] = j
        run = lo
        for j in range(lo, hi + 1):
            if j == hi or j in keep:
                if run < j:
                    self.punch_hole(ino, run, j)
                run = j + 1
        self.note("madvise_remove: vfs_fallocate(PUNCH_HOLE) frees the pages"
                  + (f"; {len(keep)} page(s) of a dirty large folio stay cached, zeroed" if keep else ""))

    def unmap_file_pages(self, ino: Inode, lo: int, hi: int, even_cows: bool = False) -> None:
        """mm/memory.c unmap_mapping_range() over file pages [lo, hi): every PTE that maps one
        of them goes, in every process. even_cows=0 (hole punch: shmem_fallocate,
        truncate_pagecache_range) leaves the private COW copies of a MAP_PRIVATE mapping alone
        (zap_details.even_cows: only PTEs of the mapping's own folios go); even_cows=1
        (truncation: shmem_setattr, truncate_pagecache) zaps them too."""
        for p in self.procs.values():
            if not p.alive:
                continue
            for v in p.mm.vmas:
                if v.file is not None and v.file.inode is ino:
                    a, b = max(lo - v.pgoff, 0), min(hi - v.pgoff, v.pages)
                    for i in range(a, b):
                        kind = v.pte[i] & PTE_KIND
                        if kind == PTE_FILE or (even_cows and kind != PTE_NONE):
                            self.mem.zap(v, i, i + 1)

    def punch_hole(self, ino: Inode, lo: int, hi: int) -> None:
        """shmem_fallocate(PUNCH_HOLE) / truncate_pagecache_range: unmap then free [lo, hi)."""
        self.unmap_file_pages(ino, lo, hi)
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
        lock_cap = self.capable(proc, CAP_IPC_LOCK)
        if not lock_cap and limit is not None and locked > limit >> PAGE_SHIFT:
            locked -= mm.locked_pages_in(start, end)
        if not (lock_cap or limit is None or locked <= limit >> PAGE_SHIFT):
            raise errno("ENOMEM", f0)
        onfault = bool(args.get("onfault"))
        upto = self.lock_walk_end(mm, start, end)
        for v in mm.overlapping(start, upto):
            if v.opaque is not None:
                raise errno("ENOMEM", f0)
        before = mm.locked_pages_in(start, upto)
        # apply_vma_lock_flags(): newflags = (vm_flags & ~VM_LOCKED_MASK) | flags, so a plain
        # mlock over a VM_LOCKONFAULT range clears it (measured: that part splits off and
        # is populated)
        if upto > start:
            self.modify_flags(proc, start, upto, VM_LOCKED | (VM_LOCKONFAULT if onfault else 0),
                              0 if onfault else VM_LOCKONFAULT)
            mm.locked_vm += ((upto - start) >> PAGE_SHIFT) - before
        if upto < end:
            raise errno("ENOMEM", f0)        # do_mlock returns before __mm_populate
        self.note("apply_vma_lock_flags: VM_LOCKED set (mlock_fixup splits the VMA at the range)")
        minor = major = 0
        if not onfault:
            # __mm_populate(start, len, ignore_errors=0), VMA by VMA: GUP fails with -EFAULT on
            # a PROT_NONE VMA (no FOLL_FORCE: populate_vma_page_range) or an execute-only one
            # (check_vma_flags: arch_vma_access_permitted), and at a page past EOF (SIGBUS);
            # do_mlock then returns __mlock_posix_error_return(-EFAULT) = ENOMEM with the
            # pages before faulted in and VM_LOCKED left set (measured for all three)
            for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
                if v.flags & VM_LOCKONFAULT:
                    continue
                if not v.flags & (VM_READ | VM_WRITE | VM_EXEC) or v.flags & VM_PKEY_MASK:
                    raise errno("ENOMEM", self._faults(minor, major))
                stopped: list = []
                mi, ma = self.mem.populate(mm, max(start, v.start), min(end, v.end), stopped)
                minor, major = minor + mi, major + ma
                if stopped:
                    raise errno("ENOMEM", self._faults(minor, major))
            self.note("__mm_populate faults the locked pages in")
        return self._faults(minor, major), None

    def sys_munlock(self, proc: Process, args: dict):
        f0 = self._faults()
        _, start, length = self.span(proc, args)
        length = page_align(length + (start & (PAGE_SIZE - 1)))
        start &= ~(PAGE_SIZE - 1)
        end = start + length
        mm = proc.mm
        upto = self.lock_walk_end(mm, start, end)
        if upto > start:
            before = mm.locked_pages_in(start, upto)
            self.modify_flags(proc, start, upto, 0, VM_LOCKED | VM_LOCKONFAULT)
            mm.locked_vm -= before
        if upto < end:
            raise errno("ENOMEM", f0)
        self.note("apply_vma_lock_flags: VM_LOCKED cleared; VMAs merge where vma_modify allows")
        return f0, None

    @staticmethod
    def lock_walk_end(mm: AddressSpace, start: int, end: int) -> int:
        """mm/mlock.c apply_vma_lock_flags(): no VMA at start is ENOMEM with nothing changed;
        otherwise mlock_fixup() runs VMA by VMA up to the first hole, and a hole (or a range
        ending past the last VMA) is ENOMEM after those changes (measured: munlock over a
        range whose tail was unmapped splits and unlocks the mapped part, then fails).
        Returns where the changes stop; < end means ENOMEM."""
        upto = start
        for v in sorted(mm.overlapping(start, end), key=lambda v: v.start):
            if v.start > upto:
                break
            upto = min(v.end, end)
        return upto

    # ----- mremap -----------------------------------------------------------------------------
    def sys_mremap(self, proc: Process, args: dict):
        """mm/mremap.c do_mremap(): check_mremap_params(), then remap_move() for MREMAP_FIXED
        with old_len == new_len (vrm_move_only, since 6.17), mremap_to() for the other
        MREMAP_FIXED or MREMAP_DONTUNMAP calls (vrm_implies_new_addr), else mremap_at(): same
        size is a no-op, shrink_vma() unmaps the tail (neither checks that the old range is one
        VMA), expand_vma() grows in place or moves."""
        f0 = self._faults()
        r, addr, old_len = self.span(proc, args)
        new_len = args["length"]
        flags = {f.lower() for f in (args.get("flags") or ())}
        new_addr = self.resolve_addr(proc, args.get("addr"))
        mm = proc.mm
        # check_mremap_params()
        if addr & (PAGE_SIZE - 1) or not page_align(new_len):
            raise errno("EINVAL", f0)
        if "fixed" in flags or "dontunmap" in flags:
            if new_addr & (PAGE_SIZE - 1) or "maymove" not in flags:
                raise errno("EINVAL", f0)
            if "dontunmap" in flags and old_len != new_len:   # before PAGE_ALIGN
                raise errno("EINVAL", f0)
            if mm.map_count + 2 >= self.max_map_count - 3:
                raise errno("ENOMEM", f0)
        old_len, new_len = page_align(old_len), page_align(new_len)
        if ("fixed" in flags or "dontunmap" in flags) and self.release >= (6, 17):
            # the 6.17 series ("mm/mremap: refactor initial parameter sanity checks"): the
            # target is checked in check_mremap_params(), before any VMA is looked up
            # (measured: a target overlapping an unmapped source is EINVAL, not EFAULT)
            self.mremap_new_addr_ok(addr, old_len, new_addr, new_len)
            if "fixed" in flags and old_len == new_len:
                return self.remap_move(proc, r, args, addr, old_len, new_addr, flags)
        vma = mm.vma_at(addr)
        if vma is None or vma.opaque is not None:
            raise errno("EFAULT", f0)
        if "fixed" in flags or "dontunmap" in flags:
            if self.release >= (6, 17) and old_len > vma.end - addr:
                # check_prep_vma() runs before mremap_to() unmaps the target ("mm/mremap: move
                # remap_is_valid() into check_prep_vma()", 6.17): a range that is not inside
                # one VMA is EFAULT with nothing unmapped, also when it shrinks (measured)
                raise errno("EFAULT", f0)
            return self.mremap_to(proc, r, args, addr, old_len, new_addr, new_len, flags)
        if new_len <= old_len:
            if new_len < old_len:
                self.unmap_vmas(proc, addr + new_len, addr + old_len)
            self._follow(r, args, addr, new_len)
            return f0, {"addr": addr}
        # expand_vma() -> remap_is_valid()
        if old_len > vma.end - addr:
            raise errno("EFAULT", f0)
        delta = (new_len - old_len) >> PAGE_SHIFT
        if vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        # in place: vma_expandable() - the range above is free (vm_start_gap of the next VMA)
        if addr + old_len == vma.end:
            nxt = mm.find_vma(vma.end)
            if (nxt is None or nxt.start >= vma.start + (vma.end - vma.start) + (new_len - old_len)) \
                    and vma.end + (new_len - old_len) <= TASK_SIZE:
                newv = Vma(vma.end, addr + new_len, vma.flags, vma.pgoff + vma.pages, vma.file, vma.anon_vma)
                vma.absorb(newv)
                mm.try_merge(vma)
                minor = major = 0
                if vma.flags & VM_LOCKED:
                    mm.locked_vm += delta
                    minor, major = self.mem.populate(mm, addr + old_len, addr + new_len)
                self._follow(r, args, addr, new_len)
                self.note("mremap grew the VMA in place (vma_expandable, vma_merge_extend)")
                return self._faults(minor, major), {"addr": addr}
        if "maymove" not in flags:
            raise errno("ENOMEM", f0)
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        thp, thp_pgoff = self._mremap_thp_align(vma, 0, new_len, pgoff)
        where = mm.get_unmapped_area(new_len, 0, False, thp_align=thp, pgoff=thp_pgoff)
        if isinstance(where, str):
            raise errno(where, f0)
        faults = self.move_vma(proc, vma, addr, old_len, new_len, where, pgoff, False)
        self._follow(r, args, where, new_len)
        self.note("mremap moved the VMA (move_vma: copy_vma, move_page_tables, unmap the old range)")
        return faults, {"addr": where}

    def mremap_new_addr_ok(self, addr, old_len, new_addr, new_len) -> None:
        """check_mremap_params() on the target: inside TASK_SIZE, not overlapping the source
        (vrm_overlaps): EINVAL."""
        if new_len > TASK_SIZE or new_addr > TASK_SIZE - new_len:
            raise errno("EINVAL", self._faults())
        if new_addr < addr + old_len and addr < new_addr + new_len:
            raise errno("EINVAL", self._faults())          # the old and new ranges overlap

    def remap_move(self, proc, r, args, start, length, new_addr, flags):
        """mm/mremap.c remap_move() (since 6.17, commit d23cb648e365 "mm/mremap: permit mremap()
        move of multiple VMAs"; d50dabff4d1f "catch invalid multi VMA moves earlier"):
        MREMAP_FIXED with old_len == new_len moves every VMA of [start, start + length), each
        cut to the range, through check_prep_vma() + mremap_to() (which unmaps only that VMA's
        own target), keeping the gaps between them. No VMA at start is EFAULT; so is a range
        with no VMA at all. vma_multi_allowed(): a VMA whose file has its own
        get_unmapped_area other than shmem's, hugetlbfs' or thp_get_unmapped_area (a SysV
        attach: shm_get_unmapped_area) moves only alone: EFAULT when it is the first and the
        range goes past its end, or when it comes after others (those have moved). A gap at
        the end of the range is allowed. Measured: anonymous, ext4 and memfd VMAs move
        together; a SysV attach after an anonymous VMA is EFAULT with the anonymous part moved."""
        f0 = self._faults()
        mm = proc.mm
        end = start + length
        target = new_addr
        res = None
        last_end = 0
        at = start
        while at < end:                                # for_each_vma_range(vmi, vma, end)
            vma = mm.find_vma(at)
            if vma is None or vma.start >= end:
                break
            if res is None and start < vma.start:
                raise errno("EFAULT", f0)              # no gap permitted at the start
            a = max(vma.start, start)
            ln = min(end, vma.end) - a
            offset = vma.start - last_end if res is not None else 0
            last_end = vma.end
            if vma.opaque is not None:
                raise errno("EFAULT", f0)
            if vma.file is not None and vma.file.kind == "shm":     # not vma_multi_allowed()
                if res is not None or vma.end < end:
                    raise errno("EFAULT", f0)
            at = a + ln
            moved = self.mremap_to(proc, r, args, a, ln, target + offset, ln, flags, follow=False)
            if res is None:
                res = moved
            target = moved + ln
        if res is None:
            raise errno("EFAULT", f0)
        self._follow(r, args, res, length)
        return f0, {"addr": res}

    def mremap_to(self, proc, r, args, addr, old_len, new_addr, new_len, flags, follow=True):
        """mm/mremap.c mremap_to(): MREMAP_FIXED unmaps the target range first (do_munmap);
        MREMAP_DONTUNMAP alone takes new_addr as a hint (vrm_set_new_addr -> get_unmapped_area);
        a target overlapping the source is EINVAL either way (vrm_overlaps). With follow=False
        (one VMA of remap_move) returns the new address."""
        f0 = self._faults()
        fixed, dontunmap = "fixed" in flags, "dontunmap" in flags
        self.mremap_new_addr_ok(addr, old_len, new_addr, new_len)
        mm = proc.mm
        if fixed:
            self.unmap_vmas(proc, new_addr, new_addr + new_len)
            if mm.vma_at(addr) is None:
                raise errno("EFAULT", f0)
        if old_len > new_len:
            self.unmap_vmas(proc, addr + new_len, addr + old_len)
            old_len = new_len
        vma = mm.vma_at(addr)
        # remap_is_valid()
        if vma is None or old_len > vma.end - addr:
            raise errno("EFAULT", f0)
        delta = (new_len - old_len) >> PAGE_SHIFT
        if delta and vma.flags & VM_LOCKED and not self.mlock_future_ok(proc, delta):
            raise errno("EAGAIN", f0)
        if delta and not self.may_expand_vm(proc, vma.flags, delta):
            raise errno("ENOMEM", f0)
        # MREMAP_DONTUNMAP keeps the old range: the address space grows by old_len
        if dontunmap and not self.may_expand_vm(proc, vma.flags, old_len >> PAGE_SHIFT):
            raise errno("ENOMEM", f0)
        pgoff = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        thp, thp_pgoff = self._mremap_thp_align(vma, new_addr, new_len, pgoff)
        where = mm.get_unmapped_area(new_len, new_addr, fixed, thp_align=thp and not fixed, pgoff=thp_pgoff)
        if isinstance(where, str):
            raise errno(where, f0)
        faults = self.move_vma(proc, vma, addr, old_len, new_len, where, pgoff, dontunmap)
        if not follow:
            self.note("remap_move: a VMA of the range moved (check_prep_vma, mremap_to)")
            return where
        self._follow(r, args, where, new_len)
        self.note("mremap_to: " + ("MREMAP_FIXED unmapped the target range and moved the VMA there"
                                   if fixed else "moved the VMA to a free range (new_addr a hint)")
                  + ("; MREMAP_DONTUNMAP left the old range mapped and empty" if dontunmap else ""))
        return faults, {"addr": where}

    def _mremap_thp_align(self, vma: Vma, hint: int, length: int, pgoff: int) -> tuple[bool, int]:
        """mm/mremap.c vrm_set_new_addr() -> get_unmapped_area(vm_file, hint, new_len, pgoff)
        -> __get_unmapped_area(), as mmap places a new mapping: a disk file's
        f_op->get_unmapped_area (ext4: thp_get_unmapped_area, hint and pgoff included), and an
        anonymous VMA (pgoff treated as 0) moved without a hint to a multiple of 2 MiB
        (thp_get_unmapped_area_vmflags). Returns (THP-align, the pgoff to align to).
        Measured: thp-mremap-aligned.toml (MREMAP_DONTUNMAP of 2 MiB skips a free 2 MiB hole
        for an aligned range below), mremap-file-thp-align.toml."""
        if vma.file is None:
            return self.thp_align_anon and not hint and length % PMD_SIZE == 0, 0
        if vma.file.kind == "file" and not vma.file.inode.is_shmem:
            return True, pgoff
        return False, 0

    def _follow(self, r: Region, args: dict, addr: int, length: int) -> None:
        """The handle follows the moved range, also when only some pages of it moved
        (DESIGN.md; the spec then knows the region by its new length)."""
        r.addr, r.length = addr, args["length"]

    def move_vma(self, proc, vma: Vma, addr, old_len, new_len, new_addr, pgoff, dontunmap) -> dict:
        """mm/mremap.c move_vma(): copy_vma + move_page_tables, then unmap_source_vma(); with
        MREMAP_DONTUNMAP dontunmap_complete() instead: the old VMA is neither split nor
        unmapped, it only loses its PTEs in the moved range, VM_LOCKED/VM_LOCKONFAULT go from
        all of it (measured: its pages outside the moved range then count Locked 0; VM_ACCOUNT
        stays on this kernel) and, when the whole VMA moved, its anon_vma (unlink_anon_vmas).
        locked_vm is not lowered for the old VMA (vrm_stat_account adds the new one; measured:
        VmLck keeps the old VMA's pages after every range is munlocked)."""
        mm = proc.mm
        if dontunmap:
            src = mm.vma_at(addr)
            i0 = src.index(addr)
        else:
            src = mm.isolate(addr, addr + old_len)[0]
            i0 = 0
        if src.is_anonymous and src.anon_vma is None:
            pgoff = new_addr >> PAGE_SHIFT           # copy_vma(): never faulted, take the new address
        new = Vma(new_addr, new_addr + new_len, src.flags, pgoff, src.file, src.anon_vma)
        k = old_len >> PAGE_SHIFT
        new.pte[:k] = src.pte[i0:i0 + k]
        if src.anon is not None:
            arr = new.anon_array()
            arr[:k] = src.anon[i0:i0 + k]
        if src.file is not None and src.file.segment is not None:
            self.ipc.opened(src.file.segment)
        self._move_huge_pmds(src, i0, k, new)
        src.pte[i0:i0 + k] = bytes(k)
        if src.anon is not None:
            src.anon[i0:i0 + k] = array("q", bytes(8 * k))
        mm.insert(new)
        if dontunmap:
            if src.flags & VM_LOCKED:
                mm.locked_vm_stale += src.pages
            src.flags &= ~(VM_LOCKED | VM_LOCKONFAULT)
            if k == src.pages:
                src.anon_vma = None
                src.anon = None
        else:
            if src.flags & VM_LOCKED:
                mm.locked_vm -= src.pages
            mm.remove(src)
            if src.file is not None and src.file.segment is not None:
                self.ipc.closed(src.file.segment)
        if new.flags & VM_LOCKED:
            mm.locked_vm += new.pages
        mm.try_merge(new)
        minor = major = 0
        if new.flags & VM_LOCKED and new_len > old_len:
            # do_mremap(): mm_populate() of the grown part once the lock is dropped
            minor, major = self.mem.populate(mm, new_addr + old_len, new_addr + new_len)
        return self._faults(minor, major)

    @staticmethod
    def _move_huge_pmds(src: Vma, i0: int, k: int, new: Vma) -> None:
        """mm/mremap.c move_page_tables(): a PMD-mapped block (a THP or the huge zero page)
        whose extent is a whole 2 MiB at both the old and the new address moves as one PMD
        (move_pgt_entry(HPAGE_PMD) -> move_huge_pmd); any other is split first
        (split_huge_pmd) and its PTEs move. Pages [i0, i0 + k) of src go to page 0 of new.
        Measured: thp-mremap-aligned.toml (AnonHugePages stays), thp-mremap-unaligned.toml."""
        for h, kind in list(src.huge.items()):
            if h + 512 <= i0 or i0 + k <= h:
                continue
            del src.huge[h]
            if i0 <= h and h + 512 <= i0 + k and not (new.start + ((h - i0) << PAGE_SHIFT)) & (PMD_SIZE - 1):
                new.huge[h - i0] = kind

    # ----- touching memory --------------------------------------------------------------------
    def sys_touch(self, proc: Process, args: dict):
        r, addr, length = self.span(proc, args)
        write = (args.get("access") or "read") == "write"
        value = args.get("value")
        value = 1 if value is None else value
        n = pages_of(length)           # whole pages: the kernel mapped PAGE_ALIGN(length)
        done, minor, major, fault = self.mem.access(proc.mm, addr, n, write, value & 0xFF)
        if fault is not None:
            self.note(f"{fault.signal}: {fault.why}")
            raise StepError({"signal": fault.signal, "page": (addr - r.addr) // PAGE_SIZE + done},
                            self._faults(minor, major))
        return self._faults(minor, major), None

    def sys_read(self, proc: Process, args: dict):
        r, addr, length = self.span(proc, args)
        n = pages_of(length)           # whole pages: the kernel mapped PAGE_ALIGN(length)
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
        self.alloc_fd(proc)
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
            self.newsize_ok(proc, ino, size)
            self.truncate(ino, size)
        return self._faults(), None

    def _perm_ok(self, proc: Process, ino: Inode, want: int) -> bool:
        if proc.privileged:
            return True
        bits = (ino.mode >> 6) & 7 if ino.uid == proc.uid else ino.mode & 7
        return want & ~bits == 0

    def sys_truncate(self, proc: Process, args: dict):
        """truncate(2) by path (fs/open.c do_sys_truncate: no descriptor is allocated) or
        ftruncate(2) of a handle (do_ftruncate: EINVAL unless open for writing), then
        inode_newsize_ok (EFBIG past RLIMIT_FSIZE) and the filesystem's setattr (truncate)."""
        if args.get("file") is not None:
            ino = self.files.get(args["path"])
            if ino is None:
                raise errno("ENOENT")
        else:
            f = self.fd(proc, args.get("fd") or args.get("shm") or args.get("memfd"))
            if not f.writable:
                raise errno("EINVAL")
            ino = f.inode
        size = args["size"]
        self.newsize_ok(proc, ino, size)
        if ino.is_shmem:
            self.seals_allow_resize(ino, size)
        self.truncate(ino, size)
        self.note("do_truncate -> notify_change -> setattr: the file is " +
                  ("shrunk" if size < ino.size else "resized"))
        return None

    def truncate(self, ino: Inode, size: int) -> None:
        """do_truncate -> mm/shmem.c shmem_setattr (mm/truncate.c truncate_pagecache for other
        filesystems): unmap_mapping_range(holebegin, 0, even_cows=1) with holebegin =
        round_up(newsize, PAGE_SIZE), then the pages past the new end leave the page cache.
        even_cows=1: the private COW copies of MAP_PRIVATE mappings past holebegin are zapped
        too (measured: a later access to them is a SIGBUS; the copy of the page holding the new
        end stays), unlike a hole punch (fallocate_punch_hole)."""
        kept = []
        if size < ino.size:
            first = pages_of(size)       # a partial last page stays (truncate_inode_partial_folio)
            self.unmap_file_pages(ino, first, ino.npages, even_cows=True)
            if ino.is_shmem:
                self.punch_hole(ino, first, ino.npages)
            else:
                # truncate_inode_pages_range: a large folio that straddles the new end goes
                # through truncate_inode_partial_folio, as for a hole punch; a dirty one that
                # does not split stays in the page cache whole, its pages past the new end
                # included (zeroed). Measured (truncate-grow-shrink-sigbus.toml): grown back,
                # the file reads them with a minor fault, dirty, no I/O.
                old = ino.npages
                self.fallocate_punch_hole(ino, first, old)
                kept = [(j, ino.cached[j], ino.folio[j]) for j in range(first, old) if ino.is_cached(j)]
        ino.resize(size)
        for j, state, head in kept:
            ino.cached[j], ino.folio[j] = state, head

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
        self.alloc_fd(proc)
        ino = Inode(SHMEM, self.new_ino(), self.dev[SHMEM], 0, "/memfd:" + name)
        ino.deleted = True
        if args.get("sealing"):
            ino.seals = 0                # MFD_ALLOW_SEALING: F_SEAL_SEAL cleared
        if args.get("size"):
            # the live side's ftruncate: a failure leaves no handle
            self.newsize_ok(proc, ino, args["size"])
            ino.resize(args["size"])
        proc.fds[args["as"]] = OpenFile(ino)
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
        """kernel/sys.c do_prlimit(): soft > hard is EINVAL; a RLIMIT_NOFILE hard limit above
        fs.nr_open is EPERM even for root (measured: "unlimited" as root); raising the hard
        limit needs CAP_SYS_RESOURCE (EPERM). Lowering a limit below what is in use is
        allowed: only later calls fail."""
        res = args["resource"]
        soft, hard = args.get("soft"), args.get("hard")
        cur = proc.rlimits.get(res, [None, None])
        inf = float("inf")
        s = inf if soft is None else soft
        h = inf if hard is None else hard
        if s > h:
            raise errno("EINVAL")
        nr_open = self.profile.get("sysctl", {}).get("nr_open") or 1 << 20   # fs/file.c sysctl_nr_open
        if res == "nofile" and h > nr_open:
            raise errno("EPERM")
        ch = inf if cur[1] is None else cur[1]
        if h > ch and not self.capable(proc, CAP_SYS_RESOURCE):
            raise errno("EPERM")
        proc.rlimits[res] = [soft, hard]
        return None

    def sys_fork(self, proc: Process, args: dict):
        """kernel/fork.c dup_mmap(): every VMA but VM_DONTCOPY is copied, VM_LOCKED dropped;
        copy_page_range() copies the PTEs only of VMAs with an anon_vma (vma_needs_copy): their
        anonymous pages become shared copy-on-write (write-protected in both, old in the child),
        shared mappings are left to fault in the child. A VM_WIPEONFORK VMA is copied with its
        flags but without anon_vma or PTEs (dup_mmap skips anon_vma_fork and copy_page_range),
        so the child reads zeros there and the parent's pages stay writable."""
        mm = proc.mm
        vmas = []
        copied = wiped = 0
        for v in mm.vmas:
            if v.opaque is not None:
                vmas.append(Vma(v.start, v.end, 0, opaque=v.opaque))
                continue
            if v.flags & VM_DONTCOPY:
                continue
            c = Vma(v.start, v.end, v.flags & ~(VM_LOCKED | VM_LOCKONFAULT), v.pgoff, v.file)
            if v.file is not None and v.file.segment is not None:
                self.ipc.opened(v.file.segment)
            if v.flags & VM_WIPEONFORK:
                # dup_mmap: "VM_WIPEONFORK gets a clean slate in the child" -- no anon_vma, no
                # copy_page_range; the child faults in fresh zero-filled memory
                wiped += 1
            elif v.anon_vma is not None:
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
        child_mm.stack_guard_gap = mm.stack_guard_gap
        # copy_page_range() runs only for the VMAs vma_needs_copy() picks (an anon_vma): the
        # child gets a PTE table only where such a VMA had one; under the others (shared
        # mappings, untouched private file mappings) its first fault finds pmd_none.
        # Measured: a child's first fault there behaves as a first fault (model.memory
        # fault_around), though the parent's table exists.
        child_mm.ptables = {b for b in mm.ptables
                            if any(v.anon_vma is not None and not v.flags & (VM_DONTCOPY | VM_WIPEONFORK)
                                   and v.start < (b + 1) << 21 and b << 21 < v.end
                                   for v in mm.vmas if v.opaque is None)}
        child = Process(args["child"], next(self._pid), child_mm, proc.rlimits, proc.privileged, proc.uid)
        child.fds = dict(proc.fds)
        child.regions = {h: r.copy() for h, r in proc.regions.items()}
        self.procs[child.name] = child
        self.note(f"copy_page_range copied {copied} PTE(s) of private VMAs with an anon_vma; "
                  "writable anonymous ones are now write-protected in both processes")
        if wiped:
            self.note(f"dup_mmap: {wiped} VM_WIPEONFORK VMA(s) start empty in the child")
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
                npages = pages_of(r.length)
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
