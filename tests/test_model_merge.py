"""VMA merging in the model, ported from the kernel's own tests.

- tools/testing/vma (vma.c, split into tests/merge.c and tests/mmap.c in newer trees) drives
  mm/vma.c directly: vma_merge_new_range(), vma_merge_existing_range(), vma_expand()...
- tools/testing/selftests/mm/merge.c drives the same code from user space and reads the result
  back with PROCMAP_QUERY.

Only what user space can reach is ported: every scenario here is a sequence of mmap, munmap,
mprotect, madvise, mlock/munlock, mremap, fork, SysV shmat and page touches (a write fault gives
a VMA its anon_vma), run through model.kernel.Kernel.step() exactly as an experiment would.
The expected results are the kernel tests' (each checked on the live 6.18 kernel with the same
system calls and /proc/self/maps or smaps).

Every step is drawn before it runs, the way the kernel tests draw their cases:

    0123456789ab
    AA B   CC  D
      A [0x0-0x2000) rw-p pgoff=0x0 ac anon_vma=av1

Page 0 of a picture is BASE. Letters name the VMAs in address order ('.' is a PROT_NONE VMA,
as merge.c's carve-out). The pgoff of a private anonymous VMA is printed relative to
BASE >> PAGE_SHIFT (the kernel sets it to addr >> PAGE_SHIFT), so it reads like the vm_pgoff
values of tools/testing/vma; a file VMA's pgoff is its file offset in pages. anon_vma=avN
names the anon_vma objects in order of appearance ('forked' when the anon_vma_chain is not
singular). Failures print every picture of the scenario.

Not portable from user space: test_vma_merge_special_flags (VM_IO, VM_PFNMAP, VM_MIXEDMAP,
VM_DONTEXPAND come from drivers), test_vmi_prealloc_fail (allocation failure injection),
test_expand_only_mode (VMG_FLAG_JUST_EXPAND: relocate_vma_down at exec), the VM_STICKY
permutations of test_merge_new, the close-hook variants where prev and vma lack ->close but next
has it (one struct file means one vm_ops), merge.c's ksm_merge second half (PR_SET_MEMORY_MERGE)
and handle_uprobe_upon_merged_vma (uprobes).
"""
from __future__ import annotations

import pytest

from model.resolve import Direct, run_step
from model.flags import (
    PAGE_SHIFT,
    PAGE_SIZE,
    VM_ACCOUNT,
    VM_DONTCOPY,
    VM_LOCKED,
    VM_NORESERVE,
    VM_RAND_READ,
    VMFLAG_NAMES,
)
from model.kernel import Kernel
from model.synthetic import profile, snapshot

PAGE = PAGE_SIZE
BASE = 0x7E0000000000        # page 0 of every picture: free in model/synthetic.py snapshot()
ANON = ("PRIVATE", "ANONYMOUS")
_BASIC = 0xFF                # rwx, shared, may* bits: shown as perms, not as flag names
_UNSET = object()


class Scene:
    """One model kernel and one process's window [BASE, BASE + width pages), driven by page
    numbers. Every step is drawn (before it runs) into a shared story; every step must succeed
    (or fail as expected) and leave Kernel.check() empty."""

    def __init__(self, width: int = 16, carveout: bool = False, *, _parent: Scene | None = None,
                 proc: str = "main", release: tuple | None = None):
        self.proc, self.width = proc, width
        if _parent is not None:
            self.k, self.log, self.counter = _parent.k, _parent.log, _parent.counter
            self.names = _parent.names
            self.direct = _parent.direct
            return
        prof = profile()
        if release is not None:
            prof["release_tuple"] = list(release)
        self.k = Kernel(prof, snapshot())
        self.direct = Direct()                # the model on its own: a file's name is its path
        self.log: list[str] = []
        self.counter = [0]
        self.names: dict[int, str] = {}      # id(AnonVma) -> "avN", stable over the scenario
        # The window is one region handle "w" (merge.c's carve-out): mapped PROT_NONE, and
        # unmapped again unless the scenario keeps the carve-out.
        self._step("mmap", {"as": "w", "length": width * PAGE, "prot": "none",
                            "flags": ANON + ("FIXED",), "addr": ("abs", BASE)},
                   f"carve out pages [0, {width:#x}) PROT_NONE")
        if not carveout:
            self._step("munmap", {"region": "w", "pages": (0, width)}, "unmap the carve-out")

    # ----- drawing ----------------------------------------------------------------------------
    def vmas(self):
        return [v for v in self.k.procs[self.proc].mm.vmas if v.opaque is None]

    def _labels(self) -> dict[int, str]:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        out, i = {}, 0
        for v in self.vmas():
            if v.perms().startswith("---"):
                out[id(v)] = "."
            else:
                out[id(v)] = letters[i % len(letters)]
                i += 1
        return out

    def row(self) -> str:
        labels = self._labels()
        cells = []
        for p in range(self.width):
            v = self.at(p)
            cells.append(" " if v is None else labels[id(v)])
        return "".join(cells)

    def _anon_name(self, av) -> str:
        if av is None:
            return "-"
        name = self.names.setdefault(id(av), f"av{len(self.names) + 1}")
        return name + (" (forked)" if av.forked else "")

    def describe(self, v) -> str:
        rel = v.start - BASE
        pgoff = v.pgoff - (BASE >> PAGE_SHIFT) if v.file is None else v.pgoff
        extra = [name for bit, name in VMFLAG_NAMES.items() if bit & ~_BASIC and v.flags & bit]
        what = "" if v.file is None else f" file={v.file.inode.name}#{v.file.id}"
        return (f"[{rel:#x}-{v.end - BASE:#x}) {v.perms()} pgoff={pgoff:#x}"
                f"{' ' + ' '.join(extra) if extra else ''}{what} anon_vma={self._anon_name(v.anon_vma)}")

    def picture(self) -> str:
        hi = "".join(f"{p >> 4:x}" if p % 16 == 0 else " " for p in range(self.width))
        lo = "".join(f"{p % 16:x}" for p in range(self.width))
        labels = self._labels()
        lines = ([f"    {hi}"] if self.width > 16 else []) + [f"    {lo}", f"    {self.row()}"]
        lines += [f"      {labels[id(v)]} {self.describe(v)}" for v in self.vmas()]
        return "\n".join(lines)

    def story(self) -> str:
        return "\n".join(self.log + [f"--- now ({self.proc}):", self.picture()])

    # ----- steps ------------------------------------------------------------------------------
    def _step(self, do: str, args: dict, what: str, expect="ok") -> dict:
        self.counter[0] += 1
        n = self.counter[0]
        self.log.append(f"--- before step {n} ({self.proc}): {what}\n{self.picture()}")
        out = run_step(self.k, {"index": n, "do": do, "in": self.proc, "args": args}, self.direct)
        assert out["result"] == expect, f"step {n} {what}: {out['result']}, expected {expect}\n{self.story()}"
        problems = self.k.check()
        assert problems == [], f"check() after step {n} {what}: {problems}\n{self.story()}"
        return out

    def _pages(self, page: int, n: int) -> dict:
        return {"region": "w", "pages": (page, page + n)}

    def mmap(self, page: int, n: int, prot: str = "rw", *, noreserve: bool = False,
             fd: str | None = None, offset: int = 0, shared: bool = False, expect="ok") -> dict:
        flags = ("SHARED" if shared else "PRIVATE",) + (() if fd else ("ANONYMOUS",)) + ("FIXED",) \
            + (("NORESERVE",) if noreserve else ())
        args = {"as": f"m{self.counter[0] + 1}", "length": n * PAGE, "prot": prot, "flags": flags,
                "addr": ("abs", BASE + page * PAGE)}
        if fd:
            args.update(fd=fd, offset=offset * PAGE)
        return self._step("mmap", args, f"mmap [{page:#x}, {page + n:#x}) {prot} {'|'.join(flags)}"
                          + (f" fd={fd} offset={offset} pages" if fd else ""), expect)

    def munmap(self, page: int, n: int):
        return self._step("munmap", self._pages(page, n), f"munmap [{page:#x}, {page + n:#x})")

    def mprotect(self, page: int, n: int, prot: str):
        return self._step("mprotect", dict(self._pages(page, n), prot=prot),
                          f"mprotect [{page:#x}, {page + n:#x}) {prot}")

    def touch(self, page: int, n: int = 1):
        return self._step("touch", dict(self._pages(page, n), access="write", value=0x78),
                          f"write to page(s) [{page:#x}, {page + n:#x})")

    def madvise(self, page: int, n: int, advice: str):
        return self._step("madvise", dict(self._pages(page, n), advice=advice),
                          f"madvise [{page:#x}, {page + n:#x}) MADV_{advice.upper()}")

    def mlock(self, page: int, n: int):
        return self._step("mlock", self._pages(page, n), f"mlock [{page:#x}, {page + n:#x})")

    def munlock(self, page: int, n: int):
        return self._step("munlock", self._pages(page, n), f"munlock [{page:#x}, {page + n:#x})")

    def mremap(self, page: int, old: int, new: int, *flags: str, to: int | None = None) -> int:
        args = dict(self._pages(page, old), length=new * PAGE, flags=flags,
                    addr=None if to is None else ("abs", BASE + to * PAGE))
        out = self._step("mremap", args, f"mremap [{page:#x}, {page + old:#x}) to {new} pages "
                         f"{'|'.join(flags) or '(in place)'}" + ("" if to is None else f" at {to:#x}"))
        # a region handle follows what mremap moved; "w" stays the window the pages count in
        w = self.k.procs[self.proc].regions["w"]
        w.addr, w.length = BASE, self.width * PAGE
        return (out["value"]["addr"] - BASE) // PAGE

    def fork(self, child: str = "kid") -> Scene:
        self._step("fork", {"child": child}, f"fork -> {child}")
        return Scene(self.width, _parent=self, proc=child)

    def file(self, path: str, npages: int, handle: str):
        self._step("file", {"name": path, "size": npages * PAGE}, f"create {path} ({npages} pages)")
        self._step("open", {"file": path, "as": handle}, f"open {path} as {handle}")

    def shm(self, page: int, npages: int, handle: str = "seg") -> str:
        self._step("shmget", {"as": handle, "key": "private", "size": npages * PAGE, "create": True},
                   f"shmget IPC_PRIVATE {npages} pages")
        self._step("shmat", {"as": handle + "@", "segment": handle, "addr": ("abs", BASE + page * PAGE)},
                   f"shmat at {page:#x}")
        return handle

    def nattch(self, handle: str = "seg") -> int:
        return self.k.ipc.segments[self.direct.shmid(handle)].nattch

    # ----- looking --------------------------------------------------------------------------
    def at(self, page: int):
        addr = BASE + page * PAGE
        return next((v for v in self.vmas() if v.start <= addr < v.end), None)

    def anon(self, page: int):
        return self.at(page).anon_vma

    def count(self) -> int:
        """VMAs of the process other than the snapshot's (mm->map_count of the scenario)."""
        return len(self.vmas())

    def expect_row(self, row: str, why: str = ""):
        assert self.row() == row, f"{why}\nexpected row {row!r}, got {self.row()!r}\n{self.story()}"

    def expect(self, page: int, span=None, perms=None, pgoff=None, anon=_UNSET, flags=0, noflags=0,
               why: str = ""):
        v = self.at(page)
        msg = f"{why}\nthe VMA at page {page:#x}\n{self.story()}"
        assert v is not None, msg
        if span is not None:
            assert ((v.start - BASE) // PAGE, (v.end - BASE) // PAGE) == span, msg
        if perms is not None:
            assert v.perms() == perms, msg
        if pgoff is not None:
            rel = v.pgoff - (BASE >> PAGE_SHIFT) if v.file is None else v.pgoff
            assert rel == pgoff, msg
        if anon is not _UNSET:
            assert v.anon_vma is anon, msg
        assert v.flags & flags == flags, msg
        assert not v.flags & noflags, msg
        return v


# =============================================================================================
# tools/testing/vma: mm/vma.c exercised directly, here through the system calls that reach it
# =============================================================================================

def test_simple_merge():
    """tools/testing/vma test_simple_merge: a new VMA filling the hole between two compatible
    VMAs merges with both (vma_merge_new_range, merge both sides)."""
    s = Scene(4)
    s.mmap(0, 1)
    s.mmap(2, 1)
    s.expect_row("A B ")
    s.mmap(1, 1)
    s.expect_row("AAA ")
    s.expect(0, span=(0, 3), pgoff=0, perms="rw-p", anon=None)
    assert s.count() == 1


def test_simple_modify():
    """tools/testing/vma test_simple_modify: vma_modify_flags() on the middle page of a VMA
    splits it in three; each part keeps the pgoff of its first page."""
    s = Scene(4)
    s.mmap(0, 3)
    s.mprotect(1, 1, "r")
    s.expect_row("ABC ")
    s.expect(0, span=(0, 1), pgoff=0, perms="rw-p")
    s.expect(1, span=(1, 2), pgoff=1, perms="r--p")
    s.expect(2, span=(2, 3), pgoff=2, perms="rw-p")


def test_simple_expand():
    """tools/testing/vma test_simple_expand: vma_expand() grows a VMA in place; from user space
    an mremap that grows into free space (vma_merge_extend -> vma_expand). The VMA is the same
    one, pgoff unchanged."""
    s = Scene(4)
    s.mmap(0, 1)
    before = s.at(0)
    s.mremap(0, 1, 3)
    s.expect_row("AAA ")
    assert s.expect(0, span=(0, 3), pgoff=0) is before, s.story()


def test_simple_shrink():
    """tools/testing/vma test_simple_shrink: vma_shrink(); from user space an mremap that
    shrinks in place (the tail is unmapped, the VMA keeps its start and pgoff)."""
    s = Scene(4)
    s.mmap(0, 3)
    before = s.at(0)
    s.mremap(0, 3, 1)
    s.expect_row("A   ")
    assert s.expect(0, span=(0, 1), pgoff=0) is before, s.story()


def test_merge_new():
    """tools/testing/vma test_merge_new: new VMAs merging with prev, next, both, or nothing.

    The kernel test gives A, B and C one dummy anon_vma; from user space they are the remains
    of one faulted VMA (so they share its anon_vma and their pgoffs line up). D is a new
    mapping; the kernel test gives it the dummy anon_vma too, here it stays unfaulted, which
    is as mergeable."""
    s = Scene(12)
    s.mmap(0, 12)
    s.touch(0)
    av = s.anon(0)
    s.munmap(2, 1)
    s.munmap(4, 7)
    s.expect_row("AA B       C")
    assert s.anon(3) is av and s.anon(0xb) is av, s.story()
    # NO merge: 0123456789ab / AA B   **   C
    s.mmap(7, 2)
    s.expect_row("AA B   CC  D", "no merge")
    assert s.count() == 4
    # Merge BOTH sides: AA*B   DD  C
    s.mmap(2, 1)
    s.expect_row("AAAA   BB  C", "merge both: A extended, B deleted")
    s.expect(0, span=(0, 4), pgoff=0, anon=av)
    assert s.count() == 3
    # Merge to PREVIOUS VMA: AAAA*  DD  C
    s.mmap(4, 1)
    s.expect_row("AAAAA  BB  C", "extend A")
    s.expect(0, span=(0, 5), pgoff=0, anon=av)
    assert s.count() == 3
    # Merge to NEXT VMA: AAAAA *DD  C
    s.mmap(6, 1)
    s.expect_row("AAAAA BBB  C", "prepend to D")
    s.expect(6, span=(6, 9), pgoff=6)
    assert s.count() == 3
    # Merge BOTH sides: AAAAA*DDD  C
    s.mmap(5, 1)
    s.expect_row("AAAAAAAAA  B", "merge with A, delete D")
    s.expect(0, span=(0, 9), pgoff=0, anon=av)
    assert s.count() == 2
    # Merge to NEXT VMA: AAAAAAAAA *C
    s.mmap(0xa, 1)
    s.expect_row("AAAAAAAAA BB", "prepend to C")
    s.expect(0xa, span=(0xa, 0xc), pgoff=0xa, anon=av)
    # Merge BOTH sides: AAAAAAAAA*CC
    s.mmap(9, 1)
    s.expect_row("AAAAAAAAAAAA", "extend A, delete C")
    s.expect(0, span=(0, 0xc), pgoff=0, anon=av, perms="rw-p")
    assert s.count() == 1


def test_mmap_region_basic():
    """tools/testing/vma (tests/mmap.c) test_mmap_region_basic: four __mmap_region() calls, the
    third and fourth merging with the first and second (0x300000 + 0x303000, 0x250000 +
    0x24d000 relative to BASE)."""
    s = Scene(4)
    for page in (0x300, 0x250, 0x303, 0x24d):
        s.mmap(page, 3)
    assert s.count() == 2, s.story()
    s.expect(0x300, span=(0x300, 0x306), pgoff=0x300)
    s.expect(0x24d, span=(0x24d, 0x253), pgoff=0x24d)


# ----- vm_ops->close: SysV shm (ipc/shm.c shm_vm_ops.close = shm_close) ---------------------

def test_vma_merge_with_close_whole_middle():
    """tools/testing/vma test_vma_merge_with_close, PPPVVNNNN where vma has ->close: a merge
    that would delete vma cannot proceed (can_merge_remove_vma). Every VMA of a SysV attach has
    shm_close; each split opened one more attach (__split_vma -> shm_open), so nattch counts
    the VMAs."""
    s = Scene(9)
    s.shm(0, 9)
    s.mprotect(3, 2, "r")
    s.expect_row("AAABBCCCC")
    assert s.nattch() == 3, s.story()
    s.mprotect(3, 2, "rw")
    s.expect_row("AAABBCCCC", "vma has ->close: no merge")
    for p in (0, 3, 5):
        s.expect(p, perms="rw-s")
    assert s.nattch() == 3, s.story()


def test_vma_merge_with_close_prev():
    """tools/testing/vma test_vma_merge_with_close, PPPVV where vma has ->close: merging vma
    into prev would delete vma, so nothing merges."""
    s = Scene(6)
    s.shm(0, 5)
    s.mprotect(3, 2, "r")
    s.mprotect(3, 2, "rw")
    s.expect_row("AAABB ", "vma has ->close: no merge with prev")
    s.expect(3, span=(3, 5), pgoff=3, perms="rw-s")
    assert s.nattch() == 2


def test_vma_merge_with_close_next():
    """tools/testing/vma test_vma_merge_with_close, VVNNNN where vma has ->close: merging vma
    into next would delete vma, so nothing merges."""
    s = Scene(7)
    s.shm(0, 6)
    s.mprotect(0, 2, "r")
    s.mprotect(0, 2, "rw")
    s.expect_row("AABBBB ", "vma has ->close: no merge with next")
    s.expect(0, span=(0, 2), pgoff=0)
    s.expect(2, span=(2, 6), pgoff=2)
    assert s.nattch() == 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_merge_existing_with_close_partial(side):
    """tools/testing/vma test_merge_existing, the partial-span cases where prev, vma and next
    have ->close ("This should have no impact"): PPPVVNNNN with <> over one page of V. The
    kernel extends the neighbour and shrinks vma, deleting nothing, so the merge goes ahead and
    nattch does not change."""
    s = Scene(9)
    s.shm(0, 9)
    s.mprotect(3, 2, "r")
    s.expect_row("AAABBCCCC")
    assert s.nattch() == 3, s.story()
    if side == "left":
        s.mprotect(3, 1, "rw")
        s.expect_row("AAAABCCCC", "prev extended, vma shrunk")
        s.expect(0, span=(0, 4), pgoff=0, perms="rw-s")
        s.expect(4, span=(4, 5), pgoff=4, perms="r--s")
    else:
        s.mprotect(4, 1, "rw")
        s.expect_row("AAABCCCCC", "next extended backwards, vma shrunk")
        s.expect(4, span=(4, 9), pgoff=4, perms="rw-s")
        s.expect(3, span=(3, 4), pgoff=3, perms="r--s")
    assert s.nattch() == 3, s.story()
    s.mprotect(0, 9, "rw")
    assert s.count() == 3 and s.nattch() == 3, "the whole middle VMA still cannot go\n" + s.story()


def test_vma_merge_new_with_close():
    """tools/testing/vma test_vma_merge_new_with_close: a new VMA between prev and next that
    both have ->close expands prev and leaves next intact (vma_merge_new_range: next may not be
    deleted). From user space: move a piece of a SysV attach away and back (MREMAP_FIXED;
    copy_vma -> vma_merge_new_range). Moving the first piece back prepends to next, which
    deletes nothing and is allowed."""
    s = Scene(9)
    s.shm(0, 9)
    assert s.mremap(3, 2, 2, "MAYMOVE", "FIXED", to=40) == 40
    s.expect_row("AAA  BBBB")
    s.expect(40, span=(40, 42), pgoff=3)
    assert s.nattch() == 3, s.story()
    s.mremap(40, 2, 2, "MAYMOVE", "FIXED", to=3)
    s.expect_row("AAAAABBBB", "prev expanded over the new range, next kept")
    s.expect(0, span=(0, 5), pgoff=0)
    s.expect(5, span=(5, 9), pgoff=5)
    assert s.nattch() == 2, s.story()
    s.mremap(0, 2, 2, "MAYMOVE", "FIXED", to=40)
    s.expect_row("  AAABBBB")
    s.mremap(40, 2, 2, "MAYMOVE", "FIXED", to=0)
    s.expect_row("AAAAABBBB", "the new range prepended to next")
    s.expect(0, span=(0, 5), pgoff=0)
    assert s.nattch() == 2, s.story()


# ----- modifying an existing range (vma_merge_existing_range), through mprotect ---------------

def _faulted_ro(s: Scene, page: int, n: int, **kw):
    """A read-only VMA that has an anon_vma: mapped rw, written, then made read-only."""
    s.mmap(page, n, **kw)
    s.touch(page)
    s.mprotect(page, n, "r")
    return s.anon(page)


def test_merge_existing_right_partial():
    """tools/testing/vma test_merge_existing, merge right with a partial span:
    VVVVNNN with <-> over the last three pages of V -> VNNNNNN; next takes vma's anon_vma
    (dup_anon_vma) and its pgoff moves back to 3."""
    s = Scene(10)
    av = _faulted_ro(s, 2, 4)
    s.mmap(6, 3)
    s.expect_row("  AAAABBB ")
    s.mprotect(3, 3, "rw")
    s.expect_row("  ABBBBBB ")
    s.expect(6, span=(3, 9), pgoff=3, anon=av, perms="rw-p")
    s.expect(2, span=(2, 3), pgoff=2, anon=av, perms="r--p")
    assert s.count() == 2


def test_merge_existing_right_full():
    """tools/testing/vma test_merge_existing, merge right with the full span: VVVVNNN ->
    NNNNNNN, vma deleted."""
    s = Scene(10)
    av = _faulted_ro(s, 2, 4)
    s.mmap(6, 3)
    s.mprotect(2, 4, "rw")
    s.expect_row("  AAAAAAA ")
    s.expect(2, span=(2, 9), pgoff=2, anon=av)
    assert s.count() == 1


def test_merge_existing_left_partial():
    """tools/testing/vma test_merge_existing, merge left with a partial span: PPPVVVV with <->
    over the first three pages of V -> PPPPPPV."""
    s = Scene(8)
    av = _faulted_ro(s, 3, 4)
    s.mmap(0, 3)
    s.expect_row("AAABBBB ")
    s.mprotect(3, 3, "rw")
    s.expect_row("AAAAAAB ")
    s.expect(0, span=(0, 6), pgoff=0, anon=av, perms="rw-p")
    s.expect(6, span=(6, 7), pgoff=6, anon=av, perms="r--p")


def test_merge_existing_left_full():
    """tools/testing/vma test_merge_existing, merge left with the full span: PPPVVVV ->
    PPPPPPP."""
    s = Scene(8)
    av = _faulted_ro(s, 3, 4)
    s.mmap(0, 3)
    s.mprotect(3, 4, "rw")
    s.expect_row("AAAAAAA ")
    s.expect(0, span=(0, 7), pgoff=0, anon=av)
    assert s.count() == 1


def test_merge_existing_both():
    """tools/testing/vma test_merge_existing, merge both: PPPVVVVNNN -> PPPPPPPPPP, vma and
    next deleted."""
    s = Scene(10)
    av = _faulted_ro(s, 3, 4)
    s.mmap(0, 3)
    s.mmap(7, 2)
    s.expect_row("AAABBBBCC ")
    s.mprotect(3, 4, "rw")
    s.expect_row("AAAAAAAAA ")
    s.expect(0, span=(0, 9), pgoff=0, anon=av)
    assert s.count() == 1


@pytest.mark.parametrize("start,end,row", [
    (4, 5, "AAABCDDDEE"), (5, 6, "AAABBCDDEE"), (6, 7, "AAABBBCDEE"),
    (4, 7, "AAABCCCDEE"), (4, 6, "AAABCCDDEE")])
def test_merge_existing_non_merge_ranges(start, end, row):
    """tools/testing/vma test_merge_existing, the non-merge ranges: a range touching neither
    end of vma cannot merge with prev or next even with their flags (PPPVVVVVNNN); vma splits.
    MAP_NORESERVE everywhere so the flags differ only in the protection."""
    s = Scene(10)
    s.mmap(0, 3, "r", noreserve=True)
    s.mmap(3, 5, "rw", noreserve=True)
    s.mmap(8, 2, "r", noreserve=True)
    s.expect_row("AAABBBBBCC")
    s.mprotect(start, end - start, "r")
    s.expect_row(row)
    s.expect(start, span=(start, end), pgoff=start, perms="r--p")
    s.expect(0, span=(0, 3))
    s.expect(8, span=(8, 10))


def test_anon_vma_non_mergeable_existing():
    """tools/testing/vma test_anon_vma_non_mergeable, modified VMA: prev and next have
    different anon_vmas, each compatible with vma's none, but not with each other
    (can_vma_merge_right -> are_anon_vmas_compatible): only prev and vma merge."""
    s = Scene(10)
    s.mmap(0, 3)
    s.touch(0)
    s.mmap(3, 4, "r")
    s.mmap(7, 2)
    s.touch(7)
    a, b = s.anon(0), s.anon(7)
    assert a is not None and b is not None and a is not b, s.story()
    s.expect_row("AAABBBBCC ")
    s.mprotect(3, 4, "rw")
    s.expect_row("AAAAAAABB ")
    s.expect(0, span=(0, 7), pgoff=0, anon=a)
    s.expect(7, span=(7, 9), pgoff=7, anon=b)


def test_anon_vma_non_mergeable_new():
    """tools/testing/vma test_anon_vma_non_mergeable, new VMA: PPP****NNN with incompatible
    anon_vmas in prev and next -> PPPPPPPNNN."""
    s = Scene(10)
    s.mmap(0, 3)
    s.touch(0)
    s.mmap(7, 2)
    s.touch(7)
    a, b = s.anon(0), s.anon(7)
    assert a is not b, s.story()
    s.mmap(3, 4)
    s.expect_row("AAAAAAABB ")
    s.expect(0, span=(0, 7), anon=a)
    s.expect(7, span=(7, 9), anon=b)


def test_dup_anon_vma_new_vma_expands_over_next():
    """tools/testing/vma test_dup_anon_vma, first case: expanding prev over next (the new-VMA
    merge) deletes next and gives prev next's anon_vma."""
    s = Scene(9)
    s.mmap(0, 3)
    s.mmap(5, 3)
    s.touch(5)
    av = s.anon(5)
    s.mmap(3, 2)
    s.expect_row("AAAAAAAA ")
    s.expect(0, span=(0, 8), pgoff=0, anon=av)


def test_dup_anon_vma_next_has_anon_vma():
    """tools/testing/vma test_dup_anon_vma, "next has anon_vma, we assign to prev": prev
    extends over vma and next, both deleted."""
    s = Scene(9)
    s.mmap(0, 3)
    s.mmap(3, 2, "r")
    s.mmap(5, 3)
    s.touch(5)
    av = s.anon(5)
    s.expect_row("AAABBCCC ")
    s.mprotect(3, 2, "rw")
    s.expect_row("AAAAAAAA ")
    s.expect(0, span=(0, 8), anon=av)


def test_dup_anon_vma_vma_has_anon_vma():
    """tools/testing/vma test_dup_anon_vma, "vma has anon_vma, we assign to prev" (merge
    both)."""
    s = Scene(9)
    av = _faulted_ro(s, 3, 2)
    s.mmap(0, 3)
    s.mmap(5, 3)
    s.expect_row("AAABBCCC ")
    s.mprotect(3, 2, "rw")
    s.expect_row("AAAAAAAA ")
    s.expect(0, span=(0, 8), anon=av)


def test_dup_anon_vma_prev_partial():
    """tools/testing/vma test_dup_anon_vma, "vma has anon_vma, we assign to prev": prev
    extends, vma shrinks."""
    s = Scene(9)
    av = _faulted_ro(s, 3, 5)
    s.mmap(0, 3)
    s.mprotect(3, 2, "rw")
    s.expect_row("AAAAABBB ")
    s.expect(0, span=(0, 5), anon=av)
    s.expect(5, span=(5, 8), anon=av)


def test_dup_anon_vma_next_partial():
    """tools/testing/vma test_dup_anon_vma, "vma has anon_vma, we assign to next": vma
    shrinks, next extends backwards and takes the anon_vma."""
    s = Scene(9)
    av = _faulted_ro(s, 0, 5)
    s.mmap(5, 3)
    assert s.anon(5) is None
    s.mprotect(3, 2, "rw")
    s.expect_row("AAABBBBB ")
    s.expect(3, span=(3, 8), pgoff=3, anon=av)
    s.expect(0, span=(0, 3), anon=av)


def test_merge_extend():
    """tools/testing/vma test_merge_extend: vma_merge_extend() grows a VMA into the gap before
    the next VMA and merges with it (mremap growing in place)."""
    s = Scene(5)
    s.mmap(0, 1)
    s.mmap(3, 1)
    first = s.at(0)
    s.expect_row("A  B ")
    s.mremap(0, 1, 3)
    s.expect_row("AAAA ")
    assert s.expect(0, span=(0, 4), pgoff=0) is first, s.story()
    assert s.count() == 1


def test_copy_vma_backwards_no_merge():
    """tools/testing/vma test_copy_vma, "Move backwards and do not merge": copy_vma of an
    unfaulted VMA takes the new address as its pgoff (nothing to keep in line)."""
    s = Scene(6)
    s.mmap(3, 2)
    s.mremap(3, 2, 2, "MAYMOVE", "FIXED", to=0)
    s.expect_row("AA    ")
    s.expect(0, span=(0, 2), pgoff=0)


def test_copy_vma_next_to_another_merges():
    """tools/testing/vma test_copy_vma, "Move a VMA into position next to another and merge
    the two" (copy_vma -> vma_merge_new_range)."""
    s = Scene(9)
    s.mmap(0, 2)
    s.mmap(6, 2)
    s.mremap(0, 2, 2, "MAYMOVE", "FIXED", to=4)
    s.expect_row("    AAAA ")
    s.expect(4, span=(4, 8), pgoff=4)
    assert s.count() == 1


# =============================================================================================
# tools/testing/selftests/mm/merge.c: the same rules from user space (30-page PROT_NONE
# carve-out, as FIXTURE_SETUP(merge))
# =============================================================================================

def merge_fixture(release: tuple | None = None) -> Scene:
    return Scene(30, carveout=True, release=release)


# Before 6.16 is_mergeable_anon_vma(src_anon, tgt->anon_vma, tgt) asked list_is_singular() of
# the *target's* anon_vma_chain, empty while the target is unfaulted: a faulted range never
# joined an unfaulted neighbour ("mm/vma: fix incorrectly disallowed anonymous VMA merges",
# 6.16: the three selftests below were added with it). Measured: 6.1 and 6.12 guests keep
# mmap-prot-write-only.toml's mprotected VMA apart from its unfaulted neighbour.
OLD_ANON_MERGE = (6, 12)


@pytest.mark.parametrize("case", ["left", "right", "both"])
def test_mprotect_unfaulted_neighbour_before_6_16(case):
    """The same scenarios as mprotect_unfaulted_left/right/both on a 6.12 kernel: nothing
    merges, each VMA keeps its own anon_vma (or none)."""
    s = merge_fixture(OLD_ANON_MERGE)
    if case == "left":
        s.mmap(1, 10, noreserve=True)
        s.mprotect(1, 5, "r")
        s.touch(6)
        s.mprotect(6, 5, "r")
        s.expect_row(".AAAAABBBBB" + "." * 19)
        s.expect(1, span=(1, 6), anon=None)
    elif case == "right":
        s.mmap(1, 10, noreserve=True)
        s.mprotect(6, 5, "r")
        s.touch(1)
        s.mprotect(1, 5, "r")
        s.expect_row(".AAAAABBBBB" + "." * 19)
        s.expect(6, span=(6, 11), anon=None)
    else:
        s.mmap(2, 9, noreserve=True)
        s.mprotect(2, 3, "r")
        s.mprotect(8, 3, "r")
        s.touch(5)
        s.mprotect(5, 3, "r")
        s.expect_row("..AAABBBCCC" + "." * 19)


def test_unfaulted_range_joins_faulted_neighbour_before_6_16():
    """The other direction was always allowed: an unfaulted range joins a faulted, unforked
    target (the target's chain is singular), taking its anon_vma, on 6.12 as on 6.18."""
    for release in (OLD_ANON_MERGE, None):
        s = merge_fixture(release)
        s.mmap(1, 10, noreserve=True)
        s.mprotect(1, 5, "r")
        s.touch(6)
        av = s.anon(6)
        s.expect_row(".AAAAABBBBB" + "." * 19)
        s.mprotect(1, 5, "rw")
        s.expect_row(".AAAAAAAAAA" + "." * 19)
        s.expect(1, span=(1, 11), anon=av)


def test_mprotect_unfaulted_left():
    """selftests/mm/merge.c mprotect_unfaulted_left: RO unfaulted | RW faulted; making the RW
    part RO merges (vma_merge_existing_range with prev lacking an anon_vma; "for ~15 years we
    did not")."""
    s = merge_fixture()
    s.mmap(1, 10, noreserve=True)
    s.mprotect(1, 5, "r")
    s.touch(6)
    av = s.anon(6)
    s.expect_row(".AAAAABBBBB" + "." * 19)
    s.mprotect(6, 5, "r")
    s.expect_row(".AAAAAAAAAA" + "." * 19)
    s.expect(1, span=(1, 11), perms="r--p", anon=av, flags=VM_NORESERVE)


def test_mprotect_unfaulted_right():
    """selftests/mm/merge.c mprotect_unfaulted_right: RW faulted | RO unfaulted -> one RO
    VMA."""
    s = merge_fixture()
    s.mmap(1, 10, noreserve=True)
    s.mprotect(6, 5, "r")
    s.touch(1)
    av = s.anon(1)
    s.mprotect(1, 5, "r")
    s.expect_row(".AAAAAAAAAA" + "." * 19)
    s.expect(1, span=(1, 11), anon=av)


def test_mprotect_unfaulted_both():
    """selftests/mm/merge.c mprotect_unfaulted_both: RO unfaulted | RW faulted | RO unfaulted
    -> one RO VMA."""
    s = merge_fixture()
    s.mmap(2, 9, noreserve=True)
    s.mprotect(2, 3, "r")
    s.mprotect(8, 3, "r")
    s.touch(5)
    av = s.anon(5)
    s.expect_row("..AAABBBCCC" + "." * 19)
    s.mprotect(5, 3, "r")
    s.expect_row("..AAAAAAAAA" + "." * 19)
    s.expect(2, span=(2, 11), anon=av)


def test_mprotect_faulted_left_unfaulted_right():
    """selftests/mm/merge.c mprotect_faulted_left_unfaulted_right."""
    s = merge_fixture()
    s.mmap(2, 9, noreserve=True)
    s.mprotect(8, 3, "r")
    s.touch(2)
    av = s.anon(2)
    s.mprotect(2, 3, "r")
    s.expect_row("..AAABBBCCC" + "." * 19)
    assert s.anon(5) is av and s.anon(8) is None, s.story()
    s.mprotect(5, 3, "r")
    s.expect_row("..AAAAAAAAA" + "." * 19)
    s.expect(2, span=(2, 11), anon=av)


def test_mprotect_unfaulted_left_faulted_right():
    """selftests/mm/merge.c mprotect_unfaulted_left_faulted_right."""
    s = merge_fixture()
    s.mmap(2, 9, noreserve=True)
    s.mprotect(2, 3, "r")
    s.touch(5)
    av = s.anon(5)
    s.mprotect(8, 3, "r")
    s.expect_row("..AAABBBCCC" + "." * 19)
    s.mprotect(5, 3, "r")
    s.expect_row("..AAAAAAAAA" + "." * 19)
    s.expect(2, span=(2, 11), anon=av)


def test_mprotect_unfaulted_left_accounted():
    """selftests/mm/merge.c mprotect_unfaulted_left without its MAP_NORESERVE ("so we don't hit
    merge failure due to lack of VM_ACCOUNT flag by mistake"): the kernel keeps two VMAs, the
    unfaulted one unaccounted."""
    s = merge_fixture()
    s.mmap(1, 10)
    s.mprotect(1, 5, "r")
    s.expect(1, span=(1, 6), noflags=VM_ACCOUNT, why="unfaulted, read-only: uncharged")
    s.touch(6)
    s.mprotect(6, 5, "r")
    s.expect_row(".AAAAABBBBB" + "." * 19)
    s.expect(6, span=(6, 11), flags=VM_ACCOUNT)


def test_forked_target_vma():
    """selftests/mm/merge.c forked_target_vma: in the child, a new VMA next to a VMA whose
    anon_vma came from fork does not merge (is_mergeable_anon_vma: the target's anon_vma_chain
    is not singular), even after every page was COW-broken."""
    s = merge_fixture()
    s.mmap(1, 5)
    s.touch(1)
    kid = s.fork()
    kid.touch(1, 5)
    assert kid.anon(1).forked, kid.story()
    kid.mmap(6, 5)
    kid.expect_row(".AAAAABBBBB" + "." * 19, "forked target: no merge")
    kid.expect(1, span=(1, 6))
    kid.expect(6, span=(6, 11), anon=None)


def test_forked_source_vma():
    """selftests/mm/merge.c forked_source_vma: mprotect of the forked VMA to match an
    unfaulted neighbour does not merge either (the source's chain is not singular)."""
    s = merge_fixture()
    s.mmap(1, 5, noreserve=True)
    s.touch(1)
    kid = s.fork()
    kid.touch(1, 5)
    kid.mmap(6, 5, "rwx", noreserve=True)
    kid.expect(6, span=(6, 11), perms="rwxp")
    kid.mprotect(1, 5, "rwx")
    kid.expect_row(".AAAAABBBBB" + "." * 19, "forked source: no merge")
    kid.expect(6, span=(6, 11), perms="rwxp", anon=None)
    kid.expect(1, span=(1, 6), perms="rwxp")


def test_ksm_merge_without_ksm():
    """selftests/mm/merge.c ksm_merge, the part before PR_SET_MEMORY_MERGE (not modelled): two
    adjacent RW mappings merge; after unmapping the second half a new mapping merges again."""
    s = merge_fixture()
    s.mmap(1, 1)
    s.mmap(2, 1)
    s.expect(1, span=(1, 3))
    s.munmap(2, 1)
    s.mmap(2, 1)
    s.expect(1, span=(1, 3))
    s.munmap(1, 2)
    s.mmap(1, 1)
    s.mmap(2, 1)
    s.expect_row(".AA" + "." * 27)
    s.expect(1, span=(1, 3))


MF = ("MAYMOVE", "FIXED")


def test_mremap_unfaulted_to_faulted():
    """selftests/mm/merge.c mremap_unfaulted_to_faulted: an unfaulted VMA moved next to a
    faulted one merges (copy_vma gives it pgoff = new address; the faulted VMA never moved)."""
    s = merge_fixture()
    s.mmap(1, 5)
    s.mmap(7, 5)
    assert s.mremap(7, 5, 5, *MF, to=7 + 1000) == 1007
    s.touch(1)
    av = s.anon(1)
    s.mremap(1007, 5, 5, *MF, to=6)
    s.expect(1, span=(1, 11), anon=av, pgoff=1)


def test_mremap_unfaulted_behind_faulted():
    """selftests/mm/merge.c mremap_unfaulted_behind_faulted: moved in front of the faulted
    VMA, the unfaulted one merges too (the faulted VMA's pgoff equals its address)."""
    s = merge_fixture()
    s.mmap(6, 5)
    s.mmap(14, 5)
    s.mremap(14, 5, 5, *MF, to=1014)
    s.touch(6)
    av = s.anon(6)
    s.mremap(1014, 5, 5, *MF, to=1)
    s.expect(1, span=(1, 11), anon=av, pgoff=1)


def test_mremap_unfaulted_between_faulted():
    """selftests/mm/merge.c mremap_unfaulted_between_faulted: between two VMAs with different
    anon_vmas the moved unfaulted VMA merges with the first only."""
    s = merge_fixture()
    s.mmap(1, 5)
    s.mmap(7, 5)
    s.mmap(14, 5)
    s.mremap(14, 5, 5, *MF, to=2014)
    s.mremap(7, 5, 5, *MF, to=1007)
    s.touch(1)
    s.touch(2014)
    a, c = s.anon(1), s.anon(2014)
    assert a is not c
    s.mremap(2014, 5, 5, *MF, to=11)
    s.mremap(1007, 5, 5, *MF, to=6)
    s.expect(1, span=(1, 11), anon=a)
    s.expect(11, span=(11, 16), anon=c)


def test_mremap_unfaulted_between_faulted_unfaulted():
    """selftests/mm/merge.c mremap_unfaulted_between_faulted_unfaulted: faulted | moved
    unfaulted | unfaulted -> one VMA."""
    s = merge_fixture()
    s.mmap(1, 5)
    s.mmap(7, 5)
    s.mmap(14, 5)
    s.mremap(14, 5, 5, *MF, to=2014)
    s.mremap(7, 5, 5, *MF, to=1007)
    s.touch(1)
    av = s.anon(1)
    s.mremap(2014, 5, 5, *MF, to=11)
    s.mremap(1007, 5, 5, *MF, to=6)
    s.expect(1, span=(1, 16), anon=av)


def test_mremap_unfaulted_between_correctly_placed_faulted():
    """selftests/mm/merge.c mremap_unfaulted_between_correctly_placed_faulted: the two halves
    of one faulted VMA (same anon_vma, pgoffs in line) and an unfaulted VMA moved into the hole
    -> one VMA."""
    s = merge_fixture()
    s.mmap(1, 15)
    s.touch(1)
    av = s.anon(1)
    s.munmap(6, 5)
    s.mmap(20, 5)
    s.expect_row(".AAAAA     BBBBB....CCCCC.....")
    s.mremap(20, 5, 5, *MF, to=6)
    s.expect_row(".AAAAAAAAAAAAAAA....     .....")
    s.expect(1, span=(1, 16), anon=av, pgoff=1)


def test_mremap_correct_placed_faulted():
    """selftests/mm/merge.c mremap_correct_placed_faulted: pieces of one faulted VMA keep their
    pgoff when moved (copy_vma), so each merges back only when returned to its own place."""
    s = merge_fixture()
    s.mmap(1, 15)
    s.touch(1)
    av = s.anon(1)
    s.mremap(11, 5, 5, *MF, to=2011)        # ptr3 away
    s.mremap(6, 5, 5, *MF, to=1006)         # ptr2 away
    s.mremap(1006, 5, 5, *MF, to=6)         # ptr2 back: merges with ptr
    s.expect(1, span=(1, 11), anon=av)
    s.mremap(1, 5, 5, *MF, to=1001)         # ptr out of place
    s.mremap(1001, 5, 5, *MF, to=1)         # ... and back: merges
    s.expect(1, span=(1, 11), anon=av)
    s.mremap(1, 5, 5, *MF, to=1001)         # ptr out again
    s.mremap(2011, 5, 5, *MF, to=11)        # ptr3 back: merges with ptr2
    s.expect(6, span=(6, 16), anon=av)
    s.mremap(1001, 5, 5, *MF, to=1)         # ptr back: all one
    s.expect(1, span=(1, 16), anon=av, pgoff=1)
    s.mremap(6, 5, 5, *MF, to=1006)         # ptr2 out
    s.expect_row(".AAAAA     BBBBB" + "." * 14)
    s.mremap(1006, 5, 5, *MF, to=6)         # ... and back
    s.expect(1, span=(1, 16))
    s.mremap(11, 5, 5, *MF, to=1011)        # ptr3 out
    s.mremap(1011, 5, 5, *MF, to=11)        # ... and back
    s.expect(1, span=(1, 16), anon=av, pgoff=1)
    assert s.count() == 3                    # the carve-out's two pieces and the VMA


@pytest.mark.parametrize("order", ["in line", "out of order"])
def test_mremap_faulted_pieces_need_pgoff_in_line(order):
    """selftests/mm/merge.c mremap_correct_placed_faulted, the rule behind it: two pieces of one
    faulted VMA (one anon_vma) placed side by side merge only if their pgoffs are in line
    (can_vma_merge_after: prev->vm_pgoff + vma_pages(prev) == pgoff). Moved by the same
    distance they are; swapped they are not."""
    s = merge_fixture()
    s.mmap(1, 15)
    s.touch(1)
    av = s.anon(1)
    s.mremap(11, 5, 5, *MF, to=1011 if order == "in line" else 1001)
    s.mremap(6, 5, 5, *MF, to=1006)
    if order == "in line":
        s.expect(1006, span=(1006, 1016), pgoff=6, anon=av)
    else:
        s.expect(1001, span=(1001, 1006), pgoff=11, anon=av)
        s.expect(1006, span=(1006, 1011), pgoff=6, anon=av)


def test_mremap_faulted_to_unfaulted_prev():
    """selftests/mm/merge.c mremap_faulted_to_unfaulted_prev: a faulted VMA moved back with
    MREMAP_DONTUNMAP next to an unfaulted one merges; the source, moved whole, loses its
    anon_vma (mm/mremap.c dontunmap_complete -> mm/rmap.c unlink_anon_vmas sets it NULL)."""
    s = merge_fixture()
    s.mmap(4, 3)
    s.touch(4)
    av = s.anon(4)
    s.mremap(4, 3, 3, *MF, to=20)
    s.mmap(1, 3)
    s.mremap(20, 3, 3, "MAYMOVE", "FIXED", "DONTUNMAP", to=4)
    s.expect(1, span=(1, 7), anon=av, pgoff=1)
    s.expect(20, span=(20, 23), anon=None)


def test_mremap_faulted_to_unfaulted_next():
    """selftests/mm/merge.c mremap_faulted_to_unfaulted_next."""
    s = merge_fixture()
    s.mmap(1, 3)
    s.touch(1)
    av = s.anon(1)
    s.mremap(1, 3, 3, *MF, to=20)
    s.mmap(4, 3)
    s.mremap(20, 3, 3, "MAYMOVE", "FIXED", "DONTUNMAP", to=1)
    s.expect(1, span=(1, 7), anon=av, pgoff=1)


def test_mremap_faulted_to_unfaulted_prev_unfaulted_next():
    """selftests/mm/merge.c mremap_faulted_to_unfaulted_prev_unfaulted_next: A, B, C -> one
    VMA."""
    s = merge_fixture()
    s.mmap(4, 3)
    s.touch(4)
    av = s.anon(4)
    s.mremap(4, 3, 3, *MF, to=20)
    s.mmap(1, 3)
    s.mmap(7, 3)
    s.mremap(20, 3, 3, "MAYMOVE", "FIXED", "DONTUNMAP", to=4)
    s.expect(1, span=(1, 10), anon=av, pgoff=1)


def test_mremap_faulted_to_unfaulted_prev_faulted_next():
    """selftests/mm/merge.c mremap_faulted_to_unfaulted_prev_faulted_next: B moved back
    between unfaulted A and C (the rest of B's own VMA) -> one VMA."""
    s = merge_fixture()
    s.mmap(4, 6)
    s.touch(4)
    av = s.anon(4)
    s.mremap(4, 3, 3, *MF, to=20)
    s.mmap(1, 3)
    s.expect_row(".AAA   BBB" + "." * 10 + "CCC" + "." * 7)
    s.mremap(20, 3, 3, "MAYMOVE", "FIXED", "DONTUNMAP", to=4)
    s.expect(1, span=(1, 10), anon=av, pgoff=1)


# =============================================================================================
# The same functions reached by the other calls of an experiment (not ports: user-space
# scenarios of the rules above, each checked on the live kernel)
# =============================================================================================

def test_madvise_flags_split_and_merge_back():
    """mm/madvise.c madvise_update_vma -> vma_modify_flags: MADV_RANDOM on the middle splits
    (VM_RAND_READ), MADV_NORMAL merges the three back (vma_merge_existing_range, both)."""
    s = Scene(10)
    s.mmap(1, 8)
    s.touch(1)
    av = s.anon(1)
    s.madvise(3, 2, "random")
    s.expect_row(" AABBCCCC ")
    s.expect(3, span=(3, 5), flags=VM_RAND_READ, anon=av)
    s.madvise(3, 2, "normal")
    s.expect_row(" AAAAAAAA ")
    s.expect(1, span=(1, 9), noflags=VM_RAND_READ, anon=av)


def test_mlock_split_and_munlock_merges_back():
    """mm/mlock.c mlock_fixup -> vma_modify_flags: VM_LOCKED on part of a VMA splits it,
    munlock merges it back (locked_vm follows: Kernel.check())."""
    s = Scene(10)
    s.mmap(1, 8)
    s.mlock(3, 4)
    s.expect_row(" AABBBBCC ")
    s.expect(3, span=(3, 7), flags=VM_LOCKED)
    s.munlock(3, 2)
    s.expect_row(" AAAABBCC ", "the unlocked half rejoins prev")
    s.munlock(5, 2)
    s.expect_row(" AAAAAAAA ")
    s.expect(1, span=(1, 9), noflags=VM_LOCKED)
    assert s.k.procs["main"].mm.locked_vm == 0


def test_madvise_dontneed_does_not_split():
    """mm/madvise.c MADV_DONTNEED zaps pages and leaves the VMA (and its anon_vma) alone."""
    s = Scene(10)
    s.mmap(1, 8)
    s.touch(1, 8)
    av = s.anon(1)
    s.madvise(3, 2, "dontneed")
    s.expect_row(" AAAAAAAA ")
    s.expect(1, span=(1, 9), anon=av)


def test_map_fixed_over_middle_remerges():
    """mm/vma.c __mmap_region: MAP_FIXED unmaps what it covers (splitting the faulted VMA),
    then the new VMA merges with both remains: same flags, pgoff in line, the remains share
    one anon_vma."""
    s = Scene(10)
    s.mmap(1, 8)
    s.touch(1)
    av = s.anon(1)
    s.mmap(3, 2)
    s.expect_row(" AAAAAAAA ")
    s.expect(1, span=(1, 9), anon=av, pgoff=1)


def test_map_fixed_over_middle_other_prot_splits():
    """MAP_FIXED with another protection: the remains cannot merge with the new VMA."""
    s = Scene(10)
    s.mmap(1, 8)
    s.mmap(3, 2, "r")
    s.expect_row(" AABBCCCC ")
    s.expect(3, span=(3, 5), perms="r--p", pgoff=3)
    s.expect(5, span=(5, 9), pgoff=5)


def test_fork_parent_still_merges():
    """After fork the parent's VMA keeps a singular anon_vma_chain (the child's VMA gets a new
    anon_vma chained to it), so the parent merges as before; the child's copy does not."""
    s = Scene(12)
    s.mmap(1, 5)
    s.touch(1)
    av = s.anon(1)
    kid = s.fork()
    s.mmap(6, 5)
    s.expect_row(" AAAAAAAAAA ", "parent merges")
    s.expect(1, span=(1, 11), anon=av)
    kid.mmap(6, 5)
    kid.expect_row(" AAAAABBBBB ", "child: forked anon_vma")
    assert kid.anon(1) is not av and kid.anon(1).forked, kid.story()


def test_fork_unfaulted_vma_merges_in_child():
    """dup_mmap copies no anon_vma for a VMA that had none: in the child it merges like any
    unfaulted VMA, and one faulted first in the child gets a fresh (singular) anon_vma."""
    s = Scene(12)
    s.mmap(1, 5)
    kid = s.fork()
    kid.touch(1)
    assert not kid.anon(1).forked, kid.story()
    kid.mmap(6, 5)
    kid.expect_row(" AAAAAAAAAA ")


def test_dontfork_hole_refills_in_child():
    """kernel/fork.c dup_mmap skips VM_DONTCOPY VMAs (MADV_DONTFORK splits them out): the
    child has a hole there, and a new mapping in it merges with both sides."""
    s = Scene(10)
    s.mmap(1, 8)
    s.madvise(3, 2, "dontfork")
    s.expect_row(" AABBCCCC ")
    s.expect(3, flags=VM_DONTCOPY)
    kid = s.fork()
    kid.expect_row(" AA  BBBB ")
    kid.mmap(3, 2)
    kid.expect_row(" AAAAAAAA ")


def test_anon_vma_prepare_reuses_neighbour():
    """mm/rmap.c __anon_vma_prepare -> find_mergeable_anon_vma: a VMA faulting next to one that
    differs only in access bits, with pgoffs in line, takes its anon_vma (anon_vma_compatible,
    reusable_anon_vma), so the two merge once their protections agree. Both directions."""
    for first, second in ((1, 4), (4, 1)):
        s = Scene(8)
        n1, n2 = (3, 2) if first == 1 else (2, 3)
        s.mmap(first, n1)
        s.touch(first)
        av = s.anon(first)
        s.mprotect(first, n1, "r")
        s.mmap(second, n2)
        s.touch(second)
        assert s.anon(second) is av, s.story()
        s.mprotect(first, n1, "rw")
        s.expect_row(" AAAAA  ")
        s.expect(1, span=(1, 6), anon=av)


def test_file_mappings_merge_through_one_struct_file():
    """is_mergeable_vma compares vma->vm_file: two mmaps of one open file with the file offset
    in line merge; a gap in the offset does not; the same file opened again is another struct
    file and never merges."""
    s = Scene(10)
    s.file("/tmp/merge-model", 16, "f")
    s.mmap(0, 2, fd="f", offset=0, shared=True)
    s.mmap(2, 2, fd="f", offset=2, shared=True)
    s.expect_row("AAAA      ")
    s.expect(0, span=(0, 4), pgoff=0, perms="rw-s")
    s.mmap(4, 2, fd="f", offset=8, shared=True)
    s.expect_row("AAAABB    ", "file offset not in line")
    s.expect(4, pgoff=8)
    s._step("open", {"file": "/tmp/merge-model", "as": "g"}, "open the file again as g")
    s.mmap(6, 2, fd="g", offset=10, shared=True)
    s.expect_row("AAAABBCC  ", "another struct file")
    s.mmap(8, 2, fd="f", offset=12, shared=True)
    s.expect_row("AAAABBCCDD")


@pytest.mark.parametrize("release, moved", [((6, 18), True), ((6, 16), False)])
def test_mremap_moves_several_vmas_since_6_17(release, moved):
    """mm/mremap.c remap_move() (6.17, d23cb648e365): MREMAP_FIXED with old_len == new_len
    moves every VMA of the range, gaps kept; before 6.17 a range across VMAs is EFAULT
    (live on 6.18: experiments/mremap-move-multi-vma.toml). The rule is keyed on the
    profile's kernel release."""
    s = Scene(24)
    s.k.release = release
    s.mmap(0, 6)
    s.touch(0, 6)
    s.mprotect(1, 1, "r")
    s.munmap(3, 1)
    s.expect_row("ABC DD                  ")
    if not moved:
        s._step("mremap", dict(s._pages(0, 6), length=6 * PAGE, flags=("MAYMOVE", "FIXED"),
                               addr=("abs", BASE + 10 * PAGE)), "mremap across VMAs", expect={"errno": "EFAULT"})
        s.expect_row("ABC DD                  ")
        return
    assert s.mremap(0, 6, 6, "MAYMOVE", "FIXED", to=10) == 10
    s.expect_row("          ABC DD        ")
