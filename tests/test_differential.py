"""Differential random testing: a Hypothesis state machine whose rules act on a live worker and
on the model together (shmkit.session.Session), with the invariant that after every step their
normalised observations agree field by field and the model's check() holds.

CI runs SHMKIT_DIFF_EXAMPLES examples (default 200) of up to SHMKIT_DIFF_STEPS steps (default 10),
derandomized so that CI is repeatable; SHMKIT_DIFF_RANDOM=1 draws new ones, and a larger
SHMKIT_DIFF_EXAMPLES hunts longer. A failing sequence is shrunk by Hypothesis and saved as an
experiment file under experiments/regressions/ (then fixed in the model, or listed in
model/known_differences.py), where tests/test_model_live.py keeps checking it."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live runs need Linux")]

EXAMPLES = int(os.environ.get("SHMKIT_DIFF_EXAMPLES", "200"))
STEPS = int(os.environ.get("SHMKIT_DIFF_STEPS", "10"))
RANDOM = os.environ.get("SHMKIT_DIFF_RANDOM") == "1"
REGRESSIONS = Path(__file__).resolve().parent.parent / "experiments" / "regressions"
_saved: list[Path] = []
_profile: dict = {}

PROTS = ["rw", "r", "none"]
ADVICE = ["dontneed", "willneed", "random", "sequential", "normal", "cold", "pageout", "free", "remove",
          "dontfork", "dofork", "wipeonfork", "keeponfork", "dontdump", "dodump", "nohugepage",
          "populate_read", "populate_write"]
MSYNC = [["sync"], ["async"], ["invalidate"], ["sync", "invalidate"]]
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
        self.s = Session(profile())
        self.n = 0
        self.regions: dict[str, dict] = {}   # handle -> pages (whole), length (bytes), procs, kind
        self.files: dict[str, int] = {}      # file handle -> size in bytes
        self.fds: dict[str, dict] = {}       # fd handle -> size (bytes), procs
        self.segs: dict[str, int] = {}       # SysV handle -> size in bytes
        self.posix: list[str] = []           # POSIX names created
        self.procs = ["main"]
        self.big: set[str] = set()           # file handles larger than a readahead window
        self.last = None

    def teardown(self):
        self.s.close()

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

    # ----- creating mappings -------------------------------------------------------------
    @rule(data=st.data(), shared=st.booleans(), pages=st.integers(1, 6), prot=st.sampled_from(PROTS),
          populate=st.booleans(), locked=st.booleans())
    def mmap_anon(self, data, shared, pages, prot, populate, locked):
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("a")
        # MAP_LOCKED: a locked VMA under a later mprotect (mprotect_fixup populates it)
        flags = ["shared" if shared else "private", "anonymous"] + (["populate"] if populate else []) \
            + (["locked"] if locked else [])
        length = self._bytes(data, pages)
        live = self._do("mmap", in_=proc, as_=h, length=length, prot=prot, flags=flags)
        if live["result"] == "ok":
            self.regions[h] = {"pages": pages, "length": length, "procs": [proc], "kind": "mmap"}

    @precondition(lambda self: len(self.files) < 3)
    @rule(pages=st.integers(1, 6), short=SHORT, on=st.sampled_from(["disk", "tmpfs"]), cold=st.booleans(),
          fill=st.sampled_from(["zero", "random", "byte"]))
    def file(self, pages, short, on, cold, fill):
        h = self._name("f")
        size = pages * PAGE - short
        self._do("file", name=h, size=size, on=on, fill=fill,
                 cache="cold" if cold and on == "disk" else "warm")
        self.files[h] = size

    @precondition(lambda self: len(self.files) < 3 and not self.big)
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
    @rule(data=st.data(), shared=st.booleans(), prot=st.sampled_from(["r", "rw"]), locked=st.booleans())
    def mmap_file(self, data, shared, prot, locked):
        f = data.draw(st.sampled_from(sorted(self.files)))
        size = -(-self.files[f] // PAGE)                    # the file's pages, the last maybe partial
        off = data.draw(st.integers(0, size - 1))
        pages = data.draw(st.integers(1, size - off + 1))     # may reach past the end of file
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("m")
        length = self._bytes(data, pages)
        live = self._do("mmap", in_=proc, as_=h, file=f, length=length, prot=prot,
                        flags=["shared" if shared else "private"] + (["locked"] if locked else []),
                        offset=f"{off} pages")
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
                              "kind": "mmap"}
            if hugepage:
                self._do("madvise", in_=proc, region=h, advice="hugepage")

    @precondition(lambda self: len(self.fds) < 3)
    @rule(data=st.data(), pages=st.integers(1, 4), memfd=st.booleans())
    def shmem_object(self, data, pages, memfd):
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("o")
        size = self._bytes(data, pages)
        if memfd:
            live = self._do("memfd", in_=proc, as_=h, name=h, size=size)
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
        pages = -(-fd["size"] // PAGE) + data.draw(st.integers(0, 1))
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
    @rule(data=st.data(), pages=st.integers(0, 6))
    def truncate(self, data, pages):
        """truncate(2) a file or ftruncate(2) a memfd / POSIX object while it is mapped:
        truncate_pagecache / shmem_setattr zap private COW copies past the new end too."""
        targets = [("file", f) for f in sorted(self.files)] + \
            [("memfd" if f["memfd"] else "shm", h) for h, f in sorted(self.fds.items())]
        kind, h = data.draw(st.sampled_from(targets))
        procs = self.procs if kind == "file" else sorted(set(self.fds[h]["procs"]) & set(self.procs))
        assume(procs)
        self._do("truncate", in_=data.draw(st.sampled_from(procs)), size=f"{pages} pages", **{kind: h})

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
    @rule(data=st.data(), readonly=st.booleans())
    def shmat(self, data, readonly):
        seg = data.draw(st.sampled_from(sorted(self.segs)))
        proc = data.draw(st.sampled_from(self.procs))
        h = self._name("t")
        live = self._do("shmat", in_=proc, as_=h, segment=seg, readonly=readonly)
        if live["result"] == "ok":
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

    # ----- changing and touching them ----------------------------------------------------
    @precondition(lambda self: self.regions)
    @rule(data=st.data(), write=st.booleans(), value=st.integers(1, 255))
    def touch(self, data, write, value):
        h, proc = self._region_in(data)
        r = self.regions[h]
        pages = self._pages(data, r["pages"], r.get("big", False))
        self._do("touch", in_=proc, region=h, pages=pages, access="write" if write else "read",
                 value=value if write else None)

    @precondition(lambda self: self.regions)
    @rule(data=st.data())
    def read(self, data):
        h, proc = self._region_in(data)
        r = self.regions[h]
        self._do("read", in_=proc, region=h, pages=self._pages(data, r["pages"], r.get("big", False)))

    @precondition(lambda self: self.regions)
    @rule(data=st.data())
    def munmap(self, data):
        # SysV attaches too: a partly unmapped attach is what shmdt's upward walk must handle
        h, proc = self._region_in(data)
        self._do("munmap", in_=proc, region=h, pages=self._pages(data, self.regions[h]["pages"]))

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), prot=st.sampled_from(PROTS))
    def mprotect(self, data, prot):
        h, proc = self._region_in(data)
        self._do("mprotect", in_=proc, region=h, pages=self._pages(data, self.regions[h]["pages"]), prot=prot)

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), advice=st.sampled_from(ADVICE))
    def madvise(self, data, advice):
        # populating a big cold file meets folios still under I/O, and its regions keep
        # VM_RAND_READ (see mmap_file; readahead-io-in-flight)
        h, proc = self._region_in(data, lambda r: not (r.get("big") and (
            advice.startswith("populate") or advice in ("sequential", "normal"))))
        self._do("madvise", in_=proc, region=h, pages=self._pages(data, self.regions[h]["pages"]),
                 advice=advice)

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), flags=st.sampled_from(MSYNC))
    def msync(self, data, flags):
        h, proc = self._region_in(data)
        self._do("msync", in_=proc, region=h, pages=self._pages(data, self.regions[h]["pages"]), flags=flags)

    @precondition(lambda self: self.regions)
    @rule(data=st.data(), onfault=st.booleans(), unlock=st.booleans())
    def mlock(self, data, onfault, unlock):
        h, proc = self._region_in(data, lambda r: unlock or not r.get("big"))
        pages = self._pages(data, self.regions[h]["pages"])
        if unlock:
            self._do("munlock", in_=proc, region=h, pages=pages)
        else:
            self._do("mlock", in_=proc, region=h, pages=pages, onfault=onfault)

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
            for r in list(self.regions.values()) + list(self.fds.values()):
                if "main" in r["procs"]:
                    r["procs"] = r["procs"] + [child]
            self.procs.append(child)

    @precondition(lambda self: len(self.procs) > 1)
    @rule()
    def exit_child(self):
        child = self.procs[-1]
        self._do("exit", in_=child)
        self.procs.remove(child)

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


Differential.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not RANDOM,
    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                          HealthCheck.data_too_large])
TestDifferential = Differential.TestCase
