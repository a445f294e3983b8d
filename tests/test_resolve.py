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
