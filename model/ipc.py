"""System V shared memory (ipc/shm.c) in the model.

A segment is a shmem file made by shmem_kernel_file_setup("SYSV%08x") on the internal shm
mount: it has no name in any directory, so its maps lines always end in " (deleted)". Each
shmat opens a new struct file on that inode (do_shmat -> alloc_file_clone), so two attaches
never merge. nattch counts the VMAs that map the segment (shm_open() runs for every new VMA:
attach, split, fork; shm_close() for every VMA that goes). IPC_RMID sets SHM_DEST and makes
the key IPC_PRIVATE; the segment is destroyed at once when nothing is attached, else at the
last detach (shm_destroy).

Shmids follow ipc/util.c ipc_idr_alloc() in a fresh IPC namespace (ipc_init_ids: seq 0,
last_idx -1), which is what a hermetic run has (shmkit.isolation): the index comes from
idr_alloc_cyclic() below max(in_use * 3/2, ipc_min_cycle) capped at ipc_mni, the sequence
number grows each time the index does not move up, shmid = (seq << ipcmni_seq_shift()) + idx.
In the prefix mode the host's IDR is shared with every other process, and shmids are symbols
in the normal form.

This file also holds glibc's shm_open() name rule (shm_name), applied before the kernel sees a
POSIX shm name."""
from __future__ import annotations

import itertools

from model.flags import SHM_EXEC, SHM_RDONLY, SHM_REMAP, SHM_RND, SHMCTL_CMD, c_int  # model.resolve's numbers

from model.errors import StepError, errno
from model.flags import PAGE_SHIFT, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, MAP
from model.objects import SHMEM, Inode
from model.pages import page_align, pages_of
from model.process import Region
from model.vma import OpenFile

SHM_DEST, SHM_LOCKED = 0o1000, 0o2000
IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
SHMMIN = 1
# ipc/util.h: IPCMNI_SHIFT 15 (IPCMNI_EXTEND_SHIFT 24 only with the ipcmni_extend boot option),
# ipc_min_cycle = RADIX_TREE_MAP_SIZE (64), ipcid_seq_max() = INT_MAX >> ipcmni_seq_shift()
IPCMNI_SHIFT = 15
IPCMNI = 1 << IPCMNI_SHIFT
IPC_MIN_CYCLE = 64
SEQ_MAX = 0x7FFFFFFF >> IPCMNI_SHIFT

# glibc (posix/shm-directory.c, measured with 2.36): the name is copied after "/dev/shm/" into
# a buffer of sizeof(SHMDIR) + 4 + NAME_MAX + 1 = 270 bytes
NAME_MAX = 255
_SHMDIR = "/dev/shm/"
_SHM_NAME_BUF = len(_SHMDIR) + 1 + 4 + NAME_MAX + 1


def shm_name(name: str) -> tuple[str | None, str]:
    """glibc __shm_get_name() then the kernel's path walk, for shm_open/shm_unlink:
    (errno name or None, the name in /dev/shm). Leading slashes are skipped; an empty rest or
    one holding a slash is EINVAL; a rest the 270-byte buffer cannot hold (more than 260 bytes)
    is EINVAL in glibc 2.36; a rest of 256..260 bytes reaches open() and the kernel refuses the
    component (fs/namei.c: longer than NAME_MAX) with ENAMETOOLONG. Lengths are in bytes."""
    rest = name.lstrip("/")
    size = len(rest.encode("utf-8", "surrogateescape"))
    if not rest or "/" in rest:
        return "EINVAL", rest
    if len(_SHMDIR) + size + 1 > _SHM_NAME_BUF:
        return "EINVAL", rest
    if size > NAME_MAX:
        return "ENAMETOOLONG", rest
    return None, rest


class IdrAllocator:
    """ipc/util.c ipc_idr_alloc() over lib/idr.c idr_alloc_cyclic()."""

    def __init__(self):
        self.seq = 0
        self.last_idx = -1
        self.next = 0              # idr->idr_next
        self.used: set[int] = set()

    def alloc(self) -> int | None:
        """A new shmid, None when no index is free (ENOSPC)."""
        max_idx = min(max(len(self.used) * 3 // 2, IPC_MIN_CYCLE), IPCMNI)
        idx = self._lowest_free(self.next, max_idx)
        if idx is None and self.next > 0:
            idx = self._lowest_free(0, max_idx)
        if idx is None:
            return None
        self.next = idx + 1
        if idx <= self.last_idx:
            self.seq += 1
            if self.seq >= SEQ_MAX:
                self.seq = 0
        self.last_idx = idx
        self.used.add(idx)
        return (self.seq << IPCMNI_SHIFT) + idx

    def _lowest_free(self, start: int, end: int) -> int | None:
        for i in range(start, end):
            if i not in self.used:
                return i
        return None

    def free(self, shmid: int) -> None:
        """ipc_rmid -> idr_remove."""
        self.used.discard(shmid & (IPCMNI - 1))


class Segment:
    def __init__(self, key: int, shmid: int, size: int, mode: int, cpid: int, uid: int, inode: Inode):
        self.key, self.shmid, self.size, self.mode = key, shmid, size, mode
        self.cpid, self.uid, self.inode = cpid, uid, inode
        self.cuid = uid           # shm_perm.cuid: the creator (IPC_SET changes uid, never cuid)
        self.nattch = 0
        self.destroyed = False
        self.lock_uid = None      # shp->mlock_ucounts: the user SHM_LOCK charged, or None


class SysV:
    def __init__(self, kernel):
        self.k = kernel
        self.segments: dict[int, Segment] = {}
        self.ids = IdrAllocator()
        # UCOUNT_RLIMIT_MEMLOCK per user: pages of SHM_LOCKed segments (mm/mlock.c user_shm_lock).
        # The count is system-wide per user; the model starts it at 0 (what the kernel holds for
        # the user from other processes cannot be observed).
        self.shm_locked: dict[int, int] = {}

    def _err(self, name):
        return errno(name)

    # ----- attach counting ----------------------------------------------------------------------
    def opened(self, seg: Segment) -> None:
        seg.nattch += 1

    def closed(self, seg: Segment) -> None:
        seg.nattch -= 1
        if seg.nattch == 0 and seg.mode & SHM_DEST:
            self.destroy(seg)

    def destroy(self, seg: Segment) -> None:
        """shm_destroy(): the segment and its pages go; shmem_lock(file, 0) gives a locked
        segment's pages back to the user that locked it."""
        self._shm_unlock(seg)
        seg.destroyed = True
        self.segments.pop(seg.shmid, None)
        self.ids.free(seg.shmid)
        self.k.note("shm_destroy: the segment is freed")

    def _ipcperms(self, proc, seg: Segment, want: int) -> bool:
        """ipc/util.c ipcperms(): owner, group or other bits, or CAP_IPC_OWNER."""
        if proc.privileged:
            return True
        granted = seg.mode >> 6 if proc.uid == seg.uid else seg.mode
        return (want & ~granted & 0o7) == 0

    # ----- system calls -------------------------------------------------------------------------
    def shmget(self, proc, args):
        """ipc/shm.c ksys_shmget -> ipcget: newseg() or an existing key (shm_more_checks)."""
        key, size, flg = args["key"], args["size"], args["flags"]     # model.resolve
        existing = None
        if key != 0:
            existing = next((s for s in self.segments.values() if s.key == key), None)
        if existing is None:
            if key != 0 and not flg & IPC_CREAT:
                raise self._err("ENOENT")
            if size < SHMMIN or size > self.k.shmmax:
                raise self._err("EINVAL")
            numpages = pages_of(size)        # newseg(): the segment keeps size; pages rounded up
            tot = sum(pages_of(s.size) for s in self.segments.values())
            if tot + numpages < tot or tot + numpages > self.k.shmall:
                raise self._err("ENOSPC")
            if len(self.segments) >= self.k.shmmni:
                raise self._err("ENOSPC")
            shmid = self.ids.alloc()
            if shmid is None:
                raise self._err("ENOSPC")
            # newseg(): file_inode(file)->i_ino = shp->shm_perm.id: maps shows the shmid as inode
            ino = Inode(SHMEM, shmid, self.k.dev[SHMEM], size, f"/SYSV{key & 0xFFFFFFFF:08x}")
            ino.deleted = True
            seg = Segment(key, shmid, size, flg & 0o777, proc.pid, proc.uid, ino)
            self.segments[seg.shmid] = seg
            self.k.note("newseg: a new segment backed by a shmem file SYSV%08x" % (key & 0xFFFFFFFF))
            return None, {"shmid": seg.shmid}
        if flg & IPC_CREAT and flg & IPC_EXCL:
            raise self._err("EEXIST")
        want = (flg >> 6 | flg >> 3 | flg) & 0o7
        if not self._ipcperms(proc, existing, want):
            raise self._err("EACCES")
        if existing.size < size:
            raise self._err("EINVAL")
        return None, {"shmid": existing.shmid}

    def _lookup(self, shmid):
        seg = self.segments.get(shmid)
        if seg is None:
            raise self._err("EINVAL")
        return seg

    def shmat(self, proc, args):
        """ipc/shm.c do_shmat(): a MAP_SHARED mapping of a new file on the segment's inode."""
        # SYSCALL_DEFINE3(shmat, int, shmid, ...): the shmid is an int
        seg = self.segments.get(c_int(args["shmid"]))  # do_shmat: shm_obtain_object_check
        if seg is None:
            raise self._err("EINVAL")
        addr = args["addr"]
        readonly = bool(args["flags"] & SHM_RDONLY)
        remap = bool(args["flags"] & SHM_REMAP)
        exe = bool(args["flags"] & SHM_EXEC)
        flags = MAP["SHARED"]
        if addr:
            if addr & (PAGE_SIZE - 1):
                if args["flags"] & SHM_RND:
                    addr &= ~(PAGE_SIZE - 1)
                    if not addr and remap:
                        raise self._err("EINVAL")   # SHM_RND|SHM_REMAP rounded down to 0
                else:
                    raise self._err("EINVAL")
            flags |= MAP["FIXED"]
        elif remap:
            raise self._err("EINVAL")               # SHM_REMAP needs an address
        # SHM_EXEC: PROT_EXEC, and the segment's mode must grant execute (S_IXUGO)
        want = 0o4 | (0 if readonly else 0o2) | (0o1 if exe else 0)
        if not self._ipcperms(proc, seg, want):
            raise self._err("EACCES")
        size = seg.inode.size
        if addr and not remap and proc.mm.overlapping(addr, addr + size):
            raise self._err("EINVAL")               # SHM_REMAP: MAP_FIXED replaces what is there
        f = OpenFile(seg.inode, readable=True, writable=not readonly, kind="shm", segment=seg)
        prot = PROT_READ | (0 if readonly else PROT_WRITE) | (PROT_EXEC if exe else 0)
        try:
            faults, value = self.k.do_mmap(proc, f, addr, size, prot, flags, 0, "shmat")
        except StepError:
            raise
        # the region is as large as the handle's shmget asked for (the live side's convention,
        # model.resolve "size"), even when the key found a larger existing segment
        size = args.get("size") or seg.size
        proc.regions[args["as"]] = Region(value["addr"], size, "shmat")
        self.k.note("do_shmat: do_mmap of the segment's shm file (MAP_SHARED)")
        return faults, value

    def shmdt(self, proc, args):
        """ipc/shm.c ksys_shmdt(): an unaligned address is EINVAL. From the VMA at or above
        addr (for_each_vma from addr) upward, the first shm VMA whose offset equals its
        distance from addr ((vm_start - addr) / PAGE_SIZE == vm_pgoff, unsigned: a VMA
        starting below addr never matches) is unmapped and gives the segment's file and size;
        none is EINVAL. Then every following VMA while vm_end - addr <= PAGE_ALIGN(size) is
        unmapped when it is a shm VMA of that same file with a matching offset. So the rest of
        an attach whose first pages were unmapped is detached too (measured: nattch drops to
        0), and an attach right above, which ends past addr + size, stays."""
        f0 = self.k._faults()
        addr = args["addr"]
        if addr & (PAGE_SIZE - 1):
            raise errno("EINVAL", f0)
        mm = proc.mm

        def matches(v):
            return v.file is not None and v.file.kind == "shm" and v.start >= addr \
                and (v.start - addr) >> PAGE_SHIFT == v.pgoff

        above = sorted((v for v in mm.vmas if v.end > addr), key=lambda v: v.start)
        first = next((n for n, v in enumerate(above) if matches(v)), None)
        if first is None:
            raise errno("EINVAL", f0)
        file = above[first].file
        size = page_align(file.inode.size)
        gone = [above[first]]
        for v in above[first + 1:]:
            if v.end - addr > size:
                break
            if matches(v) and v.file is file:
                gone.append(v)
        for v in gone:
            self.k.unmap_vmas(proc, v.start, v.end)
        r = self.k.whole_region(proc, args)
        if r is not None:
            r.mapped = False
        self.k.note(f"ksys_shmdt: {len(gone)} VMA(s) of the attach unmapped; nattch drops (shm_close)")
        return f0, None

    def shmctl(self, proc, args):
        # SYSCALL_DEFINE3(shmctl, int, shmid, int, cmd, ...): both are ints
        shmid, number = c_int(args["shmid"]), c_int(args["cmd"])
        # ipc/shm.c ksys_shmctl(): a negative cmd or shmid is EINVAL before anything else; the
        # commands it knows besides these five (IPC_INFO 3, SHM_STAT 13, SHM_INFO 14,
        # SHM_STAT_ANY 15) are not modelled; any other is EINVAL (the switch's default)
        if number < 0 or shmid < 0:
            raise self._err("EINVAL")
        cmd = next((n for n, v in SHMCTL_CMD.items() if v == number), None)
        if cmd is None:
            if number in (3, 13, 14, 15):
                raise StepError({"error": f"model: shmctl cmd {number} is not modelled"})
            raise self._err("EINVAL")
        seg = self.segments.get(shmid)
        if seg is None:
            raise self._err("EINVAL")
        if cmd == "rmid":
            if not (proc.privileged or proc.uid == seg.uid):
                raise self._err("EPERM")
            seg.mode |= SHM_DEST
            seg.key = 0
            self.k.note("IPC_RMID: SHM_DEST set, key made IPC_PRIVATE")
            if seg.nattch == 0:
                self.destroy(seg)
            return None
        if cmd == "stat":
            if not self._ipcperms(proc, seg, 0o4):
                raise self._err("EACCES")
            return None, {"size": seg.size, "nattch": seg.nattch, "mode": oct(seg.mode & 0o7777)}
        if cmd in ("lock", "unlock"):
            return self._do_lock(proc, seg, cmd == "lock")
        if cmd == "set":
            # shmctl_down -> ipcctl_obtain_check(): CAP_SYS_ADMIN, the creator or the owner,
            # else EPERM; ipc_update_perm() takes the permission bits (S_IRWXUGO) of the new
            # mode, keeping SHM_DEST and SHM_LOCKED
            if not (proc.privileged or proc.uid in (seg.uid, seg.cuid)):
                raise self._err("EPERM")
            seg.mode = (seg.mode & ~0o777) | (args["mode"] & 0o777)
            self.k.note("IPC_SET: the segment's permission bits are replaced")
            return None
        raise self._err("EINVAL")

    def _do_lock(self, proc, seg: Segment, lock: bool):
        """ipc/shm.c shmctl_do_lock(): without CAP_IPC_LOCK only the owner or creator
        (EPERM), and SHM_LOCK needs a nonzero RLIMIT_MEMLOCK (EPERM). SHM_LOCK ->
        mm/shmem.c shmem_lock() -> mm/mlock.c user_shm_lock(): the segment's pages are
        charged to the caller's user, ENOMEM when that user's total passes RLIMIT_MEMLOCK
        (unless CAP_IPC_LOCK); an already locked segment is not charged again. SHM_UNLOCK
        of a locked segment uncharges the user that locked it; of an unlocked one it does
        nothing. Neither faults pages in nor touches the attaches' VMAs."""
        limit = proc.rlimit("memlock")
        lock_cap = self.k.capable(proc, 14)     # CAP_IPC_LOCK
        if not lock_cap:
            if proc.uid != seg.uid:
                raise self._err("EPERM")
            if lock and limit == 0:
                raise self._err("EPERM")
        if not lock:
            if seg.mode & SHM_LOCKED:
                self._shm_unlock(seg)
                seg.mode &= ~SHM_LOCKED
                self.k.note("SHM_UNLOCK: SHM_LOCKED cleared, the pages uncharged (user_shm_unlock)")
            return None
        if seg.lock_uid is None:
            pages = pages_of(seg.inode.size)
            total = self.shm_locked.get(proc.uid, 0) + pages
            if not lock_cap and limit is not None and total > limit >> PAGE_SHIFT:
                raise self._err("ENOMEM")
            self.shm_locked[proc.uid] = total
            seg.lock_uid = proc.uid
        seg.mode |= SHM_LOCKED
        self.k.note("SHM_LOCK: SHM_LOCKED set, the pages charged to the user (user_shm_lock)")
        return None

    def _shm_unlock(self, seg: Segment) -> None:
        """shmem_lock(file, 0, ucounts) -> user_shm_unlock()."""
        if seg.lock_uid is not None:
            pages = pages_of(seg.inode.size)
            self.shm_locked[seg.lock_uid] -= pages
            seg.lock_uid = None

    # ----- /proc/sysvipc/shm ----------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """sysvipc_shm_proc_show(): key, shmid, perms, size, cpid, nattch, rss (bytes)."""
        out = []
        # sysvipc_find_ipc() walks the IDR by index
        for seg in sorted(self.segments.values(), key=lambda s: s.shmid & (IPCMNI - 1)):
            out.append({"key": seg.key, "shmid": seg.shmid, "size": seg.size, "nattch": seg.nattch,
                        "perms": oct(seg.mode & 0o7777), "cpid": seg.cpid,
                        "rss": seg.inode.cached_pages() * PAGE_SIZE})
        return out

    def check(self) -> list[str]:
        count = {}
        for p in self.k.procs.values():
            for v in p.mm.vmas:
                if v.file is not None and v.file.segment is not None:
                    count[v.file.segment.shmid] = count.get(v.file.segment.shmid, 0) + 1
        return [f"SysV shmid {s.shmid}: nattch {s.nattch}, attached VMAs {count.get(s.shmid, 0)}"
                for s in self.segments.values() if s.nattch != count.get(s.shmid, 0)]
