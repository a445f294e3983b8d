"""Every operation of format 1 against the real kernel: the live side must see
what the kernel does (results, errno, signals, faults, maps, /dev/shm, SysV)."""
from __future__ import annotations

import os

import pytest

from shmkit.record import normalise
from shmkit.spec import ExperimentBuilder
from tests.conftest import needs_root, step

pytestmark = pytest.mark.live
PAGE = os.sysconf("SC_PAGE_SIZE")


def anon(b, as_="buf", pages=16, prot="rw", flags=("private", "anonymous"), **kw):
    return b.mmap(as_=as_, length=f"{pages} pages", prot=prot, flags=list(flags), **kw)


def vma_of(rec_step, proc, handle):
    """The maps records that lie inside a region's range."""
    p = rec_step["processes"][proc]
    r = p["regions"][handle]
    return [v for v in p["vmas"] if r["addr"] <= v["start"] and v["end"] <= r["addr"] + r["length"]]


def test_private_anonymous_read_maps_zero_page_then_write_allocates(run, zero_pfn):
    b = ExperimentBuilder(about="t")
    anon(b)
    b.touch(region="buf", pages="0..8", access="read")
    b.touch(region="buf", access="write", value=9)
    b.read(region="buf")
    rec = run(b)
    assert step(rec, 1)["faults"] == {"minor": 0, "major": 0}
    assert step(rec, 2)["faults"] == {"minor": 8, "major": 0}
    reg = step(rec, 2)["processes"]["main"]["regions"]["buf"]
    assert reg["present"] == 8
    if zero_pfn is not None:
        assert reg["zero"] == 8 and reg["rss"] == 0
    # 8 write-protect faults on zero-page PTEs plus 8 faults on empty PTEs
    assert step(rec, 3)["faults"] == {"minor": 16, "major": 0}
    assert step(rec, 4)["value"]["bytes"] == [[9, 16]]
    assert step(rec, 4)["faults"] == {"minor": 0, "major": 0}
    (v,) = vma_of(step(rec, 4), "main", "buf")
    assert v["perms"] == "rw-p" and v["smaps_kb"]["Rss"] == 16 * PAGE // 1024


def test_touch_past_end_of_file_is_sigbus_and_prot_none_is_sigsegv(run):
    b = ExperimentBuilder(about="t")
    b.file(name="small", size="1 pages")
    b.mmap(as_="m", length="4 pages", prot="r", flags=["shared"], file="small")
    b.touch(region="m")
    anon(b, as_="none", pages=2, prot="none")
    b.touch(region="none", access="write")
    b.noop = None
    rec = run(b)
    assert step(rec, 3)["result"] == {"signal": "SIGBUS", "page": 1}
    assert step(rec, 5)["result"] == {"signal": "SIGSEGV", "page": 0}
    assert step(rec, 5)["faults"] == {"minor": 0, "major": 0}


def test_failing_calls_record_their_errno(run):
    b = ExperimentBuilder(about="t")
    b.mmap(as_="z", length=0, prot="r", flags=["private", "anonymous"])
    b.mmap(as_="n", length="1 pages", prot="r", flags=["anonymous"])
    b.file(name="f", size="4 pages")
    b.mmap(as_="u", length="1 pages", prot="r", flags=["shared"], file="f", offset=100)
    b.open(as_="ro", file="f", mode="r")
    b.mmap(as_="w", length="1 pages", prot="rw", flags=["shared"], fd="ro")
    anon(b, as_="a", pages=4)
    b.mmap(as_="x", length="1 pages", prot="r", flags=["private", "anonymous", "fixed_noreplace"],
           addr="a+1 pages")
    b.shm_open(as_="missing", name="nothere")
    rec = run(b)
    assert [step(rec, i)["result"] for i in (1, 2, 4, 6, 8, 9)] == [
        {"errno": "EINVAL"}, {"errno": "EINVAL"}, {"errno": "EINVAL"}, {"errno": "EACCES"},
        {"errno": "EEXIST"}, {"errno": "ENOENT"}]
    assert "x" not in step(rec, 8)["processes"]["main"]["regions"]


def test_posix_shm_lifecycle_seen_in_dev_shm_and_maps(run):
    b = ExperimentBuilder(about="t")
    b.shm_open(as_="s", name="obj", create=True, excl=True, size="8 pages", mode=0o640)
    b.mmap(as_="m", length="8 pages", prot="rw", flags=["shared"], shm="s")
    b.touch(region="m", access="write", value=5)
    b.shm_unlink(name="obj")
    b.shm_open(as_="again", name="obj")
    rec = run(b)
    real = "/" + rec["prefix"] + "obj"
    (entry,) = step(rec, 1)["dev_shm"]
    assert entry == {"name": real[1:], "size": 8 * PAGE, "mode": "0o640"}
    (v,) = vma_of(step(rec, 3), "main", "m")
    assert v["path"] == "/dev/shm" + real and v["perms"] == "rw-s"
    assert step(rec, 3)["faults"]["minor"] == 8
    assert step(rec, 4)["dev_shm"] == []
    (v,) = vma_of(step(rec, 4), "main", "m")
    assert v["path"] == "/dev/shm" + real + " (deleted)"
    assert step(rec, 5)["result"] == {"errno": "ENOENT"}


def test_sysv_segment_attach_twice_rmid_while_attached(run):
    b = ExperimentBuilder(about="t")
    b.shmget(as_="seg", size="4 pages", key=7, create=True, mode=0o600)
    b.shmat(as_="a1", segment="seg")
    b.shmat(as_="a2", segment="seg", readonly=True)
    b.shmctl(segment="seg", cmd="rmid")
    b.shmdt(region="a1")
    b.shmdt(region="a2")
    b.shmat(as_="a3", segment="seg")
    rec = run(b)
    key = int(next(k for k in rec["names"]["keys"]))
    assert step(rec, 1)["sysv"][0]["key"] == key and step(rec, 1)["sysv"][0]["nattch"] == 0
    assert step(rec, 3)["sysv"][0]["nattch"] == 2
    row = step(rec, 4)["sysv"][0]
    assert row["key"] == 0 and row["nattch"] == 2 and int(row["perms"], 8) & 0o1000  # SHM_DEST
    assert step(rec, 5)["sysv"][0]["nattch"] == 1
    assert step(rec, 6)["sysv"] == []
    assert step(rec, 7)["result"] == {"errno": "EINVAL"}
    (v,) = vma_of(step(rec, 3), "main", "a2")
    assert v["perms"] == "r--s" and v["path"].startswith(f"/SYSV{key:08x}")


def test_memfd_and_shared_anonymous_show_their_internal_names(run):
    b = ExperimentBuilder(about="t")
    b.memfd(as_="m", name="mem", size="4 pages")
    b.mmap(as_="mm", length="4 pages", prot="rw", flags=["shared"], memfd="m")
    anon(b, as_="sa", pages=4, flags=("shared", "anonymous"))
    rec = run(b)
    (v,) = vma_of(step(rec, 2), "main", "mm")
    assert v["path"] == f"/memfd:{rec['prefix']}mem (deleted)"
    (v,) = vma_of(step(rec, 3), "main", "sa")
    assert v["path"] == "/dev/zero (deleted)" and v["perms"] == "rw-s"


def test_fork_copy_on_write_counts_in_parent_and_child(run):
    b = ExperimentBuilder(about="t")
    anon(b)
    b.touch(region="buf", access="write", value=1)
    b.fork(child="kid")
    b.touch(in_="kid", region="buf", access="write", value=2)
    b.touch(region="buf", access="write", value=3)
    b.read(region="buf")
    b.read(in_="kid", region="buf")
    b.exit(in_="kid")
    rec = run(b)
    assert step(rec, 3)["faults"] is None  # the interpreter's, not an observation
    assert step(rec, 4)["faults"] == {"minor": 16, "major": 0}  # wp_page_copy
    # the child copied every page, so the parent's are its own again: reuse (wp_page_reuse), still faults
    assert step(rec, 5)["faults"] == {"minor": 16, "major": 0}
    assert step(rec, 6)["value"]["bytes"] == [[3, 16]]
    assert step(rec, 7)["value"]["bytes"] == [[2, 16]]
    assert "kid" not in step(rec, 8)["processes"]
    assert step(rec, 8)["exit_status"] == {"exit": 0}


def test_shared_anonymous_writes_by_child_seen_by_parent(run):
    b = ExperimentBuilder(about="t")
    anon(b, as_="sh", pages=4, flags=("shared", "anonymous"))
    b.fork(child="kid")
    b.touch(in_="kid", region="sh", access="write", value=0x42)
    b.read(region="sh")
    rec = run(b)
    assert step(rec, 4)["value"]["bytes"] == [[0x42, 4]]
    # one read fault: do_read_fault() -> filemap_map_pages() fault-around maps the other
    # three pages already in the shmem page cache (measured: 1, not 4)
    assert step(rec, 4)["faults"] == {"minor": 1, "major": 0}
    assert step(rec, 4)["processes"]["main"]["regions"]["sh"]["present"] == 4


def test_populate_faults_are_counted_in_the_mmap_step(run):
    b = ExperimentBuilder(about="t")
    anon(b, pages=8, flags=("private", "anonymous", "populate"))
    b.touch(region="buf", access="write")
    rec = run(b)
    assert step(rec, 1)["faults"]["minor"] == 8
    assert step(rec, 1)["processes"]["main"]["regions"]["buf"]["present"] == 8
    assert step(rec, 2)["faults"] == {"minor": 0, "major": 0}


def test_mprotect_splits_and_munmap_punches_a_hole(run):
    b = ExperimentBuilder(about="t")
    anon(b, pages=8)
    b.mprotect(region="buf", pages="2..4", prot="r")
    b.mprotect(region="buf", pages="2..4", prot="rw")
    b.munmap(region="buf", pages="4..5")
    rec = run(b)
    assert [v["perms"] for v in vma_of(step(rec, 2), "main", "buf")] == ["rw-p", "r--p", "rw-p"]
    assert len(vma_of(step(rec, 3), "main", "buf")) == 1
    sizes = [v["end"] - v["start"] for v in vma_of(step(rec, 4), "main", "buf")]
    assert sizes == [4 * PAGE, 3 * PAGE]


def test_madvise_dontneed_then_retouch_and_mremap_move(run):
    b = ExperimentBuilder(about="t")
    anon(b, pages=4)
    b.touch(region="buf", access="write", value=7)
    b.madvise(region="buf", advice="dontneed")
    b.read(region="buf")
    b.mremap(region="buf", length="64 pages", flags=["maymove"])
    rec = run(b)
    assert step(rec, 3)["processes"]["main"]["regions"]["buf"]["present"] == 0
    assert step(rec, 4)["value"]["bytes"] == [[0, 4]] and step(rec, 4)["faults"]["minor"] == 4
    assert step(rec, 5)["result"] == "ok"
    assert step(rec, 5)["processes"]["main"]["regions"]["buf"]["length"] == 64 * PAGE


def test_cold_file_read_is_a_major_fault(run):
    b = ExperimentBuilder(about="t")
    b.file(name="data", size="64 pages", fill="random", cache="cold")
    b.mmap(as_="m", length="64 pages", prot="r", flags=["shared"], file="data")
    b.touch(region="m", pages="0..1")
    b.evict(file="data")
    rec = run(b)
    assert step(rec, 3)["faults"]["major"] >= 1


def test_rlimit_step_and_memlock_limit(run):
    b = ExperimentBuilder(about="t")
    b.rlimit(resource="memlock", soft="4 pages", hard="4 pages")
    anon(b, pages=8)
    b.mlock(region="buf")
    b.mlock(region="buf", pages="0..2")
    rec = run(b)
    if os.geteuid() == 0:
        # CAP_IPC_LOCK ignores RLIMIT_MEMLOCK (mm/mlock.c: can_do_mlock)
        assert step(rec, 3)["result"] == "ok"
    else:
        assert step(rec, 3)["result"] == {"errno": "ENOMEM"}


@needs_root
def test_user_drop_makes_memlock_limit_bite(run):
    b = ExperimentBuilder(about="t", user="nobody", rlimits={"memlock": "4 pages"})
    anon(b, pages=8)
    b.mlock(region="buf")
    b.mlock(region="buf", pages="0..2")
    rec = run(b)
    assert step(rec, 2)["result"] == {"errno": "ENOMEM"}
    assert step(rec, 3)["result"] == "ok"


def test_aslr_off_places_mappings_at_the_same_address_every_run(run):
    def once():
        b = ExperimentBuilder(about="t", aslr=False)
        anon(b, pages=4)
        return run(b)

    a, c = once(), once()
    assert step(a, 1)["value"]["addr"] == step(c, 1)["value"]["addr"]


def test_legacy_layout_maps_bottom_up(run):
    b = ExperimentBuilder(about="t", layout="legacy")
    anon(b, as_="one", pages=4)
    anon(b, as_="two", pages=4)
    rec = run(b)
    one, two = step(rec, 2)["value"]["addr"], step(rec, 1)["value"]["addr"]
    assert one > two  # bottom-up: the second mapping lies above the first
    n = normalise(rec)
    assert n["steps"][0]["value"]["addr"].startswith("$edge")
