"""The one resolver (model/resolve.py) and what the experiment files accept for it: raw numbers
where a name is accepted, ranges by address and byte length. Pure tests (no kernel); the live
side and the model receiving the same call for every bundled step is checked in
tests/test_model_live.py (assert_same_calls), and each new form against the kernel by the
bundled experiments raw-values, range-addr-errors, range-across-vmas-and-holes,
touch-byte-address and mremap-old-len-zero."""
from __future__ import annotations

from pathlib import Path

import pytest

from model import flags
from model.resolve import RESOLVERS, Names, Skip, accesses, resolve
from shmkit import libc, spec
from shmkit.spec import SpecError, loads

PAGE = 4096


class _Run:
    dir = "/tmp/run"

    def file_path(self, name, on):
        return f"/tmp/run/p-{name}"

    def posix_name(self, name):
        return f"/p-{name}"

    def memfd_name(self, name):
        return f"p-{name}"

    def sysv_key(self, key):
        return 0 if key == "private" else key


class _Names:
    run = _Run()

    def file(self, handle):
        return f"/tmp/run/p-{handle}"

    def shmid(self, handle):
        return {"seg": 7}.get(handle)

    def segment_size(self, handle):
        return {"seg": 5000}.get(handle)


def _exp(steps: str):
    return loads('about = "t"\n' + steps, "t.toml", PAGE)


def _calls(steps: str, regions=None):
    regions = regions if regions is not None else {}
    out = []
    for st in _exp(steps).steps:
        c = resolve(st.do, st.arg, regions, _Names(), PAGE)
        if st.do == "mmap":
            regions[st.get("as")] = (0x7F0000000000, st.get("length"))
        out.append(c)
    return out


MMAP = '[[step]]\ndo = "mmap"\nas = "b"\nlength = "4 pages"\nprot = "rw"\nflags = ["private", "anonymous"]\n'


def test_every_operation_has_one_resolver_entry():
    assert set(RESOLVERS) == set(spec.OPERATIONS)


def test_the_flag_tables_exist_once():
    assert libc.MAP is flags.MAP
    assert spec.MMAP_FLAGS == tuple(flags.MAP)
    assert spec.MADVICE == tuple(flags.MADV)


# The kernel's numbers, written by hand from the uapi headers (x86-64; checked against
# include/uapi/asm-generic/mman-common.h, asm-generic/mman.h, arch/x86/include/uapi/asm/mman.h,
# linux/mman.h, asm-generic/hugetlb_encode.h, linux/fadvise.h, linux/fcntl.h, asm-generic/fcntl.h,
# linux/ipc.h, linux/shm.h, linux/memfd.h), so that a wrong entry in model/flags.py cannot pass
# by being compared with itself.
UAPI = {
    "MAP": {"SHARED": 0x01, "PRIVATE": 0x02, "SHARED_VALIDATE": 0x03, "FIXED": 0x10,
            "ANONYMOUS": 0x20, "32BIT": 0x40, "GROWSDOWN": 0x0100, "DENYWRITE": 0x0800,
            "EXECUTABLE": 0x1000, "LOCKED": 0x2000, "NORESERVE": 0x4000, "POPULATE": 0x8000,
            "NONBLOCK": 0x10000, "STACK": 0x20000, "HUGETLB": 0x40000, "SYNC": 0x80000,
            "FIXED_NOREPLACE": 0x100000, "UNINITIALIZED": 0x4000000,
            "HUGE_2MB": 0x54000000, "HUGE_1GB": 0x78000000},      # 21 << 26, 30 << 26
    "MADV": {"normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4, "free": 8,
             "remove": 9, "dontfork": 10, "dofork": 11, "mergeable": 12, "unmergeable": 13,
             "hugepage": 14, "nohugepage": 15, "dontdump": 16, "dodump": 17, "wipeonfork": 18,
             "keeponfork": 19, "cold": 20, "pageout": 21, "populate_read": 22,
             "populate_write": 23, "dontneed_locked": 24, "collapse": 25, "guard_install": 102,
             "guard_remove": 103},
    "MS": {"ASYNC": 1, "INVALIDATE": 2, "SYNC": 4},
    "MREMAP": {"MAYMOVE": 1, "FIXED": 2, "DONTUNMAP": 4},
    "MCL": {"CURRENT": 1, "FUTURE": 2, "ONFAULT": 4},
    "FADV": {"normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4, "noreuse": 5},
    "F_SEAL": {"SEAL": 0x1, "SHRINK": 0x2, "GROW": 0x4, "WRITE": 0x8, "FUTURE_WRITE": 0x10},
    "SHMCTL_CMD": {"rmid": 0, "set": 1, "stat": 2, "lock": 11, "unlock": 12},
}
UAPI_SCALARS = {
    "PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4, "MLOCK_ONFAULT": 1, "MAP_TYPE": 0x0f,
    "MAP_HUGE_SHIFT": 26, "IPC_PRIVATE": 0, "IPC_CREAT": 0o1000, "IPC_EXCL": 0o2000,
    "IPC_RMID": 0, "IPC_SET": 1, "IPC_STAT": 2, "SHM_LOCK": 11, "SHM_UNLOCK": 12,
    "SHM_RDONLY": 0o10000, "SHM_RND": 0o20000, "SHM_REMAP": 0o40000, "SHM_EXEC": 0o100000,
    "F_ADD_SEALS": 1033, "F_GET_SEALS": 1034, "MFD_CLOEXEC": 1, "MFD_ALLOW_SEALING": 2,
    "O_RDONLY": 0, "O_WRONLY": 1, "O_RDWR": 2, "O_ACCMODE": 3, "O_CREAT": 0o100, "O_EXCL": 0o200,
    "O_TRUNC": 0o1000,
    "F_SEAL_SEAL": 1, "F_SEAL_SHRINK": 2, "F_SEAL_GROW": 4, "F_SEAL_WRITE": 8, "F_SEAL_FUTURE_WRITE": 0x10,
}


def test_the_flag_tables_hold_the_kernels_numbers():
    """Every entry of model/flags.py's tables against the hand-written uapi values, and no
    entry the headers do not have."""
    for table, want in UAPI.items():
        assert getattr(flags, table) == want, table
    for name, want in UAPI_SCALARS.items():
        assert getattr(flags, name) == want, name
    assert flags.MAP["HUGE_2MB"] == 21 << flags.MAP_HUGE_SHIFT


def test_the_flag_tables_agree_with_the_c_library_headers():
    """A second source: the constants Python's own modules took from this system's C headers
    when they were built (those it has)."""
    import fcntl
    import mmap
    import os

    seen = 0
    for name, value in flags.MAP.items():
        if hasattr(mmap, f"MAP_{name}"):
            assert getattr(mmap, f"MAP_{name}") == value, name
            seen += 1
    for name, value in flags.MADV.items():
        if hasattr(mmap, f"MADV_{name.upper()}"):
            assert getattr(mmap, f"MADV_{name.upper()}") == value, name
            seen += 1
    for name, value in flags.FADV.items():
        assert getattr(os, f"POSIX_FADV_{name.upper()}") == value, name
        seen += 1
    for name, value in flags.F_SEAL.items():
        if hasattr(fcntl, f"F_SEAL_{name}"):
            assert getattr(fcntl, f"F_SEAL_{name}") == value, name
            seen += 1
    for name in ("F_ADD_SEALS", "F_GET_SEALS"):
        if hasattr(fcntl, name):
            assert getattr(fcntl, name) == getattr(flags, name), name
            seen += 1
    for name in ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_TRUNC"):
        assert getattr(os, name) == getattr(flags, name), name
        seen += 1
    assert (os.MFD_CLOEXEC, os.MFD_ALLOW_SEALING) == (flags.MFD_CLOEXEC, flags.MFD_ALLOW_SEALING)
    assert (mmap.PROT_READ, mmap.PROT_WRITE, mmap.PROT_EXEC) == (1, 2, 4)
    assert seen >= 25, seen


def test_names_become_numbers_and_raw_numbers_pass_as_given():
    c = _calls(MMAP + '[[step]]\ndo = "madvise"\nregion = "b"\nadvice = "dontneed"\n'
               '[[step]]\ndo = "madvise"\nregion = "b"\nadvice = 18\n'
               '[[step]]\ndo = "msync"\nregion = "b"\nflags = [-1]\n'
               '[[step]]\ndo = "mprotect"\nregion = "b"\nprot = 7\n'
               '[[step]]\ndo = "mmap"\nas = "c"\nlength = 1\nprot = "r"\nflags = ["shared_validate", 1024]\n'
               '[[step]]\ndo = "shmctl"\nsegment = -1\ncmd = -1\n'
               '[[step]]\ndo = "shmget"\nas = "g"\nsize = 1\n'
               '[[step]]\ndo = "shmctl"\nsegment = "g"\ncmd = "stat"\n'
               '[[step]]\ndo = "shmat"\nas = "s"\nsegment = -1\n')
    assert c[0] == {"as": "b", "addr": 0, "length": 4 * PAGE, "prot": 3, "flags": 0x22, "offset": 0,
                    "source": None}
    assert c[1]["advice"] == 4 and c[2]["advice"] == 18
    assert c[3]["flags"] == -1
    assert c[4]["prot"] == 7
    assert c[5]["flags"] == 0x3 | 1024
    assert c[6] == {"shmid": -1, "cmd": -1}
    assert c[7] == {"as": "g", "key": 0, "size": 1, "flags": 0o600}
    assert c[8] == {"shmid": -1, "cmd": flags.IPC_STAT}     # a handle whose shmget failed: -1
    assert c[9]["shmid"] == -1 and c[9]["size"] is None


def test_ranges_by_address_and_byte_length():
    c = _calls(MMAP + '[[step]]\ndo = "munmap"\naddr = "b+4k"\nlength = 0\n'
               '[[step]]\ndo = "mprotect"\naddr = "0x200000001"\nlength = "2 pages"\nprot = "r"\n'
               '[[step]]\ndo = "touch"\naddr = "b+4095"\naccess = "write"\n'
               '[[step]]\ndo = "read"\naddr = "b+8191"\nlength = 2\n'
               '[[step]]\ndo = "msync"\nregion = "b"\npages = "1..1"\n'
               '[[step]]\ndo = "mremap"\nold_addr = "b"\nold_length = 0\nlength = "1 page"\nflags = ["maymove"]\n'
               '[[step]]\ndo = "shmdt"\naddr = "b-1 page"\n')
    base = 0x7F0000000000
    assert c[1] == {"addr": base + PAGE, "length": 0, "region": "b", "whole": False}
    assert c[2]["addr"] == 0x200000001 and c[2]["length"] == 2 * PAGE and c[2]["region"] is None
    assert (c[3]["addr"], c[3]["length"], c[3]["pages"], c[3]["base"]) == (base + 4095, 1, 1, base)
    assert (c[4]["pages"], c[4]["base"]) == (2, base)
    assert c[5] == {"addr": base + PAGE, "length": 0, "region": "b", "whole": False, "flags": 4}
    assert (c[6]["addr"], c[6]["length"], c[6]["new_length"], c[6]["follow"]) == (base, 0, PAGE, None)
    assert c[7]["addr"] == base - PAGE


def test_a_missing_region_is_skipped_with_one_message():
    st = _exp(MMAP + '[[step]]\ndo = "touch"\nregion = "b"\n').steps[1]
    with pytest.raises(Skip) as e:
        resolve(st.do, st.arg, {}, _Names(), PAGE)
    assert e.value.result == {"skipped": "region 'b' does not exist (the call that made it failed)"}


def test_a_missing_handle_is_skipped_with_the_same_message_on_both_sides():
    """Worker.fd_of and Kernel.fd take their "skipped" result from model.resolve.Skip, and the
    words are written nowhere else (issue 10: one definition of each thing)."""
    from types import SimpleNamespace

    from model.kernel import Kernel
    from shmkit.worker import StepFailed, Worker

    want = {"skipped": "handle 'h' does not exist (the call that made it failed)"}
    assert Skip("h", "handle").result == want
    with pytest.raises(StepFailed) as live:
        Worker.fd_of(SimpleNamespace(fds={}), "h")
    with pytest.raises(Exception) as model:
        Kernel.fd(None, SimpleNamespace(fds={}), "h")
    assert live.value.result == model.value.result == want
    root = Path(__file__).resolve().parent.parent
    words = "does not exist (the call that made it failed)"
    where = [str(p.relative_to(root)) for d in ("shmkit", "model") for p in sorted((root / d).rglob("*.py"))
             if words in p.read_text()]
    assert where == ["model/resolve.py"], where


def test_one_naming_bookkeeping_for_both_sides():
    """model.resolve.Names keeps the names a run's steps create, for the live side
    (Manager.naming, with its registry notes) and the model side (shmkit.predict) alike."""
    from shmkit import manager

    names, notes = Names(_Run()), []
    for st in _exp('[[step]]\ndo = "file"\nname = "f"\nsize = 4096\n'
                   '[[step]]\ndo = "shm_open"\nas = "p"\nname = "x"\ncreate = true\nsize = 4096\n'
                   '[[step]]\ndo = "shm_open"\nas = "q"\nname = "x"\n'
                   '[[step]]\ndo = "memfd"\nas = "m"\nname = "y"\n'
                   '[[step]]\ndo = "shmget"\nas = "s"\nkey = 5\nsize = 5000\ncreate = true\n'
                   '[[step]]\ndo = "shmget"\nas = "t"\nsize = 1\n').steps:
        names.resolve(st.do, st.arg, {}, PAGE, note=notes.append)
        names.done(st.do, st.arg, "ok" if st.get("as") == "s" else {"errno": "EINVAL"}, {"shmid": 7})
    assert notes == [{"kind": "file", "path": "/tmp/run/p-f"}, {"kind": "posix", "name": "/p-x"},
                     {"kind": "memfd", "name": "p-y"}, {"kind": "sysv", "key": 5},
                     {"kind": "sysv", "key": 0}]
    assert names.record() == {"posix": {"/p-x": "x"}, "files": {"/tmp/run/p-f": "f"},
                              "keys": {"5": "s", "0": "t"}, "memfds": {"p-y": "y"},
                              "shmids": {"7": "s"}}
    assert (names.file("f"), names.file("g")) == ("/tmp/run/p-f", "/tmp/run/missing-g")
    assert (names.shmid("s"), names.segment_size("s"), names.shmid("t")) == (7, 5000, None)
    m = manager.Manager(_exp(MMAP), isolate="prefix")
    assert isinstance(m.naming, Names) and m.naming.run is m.run


def test_accesses_count_every_page_the_range_covers():
    assert accesses(0, 0) == 0
    assert accesses(4095, 1) == 1
    assert accesses(4095, 2) == 2
    assert accesses(0, 4096) == 1
    assert accesses(1, 4096) == 2


@pytest.mark.parametrize("steps, field, words", [
    ('[[step]]\ndo = "munmap"\nregion = "b"\naddr = "b"\nlength = 1\n', "region", "exactly one of region, addr"),
    ('[[step]]\ndo = "munmap"\n', "region", "missing required field"),
    ('[[step]]\ndo = "munmap"\naddr = "b"\n', "length", "addr needs a byte length"),
    ('[[step]]\ndo = "munmap"\nregion = "b"\nlength = 1\n', "length", "goes with addr"),
    ('[[step]]\ndo = "munmap"\naddr = "b"\nlength = 1\npages = "0..1"\n', "pages", "region is not given"),
    ('[[step]]\ndo = "munmap"\nregion = "b"\npages = "2..1"\n', "pages", "reversed page range"),
    ('[[step]]\ndo = "mremap"\naddr = "b"\nlength = 1\n', "region", "missing required field"),
    ('[[step]]\ndo = "madvise"\nregion = "b"\nadvice = 1.5\n', "advice", "expected a string"),
    ('[[step]]\ndo = "msync"\nregion = "b"\nflags = [true]\n', "flags", "flag name or an integer"),
    ('[[step]]\ndo = "mprotect"\nregion = "b"\nprot = 18446744073709551616\n', "prot", "does not fit in 64 bits"),
    ('[[step]]\ndo = "touch"\naddr = "b+4q"\n', "addr", "bad offset"),
])
def test_bad_ranges_and_raw_values_get_one_line(steps, field, words):
    with pytest.raises(SpecError) as e:
        _exp(MMAP + steps)
    text = str(e.value)
    assert "\n" not in text and text.startswith("t.toml: step 2") and f": {field}: " in text and words in text, text


def test_raw_values_and_ranges_survive_a_toml_round_trip():
    exp = _exp(MMAP + '[[step]]\ndo = "madvise"\naddr = "b+4k"\nlength = "4k"\nadvice = 18\n'
               '[[step]]\ndo = "msync"\nregion = "b"\npages = "0..0"\nflags = ["sync", 1024]\n')
    again = loads(spec.dump_toml(exp), "t.toml", PAGE)
    assert [s.arg for s in again.steps] == [s.arg for s in exp.steps]
