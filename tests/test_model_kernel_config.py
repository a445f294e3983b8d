"""Model rules keyed on the kernel's configuration (the profile), never on the host's name.

CONFIG_MEM_SOFT_DIRTY (Debian's 6.1 and 6.12 kernels have it, this host's 6.18 does not):
every VMA that mmap_region() makes or expands gets VM_SOFTDIRTY, smaps prints "sd", and
is_mergeable_vma() ignores the bit (VM_IGNORE_MERGE since 6.18). Checked live in a Debian
6.1.0-50 guest (virtme-ng): a fresh anonymous mapping showed ["rd","wr","mr","mw","me","ac","sd"].
On this host tests/test_profile.py checks the profile's soft_dirty against /proc/self/smaps.
"""
from __future__ import annotations

import pytest

from model.flags import PAGE_SIZE
from model.kernel import Kernel
from model.proc import vmflags
from model.resolve import Direct, run_step
from model.synthetic import profile, snapshot

BASE = 0x7E0000000000


def _kernel(soft_dirty: bool) -> Kernel:
    return Kernel({**profile(), "soft_dirty": soft_dirty}, snapshot())


def _mmap(k: Kernel, n: int, page: int, pages: int, prot: str = "rw", shared: bool = False) -> dict:
    flags = ("SHARED" if shared else "PRIVATE", "ANONYMOUS", "FIXED")
    return run_step(k, {"index": n, "do": "mmap", "in": "main",
                   "args": {"as": f"m{n}", "length": pages * PAGE_SIZE, "prot": prot, "flags": flags,
                            "addr": ("abs", BASE + page * PAGE_SIZE)}}, Direct())


def _ours(k: Kernel):
    return [v for v in k.procs["main"].mm.vmas if v.opaque is None]


@pytest.mark.parametrize("soft_dirty", [True, False])
def test_new_vmas_are_soft_dirty_only_with_the_config(soft_dirty):
    k = _kernel(soft_dirty)
    assert _mmap(k, 1, 0, 4)["result"] == "ok"
    (v,) = _ours(k)
    assert ("sd" in vmflags(v)) is soft_dirty
    assert vmflags(v)[-1] == ("sd" if soft_dirty else "ac")   # bit 27, after ac (bit 20)
    assert k.check() == []


def test_soft_dirty_does_not_stop_a_merge():
    """Two adjacent private anonymous mappings merge into one VMA, "sd" and all."""
    k = _kernel(True)
    _mmap(k, 1, 0, 4)
    _mmap(k, 2, 4, 4)
    (v,) = _ours(k)
    assert v.end - v.start == 8 * PAGE_SIZE and "sd" in vmflags(v)
    # mprotect splits and re-merges keep the bit on every piece
    out = run_step(k, {"index": 3, "do": "mprotect", "in": "main",
                       "args": {"region": "m1", "pages": (1, 2), "prot": "r"}}, Direct())
    assert out["result"] == "ok" and len(_ours(k)) == 3
    assert all("sd" in vmflags(x) for x in _ours(k))
    assert k.check() == []


@pytest.mark.parametrize("release, faults", [((6, 1, 176), 513), ((6, 12, 118), 513), ((6, 13, 0), 2),
                                             ((6, 18, 0), 2)])
def test_write_to_the_huge_zero_page_by_kernel_version(release, faults):
    """thp-madvise-hugepage.toml step 4 (a 4 MiB write after a read mapped the huge zero page in
    the first 2 MiB): from 6.13 do_huge_zero_wp_pmd() maps a THP in one fault; before, the PMD
    is split into zero-page PTEs and each page is copied on its own fault (512 + 1 for the
    second block's THP). Measured: 513 on Debian 6.1.0-50 and 6.12.118 guests, 2 here (6.18)."""
    k = Kernel({**profile(), "release_tuple": release, "thp_enabled": "madvise"}, snapshot())
    _mmap(k, 1, 0, 1024)       # BASE is 2 MiB aligned: two whole PMD blocks
    steps = [("madvise", {"region": "m1", "advice": "hugepage"}),
             ("touch", {"region": "m1", "pages": (0, 1), "access": "read"}),
             ("touch", {"region": "m1", "pages": (0, 1024), "access": "write", "value": 3})]
    outs = [run_step(k, {"index": n, "do": do, "in": "main", "args": args}, Direct())
            for n, (do, args) in enumerate(steps, 2)]
    assert [o["result"] for o in outs] == ["ok"] * 3
    assert outs[1]["faults"]["minor"] == 1 and outs[2]["faults"]["minor"] == faults
    assert k.check() == []


# ----- rules keyed on the release (model/versions.py) -------------------------------------------

def _file_kernel(release, per_vma_lock=True) -> Kernel:
    prof = {**profile(), "release_tuple": list(release),
            "config": {"PER_VMA_LOCK": per_vma_lock}}
    snap = snapshot(devices={"disk": "fe:00", "tmpfs": "00:20", "shmem": "00:01",
                             "disk_readahead_kb": 128, "disk_io_pages": None})
    return Kernel(prof, snap)


def _step(k: Kernel, n: int, do: str, **args) -> dict:
    out = run_step(k, {"index": n, "do": do, "in": "main", "args": args}, Direct())
    assert k.check() == [], k.check()
    return out


@pytest.mark.parametrize("release, per_vma_lock, major", [
    ((6, 1), True, 1), ((6, 6), True, 1), ((6, 7), True, 0), ((6, 12), True, 0), ((6, 18), True, 0),
    ((6, 12), False, 1)])
def test_fault_on_the_readahead_mark_counts_by_the_lock_it_held(release, per_vma_lock, major):
    """file-fault-cold.toml on a 128 KiB read_ahead_kb disk: the first fault reads 32 pages
    around page 0 (async_size 8: page 24 gets PG_readahead) and maps the 16-page window; reading
    the rest faults at page 16 (fault-around maps 16..31 but the marked 24) and at page 24,
    whose async readahead drops the lock and retries: major under the mmap lock (6.1 measured;
    no CONFIG_PER_VMA_LOCK), minor after a per-VMA-lock attempt (6.12 and 6.18 measured)."""
    k = _file_kernel(release, per_vma_lock)
    _step(k, 1, "file", name="/tmp/d", size=32 * PAGE_SIZE, cache="cold")
    _step(k, 2, "open", file="/tmp/d", **{"as": "fd"})
    out = _step(k, 3, "mmap", **{"as": "m", "length": 32 * PAGE_SIZE, "prot": "r", "flags": ("SHARED",),
                                 "fd": "fd"})
    assert out["result"] == "ok", out
    assert _step(k, 4, "touch", region="m", pages=(0, 1), access="read")["faults"] == {"minor": 0, "major": 1}
    f = _step(k, 5, "touch", region="m", pages=(0, 32), access="read")["faults"]
    assert f == {"minor": 2 - major, "major": major}, f


@pytest.mark.parametrize("release, merged", [((6, 1), True), ((6, 6), True), ((6, 7), False), ((6, 18), False)])
def test_map_stack_sets_nohugepage_from_6_7(release, merged):
    """mmap-flags-growsdown.toml step 7: a MAP_STACK mapping right below a plain one merges
    with it on 6.1 (MAP_STACK changed no flag), stays apart with "nh" from 6.7 (6.12, 6.18
    measured)."""
    k = Kernel({**profile(), "release_tuple": list(release)}, snapshot())
    _mmap(k, 1, 4, 4)
    out = run_step(k, {"index": 2, "do": "mmap", "in": "main",
                       "args": {"as": "s", "length": 4 * PAGE_SIZE, "prot": "rw",
                                "flags": ("PRIVATE", "ANONYMOUS", "FIXED", "STACK"),
                                "addr": ("abs", BASE)}}, Direct())
    assert out["result"] == "ok"
    assert (len(_ours(k)) == 1) is merged, [vmflags(v) for v in _ours(k)]
    assert ("nh" in vmflags(_ours(k)[0])) is not merged
    assert k.check() == []


@pytest.mark.parametrize("release, faults", [((6, 1), {"minor": 7, "major": 0}),
                                             ((6, 8), {"minor": 7, "major": 0}),
                                             ((6, 9), {"minor": 4, "major": 3}),
                                             ((6, 12), {"minor": 4, "major": 3})])
def test_madvise_populate_retry_by_release(release, faults):
    """populate-cold-file.toml step 8, MADV_POPULATE_READ of a cold 64-page file whose disk reads
    32 pages ahead: the faults that drop the lock (the cold one, and the readahead marks)
    count major from 6.9 (__get_user_pages_locked retries with FAULT_FLAG_TRIED; 6.12
    measured), never before (6.1 measured: madvise_populate starts again without it)."""
    k = _file_kernel(release)
    _step(k, 1, "file", name="/tmp/h", size=64 * PAGE_SIZE, cache="cold")
    _step(k, 2, "open", file="/tmp/h", **{"as": "fd"})
    addr = BASE + 383 * PAGE_SIZE        # as both guests placed it: page 383 of a page table
    assert _step(k, 3, "mmap", **{"as": "m", "length": 64 * PAGE_SIZE, "prot": "r", "flags": ("SHARED", "FIXED"),
                                  "fd": "fd", "addr": ("abs", addr)})["result"] == "ok"
    out = _step(k, 4, "madvise", region="m", advice="populate_read")
    assert out["result"] == "ok", out
    assert out["faults"] == faults

@pytest.mark.parametrize("release, name", [((6, 1), "??"), ((6, 2), "lf"), ((6, 12), "lf"), ((6, 18), "lf")])
def test_lock_on_fault_mnemonic_by_kernel_version(release, name):
    """mlock-onfault.toml step 2: mlock2(MLOCK_ONFAULT) sets VM_LOCKED|VM_LOCKONFAULT; smaps
    VmFlags names the second bit "lf" only from 6.2 (show_smap_vma_flags had no entry for it
    before, so the default "??" printed, in the same bit position). Measured: "??" on Debian
    6.1.0-50, "lf" on 6.12.118 and here (6.18)."""
    k = _file_kernel(release)
    assert _step(k, 1, "mmap", **{"as": "b", "length": 8 * PAGE_SIZE, "prot": "rw",
                                  "flags": ("PRIVATE", "ANONYMOUS")})["result"] == "ok"
    assert _step(k, 2, "mlock", region="b", pages=(0, 4), onfault=True)["result"] == "ok"
    locked = [v["vmflags"] for v in k.observe()["processes"]["main"]["vmas"] if "lo" in v["vmflags"]]
    assert locked == [["rd", "wr", "mr", "mw", "me", "lo", name, "ac"]], locked


@pytest.mark.parametrize("release, written", [((6, 1), 4096), ((6, 10), 4096), ((6, 11), None), ((6, 12), None),
                                              ((6, 13), 4096), ((6, 18), 4096)])
def test_grow_sealed_write_past_the_end_by_kernel_version(release, written):
    """memfd-seal-future-write.toml step 5: a 2-page pwrite at page 1 of a 2-page memfd sealed
    F_SEAL_GROW. shmem_write_begin refuses a chunk with pos + len > i_size; the chunk is a page
    (the first is written, the second refused: a short write) except on 6.11-6.12, where
    generic_perform_write hands the whole write to write_begin because every shmem mapping has
    large folios: EPERM, nothing written. Measured: 4096 on Debian 6.1.0-50 and here (6.18),
    EPERM on 6.12.118."""
    k = _file_kernel(release)
    io = {"fd": None, "file": None, "shm": None, "memfd": "mem"}
    assert _step(k, 1, "memfd", **{"as": "mem", "name": "mem", "size": 2 * PAGE_SIZE,
                                   "sealing": True})["result"] == "ok"
    assert _step(k, 2, "seal", fd=None, memfd="mem", shm=None, seals=("GROW",))["result"] == "ok"
    out = _step(k, 3, "write", **io, offset=PAGE_SIZE, length=2 * PAGE_SIZE, value=0x42)
    if written is None:
        assert out["result"] == {"errno": "EPERM"}, out
    else:
        assert out["result"] == "ok" and out["value"] == {"written": written}, out
    # a write that stays inside the file is whole everywhere
    out = _step(k, 4, "write", **io, offset=0, length=2 * PAGE_SIZE, value=0x43)
    assert out["result"] == "ok" and out["value"] == {"written": 2 * PAGE_SIZE}, out


def _pageout_anon(release):
    k = _file_kernel(release)
    _step(k, 1, "mmap", **{"as": "a", "length": 4 * PAGE_SIZE, "prot": "rw", "flags": ("PRIVATE", "ANONYMOUS")})
    _step(k, 2, "touch", region="a", pages=(0, 4), access="write", value=1)
    out = _step(k, 3, "madvise", region="a", advice="pageout")
    assert out["result"] == "ok", out
    return next(v for v in k.observe()["processes"]["main"]["vmas"] if v["smaps_kb"].get("Rss") == 16)["smaps_kb"]


@pytest.mark.parametrize("release, referenced", [((6, 1), 0), ((6, 8), 0), ((6, 9), 16), ((6, 12), 16),
                                                 ((6, 18), 16)])
def test_pageout_ages_what_it_keeps_only_before_6_9(release, referenced):
    """madvise-pageout.toml step 3: MADV_PAGEOUT of 4 written anonymous pages with no swap
    keeps them mapped; before 6.9 madvise_cold_or_pageout_pte_range() made each PTE old (and
    shrink_folio_list ran folio_referenced()), from 6.9 the PTEs stay young and reclaim ignores
    references. Measured: smaps Referenced 0 on Debian 6.1.0-50, 16 kB on 6.12.118 and here."""
    sm = _pageout_anon(release)
    assert sm["Anonymous"] == 16 and sm["Referenced"] == referenced, sm


@pytest.mark.parametrize("release, retry_major", [((6, 1), True), ((6, 12), False), ((6, 18), False)])
def test_pageout_of_dirty_file_pages_marks_them_readahead(release, retry_major):
    """madvise-pageout.toml steps 10-13 on a disk without large folios: MADV_PAGEOUT unmaps 4
    written (dirty) file pages and keeps them cached with PG_reclaim, the PG_readahead bit, so
    fault-around skips them and each read faults on its own and starts async readahead (the
    retry counts major under the mmap lock, 6.1; minor after the per-VMA lock). Measured: 4
    major faults on Debian 6.1.0-50, 4 minor on 6.12.118 (both: 4 KiB folios)."""
    k = _file_kernel(release)
    k.large_folios = False
    _step(k, 1, "file", name="/tmp/d", size=4 * PAGE_SIZE, cache="cold")
    _step(k, 2, "open", file="/tmp/d", **{"as": "fd"})
    assert _step(k, 3, "mmap", **{"as": "f", "length": 4 * PAGE_SIZE, "prot": "rw", "flags": ("SHARED",),
                                  "fd": "fd"})["result"] == "ok"
    _step(k, 4, "touch", region="f", pages=(0, 4), access="write", value=2)
    assert _step(k, 5, "madvise", region="f", advice="pageout")["result"] == "ok"
    f = _step(k, 6, "touch", region="f", pages=(0, 4), access="read")["faults"]
    assert f == ({"minor": 0, "major": 4} if retry_major else {"minor": 4, "major": 0}), f


@pytest.mark.parametrize("config, referenced", [({}, 0), ({"LRU_GEN": True}, 0),
                                                ({"LRU_GEN": True, "LRU_GEN_ENABLED": True}, 16)])
def test_second_populate_read_keeps_referenced_only_with_mglru(config, referenced):
    """madvise-populate.toml steps 4-6: after MADV_COLD (PTEs old, PG_referenced clear) two
    MADV_POPULATE_READs of the mapped pages take no fault; FOLL_TOUCH calls
    folio_mark_accessed(): the first sets PG_referenced, the second activates the folio and
    clears it, unless the multi-gen LRU is on (folio_inc_refs: PG_referenced stays).
    Measured: smaps Referenced 0 on Debian 6.1.0-50 (LRU_GEN, not LRU_GEN_ENABLED) and here
    (no LRU_GEN), 16 kB on Debian 6.12.118 (LRU_GEN_ENABLED=y)."""
    k = Kernel({**profile(), "release_tuple": [6, 12], "config": config}, snapshot())
    _step(k, 1, "mmap", **{"as": "b", "length": 4 * PAGE_SIZE, "prot": "rw", "flags": ("PRIVATE", "ANONYMOUS")})
    _step(k, 2, "madvise", region="b", advice="populate_write")
    _step(k, 3, "madvise", region="b", advice="cold")
    seen = []
    for n in (4, 5):
        assert _step(k, n, "madvise", region="b", advice="populate_read")["faults"] == {"minor": 0, "major": 0}
        sm = next(v for v in k.observe()["processes"]["main"]["vmas"] if v["smaps_kb"].get("Rss") == 16)
        seen.append(sm["smaps_kb"]["Referenced"])
    assert seen == [16, referenced], seen


@pytest.mark.parametrize("config, switch, on", [
    ({"LRU_GEN": True, "LRU_GEN_ENABLED": True}, None, True),
    ({"LRU_GEN": True, "LRU_GEN_ENABLED": True}, 0x0, False),
    ({"LRU_GEN": True}, None, False),
    ({"LRU_GEN": True}, 0x7, True),
    ({}, None, False)])
def test_mglru_follows_its_runtime_switch_over_the_config(config, switch, on):
    """lru_gen_enabled(): /sys/kernel/mm/lru_gen/enabled (bit 0, LRU_GEN_CORE) when the profile
    read it, else the boot default CONFIG_LRU_GEN_ENABLED."""
    from model.objects import lru_gen_enabled
    assert lru_gen_enabled({"config": config, "lru_gen_enabled": switch}) is on


@pytest.mark.parametrize("release, accounted", [((6, 1), True), ((6, 4), True), ((6, 5), False), ((6, 18), False)])
def test_unfaulted_mapping_made_read_only_is_unaccounted_from_6_5(release, accounted):
    """raw-values.toml step 7: mprotect(PROT_READ) of a never-touched private anonymous mapping
    drops VM_ACCOUNT ("ac") from 6.5 (6.12, 6.18 measured), keeps it before (6.1 measured)."""
    k = Kernel({**profile(), "release_tuple": list(release)}, snapshot())
    assert _mmap(k, 1, 0, 4)["result"] == "ok"
    out = run_step(k, {"index": 2, "do": "mprotect", "in": "main",
                       "args": {"region": "m1", "prot": "r"}}, Direct())
    assert out["result"] == "ok"
    (v,) = _ours(k)
    assert ("ac" in vmflags(v)) is accounted
    assert k.check() == []


@pytest.mark.parametrize("release, exclusive", [((6, 1), 512), ((6, 10), 2), ((6, 12), 2), ((6, 15), 512),
                                                ((6, 18), 512)])
def test_pagemap_exclusive_of_a_pmd_mapped_thp_by_release(release, exclusive):
    """thp-fork-split.toml step 6: after a child's write split its PMD and copied pages 0-1,
    the parent's still PMD-mapped THP reads PM_MMAP_EXCLUSIVE for 512 pages when the head (6.1)
    or the first page read (6.15+, 6.18 measured) decides for the PMD, for 2 when each page
    decides (6.10-6.14, 6.12 measured)."""
    prof = {**profile(), "release_tuple": list(release), "thp_enabled": "madvise"}
    k = Kernel(prof, snapshot())
    big = 4 << 20

    def st(n, do, proc="main", **args):
        out = run_step(k, {"index": n, "do": do, "in": proc, "args": args}, Direct())
        assert out["result"] == "ok", (do, out)
        return out
    st(1, "mmap", **{"as": "buf", "length": big, "prot": "rw", "flags": ("PRIVATE", "ANONYMOUS", "FIXED"),
                     "addr": ("abs", BASE)})
    st(2, "madvise", region="buf", advice="hugepage")
    st(3, "touch", region="buf", pages=(0, 512), access="write", value=1)
    st(4, "fork", child="kid")
    st(5, "touch", proc="kid", region="buf", pages=(0, 2), access="write", value=2)
    res = k.observe()["processes"]["main"]["regions"]["buf"]
    assert res["exclusive"] == exclusive, res
    assert k.check() == []
