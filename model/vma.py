"""struct vm_area_struct and struct file as the model holds them, and the maps line
(fs/proc/task_mmu.c show_map_vma).

A VMA carries its own slice of the page table: `pte`, one byte per page (model.flags PTE_*
bits), and `anon`, the anonymous page id per page (0 where the entry maps no anonymous
page). Splitting a VMA splits these arrays; merging concatenates them.
"""
from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass, field

from model.flags import (PAGE_SHIFT, PAGE_SIZE, VM_EXEC, VM_MAYBE_GUARD, VM_MAYSHARE, VM_READ,
                         VM_SHARED, VM_WRITE)
from model.objects import Inode

_file_ids = itertools.count(1)
_anon_vma_ids = itertools.count(1)


@dataclass(eq=False)
class OpenFile:
    """struct file: one open of an inode. Two opens of one inode are different files
    (is_mergeable_vma compares vma->vm_file pointers, so their VMAs never merge)."""

    inode: Inode
    readable: bool = True
    writable: bool = True
    kind: str = "file"          # file | shm (a SysV attach: ipc/shm.c shm_file_operations)
    segment: object = None      # the SysV segment of a shm file
    ra: tuple | None = None     # file->f_ra: (start, size, async_size) of the last readahead
    ra_pages: int | None = None  # file->f_ra.ra_pages when fadvise changed it (None: the bdi's)
    id: int = field(default_factory=lambda: next(_file_ids))

    @property
    def fault_around(self) -> bool:
        """vm_ops->map_pages exists: filemap_map_pages for files and shmem
        (mm/shmem.c shmem_vm_ops); ipc/shm.c shm_vm_ops has none."""
        return self.kind != "shm"

    @property
    def write_notify(self) -> bool:
        """vma_wants_writenotify(): the filesystem has ->page_mkwrite (ext4 does, shmem
        does not), so shared writable PTEs start read-only and the first write faults."""
        return self.inode.write_notify


@dataclass(eq=False)
class AnonVma:
    """struct anon_vma. `forked`: a fork linked it into a child's chain (the VMA's
    anon_vma_chain is no longer singular, so reusable_anon_vma() refuses it)."""

    id: int = field(default_factory=lambda: next(_anon_vma_ids))
    forked: bool = False


class Vma:
    __slots__ = ("start", "end", "flags", "pgoff", "file", "anon_vma", "pte", "anon",
                 "opaque", "line", "special", "locked_count", "huge")

    def __init__(self, start: int, end: int, flags: int, pgoff: int = 0, file: OpenFile | None = None,
                 anon_vma: AnonVma | None = None, opaque: dict | None = None):
        self.start, self.end, self.flags, self.pgoff = start, end, flags, pgoff
        self.file = file
        self.anon_vma = anon_vma
        self.opaque = opaque          # a VMA of the snapshot the model does not model: its maps fields
        self.special = opaque is not None
        n = (end - start) >> PAGE_SHIFT
        self.pte = bytearray(n) if opaque is None else None
        self.anon = None              # array('q') created on the first anonymous page
        self.huge: dict[int, str] = {}  # page index of a PMD-mapped 2 MiB block -> "anon" | "zero"

    # ----- geometry ---------------------------------------------------------------------------
    @property
    def pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def index(self, addr: int) -> int:
        return (addr - self.start) >> PAGE_SHIFT

    def file_index(self, i: int) -> int:
        """linear_page_index(): the file page behind page i of this VMA."""
        return self.pgoff + i

    @property
    def is_anonymous(self) -> bool:
        """vma_is_anonymous(): no vm_ops. Shared anonymous memory is a shmem file."""
        return self.file is None and self.opaque is None

    def anon_array(self) -> array:
        if self.anon is None:
            self.anon = array("q", bytes(8 * self.pages))
        return self.anon

    def split_at(self, addr: int) -> "Vma":
        """__split_vma(): this VMA keeps [start, addr); returns the new [addr, end)."""
        k = (addr - self.start) >> PAGE_SHIFT
        new = Vma(addr, self.end, self.flags, self.pgoff + k, self.file, self.anon_vma)
        # a PMD mapping that the split cuts through is split first (vma_adjust_trans_huge ->
        # split_huge_pmd); whole blocks move with their half
        for a, kind in list(self.huge.items()):
            if a < k < a + 512:
                del self.huge[a]
            elif a >= k:
                del self.huge[a]
                new.huge[a - k] = kind
        new.pte = self.pte[k:]
        del self.pte[k:]
        if self.anon is not None:
            new.anon = self.anon[k:]
            del self.anon[k:]
        self.end = addr
        return new

    def absorb(self, nxt: "Vma") -> None:
        """Merge the adjacent nxt (which starts at our end) into this VMA."""
        assert nxt.start == self.end
        if self.anon is not None or nxt.anon is not None:
            self.anon_array().extend(nxt.anon_array())
        for a, kind in nxt.huge.items():
            self.huge[a + self.pages] = kind
        self.pte.extend(nxt.pte)
        self.end = nxt.end
        if self.anon_vma is None:
            self.anon_vma = nxt.anon_vma
        # VM_STICKY (6.18: VM_MAYBE_GUARD): the merged VMA keeps it if either side had it
        self.flags |= nxt.flags & VM_MAYBE_GUARD

    # ----- rendering --------------------------------------------------------------------------
    def perms(self) -> str:
        if self.opaque is not None:
            return self.opaque["perms"]
        f = self.flags
        return ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") \
            + ("x" if f & VM_EXEC else "-") + ("s" if f & VM_MAYSHARE else "p")

    def fields(self) -> dict:
        """What show_map_vma() prints: perms, offset, dev, inode, path."""
        if self.opaque is not None:
            o = self.opaque
            return {"perms": o["perms"], "offset": o["offset"], "dev": o["dev"], "inode": o["inode"],
                    "path": o["path"]}
        if self.file is None:
            return {"perms": self.perms(), "offset": 0, "dev": "00:00", "inode": 0, "path": ""}
        ino = self.file.inode
        path = ino.name + (" (deleted)" if ino.deleted else "")
        return {"perms": self.perms(), "offset": self.pgoff << PAGE_SHIFT, "dev": ino.dev,
                "inode": ino.ino, "path": path}

    def __repr__(self) -> str:
        f = self.fields()
        return f"<Vma {self.start:x}-{self.end:x} {f['perms']} {f['path']}>"


MAPS_PAD_WIDTH = 73


def render_maps_line(start: int, end: int, f: dict) -> str:
    """fs/proc/task_mmu.c show_vma_header_prefix() then, with a name, seq_pad() to column 73."""
    major, _, minor = f["dev"].partition(":")
    head = (f"{start:08x}-{end:08x} {f['perms']} {f['offset']:08x} "
            f"{int(major, 16):02x}:{int(minor, 16):02x} {f['inode']} ")
    if not f["path"]:
        return head
    return head.ljust(MAPS_PAD_WIDTH - 1) + " " + f["path"]


def shared_flags(vma: Vma) -> bool:
    return bool(vma.flags & VM_SHARED)


PAGE = PAGE_SIZE
