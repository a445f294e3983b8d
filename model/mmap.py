"""mmap(2) and the accounting it shares with mprotect, mremap and mlock. Methods of Kernel
(MmapOps).

Kernel sources: arch/x86/kernel/sys_x86_64.c sys_mmap, mm/mmap.c (ksys_mmap_pgoff, do_mmap,
may_expand_vm, mlock_future_ok), mm/vma.c mmap_region / __mmap_region, mm/util.c
__vm_enough_memory, fs/hugetlbfs/inode.c hugetlbfs_file_mmap, mm/hugetlb.c
hugetlb_reserve_pages, arch/x86/mm/pkeys.c execute_only_pkey, mm/shmem.c shmem_zero_setup.
"""
from __future__ import annotations

from model.errors import StepError, errno
from model.flags import MAP_HUGE_MASK, MAP_HUGE_SHIFT, VM_LOCKONFAULT
from model.flags import (LEGACY_MAP_MASK, MAP, MAP_TYPE, PAGE_SHIFT, PAGE_SIZE, PROT_EXEC,
                         PROT_WRITE, VM_ACCOUNT, VM_DONTEXPAND, VM_EXEC, VM_GROWSDOWN, VM_HUGETLB,
                         VM_LOCKED, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_NORESERVE,
                         VM_PKEY_BIT0, VM_SHARED, VM_SYNC, VM_WRITE, calc_vm_flag_bits,
                         calc_vm_prot_bits)
from model.mm import TASK_SIZE, AddressSpace
from model.objects import DISK, SHMEM, TMPFS, Inode
from model.pages import page_align
from model.process import CAP_IPC_LOCK, Process, Region
from model.vma import OpenFile, Vma


def _mount_has(mount: dict | None, option: str) -> bool:
    """Whether a mount of the kernel profile (dev_shm, tmpdir_mount) has an option."""
    return bool(mount) and option in (mount.get("options") or ())


class MmapOps:
    """mmap and its limits and accounting (model.mmap)."""

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
        prot, flags, off = args["prot"], args["flags"], args["offset"]    # numbers (model.resolve)
        file = None
        src, ref = args["source"] or (None, None)
        if src == "file":
            self.alloc_fd(proc)        # the live side opens the file (O_RDWR) before mmap()
        # arch/x86/kernel/sys_x86_64.c: an unaligned offset fails before anything else
        if off & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        if src == "file":
            ino = self.files.get(ref)
            if ino is None:
                raise errno("ENOENT", f0)
            file = OpenFile(ino)                      # the live side opens the file O_RDWR
        elif src is not None:
            file = self.fd(proc, ref)
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
        addr = args["addr"]
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
        """mm/mmap.c do_mmap(), checks in the kernel's order. hugetlb: the hstate's pool of an
        anonymous MAP_HUGETLB mapping, whose file (hugetlbfs, opened O_RDWR) the model does not
        build."""
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
        vm_flags = calc_vm_prot_bits(prot) | pkey | calc_vm_flag_bits(flags, self.map_stack_nohugepage) | mm.def_flags \
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
