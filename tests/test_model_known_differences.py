"""Every known difference between model and kernel (model/known_differences.py), shown live.

Each test asserts that the model agrees with the kernel and is expected to fail
(xfail(strict=True)): if it starts passing, the difference is gone and the list is wrong."""
from __future__ import annotations

import sys

import pytest

from model.known_differences import KNOWN_DIFFERENCES, by_id
from shmkit import spec
from tests.helpers import live_and_model

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live runs need Linux")


def test_every_known_difference_has_its_test():
    names = {n for n in globals() if n.startswith("test_")}
    for d in KNOWN_DIFFERENCES:
        if d.kernels:
            # shown by replaying the kept records of those kernels (tests/test_kernel_records.py)
            assert d.test == "test_model_matches_the_kept_kernel" and d.experiments, d.id
            continue
        assert d.test in names, f"{d.id}: no test named {d.test} in this file"
        assert d.reason.strip() and d.what.strip()


def _live_and_model(text: str, profile: dict, name: str):
    """The normal forms of the live record and of the model's prediction (tests.helpers)."""
    _, _, live, pred, _ = live_and_model(spec.loads(text, name), profile)
    return live, pred


COLD_SEQUENTIAL = """
about = "a cold 12 MiB file read in order right after its first major fault"
[[step]]
do = "file"
name = "data"
size = "3072 pages"
cache = "cold"
[[step]]
do = "mmap"
as = "map"
file = "data"
length = "3072 pages"
prot = "r"
flags = ["shared"]
[[step]]
do = "touch"
region = "map"
access = "read"
"""


@linux
@pytest.mark.live
@pytest.mark.xfail(strict=True, reason=by_id("readahead-io-in-flight").reason)
def test_readahead_io_in_flight(profile):
    """Ten cold runs: the model's count is one number; the kernel's varies with I/O timing."""
    seen = set()
    model = None
    for _ in range(10):
        live, pred = _live_and_model(COLD_SEQUENTIAL, profile, "cold-sequential.toml")
        seen.add(tuple(live["steps"][-1]["faults"].values()))
        model = tuple(pred["steps"][-1]["faults"].values())
    assert seen == {model}, f"live fault counts {sorted(seen)}, model {model}"


def _sysctl(name: str) -> str:
    with open(f"/proc/sys/vm/{name}") as f:
        return f.read().strip()


@linux
@pytest.mark.live
@pytest.mark.skipif(sys.platform.startswith("linux") and _sysctl("overcommit_memory") != "2",
                    reason="needs vm.overcommit_memory=2 on the host (this host uses another mode)")
@pytest.mark.xfail(strict=True, reason=by_id("overcommit-never").reason)
def test_overcommit_never(profile):
    from shmkit.procfs import read_meminfo

    limit_kb = read_meminfo()["CommitLimit"]
    text = f"""
about = "a private writable mapping larger than CommitLimit"
[[step]]
do = "mmap"
as = "big"
length = "{limit_kb * 2} KiB"
prot = "rw"
flags = ["private", "anonymous"]
"""
    live, pred = _live_and_model(text, profile, "overcommit.toml")
    assert live["steps"][0]["result"] == pred["steps"][0]["result"]


def _swap_kb() -> int:
    from shmkit.procfs import read_meminfo
    return read_meminfo().get("SwapTotal", 0)


@linux
@pytest.mark.live
@pytest.mark.skipif(sys.platform.startswith("linux") and _swap_kb() == 0,
                    reason="needs swap on the host (SwapTotal is 0 here)")
@pytest.mark.xfail(strict=True, reason=by_id("swap").reason)
def test_pageout_with_swap(profile):
    text = """
about = "MADV_PAGEOUT of anonymous memory with swap"
[[step]]
do = "mmap"
as = "buf"
length = "16 pages"
prot = "rw"
flags = ["private", "anonymous"]
[[step]]
do = "touch"
region = "buf"
access = "write"
[[step]]
do = "madvise"
region = "buf"
advice = "pageout"
"""
    from shmkit.compare import differences
    live, pred = _live_and_model(text, profile, "pageout-swap.toml")
    assert not differences(live, pred)


@linux
@pytest.mark.live
@pytest.mark.xfail(strict=True, reason=by_id("shmem-collapse").reason)
def test_shmem_collapse(profile):
    text = """
about = "MADV_COLLAPSE of a 2 MiB block of shared anonymous memory with 4 pages written"
[[step]]
do = "mmap"
as = "buf"
length = "2 MiB"
prot = "rw"
flags = ["shared", "anonymous"]
[[step]]
do = "touch"
region = "buf"
pages = "0..4"
access = "write"
[[step]]
do = "madvise"
region = "buf"
advice = "collapse"
"""
    from shmkit.compare import differences
    live, pred = _live_and_model(text, profile, "shmem-collapse.toml")
    assert not differences(live, pred)


@linux
@pytest.mark.live
@pytest.mark.xfail(strict=True, reason=by_id("hugetlb-mapping").reason)
def test_hugetlb_mapping(profile):
    """MAP_NORESERVE skips the reservation, so the mapping succeeds even with an empty pool."""
    text = """
about = "a MAP_HUGETLB | MAP_NORESERVE mapping of 2 MiB"
[[step]]
do = "mmap"
as = "huge"
length = "2 MiB"
prot = "rw"
flags = ["private", "anonymous", "hugetlb", "noreserve"]
"""
    from shmkit.compare import differences
    live, pred = _live_and_model(text, profile, "hugetlb-noreserve.toml")
    assert live["steps"][0]["result"] == "ok", live["steps"][0]["result"]
    assert not differences(live, pred)


def _damon_clearers() -> list[str]:
    from shmkit import damon
    return damon.clearers(damon.read_damon()) if sys.platform.startswith("linux") else []


@linux
@pytest.mark.live
@pytest.mark.skipif(not _damon_clearers(),
                    reason="needs DAMON sampling physical memory (a kdamond with paddr operations "
                           "on, or a DAMON module); none runs here")
@pytest.mark.xfail(strict=True, reason=by_id("damon-accessed-bits").reason)
def test_damon_accessed_bits(profile):
    """256 MiB written, then three seconds (six DAMON samplings at 0.5 s, each of 1024 or more
    regions), then a fork: the child maps every page with an old PTE, so the model's Referenced
    for the child is 0; the kernel's counts every page whose folio DAMON sampled meanwhile.
    Which pages DAMON samples is random (measured here: 0, 8, 12, 12 and 48 kB in five tries of
    128 MiB after 2 s, 1548 kB in another), so it tries up to ten times."""
    import time

    from shmkit.session import Session

    seen = []
    for _ in range(10):
        s = Session(profile, about="DAMON and smaps Referenced after fork")
        try:
            s.step("mmap", as_="buf", length="256 MiB", prot="rw", flags=["private", "anonymous"])
            s.step("touch", region="buf", access="write")
            time.sleep(3)
            live, model, _ = s.step("fork", child="kid")
        finally:
            s.close()
        ref = [sum(v["smaps_kb"]["Referenced"] for v in step["processes"]["kid"]["vmas"])
               for step in (live, model)]
        seen.append(ref)
        if ref[0] != ref[1]:
            break
    assert all(a == b for a, b in seen), f"child's Referenced kB (live, model) per try: {seen}"


@linux
@pytest.mark.live
@pytest.mark.xfail(strict=True, reason=by_id("file-thp").reason)
def test_file_thp(profile):
    """One read fault in a 2 MiB-aligned block of a cold 8 MiB file mapped with MADV_HUGEPAGE."""
    if not (profile.get("config") or {}).get("TRANSPARENT_HUGEPAGE"):
        pytest.skip("no CONFIG_TRANSPARENT_HUGEPAGE: VM_HUGEPAGE does not change readahead")
    text = """
about = "a read fault in a disk file mapping with MADV_HUGEPAGE"
[[step]]
do = "file"
name = "data"
size = "2048 pages"
fill = "random"
cache = "cold"
[[step]]
do = "mmap"
as = "map"
file = "data"
length = "2048 pages"
prot = "r"
flags = ["private"]
[[step]]
do = "madvise"
region = "map"
advice = "hugepage"
[[step]]
do = "touch"
region = "map"
pages = "600"
access = "read"
"""
    from shmkit.compare import differences
    live, pred = _live_and_model(text, profile, "file-thp.toml")
    assert not differences(live, pred)


@linux
@pytest.mark.live
@pytest.mark.xfail(strict=True, reason=by_id("byte-in-page").reason)
def test_byte_in_page(profile):
    text = """
about = "a write at the last byte of a page, then a read of its first byte"
[[step]]
do = "mmap"
as = "buf"
length = "1 page"
prot = "rw"
flags = ["private", "anonymous"]
[[step]]
do = "touch"
addr = "buf+4095"
access = "write"
value = 9
[[step]]
do = "read"
addr = "buf"
"""
    from shmkit.compare import differences
    live, pred = _live_and_model(text, profile, "byte-in-page.toml")
    assert live["steps"][2]["value"] == {"bytes": [[0, 1]]}      # the kernel: the byte at buf
    assert not differences(live, pred)


def _hermetic() -> tuple[bool, str]:
    from shmkit import isolation
    return isolation.probe() if sys.platform.startswith("linux") else (False, "not Linux")


@linux
@pytest.mark.live
@pytest.mark.skipif(not _hermetic()[0], reason="needs the hermetic mode (exact names): " + _hermetic()[1])
@pytest.mark.xfail(strict=True, reason=by_id("shm-open-directory").reason)
def test_shm_open_directory(profile, monkeypatch):
    monkeypatch.setenv("SHMKIT_ISOLATION", "hermetic")
    text = """
about = "shm_open of '.' read-only, without O_CREAT"
[[step]]
do = "shm_open"
as = "dot"
name = "/."
access = "r"
"""
    from shmkit.compare import differences
    live, pred = _live_and_model(text, profile, "shm-open-directory.toml")
    assert not differences(live, pred)
