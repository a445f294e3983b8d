"""Processes: fork, exit and setrlimit. Methods of Kernel (ForkOps).

Kernel sources: kernel/fork.c dup_mmap, mm/memory.c copy_page_range / copy_huge_pmd,
kernel/exit.c -> mm/mmap.c exit_mmap, kernel/sys.c do_prlimit, fs/file.c sysctl_nr_open.
"""
from __future__ import annotations

from model.errors import errno
from model.flags import (PTE_ANON, PTE_DIRTY, PTE_FILE, PTE_KIND, PTE_WRITE, PTE_YOUNG,
                         VM_DONTCOPY, VM_LOCKED, VM_LOCKONFAULT, VM_MAYWRITE, VM_SHARED,
                         VM_WIPEONFORK)
from model.mm import AddressSpace
from model.process import CAP_SYS_RESOURCE, Process
from model.vma import AnonVma, Vma


class ForkOps:
    """fork, exit, setrlimit (model.fork)."""

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
        child_mm.same_kernel_as(mm)
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
