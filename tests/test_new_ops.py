"""The operations added for issue 10 (write, fadvise, seal, mlockall/munlockall, settle, shmat
remap/exec, shmctl set, guard advices, MAP_HUGE_*), checked against what the kernel must do,
without the model; and the model's rules that are keyed on the kernel release or the host's
huge page pools.

The live checks run bundled experiments once and assert figures the kernel fixes (errno names,
signals and the page that took them, VmFlags, RSS, fault counts of getrusage, bytes read
back), each with the kernel function that decides it. tests/test_model_live.py compares the
same experiments with the model field by field."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from model.kernel import Kernel
from model.resolve import Direct, run_step
from model.synthetic import profile, snapshot
from shmkit import libc, spec
from tests.conftest import ROOT, step

PAGE = os.sysconf("SC_PAGE_SIZE")
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def at(rec, n: int, do: str) -> dict:
    s = step(rec, n)
    assert s["do"] == do, f"step {n} is {s['do']}, not {do}: update this test with the experiment"
    return s


def vma_of(s: dict, handle: str, proc: str = "main") -> dict:
    r = s["processes"][proc]["regions"][handle]
    return next(v for v in s["processes"][proc]["vmas"] if v["start"] <= r["addr"] < v["end"])


# ----- live, against the kernel's rules ---------------------------------------------------------
@pytest.mark.live
def test_memfd_seals_live(run):
    rec = run(spec.load(EXPERIMENTS / "memfd-seals.toml"))
    errno = {n: (step(rec, n)["result"] or {}) for n in range(1, len(rec["steps"]) + 1)}
    assert errno[2] == {"errno": "EPERM"}           # no MFD_ALLOW_SEALING: F_SEAL_SEAL set
    assert errno[6] == {"errno": "EBUSY"}           # mapping_deny_writable: a shared rw mapping
    assert at(rec, 8, "seal")["value"] == {"seals": ["write"]}
    assert errno[9] == {"errno": "EPERM"}           # memfd_check_seals_mmap: shared + PROT_WRITE
    ro = vma_of(at(rec, 10, "mmap"), "r")
    assert "mw" not in ro["vmflags"] and "sh" in ro["vmflags"]   # VM_MAYWRITE cleared
    assert errno[12] == {"errno": "EACCES"}         # mprotect needs VM_MAYWRITE
    assert errno[15] == {"errno": "EPERM"}          # shmem_write_begin: write-sealed
    assert errno[18] == {"errno": "EPERM"} and errno[19] == {"errno": "EPERM"}  # shrink, grow
    assert errno[21] == {"errno": "EPERM"}          # after F_SEAL_SEAL
    assert errno[23] == {"errno": "EPERM"}          # tmpfs inode born with F_SEAL_SEAL
    assert errno[27] == {"errno": "EINVAL"}         # ext4: no seals


@pytest.mark.live
def test_write_into_mapped_file_live(run):
    rec = run(spec.load(EXPERIMENTS / "write-mapped-file.toml"))
    assert at(rec, 6, "write")["value"] == {"written": 3 * PAGE}
    after = at(rec, 7, "read")
    assert after["value"]["bytes"] == [[0x77, 3], [0x41, 1]] and after["faults"] == {"minor": 0, "major": 0}
    assert at(rec, 8, "read")["value"]["bytes"][0] == [0x50, 2]     # COW copies keep their bytes
    assert at(rec, 11, "read")["result"] == {"signal": "SIGBUS", "page": 5}
    assert at(rec, 13, "write")["value"] == {"written": 5000}
    assert at(rec, 14, "read")["result"] == "ok"                     # the file grew: no SIGBUS
    assert at(rec, 15, "write")["value"] == {"written": PAGE}        # cut at RLIMIT_FSIZE (6 pages)
    assert at(rec, 16, "write")["result"] == {"errno": "EFBIG"}
    assert at(rec, 18, "write")["result"] == {"errno": "EBADF"}      # opened read-only


@pytest.mark.live
def test_mlockall_future_live(run):
    rec = run(spec.load(EXPERIMENTS / "mlockall-future.toml"))
    assert at(rec, 2, "mlockall")["result"] == {"errno": "EINVAL"}   # MCL_ONFAULT alone
    assert at(rec, 3, "mlockall")["result"] == {"errno": "EINVAL"}   # no flag
    locked = at(rec, 5, "mmap")
    assert locked["faults"] == {"minor": 8, "major": 0}              # populated in the call
    assert "lo" in vma_of(locked, "locked")["vmflags"]
    assert "lo" not in vma_of(at(rec, 9, "mmap"), "kidmap", "kid")["vmflags"]  # not inherited
    onfault = at(rec, 12, "mmap")
    assert onfault["faults"] == {"minor": 0, "major": 0}
    assert {"lo", "lf"} <= set(vma_of(onfault, "onfault")["vmflags"])
    cleared = at(rec, 14, "munlockall")
    assert not {"lo", "lf"} & set(vma_of(cleared, "onfault")["vmflags"])


@pytest.mark.live
def test_guard_regions_live(run):
    if tuple(map(int, re.match(r"(\d+)\.(\d+)", os.uname().release).groups())) < (6, 18):
        pytest.skip("this experiment was measured on Linux 6.18 (guard regions: 6.13, file "
                    "mappings: 6.15, VM_MAYBE_GUARD: 6.18)")
    rec = run(spec.load(EXPERIMENTS / "madvise-guard.toml"))
    inst = at(rec, 3, "madvise")
    assert inst["result"] == "ok"
    assert vma_of(inst, "buf")["smaps_kb"]["Rss"] == 6 * PAGE // 1024   # 2 of 8 pages zapped
    assert at(rec, 4, "touch")["result"] == {"signal": "SIGSEGV", "page": 2}
    assert at(rec, 5, "touch")["result"] == {"signal": "SIGSEGV", "page": 3}
    assert at(rec, 9, "read")["value"]["bytes"] == [[5, 2], [0, 2], [5, 4]]   # removed: zero page
    assert at(rec, 13, "read")["result"] == {"signal": "SIGSEGV", "page": 1}  # file mapping too
    assert at(rec, 15, "madvise")["result"] == {"errno": "EINVAL"}    # VM_LOCKED
    assert at(rec, 16, "madvise")["result"] == {"errno": "EINVAL"}    # MADV_DONTNEED on VM_LOCKED
    assert at(rec, 17, "madvise")["result"] == "ok"                   # MADV_DONTNEED_LOCKED


@pytest.mark.live
@pytest.mark.skipif(not ROOT, reason="needs root (a segment owned by root, a caller that is not)")
def test_ipc_set_by_non_owner_is_eperm():
    """ipc/shm.c shmctl_down -> ipcctl_obtain_check(): only CAP_SYS_ADMIN, the creator or the
    owner may IPC_SET. The segment is root's (mode 0666, so the caller may read it); a child
    that dropped to nobody gets EPERM; root itself may."""
    shmid = libc.shmget(0, PAGE, 0o666 | libc.IPC_CREAT)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                ds = libc.ShmidDs()
                ds.uid, ds.gid, ds.mode = 0, 0, 0o600
                try:
                    libc.shmctl(shmid, libc.IPC_SET, ds)
                    code = 2
                except libc.CallError as exc:
                    code = 0 if exc.errno == 1 else 3          # EPERM
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "IPC_SET by a non-owner was not EPERM"
        ds = libc.ShmidDs()
        ds.uid, ds.gid, ds.mode = 0, 0, 0o640
        libc.shmctl(shmid, libc.IPC_SET, ds)
        assert libc.shmctl(shmid, libc.IPC_STAT).mode & 0o777 == 0o640
    finally:
        libc.shmctl(shmid, libc.IPC_RMID)


# ----- the model's version- and host-keyed rules ------------------------------------------------
def _kernel(**prof) -> Kernel:
    return Kernel({**profile(), **prof}, snapshot())


def _step(k: Kernel, n: int, do: str, **args) -> dict:
    """One step through the one resolver (model.resolve), as a run gives it to the model."""
    return run_step(k, {"index": n, "do": do, "in": "main", "args": args}, Direct())


def _anon(k: Kernel, pages: int = 4) -> None:
    assert _step(k, 1, "mmap", **{"as": "buf"}, length=pages * PAGE, prot="rw",
                 flags=("PRIVATE", "ANONYMOUS"))["result"] == "ok"


@pytest.mark.parametrize("release, result, gu", [((6, 12), {"errno": "EINVAL"}, False),
                                                 ((6, 13), "ok", False), ((6, 18), "ok", True)])
def test_guard_advice_keyed_on_release(release, result, gu):
    """madvise_behavior_valid(): MADV_GUARD_INSTALL exists from 6.13; VM_MAYBE_GUARD ("gu" in
    smaps) is set on install from 6.18 (measured there)."""
    k = _kernel(release_tuple=list(release))
    _anon(k)
    out = _step(k, 2, "madvise", region="buf", pages=(1, 2), advice="guard_install")
    assert out["result"] == result
    (v,) = [v for v in k.procs["main"].mm.vmas if v.opaque is None]
    from model.proc import vmflags
    assert ("gu" in vmflags(v)) == gu


def test_map_huge_1gb_needs_the_hstate():
    """hstate_sizelog(30): EINVAL where the host has no 1 GiB hstate, else the pool decides
    (ENOMEM from an empty pool)."""
    two = {"size_kb": 2048, "total": 0, "free": 0, "rsvd": 0, "surp": 0, "overcommit": 0}
    gig = {**two, "size_kb": 1 << 20}
    for pools, want in (([two], "EINVAL"), ([two, gig], "ENOMEM")):
        k = _kernel(hugetlb={**two}, hugetlb_pools=pools)
        out = _step(k, 1, "mmap", **{"as": "h"}, length=PAGE, prot="rw",
                    flags=("PRIVATE", "ANONYMOUS", "HUGETLB", "HUGE_1GB"))
        assert out["result"] == {"errno": want}


def test_shmctl_set_needs_its_mode():
    with pytest.raises(spec.SpecError, match='mode: missing required field with cmd = "set"'):
        spec.loads('about = "x"\n[[step]]\ndo = "shmget"\nas = "s"\nsize = 4096\n'
                   '[[step]]\ndo = "shmctl"\nsegment = "s"\ncmd = "set"\n', "x.toml")
    with pytest.raises(spec.SpecError, match="mode is only used with"):
        spec.loads('about = "x"\n[[step]]\ndo = "shmget"\nas = "s"\nsize = 4096\n'
                   '[[step]]\ndo = "shmctl"\nsegment = "s"\ncmd = "stat"\nmode = 384\n', "x.toml")


def test_write_length_and_offsets_are_bounded():
    base = 'about = "x"\n[[step]]\ndo = "memfd"\nas = "m"\n[[step]]\ndo = "write"\nmemfd = "m"\n'
    with pytest.raises(spec.SpecError, match="length: 8388608 bytes is more than one write step"):
        spec.loads(base + 'length = "8 MiB"\n', "x.toml")
    with pytest.raises(spec.SpecError, match="offset: .* does not fit a loff_t"):
        spec.loads(base + 'length = 1\noffset = "0x8000000000000000"\n', "x.toml")


def test_page_cache_invalidation_skips_dirty_mapped_and_straddling_folios():
    """model.objects.invalidate_unmapped follows mm/truncate.c mapping_try_invalidate: only
    folios wholly inside the range (find_lock_entries), and of those the clean unmapped ones
    (mapping_evict_folio)."""
    from model.objects import DISK, Inode, invalidate_unmapped

    ino = Inode(DISK, 1, "fe:01", 8 * PAGE)
    ino.add_folio(0, 2)                 # clean, unmapped: dropped
    ino.add_folio(2, 1, dirty=True)     # dirty: stays
    ino.add_folio(3, 1)
    ino.mapcount[3] = 1                 # mapped: stays
    ino.add_folio(4, 4)                 # reaches past the range: stays
    assert invalidate_unmapped(ino, 0, 6) == 2
    assert list(ino.cached) == [0, 0, 2, 1, 1, 1, 1, 1]
    assert invalidate_unmapped(ino, 0, 8) == 4
    assert list(ino.cached) == [0, 0, 2, 1, 0, 0, 0, 0]


def test_fadvise_dontneed_and_evict_invalidate_by_the_one_function(monkeypatch):
    """posix_fadvise(DONTNEED) (model.fileio) and the harness's evict (model.files) drop pages
    through model.objects.invalidate_unmapped, not each by a loop of its own."""
    import model.fileio
    import model.files
    from model import objects

    calls = []

    def spy(ino, lo, hi):
        calls.append((lo, hi))
        return objects.invalidate_unmapped(ino, lo, hi)

    monkeypatch.setattr(model.fileio, "invalidate_unmapped", spy)
    monkeypatch.setattr(model.files, "invalidate_unmapped", spy)
    k = _kernel()
    assert _step(k, 1, "file", name="/tmp/f", size=8 * PAGE, fill="zero", cache="warm", on="disk")["result"] == "ok"
    assert _step(k, 2, "fadvise", file="/tmp/f", offset=PAGE, length=2 * PAGE, advice="dontneed")["result"] == "ok"
    assert _step(k, 3, "evict", file="/tmp/f")["result"] == "ok"
    assert calls == [(1, 3), (0, 8)]
    assert k.files["/tmp/f"].cached_pages() == 0
