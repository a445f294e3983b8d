"""The bundled whole-pages experiments (experiments/whole-pages-*.toml) against what the kernel
must do, without the model.

The worker, the manager and the model share one rule for a region's pages (model/pages.py), so
tests/test_model_live.py cannot see a mistake in it: both sides would make it alike (they did:
both used length // PAGE). Here the live records are checked against the kernel's own rules,
with the page count written out below (`whole`, not model/pages.py): do_mmap maps
PAGE_ALIGN(len) (mm/mmap.c), mremap takes PAGE_ALIGN(new_len) (mm/mremap.c), a write to a page
without VM_WRITE is SIGSEGV (access_error), an access to a file page wholly past EOF is SIGBUS
(filemap_fault, shmem_fault) while the partial last page is the file's, a SysV segment keeps
its size but is mapped in whole pages (ipc/shm.c newseg, do_shmat).

Every figure asserted here is one the kernel fixes: signals and the page that took them, the
VMAs' extent and protections from /proc/PID/maps, fault counts from getrusage of the worker,
the pages present in pagemap, the bytes read back."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from shmkit import spec
from tests.conftest import step

pytestmark = pytest.mark.live
PAGE = os.sysconf("SC_PAGE_SIZE")
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def whole(n: int) -> int:
    """PAGE_ALIGN(n) / PAGE_SIZE (include/linux/mm.h), written here on purpose."""
    return -(-n // PAGE)


def faults(minor: int) -> dict:
    return {"minor": minor, "major": 0}


@pytest.fixture
def live(run):
    """live(name) -> the record of one live run of experiments/NAME.toml."""
    def _live(name: str):
        return run(spec.load(EXPERIMENTS / f"{name}.toml"))
    return _live


def at(rec, n: int, do: str, region: str | None = None) -> dict:
    """Step n (1-based), checked to be the step this test means (the file was not reordered)."""
    s = step(rec, n)
    assert s["do"] == do and (region is None or s["args"].get("region") == region), \
        f"step {n} is {s['do']} {s['args']}, not {do} {region}: update this test with the experiment"
    return s


def region(s: dict, handle: str, proc: str = "main") -> dict:
    return s["processes"][proc]["regions"][handle]


def vmas_over(s: dict, handle: str, npages: int, proc: str = "main") -> list[dict]:
    """The VMAs (maps records) that overlap npages pages from the region's address."""
    a = region(s, handle, proc)["addr"]
    b = a + npages * PAGE
    return [v for v in s["processes"][proc]["vmas"] if v["start"] < b and a < v["end"]]


def assert_mapped_pages(rec, n: int, handle: str, npages: int, grew: int | None = None,
                        proc: str = "main") -> None:
    """After step n, every page of [addr, addr + npages pages) lies in a VMA, and the process's
    mapped total changed by exactly `grew` pages over the step (npages by default: a new mapping
    of npages pages, not one page less or more, whatever it merged with)."""
    s = step(rec, n)
    a = region(s, handle, proc)["addr"]
    inside = vmas_over(s, handle, npages, proc)
    covered = sum(min(v["end"], a + npages * PAGE) - max(v["start"], a) for v in inside)
    assert covered == npages * PAGE, f"{handle}: {covered} of {npages * PAGE} bytes mapped"
    before = step(rec, n - 1)["processes"][proc]["vmas"] if n > 1 else rec["initial"]["processes"][proc]["vmas"]
    total = lambda vmas: sum(v["end"] - v["start"] for v in vmas)  # noqa: E731
    delta = total(s["processes"][proc]["vmas"]) - total(before)
    assert delta == (npages if grew is None else grew) * PAGE, \
        f"step {n}: the address space grew by {delta} bytes, not {npages if grew is None else grew} pages"


def test_anonymous_27_and_5000_bytes_are_1_and_2_whole_pages(live, zero_pfn):
    rec = live("whole-pages-anon")
    assert whole(27) == 1 and whole(5000) == 2
    s = at(rec, 1, "mmap")
    assert s["result"] == "ok"
    assert_mapped_pages(rec, 1, "tiny", whole(27))
    s = at(rec, 2, "touch", "tiny")
    assert (s["result"], s["faults"], region(s, "tiny")["present"]) == ("ok", faults(1), 1)
    assert at(rec, 3, "read", "tiny")["value"]["bytes"] == [[0x11, 1]]
    s = at(rec, 4, "mmap")
    assert_mapped_pages(rec, 4, "odd", whole(5000))
    s = at(rec, 5, "touch", "odd")
    # do_anonymous_page: one write fault per page, both pages of the region
    assert (s["result"], s["faults"], region(s, "odd")["present"]) == ("ok", faults(2), 2)
    assert at(rec, 6, "read", "odd")["value"]["bytes"] == [[0x22, 2]]
    # mlock(addr, 5000) locks PAGE_ALIGN(5000): both pages count in smaps Locked
    s = at(rec, 7, "mlock", "odd")
    assert s["result"] == "ok"
    assert sum(v["smaps_kb"]["Locked"] for v in vmas_over(s, "odd", 2)) == 2 * PAGE // 1024
    assert all(v["smaps_kb"]["Locked"] == 0 for v in vmas_over(s, "tiny", 1))
    s = at(rec, 9, "mprotect", "odd")
    assert [v["perms"] for v in vmas_over(s, "odd", 2)] == ["r--p"]
    assert_mapped_pages(rec, 9, "odd", 2, grew=0)
    # page 0 made writable again: a whole-region write reaches page 1, which is read-only
    s = at(rec, 11, "touch", "odd")
    assert (s["result"], s["faults"]) == ({"signal": "SIGSEGV", "page": 1}, faults(0))
    s = at(rec, 12, "madvise", "odd")
    assert (s["result"], region(s, "odd")["present"]) == ("ok", 0)
    s = at(rec, 13, "touch", "odd")
    assert (s["result"], s["faults"], region(s, "odd")["present"]) == ("ok", faults(2), 2)
    if zero_pfn is not None:
        assert region(s, "odd")["zero"] == 2
    s = at(rec, 14, "munmap", "odd")
    assert s["result"] == "ok" and not vmas_over(s, "odd", 2)
    assert region(s, "tiny")["present"] == 1
    s = at(rec, 15, "munmap", "tiny")
    assert s["result"] == "ok" and not vmas_over(s, "tiny", 1)


def test_a_write_to_a_read_only_27_byte_file_mapping_is_sigsegv(live):
    rec = live("whole-pages-file-readonly")
    at(rec, 2, "mmap")
    assert_mapped_pages(rec, 2, "map", whole(27))
    s = at(rec, 3, "touch", "map")
    assert (s["result"], s["faults"]) == ({"signal": "SIGSEGV", "page": 0}, faults(0))
    s = at(rec, 4, "read", "map")
    assert (s["result"], s["value"]["bytes"], region(s, "map")["present"]) == ("ok", [[0x42, 1]], 1)
    s = at(rec, 5, "mprotect", "map")
    assert [v["perms"] for v in vmas_over(s, "map", 1)] == ["rw-s"]
    s = at(rec, 6, "touch", "map")
    assert s["result"] == "ok"
    assert at(rec, 7, "read", "map")["value"]["bytes"] == [[0x55, 1]]
    assert at(rec, 8, "msync", "map")["result"] == "ok"


def test_a_page_wholly_past_eof_is_sigbus_the_partial_last_page_is_not(live):
    rec = live("whole-pages-file-short")
    # a 27-byte file mapped 5000 bytes long: page 0 is the file's, page 1 wholly past EOF
    at(rec, 2, "mmap")
    assert_mapped_pages(rec, 2, "m", whole(5000))
    s = at(rec, 3, "read", "m")
    assert s["result"] == {"signal": "SIGBUS", "page": whole(27)}
    assert s["value"]["bytes"] == [[0x42, whole(27)]]
    assert at(rec, 4, "touch", "m")["result"] == {"signal": "SIGBUS", "page": whole(27)}
    # a 5000-byte file mapped 5000 bytes long: both pages are the file's
    s = at(rec, 7, "read", "n")
    assert (s["result"], s["value"]["bytes"]) == ("ok", [[0x43, whole(5000)]])
    # the same file mapped 12000 bytes long (private, written): 3 pages, the third past EOF
    at(rec, 8, "mmap")
    assert_mapped_pages(rec, 8, "p", whole(12000))
    s = at(rec, 9, "touch", "p")
    assert s["result"] == {"signal": "SIGBUS", "page": whole(5000)}
    assert region(s, "p")["present"] == whole(5000)
    s = at(rec, 10, "read", "p")
    assert (s["result"], s["value"]["bytes"]) == ({"signal": "SIGBUS", "page": 2}, [[0x44, 2]])


def _dev_shm_size(s: dict) -> list[int]:
    return [o["size"] for o in s["dev_shm"]]


def test_posix_shm_of_5000_bytes_is_two_pages_and_sigbus_past_its_end(live):
    rec = live("whole-pages-posix-shm")
    assert _dev_shm_size(at(rec, 1, "shm_open")) == [5000]
    at(rec, 2, "mmap")
    assert_mapped_pages(rec, 2, "map", whole(5000))
    s = at(rec, 3, "touch", "map")
    # shmem write faults: one per page (no fault-around on a write fault)
    assert (s["result"], s["faults"], region(s, "map")["present"]) == ("ok", faults(2), 2)
    assert at(rec, 4, "read", "map")["value"]["bytes"] == [[0x61, 2]]
    at(rec, 5, "mmap")
    assert_mapped_pages(rec, 5, "long", whole(9000))
    s = at(rec, 6, "read", "long")
    assert (s["result"], s["value"]["bytes"]) == ({"signal": "SIGBUS", "page": 2}, [[0x61, 2]])
    s = at(rec, 7, "shm_open")
    assert _dev_shm_size(s) == [27]
    assert region(s, "map")["present"] == whole(27)          # shmem_setattr unmapped page 1
    s = at(rec, 8, "read", "map")
    assert (s["result"], s["value"]["bytes"]) == ({"signal": "SIGBUS", "page": whole(27)}, [[0x61, 1]])


def test_sysv_segment_of_5000_bytes_keeps_its_size_and_maps_two_pages(live):
    rec = live("whole-pages-sysv")
    assert [r["size"] for r in at(rec, 1, "shmget")["sysv"]] == [5000]
    at(rec, 2, "shmat")
    assert_mapped_pages(rec, 2, "at", whole(5000))
    s = at(rec, 3, "touch", "at")
    assert (s["result"], s["faults"], region(s, "at")["present"]) == ("ok", faults(2), 2)
    assert [(r["size"], r["rss"]) for r in s["sysv"]] == [(5000, 2 * PAGE)]
    assert at(rec, 4, "read", "at")["value"]["bytes"] == [[0x71, 2]]
    assert at(rec, 5, "shmctl")["value"]["size"] == 5000
    at(rec, 6, "shmat")
    assert_mapped_pages(rec, 6, "ro", whole(5000))
    s = at(rec, 7, "touch", "ro")
    assert (s["result"], s["faults"]) == ({"signal": "SIGSEGV", "page": 0}, faults(0))
    s = at(rec, 8, "read", "ro")
    assert (s["result"], s["value"]["bytes"], region(s, "ro")["present"]) == ("ok", [[0x71, 2]], 2)
    s = at(rec, 9, "shmdt", "at")
    assert s["result"] == "ok" and not vmas_over(s, "at", 2)


def test_memfd_of_27_bytes_mapped_5000_long_is_sigbus_on_its_second_page(live):
    rec = live("whole-pages-memfd")
    at(rec, 2, "mmap")
    assert_mapped_pages(rec, 2, "map", whole(5000))
    s = at(rec, 3, "touch", "map")
    assert (s["result"], s["faults"]) == ({"signal": "SIGBUS", "page": whole(27)}, faults(1))
    at(rec, 4, "mmap")
    assert_mapped_pages(rec, 4, "priv", whole(27))
    s = at(rec, 5, "read", "priv")
    assert (s["result"], s["value"]["bytes"]) == ("ok", [[0x81, 1]])
    s = at(rec, 6, "touch", "priv")
    assert (s["result"], region(s, "priv")["present"]) == ("ok", 1)
    s = at(rec, 7, "read", "map")      # the private copy did not reach the object
    assert (s["result"], s["value"]["bytes"]) == ({"signal": "SIGBUS", "page": 1}, [[0x81, 1]])


def test_mremap_to_a_non_multiple_length_maps_whole_pages(live):
    rec = live("whole-pages-mremap")
    assert whole(12388) == 4
    s = at(rec, 3, "mremap", "buf")
    assert s["result"] == "ok"
    assert_mapped_pages(rec, 3, "buf", whole(12388), grew=whole(12388) - 2)
    assert region(s, "buf")["present"] == 2
    s = at(rec, 4, "touch", "buf")
    assert (s["result"], s["faults"], region(s, "buf")["present"]) == ("ok", faults(2), 4)
    assert at(rec, 5, "read", "buf")["value"]["bytes"] == [[0x32, 4]]
    s = at(rec, 6, "mremap", "buf")
    assert s["result"] == "ok"
    assert_mapped_pages(rec, 6, "buf", whole(5000), grew=whole(5000) - whole(12388))
    assert at(rec, 7, "read", "buf")["value"]["bytes"] == [[0x32, 2]]
    s = at(rec, 8, "mremap", "buf")
    assert_mapped_pages(rec, 8, "buf", whole(27), grew=whole(27) - whole(5000))
    s = at(rec, 9, "touch", "buf")
    assert (s["result"], s["faults"], region(s, "buf")["present"]) == ("ok", faults(0), 1)
    # PAGE_ALIGN in an unsigned long: 2^64 - 1 rounds up to 0
    assert (2**64 - 1 + PAGE - 1) // PAGE * PAGE % 2**64 == 0
    assert at(rec, 10, "mremap", "buf")["result"] == {"errno": "EINVAL"}    # check_mremap_params
    assert at(rec, 11, "mmap")["result"] == {"errno": "ENOMEM"}             # do_mmap: if (!len)


def test_every_whole_pages_experiment_is_checked_here():
    files = {p.stem for p in EXPERIMENTS.glob("whole-pages-*.toml")}
    text = Path(__file__).read_text()
    assert files and all(f'live("{name}")' in text for name in files), \
        "a whole-pages experiment has no kernel-rule test in this file"
