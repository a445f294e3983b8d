"""Differential random testing: a Hypothesis state machine whose rules act on a live worker and
on the model together (shmkit.session.Session), with the invariant that after every step their
normalised observations agree field by field and the model's check() holds.

The rules draw from the whole step contract (docs/record.md, README "Experiment files"): byte
lengths that are not page multiples, ranges by `addr`/`length` ("REGION+N", "REGION-N", absolute
addresses, zero lengths, `pages = "A..A"`) across several VMAs and holes, touches at a byte
address, raw and invalid numbers (advice, prot, msync and mmap flags, shmid, shmctl cmd),
truncation of mapped files, POSIX objects and memfds, pwrite through an fd into mapped files,
disk files larger than a readahead window, and the operations write, fadvise, seal,
mlockall/munlockall, shmat remap/exec, shmctl set, the guard and locked advices, MAP_HUGE_* and
settle. Corners left out of the draw say why next to the draw (a known difference of
model/known_differences.py, or a host setting).

CI runs SHMKIT_DIFF_EXAMPLES examples (default 200) of up to SHMKIT_DIFF_STEPS steps (default 10),
derandomized so that CI is repeatable; SHMKIT_DIFF_RANDOM=1 draws new ones, and a larger
SHMKIT_DIFF_EXAMPLES hunts longer (SHMKIT_DIFF_PROGRESS=FILE appends the running count to FILE
after each example). The test reports how many examples ran, passed and were
rejected (a perturbed live step, or no handle a rule needs) in the terminal summary
("differential: ..."), and fails when no example passed. A failing sequence is shrunk by
Hypothesis and saved as an experiment file under experiments/regressions/ (then fixed in the
model, or listed in model/known_differences.py), where tests/test_model_live.py keeps checking
it."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live runs need Linux")]

EXAMPLES = int(os.environ.get("SHMKIT_DIFF_EXAMPLES", "200"))
STEPS = int(os.environ.get("SHMKIT_DIFF_STEPS", "10"))
RANDOM = os.environ.get("SHMKIT_DIFF_RANDOM") == "1"
PROGRESS = os.environ.get("SHMKIT_DIFF_PROGRESS")   # a file to append the count to after each example
REGRESSIONS = Path(__file__).resolve().parent.parent / "experiments" / "regressions"
_saved: list[Path] = []
_profile: dict = {}

# examples of this session: started, passed (no exception), rejected (assume), failed
STATS = {"run": 0, "passed": 0, "rejected": 0, "failed": 0, "discarded": 0}

PROTS = ["rw", "r", "none"]
# raw prot numbers (passed as given): every combination of PROT_READ|WRITE|EXEC (4 alone is
# execute-only: a pkey), PROT_SEM (8, accepted and ignored on x86), an unknown bit (16) and
# PROT_GROWSDOWN on a mapping that does not grow down (EINVAL)
RAW_PROTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 0x01000000]
# Left out of every advice draw: MADV_MERGEABLE/UNMERGEABLE (12, 13: ksmd merges pages
# behind the process's back), MADV_HUGEPAGE (14) over a disk file mapping (file-thp) and
# MADV_COLLAPSE (25) on shared memory (shmem-collapse): both stand apart in
# model/known_differences.py, and a span by address may cover any mapping, so they are drawn
# only on private anonymous regions (mmap_thp, collapse in madvise_anon_thp);
# MADV_HWPOISON/SOFT_OFFLINE (100, 101) take pages out of the host's memory.
ADVICE = ["dontneed", "willneed", "random", "sequential", "normal", "cold", "pageout", "free", "remove",
          "dontfork", "dofork", "wipeonfork", "keeponfork", "dontdump", "dodump", "nohugepage",
          "populate_read", "populate_write", "dontneed_locked", "guard_install", "guard_remove"]
# raw advice numbers: known ones (4 DONTNEED, 18 WIPEONFORK, 24 DONTNEED_LOCKED, 102 GUARD_INSTALL)
# and numbers madvise_behavior_valid() refuses (5, 6, 7, 26, 99, 104, -1), and 2**32 + 4: the
# kernel reads an int (the low 32 bits: MADV_DONTNEED)
RAW_ADVICE = [4, 18, 24, 102, 5, 6, 7, 26, 99, 104, -1, 2**32 + 4]
MSYNC = [["sync"], ["async"], ["invalidate"], ["sync", "invalidate"],
         # raw and mixed: -1 and 8 are unknown bits (EINVAL), MS_ASYNC|MS_SYNC is EINVAL
         [-1], [8], ["sync", 2], [1], ["async", "sync"]]
FADVICE = ["normal", "random", "sequential", "willneed", "dontneed", "noreuse"]
SEALS = ["seal", "shrink", "grow", "write", "future_write"]
# shmctl commands: names and raw numbers; IPC_INFO, SHM_STAT, SHM_INFO, SHM_STAT_ANY (3, 13, 14,
# 15) are not modelled (model/ipc.py shmctl says so rather than guess) and are not drawn
SHMCTL = ["stat", "lock", "unlock", "set", 1, 2, -1, 99]
# absolute addresses that no layout gives to anything: the NULL page, below mmap_min_addr, an
# unaligned one, TASK_SIZE (2**47 - 4096 with 4-level paging) and above, the last page
ABS_ADDRS = [0, 0x1000, 0x1001, 0x7ffffffff000, 0x800000000000, 0xfffffffffffff000]
MREMAP = [[], ["maymove"], ["maymove", "dontunmap"]]
PAGE = os.sysconf("SC_PAGE_SIZE")
# bytes short of a whole number of pages: lengths and sizes are drawn in bytes, so that regions,
# files and objects of sub-page and non-multiple sizes come up (a region's pages are still
# whole: PAGE_ALIGN(length), model/pages.py)
SHORT = st.one_of(st.just(0), st.integers(1, PAGE - 1))


def readahead_limit() -> int:
    """Pages of the largest read a single readahead entry point makes on this host's disk:
    max(ra_pages, io_pages) (mm/readahead.c force_page_cache_ra, ractl_max_pages)."""
    import tempfile
    from shmkit.predict import host_devices
    dev = host_devices(tempfile.gettempdir())
    return max((dev.get("disk_readahead_kb") or 128) // 4, dev.get("disk_io_pages") or 0)
MREMAP_FIXED = [["maymove", "fixed"], ["maymove", "fixed", "dontunmap"]]


def hugetlb_pool_empty() -> bool:
    """MAP_HUGETLB is drawn only where no huge page can be had (no pool, no overcommit): a
    mapping that gets its huge pages is model/known_differences.py hugetlb-mapping."""
    try:
        return all(Path(f"/proc/sys/vm/{n}").read_text().strip() == "0"
                   for n in ("nr_hugepages", "nr_overcommit_hugepages"))
    except OSError:
        return False


def profile() -> dict:
    if not _profile:
        from shmkit.profile import read_profile
        _profile.update(read_profile().to_dict())
    return _profile


def save_regression(toml: str, first: str) -> Path:
    """Keep only the latest (the shrunk) failing sequence of this session."""
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    lines = toml.splitlines()
    about = first.replace('"', "'").replace("\\", "/")
    lines[0] = f'about = "found by tests/test_differential.py: {about}"'
    text = "\n".join(lines) + "\n"
    path = REGRESSIONS / f"differential-{hashlib.sha1(text.encode()).hexdigest()[:8]}.toml"
    for old in _saved:
        old.unlink(missing_ok=True)
    _saved.clear()
    path.write_text(text)
    _saved.append(path)
    return path


class Differential(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        from shmkit.session import Session
        STATS["run"] += 1
        self.s = Session(profile())
        self.n = 0
        self.regions: dict[str, dict] = {}   # handle -> pages (whole), length (bytes), procs, kind
        self.files: dict[str, int] = {}      # file handle -> size in bytes
        self.fds: dict[str, dict] = {}       # POSIX shm / memfd handle -> size (bytes), procs, memfd
        self.opened: dict[str, dict] = {}    # `open` fd handle -> file, mode, procs
        self.segs: dict[str, int] = {}       # SysV handle -> size in bytes
        self.posix: list[str] = []           # POSIX names created
        self.procs = ["main"]
        self.big: set[str] = set()           # file handles larger than a readahead window
        self.future: set[str] = set()        # processes under mlockall(MCL_FUTURE)
        self.last = None

    def teardown(self):
        # called from Hypothesis's `finally`: the exception on its way out (if any) says how
        # this example ended
        exc = sys.exc_info()[1]
        # a BaseException that is not an Exception is Hypothesis's own StopTest (the example
        # ran out of its data before its last step and is discarded) or an interrupt
        STATS["passed" if exc is None else
              "rejected" if isinstance(exc, UnsatisfiedAssumption) else
              "failed" if isinstance(exc, Exception) else "discarded"] += 1
        self.s.close()
        if PROGRESS:                         # a long hunt's running count, for a look from outside
            with open(PROGRESS, "a") as f:
                f.write(" ".join(f"{k}={v}" for k, v in STATS.items()) + "\n")

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _do(self, do: str, **fields):
        live, model, diffs = self.s.step(do, **fields)
        assume(not self.s.perturbed())       # the interpreter disturbed the live side: not a model question
        self.last = (live, diffs, self.s.pred["steps"][-1]["check"])
        return live

    def _region_in(self, data, pred=lambda r: True):
        choices = sorted(h for h, r in self.regions.items() if pred(r) and set(r["procs"]) & set(self.procs))
        assume(choices)
        h = data.draw(st.sampled_from(choices))
        proc = data.draw(st.sampled_from(sorted(set(self.regions[h]["procs"]) & set(self.procs))))
        return h, proc

    @staticmethod
    def _bytes(data, pages: int) -> int:
        """A length of `pages` whole pages: pages * PAGE, or up to one byte more than
        (pages - 1) * PAGE."""
        return pages * PAGE - data.draw(SHORT)

    def _pages(self, data, n: int, one: bool = False):
        """A page range of an n-page region; one: a single page (accesses to a region of a
        file larger than a readahead window: a longer run meets folios still under I/O,
        model/known_differences.py readahead-io-in-flight)."""
        if one:
            a = data.draw(st.integers(0, n - 1))
            return f"{a}..{a + 1}"
        if data.draw(st.booleans()):
            return None
        a = data.draw(st.integers(0, n - 1))
        b = data.draw(st.integers(a + 1, n))
        return f"{a}..{b}"

    # ----- ranges by address and byte length ---------------------------------------------
    def _edge(self) -> int:
        return self.s.live["pads"]["main"]["edge"]

    def _big_ranges(self, proc: str) -> list[tuple[int, int]]:
        live = self.s.m.procs[proc].regions
        return [(live[h][0], live[h][0] + r["pages"] * PAGE) for h, r in self.regions.items()
                if r.get("big") and h in live and proc in r["procs"]]

    def _span(self, data, h: str, proc: str, aligned: bool = False):
        """An address range by "REGION+N"/"REGION-N" and a byte length, anchored at region h
        of proc (its address on the live side, which the model must agree on): from two pages
        below it to its end, up to the harness's pads at `$edge` (never into them: they are
        not the experiment's), so it may cover several VMAs of the experiment and the holes
        between them; a start inside a page unless `aligned`. Returns (fields, start, end)."""
        base = self.s.m.procs[proc].regions[h][0]
        edge = self._edge()
        n = self.regions[h]["pages"]
        k = data.draw(st.integers(-2, max(-2, min(n, (edge - base) // PAGE - 1))))
        sub = 0 if aligned else data.draw(st.sampled_from([0, 0, 0, 1, PAGE // 2, PAGE - 1]))
        start = base + k * PAGE + sub
        room = edge - start
        most = room // PAGE
        pages = data.draw(st.one_of(st.integers(0, min(most, n + 2)), st.integers(0, most)))
        length = min(room, max(0, pages * PAGE - data.draw(SHORT)))
        off = start - base
        return {"addr": f"{h}+{off}" if off >= 0 else f"{h}-{-off}", "length": length}, start, start + length

    def _range(self, data, h: str, proc: str, aligned: bool = False, avoid_big: bool = False,
               one: bool = False) -> dict:
        """The range of a range operation, in one of the forms a step may give it: a region
        with `pages` (or the whole region), an empty page range "A..A" (a zero length), an
        address span by "REGION±N" and a byte length, or an absolute address no layout gives
        to anything. avoid_big: the span must not cover a region of a big file (a span that
        does falls back to the region's own pages); one: one page of a region (see _pages)."""
        form = data.draw(st.sampled_from(["region", "region", "region", "empty", "span", "span", "span", "abs"]))
        n = self.regions[h]["pages"]
        if form == "empty":
            a = data.draw(st.integers(0, n))
            return {"region": h, "pages": f"{a}..{a}"}
        if form == "abs":
            addr = data.draw(st.sampled_from(ABS_ADDRS))
            if aligned:
                addr -= addr % PAGE
            return {"addr": f"0x{addr:x}", "length": data.draw(st.sampled_from([0, 1, PAGE, 3 * PAGE - 5]))}
        if form == "span":
            fields, a, b = self._span(data, h, proc, aligned)
            big = any(lo < max(b, a + 1) and a < hi for lo, hi in self._big_ranges(proc))
            if not (big and (avoid_big or one)):
                return fields
        return {"region": h, "pages": self._pages(data, n, one)}

    def _source(self, data, kinds=("file", "fd", "shm", "memfd")):
        """An object a file call acts on: a file by name (any process), an `open` fd, a POSIX
        shm object or a memfd (a process holding it). Returns (fields, process, size)."""
        choices = []
        if "file" in kinds:
            choices += [("file", f, self.procs, size) for f, size in sorted(self.files.items())]
        if "fd" in kinds:
            choices += [("fd", h, sorted(set(o["procs"]) & set(self.procs)), self.files[o["file"]])
                        for h, o in sorted(self.opened.items())]
        choices += [("memfd" if o["memfd"] else "shm", h, sorted(set(o["procs"]) & set(self.procs)), o["size"])
                    for h, o in sorted(self.fds.items()) if ("memfd" if o["memfd"] else "shm") in kinds]
        choices = [c for c in choices if c[2]]
        assume(choices)
        kind, h, procs, size = data.draw(st.sampled_from(choices))
        return {kind: h}, data.draw(st.sampled_from(procs)), size

    def _settle_big(self) -> None:
        """After a call that may start readahead of a big file (MADV_WILLNEED,
        POSIX_FADV_WILLNEED): wait until its disk has no read in flight, so that later
        faults meet no folio under I/O (readahead-io-in-flight)."""
        for f in sorted(self.big):
            self._do("settle", file=f, seconds=0)

    # ----- creating mappings -------------------------------------------------------------
    @rule(data=st.data(), kind=st.sampled_from(["private", "shared", "shared_validate"]),
          pages=st.integers(1, 6),
          prot=st.one_of(st.sampled_from(PROTS), st.sampled_from(PROTS + ["rwx", "rx"] + RAW_PROTS)),
          populate=st.booleans(), locked=st.booleans(),
          extra=st.sampled_from([[], [], [], [1024], ["noreserve"], ["huge_2mb"], ["huge_1gb"],
                                 ["hugetlb", "huge_2mb"], ["hugetlb", "huge_1gb"], ["hugetlb"]]))
    def mmap_anon(self, data, kind, pages, prot, populate, locked, extra):
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("a")
        if "hugetlb" in extra and not hugetlb_pool_empty():
            extra = []          # a hugetlb mapping that succeeds: known difference hugetlb-mapping
        # MAP_LOCKED: a locked VMA under a later mprotect (mprotect_fixup populates it); 1024
        # (0x400) is a bit mmap does not know: ignored, except by MAP_SHARED_VALIDATE
        flags = [kind, "anonymous"] + (["populate"] if populate else []) \
            + (["locked"] if locked else []) + extra
        length = self._bytes(data, pages)
        live = self._do("mmap", in_=proc, as_=h, length=length, prot=prot, flags=flags)
        if live["result"] == "ok":
            self.regions[h] = {"pages": pages, "length": length, "procs": [proc], "kind": "mmap",
                              "anon_private": kind == "private"}

    @precondition(lambda self: len(self.files) < 3)
    @rule(pages=st.integers(1, 6), short=SHORT, on=st.sampled_from(["disk", "tmpfs"]), cold=st.booleans(),
          fill=st.sampled_from(["zero", "random", "byte"]))
    def file(self, pages, short, on, cold, fill):
        h = self._name("f")
        size = pages * PAGE - short
        self._do("file", name=h, size=size, on=on, fill=fill,
                 cache="cold" if cold and on == "disk" else "warm")
        self.files[h] = size

    @precondition(lambda self: len(self.files) < 3 and not self.big and not self.future)
    @rule(extra=st.integers(1, 600))
    def big_file(self, extra):
        """A cold disk file larger than one readahead window (read-around, sync and async
        readahead and MADV_WILLNEED each read only part of it)."""
        h = self._name("f")
        pages = readahead_limit() + extra
        self._do("file", name=h, size=f"{pages} pages", on="disk", fill="random", cache="cold")
        self.files[h] = pages * PAGE
        self.big.add(h)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), shared=st.booleans(), prot=st.sampled_from(["r", "rw", "r", "rw", "rx", 3, 7]),
          locked=st.booleans(), validate=st.sampled_from([[], [], [], [1024], ["huge_2mb"]]))
    def mmap_file(self, data, shared, prot, locked, validate):
        # through an `open` fd of the file sometimes (its mode decides EACCES)
        fds = [o for o, v in sorted(self.opened.items()) if set(v["procs"]) & set(self.procs)]
        via = data.draw(st.sampled_from([None] + fds)) if fds else None
        f = self.opened[via]["file"] if via else data.draw(st.sampled_from(sorted(self.files)))
        size = max(1, -(-self.files[f] // PAGE))            # the file's pages, the last maybe partial
        off = data.draw(st.integers(0, size - 1))
        pages = data.draw(st.integers(1, size - off + 1))     # may reach past the end of file
        procs = sorted(set(self.opened[via]["procs"]) & set(self.procs)) if via else self.procs
        if f in self.big:
            procs = [p for p in procs if p not in self.future]   # MCL_FUTURE would populate it
            assume(procs)
        proc = data.draw(st.sampled_from(procs))
        h = self._name("m")
        length = self._bytes(data, pages)
        # MAP_SHARED_VALIDATE with a bit it does not know (0x400): EOPNOTSUPP; MAP_HUGE_2MB is
        # in LEGACY_MAP_MASK
        kind = ("shared_validate" if validate else "shared") if shared else "private"
        live = self._do("mmap", in_=proc, as_=h, length=length, prot=prot,
                        flags=[kind] + (["locked"] if locked else []) + (validate if shared else []),
                        offset=f"{off} pages", **({"fd": via} if via else {"file": f}))
        if live["result"] == "ok":
            self.regions[h] = {"pages": pages, "length": length, "procs": [proc], "kind": "mmap",
                              "big": f in self.big}
            if f in self.big:
                # A major fault's read-around (8 MiB here) is still under I/O when the retried
                # fault maps its fault-around window, which skips locked folios: how many it
                # maps depends on disk timing (readahead-io-in-flight; seen: 11 of 16). With
                # VM_RAND_READ a miss reads its page alone, so every count is the kernel's
                # rule: MADV_WILLNEED's limit, the marks other mappings left, fault-around
                # over pages read in earlier steps. Read-around, sync and async windows of big
                # files are in the bundled experiments (file-readahead-*.toml).
                self._do("madvise", in_=proc, region=h, advice="random")

    @rule(data=st.data(), blocks=st.integers(1, 2), hugepage=st.booleans())
    def mmap_thp(self, data, blocks, hugepage):
        """Private anonymous memory in whole 2 MiB blocks (placed 2 MiB-aligned), THP-eligible
        under THP "madvise" after MADV_HUGEPAGE: fork, mremap, mprotect and munmap then meet
        PMD-mapped THPs and huge zero pages."""
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("h")
        live = self._do("mmap", in_=proc, as_=h, length=f"{512 * blocks} pages", prot="rw",
                        flags=["private", "anonymous"])
        if live["result"] == "ok":
            self.regions[h] = {"pages": 512 * blocks, "length": 512 * blocks * PAGE, "procs": [proc],
                              "kind": "mmap", "anon_private": True}
            if hugepage:
                self._do("madvise", in_=proc, region=h, advice="hugepage")

    @precondition(lambda self: len(self.fds) < 3)
    @rule(data=st.data(), pages=st.integers(1, 4), memfd=st.booleans(), sealing=st.booleans())
    def shmem_object(self, data, pages, memfd, sealing):
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("o")
        size = self._bytes(data, pages)
        if memfd:
            live = self._do("memfd", in_=proc, as_=h, name=h, size=size, sealing=sealing)
        else:
            live = self._do("shm_open", in_=proc, as_=h, name=h, create=True, excl=True, size=size)
            self.posix.append(h)
        if live["result"] == "ok":
            self.fds[h] = {"size": size, "procs": [proc], "memfd": memfd}

    @precondition(lambda self: self.fds)
    @rule(data=st.data(), prot=st.sampled_from(["r", "rw"]), shared=st.booleans())
    def mmap_object(self, data, prot, shared):
        choices = sorted(h for h, f in self.fds.items() if set(f["procs"]) & set(self.procs))
        assume(choices)
        o = data.draw(st.sampled_from(choices))
        fd = self.fds[o]
        proc = data.draw(st.sampled_from(sorted(set(fd["procs"]) & set(self.procs))))
        h = self._name("m")
        kind = "memfd" if fd["memfd"] else "shm"
        # the object's pages, or one more (wholly past its end: SIGBUS)
        pages = max(1, -(-fd["size"] // PAGE) + data.draw(st.integers(0, 1)))
        length = self._bytes(data, pages)
        live = self._do("mmap", in_=proc, as_=h, length=length, prot=prot,
                        flags=["shared" if shared else "private"], **{kind: o})
        if live["result"] == "ok":
            self.regions[h] = {"pages": pages, "length": length, "procs": [proc], "kind": "mmap"}

    @precondition(lambda self: any(not f["memfd"] for f in self.fds.values()))
    @rule(data=st.data(), pages=st.integers(0, 5), trunc=st.booleans())
    def shm_resize(self, data, pages, trunc):
        """Shrink or grow a POSIX shm object while it is mapped (ftruncate through shm_open's
        size, or O_TRUNC): shmem_setattr zaps what lies past the new end, private COW copies
        included."""
        o = data.draw(st.sampled_from(sorted(h for h, f in self.fds.items() if not f["memfd"])))
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("r")
        if trunc:
            self._do("shm_open", in_=proc, as_=h, name=o, truncate=True)
        else:
            self._do("shm_open", in_=proc, as_=h, name=o, size=f"{pages} pages")

    @precondition(lambda self: self.files or self.fds)
    @rule(data=st.data(), pages=st.integers(0, 6), short=SHORT)
    def truncate(self, data, pages, short):
        """truncate(2) a file or ftruncate(2) an fd, memfd or POSIX object while it is mapped,
        to a size in bytes (grow or shrink): truncate_pagecache / shmem_setattr zap private COW
        copies past the new end too, and a later touch there is SIGBUS."""
        fields, proc, _ = self._source(data)
        size = max(0, pages * PAGE - short)
        live = self._do("truncate", in_=proc, size=size, **fields)
        if live["result"] == "ok":
            kind, h = next(iter(fields.items()))
            if kind == "file":
                self.files[h] = size
            elif kind == "fd":
                self.files[self.opened[h]["file"]] = size
            else:
                self.fds[h]["size"] = size

    @precondition(lambda self: self.files and len(self.opened) < 2)
    @rule(data=st.data(), mode=st.sampled_from(["r", "w", "rw"]))
    def open(self, data, mode):
        f = data.draw(st.sampled_from(sorted(self.files)))
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("d")
        live = self._do("open", in_=proc, as_=h, file=f, mode=mode)
        if live["result"] == "ok":
            self.opened[h] = {"file": f, "mode": mode, "procs": [proc]}

    @precondition(lambda self: self.files or self.fds)
    @rule(data=st.data(), value=st.integers(0, 255),
          length=st.one_of(st.integers(0, 3 * PAGE), st.sampled_from([0, 1, PAGE, 2 * PAGE + 1])))
    def write(self, data, value, length):
        """pwrite(2) through an fd (a file by name, an `open` fd, a POSIX object, a memfd),
        maybe while the object is mapped and maybe past its end (it grows): mappings see the
        bytes at once; a write-sealed memfd refuses it."""
        fields, proc, size = self._source(data)
        offset = data.draw(st.one_of(st.integers(0, size + PAGE), st.sampled_from([0, PAGE, size])))
        live = self._do("write", in_=proc, offset=offset, length=length, value=value, **fields)
        if live["result"] == "ok" and length:
            kind, h = next(iter(fields.items()))
            end = max(size, offset + live["value"]["written"])
            if kind == "file":
                self.files[h] = end
            elif kind == "fd":
                self.files[self.opened[h]["file"]] = end
            else:
                self.fds[h]["size"] = end

    @precondition(lambda self: self.files or self.fds)
    @rule(data=st.data(), advice=st.sampled_from(FADVICE))
    def fadvise(self, data, advice):
        fields, proc, size = self._source(data)
        offset = data.draw(st.sampled_from([0, 0, 1, PAGE, size]))
        length = data.draw(st.sampled_from([0, 0, 1, PAGE, 3 * PAGE + 7, size]))
        self._do("fadvise", in_=proc, advice=advice, offset=offset, length=length, **fields)
        if advice == "willneed":
            self._settle_big()

    @precondition(lambda self: self.fds or self.opened)
    @rule(data=st.data(), seals=st.lists(st.sampled_from(SEALS), min_size=1, max_size=3, unique=True))
    def seal(self, data, seals):
        """F_ADD_SEALS: a memfd made with MFD_ALLOW_SEALING takes them (F_SEAL_WRITE is EBUSY
        while a shared writable mapping exists); without it, and a POSIX object, start with
        F_SEAL_SEAL (EPERM); a disk file has none (EINVAL)."""
        fields, proc, _ = self._source(data, ("fd", "shm", "memfd"))
        self._do("seal", in_=proc, seals=seals, **fields)

    @precondition(lambda self: not self.big)
    @rule(data=st.data(), flags=st.lists(st.sampled_from(["current", "future", "onfault"]),
                                         min_size=0, max_size=3, unique=True))
    def mlockall(self, data, flags):
        """mlockall(2) (no flag, or MCL_ONFAULT alone, is EINVAL); MCL_CURRENT populates every
        mapping, MCL_FUTURE makes later mappings locked. Not with a big file around (populating
        it meets folios under I/O: readahead-io-in-flight)."""
        proc = data.draw(st.sampled_from(self.procs))
        live = self._do("mlockall", in_=proc, flags=flags)
        if live["result"] == "ok" and "future" in flags:
            self.future.add(proc)

    @rule(data=st.data())
    def munlockall(self, data):
        proc = data.draw(st.sampled_from(self.procs))
        live = self._do("munlockall", in_=proc)
        if live["result"] == "ok":
            self.future.discard(proc)

    @rule(data=st.data())
    def settle(self, data):
        """A pause, or a wait until a file's disk has no read in flight: the model changes
        nothing."""
        files = sorted(self.files)
        f = data.draw(st.sampled_from([None] + files)) if files else None
        self._do("settle", seconds=0.01, **({"file": f} if f else {}))

    @precondition(lambda self: self.posix)
    @rule(data=st.data())
    def shm_unlink(self, data):
        name = data.draw(st.sampled_from(self.posix))
        self._do("shm_unlink", in_=data.draw(st.sampled_from(self.procs)), name=name)

    @precondition(lambda self: len(self.segs) < 2)
    @rule(pages=st.integers(1, 4), short=SHORT)
    def shmget(self, pages, short):
        h = self._name("s")
        size = pages * PAGE - short          # the segment keeps this size; an attach maps whole pages
        live = self._do("shmget", as_=h, size=size, create=True)
        if live["result"] == "ok":
            self.segs[h] = size

    @precondition(lambda self: self.segs)
    @rule(data=st.data(), readonly=st.booleans(), remap=st.booleans(), exec_=st.booleans(),
          rnd=st.booleans(), raw=st.sampled_from([False, False, False, False, True]))
    def shmat(self, data, readonly, remap, exec_, rnd, raw):
        """shmat(2) of a segment (or of the raw shmid -1: EINVAL), read-only or not, with
        SHM_EXEC, and at an address in or just below one of the process's regions: with
        SHM_REMAP it replaces what is mapped there, without it such an address is EINVAL;
        SHM_RND rounds an unaligned one down (SHMLBA = one page); SHM_REMAP with no address is
        EINVAL."""
        seg = -1 if raw else data.draw(st.sampled_from(sorted(self.segs)))
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("t")
        mine = sorted(r for r, v in self.regions.items() if proc in v["procs"])
        addr = {}
        if mine and data.draw(st.booleans()):
            o = data.draw(st.sampled_from(mine))
            live_addr = self.s.m.procs[proc].regions[o][0]
            size = self.segs[seg] if seg != -1 else PAGE
            # the attach stays below the harness's pads at $edge (they yield only to the range
            # of the attach itself, model/pads.py)
            top = (self._edge() - live_addr - -(-size // PAGE) * PAGE) // PAGE
            k = data.draw(st.integers(-1, max(-1, min(self.regions[o]["pages"] - 1, top))))
            sub = data.draw(st.sampled_from([0, 0, 1, PAGE - 1]))
            off = k * PAGE + sub
            addr = {"addr": f"{o}+{off}" if off >= 0 else f"{o}-{-off}"}
        live = self._do("shmat", in_=proc, as_=h, segment=seg, readonly=readonly, remap=remap,
                        exec=exec_, rnd=rnd, **addr)
        if live["result"] == "ok" and seg != -1:
            self.regions[h] = {"pages": -(-self.segs[seg] // PAGE), "length": self.segs[seg],
                               "procs": [proc], "kind": "shmat"}

    @precondition(lambda self: any(r["kind"] == "shmat" for r in self.regions.values()))
    @rule(data=st.data())
    def shmdt(self, data):
        h, proc = self._region_in(data, lambda r: r["kind"] == "shmat")
        self._do("shmdt", in_=proc, region=h)

    @precondition(lambda self: self.segs)
    @rule(data=st.data())
    def shm_rmid(self, data):
        self._do("shmctl", segment=data.draw(st.sampled_from(sorted(self.segs))), cmd="rmid")

    @precondition(lambda self: self.segs)
    @rule(data=st.data(), cmd=st.sampled_from(SHMCTL), mode=st.sampled_from([0o600, 0o400, 0o644, 0, 0o777]),
          raw=st.sampled_from([False, False, False, True]))
    def shmctl(self, data, cmd, mode, raw):
        """shmctl(2) by name or raw number: IPC_STAT, SHM_LOCK/UNLOCK, IPC_SET of the mode (cmd
        "set" or 1), and what ksys_shmctl refuses (cmd -1 or 99, shmid -1: EINVAL)."""
        seg = -1 if raw else data.draw(st.sampled_from(sorted(self.segs)))
        proc = data.draw(st.sampled_from(self.procs))
        self._do("shmctl", in_=proc, segment=seg, cmd=cmd,
                 **({"mode": mode} if cmd in ("set", 1) else {}))

    # ----- changing and touching them ----------------------------------------------------
    @precondition(lambda self: self.regions)
    @rule(data=st.data(), write=st.booleans(), value=st.integers(1, 255), byte=st.booleans())
    def touch(self, data, write, value, byte):
        """A touch of a region's pages, or at a byte address ("REGION±N") with or without a
        length. A read access may start anywhere in a page (the fault and the signal are the
        page's); a write at a byte address starts at a page boundary, since the model keeps
        one byte per page (model/known_differences.py byte-in-page: a write inside a page
        would make a later read of the page's first byte differ)."""
        h, proc = self._region_in(data)
        r = self.regions[h]
        fields = self._range(data, h, proc, aligned=write, one=r.get("big", False))
        if byte and "addr" in fields:
            del fields["length"]                 # the one byte at addr
        self._do("touch", in_=proc, access="write" if write else "read",
                 value=value if write else None, **fields)

    @precondition(lambda self: self.regions)
    @rule(data=st.data())
    def read(self, data):
        # at page boundaries only: the value read is the first byte of each page (byte-in-page)
        h, proc = self._region_in(data)
        r = self.regions[h]
        self._do("read", in_=proc, **self._range(data, h, proc, aligned=True, one=r.get("big", False)))

    @precondition(lambda self: self.regions)
    @rule(data=st.data())
    def munmap(self, data):
        # SysV attaches too: a partly unmapped attach is what shmdt's upward walk must handle
        h, proc = self._region_in(data)
        self._do("munmap", in_=proc, **self._range(data, h, proc))

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), prot=st.one_of(st.sampled_from(PROTS), st.sampled_from(["rx", "rwx", "x"] + RAW_PROTS)))
    def mprotect(self, data, prot):
        h, proc = self._region_in(data)
        self._do("mprotect", in_=proc, prot=prot, **self._range(data, h, proc))

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), advice=st.one_of(st.sampled_from(ADVICE), st.sampled_from(RAW_ADVICE)))
    def madvise(self, data, advice):
        # populating a big cold file meets folios still under I/O, and its regions keep
        # VM_RAND_READ (see mmap_file; readahead-io-in-flight): such advice is not drawn on
        # them, nor on a span covering them
        bad = isinstance(advice, str) and (advice.startswith("populate") or advice in ("sequential", "normal"))
        h, proc = self._region_in(data, lambda r: not (r.get("big") and bad))
        self._do("madvise", in_=proc, advice=advice, **self._range(data, h, proc, avoid_big=bad))
        if advice in ("willneed", 3):
            self._settle_big()

    @precondition(lambda self: any(r.get("anon_private") for r in self.regions.values()))
    @rule(data=st.data(), advice=st.sampled_from(["hugepage", "nohugepage", "collapse", 14, 25]))
    def madvise_anon_thp(self, data, advice):
        """MADV_HUGEPAGE and MADV_COLLAPSE, on private anonymous regions only (on a disk file
        or shared memory they are the known differences file-thp and shmem-collapse)."""
        h, proc = self._region_in(data, lambda r: r.get("anon_private"))
        self._do("madvise", in_=proc, region=h, pages=self._pages(data, self.regions[h]["pages"]),
                 advice=advice)

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), flags=st.sampled_from(MSYNC))
    def msync(self, data, flags):
        h, proc = self._region_in(data)
        self._do("msync", in_=proc, flags=flags, **self._range(data, h, proc))

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), onfault=st.booleans(), unlock=st.booleans())
    def mlock(self, data, onfault, unlock):
        h, proc = self._region_in(data, lambda r: unlock or not r.get("big"))
        fields = self._range(data, h, proc, avoid_big=not unlock)
        if unlock:
            self._do("munlock", in_=proc, **fields)
        else:
            self._do("mlock", in_=proc, onfault=onfault, **fields)

    @precondition(lambda self: any(r["kind"] == "mmap" and len(r["procs"]) == 1 for r in self.regions.values()))
    @rule(data=st.data(), pages=st.integers(1, 8), flags=st.sampled_from(MREMAP + MREMAP_FIXED))
    def mremap(self, data, pages, flags):
        # only a region one process knows: the spec follows its new length in that process
        h, proc = self._region_in(data, lambda r: r["kind"] == "mmap" and len(r["procs"]) == 1)
        old = self.regions[h]["pages"]
        if old % 512 == 0 and data.draw(st.booleans()):
            pages = data.draw(st.sampled_from([256, 512, 1024, 1536]))   # THP blocks: move_huge_pmd
            length = pages * PAGE
        else:
            length = self._bytes(data, pages)
        if "dontunmap" in flags:
            # MREMAP_DONTUNMAP needs old_len == new_len (before PAGE_ALIGN), else EINVAL
            pages, length = old, self.regions[h]["length"]
        target = {}
        if "fixed" in flags:
            # onto another region of the process (or the region itself: EINVAL); the same
            # length moves every VMA of a split region (remap_move, since 6.17). The target
            # stays inside that region: past it lie the harness's own mappings (the pads),
            # which an experiment must not unmap
            if data.draw(st.booleans()):
                pages, length = old, self.regions[h]["length"]
            others = sorted(o for o, r in self.regions.items() if proc in r["procs"])
            o = data.draw(st.sampled_from(others))
            if pages > self.regions[o]["pages"]:
                pages = self.regions[o]["pages"]
                length = pages * PAGE
            target = {"addr": f"{o}+{data.draw(st.integers(0, self.regions[o]['pages'] - pages))} pages"}
        live = self._do("mremap", in_=proc, region=h, length=length, flags=flags, **target)
        # the spec takes the new length whatever the result; after a failure draw only pages
        # both it and the kernel have
        self.regions[h]["pages"] = pages if live["result"] == "ok" else min(old, pages)
        if live["result"] == "ok":
            self.regions[h]["length"] = length      # the handle's length (a failed call keeps it)

    # ----- processes -----------------------------------------------------------------------
    @precondition(lambda self: len(self.procs) < 2)
    @rule()
    def fork(self):
        child = self._name("kid")
        live = self._do("fork", child=child)
        if live["result"] == "ok":
            for r in list(self.regions.values()) + list(self.fds.values()) + list(self.opened.values()):
                if "main" in r["procs"]:
                    r["procs"] = r["procs"] + [child]
            self.procs.append(child)

    @precondition(lambda self: len(self.procs) > 1)
    @rule()
    def exit_child(self):
        child = self.procs[-1]
        self._do("exit", in_=child)
        self.procs.remove(child)
        self.future.discard(child)

    @invariant()
    def model_agrees_with_the_kernel(self):
        if self.last is None:
            return
        live, diffs, check = self.last
        if diffs or check:
            first = str(diffs[0]) if diffs else f"model check(): {check[0]}"
            path = save_regression(self.s.toml(), first)
            raise AssertionError(f"model and kernel differ ({len(diffs)} field(s)); saved as {path}:\n"
                                 + "\n".join(str(d) for d in diffs[:20]) + "\n" + "\n".join(check))


SETTINGS = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not RANDOM,
    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                          HealthCheck.data_too_large])


def test_differential(record_property):
    for k in STATS:
        STATS[k] = 0

    def line() -> str:
        return (f"differential: {STATS['passed']} examples passed of {STATS['run']} run "
                f"({STATS['failed']} failed, shrinking included; {STATS['rejected']} rejected: a "
                f"perturbed live step or no handle for a rule; {STATS['discarded']} discarded by "
                f"Hypothesis; {'random' if RANDOM else 'derandomized'}, max_examples={EXAMPLES}, "
                f"steps<={STEPS})")
    try:
        run_state_machine_as_test(Differential, settings=SETTINGS)
    finally:
        # shown in the terminal summary by tests/conftest.py (pytest_terminal_summary), also
        # under pytest-xdist, where the report's user_properties travel to the controller
        record_property("differential", line())
        print(line())
    assert STATS["failed"] == 0, line()
    assert STATS["passed"] > 0, f"no example ran to its end: {line}"
