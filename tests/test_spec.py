"""shmkit.spec: experiment files, format 1 (DESIGN.md).  Pure parsing: no kernel, no workers."""

import pickle
import re
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmkit.spec import (
    OPERATIONS,
    Experiment,
    ExperimentBuilder,
    HandleInfo,
    Setup,
    SpecError,
    Step,
    dump_toml,
    load,
    loads,
    parse_size,
)

PS = 4096  # every test passes page_size explicitly, so results do not depend on the host
F = "exp.toml"


def parse(text: str, path: str = F) -> Experiment:
    return loads(textwrap.dedent(text), path, page_size=PS)


def error(text: str, path: str = F) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(text, path)
    e = info.value
    assert "\n" not in str(e)
    assert str(e).startswith(f"{path}: ")
    assert "; accepted: " in str(e) and e.accepted
    return e


def steps(body: str, about: str = "t") -> str:
    """A file with `about` and the given step tables."""
    return f'about = "{about}"\n' + textwrap.dedent(body)


MMAP_BUF = """
[[step]]
do = "mmap"
as = "buf"
length = "16 pages"
prot = "rw"
flags = ["private", "anonymous"]
"""

# ---------------------------------------------------------------------------------------------
# A valid experiment that uses every operation

EVERY_OP = """\
about = "Every operation once: \\"quoted\\" and unicode \u00e9"
format = 1

[setup]
aslr = false
layout = "legacy"
rlimits = { as = "1 GiB", memlock = { soft = "64 KiB", hard = "unlimited" }, NOFILE = 256 }
user = "nobody"

[[step]]
do = "file"
name = "data"
size = "4 pages"
fill = "byte"
value = 0x41
on = "tmpfs"
cache = "cold"

[[step]]
do = "open"
as = "ro"
file = "data"
mode = "r"

[[step]]
do = "evict"
file = "data"

[[step]]
do = "mmap"
as = "anon"
length = "16 pages"
prot = "rw"
flags = ["private", "anonymous"]

[[step]]
do = "mmap"
as = "fmap"
length = "4 pages"
prot = "r"
flags = ["SHARED"]
file = "data"
offset = 0

[[step]]
do = "mmap"
in = "main"
as = "fdmap"
length = 8192
prot = ["read"]
flags = ["map_private"]
fd = "ro"
offset = 1
addr = "anon+4 pages"

[[step]]
do = "touch"
region = "anon"
pages = "0..4"
access = "write"
value = 7

[[step]]
do = "read"
region = "fmap"
pages = 1

[[step]]
do = "mprotect"
region = "anon"
pages = "4..8"
prot = "r"

[[step]]
do = "madvise"
region = "anon"
advice = "DONTNEED"

[[step]]
do = "msync"
region = "fmap"
flags = ["async", "invalidate"]

[[step]]
do = "mlock"
region = "anon"
pages = "0..2"
onfault = true

[[step]]
do = "munlock"
region = "anon"

[[step]]
do = "mremap"
region = "anon"
length = "32 pages"
flags = ["maymove"]

[[step]]
do = "touch"
region = "anon"
pages = "20..32"

[[step]]
do = "munmap"
region = "fdmap"

[[step]]
do = "shm_open"
as = "posix"
name = "/demo"
create = true
excl = true
truncate = false
access = "rw"
size = "2 pages"
mode = "0640"

[[step]]
do = "mmap"
as = "pmap"
length = "2 pages"
prot = "rw"
flags = ["shared"]
shm = "posix"

[[step]]
do = "memfd"
as = "mf"
name = "mem"
size = "1 MiB"

[[step]]
do = "mmap"
as = "mmf"
length = "1 MiB"
prot = "rw"
flags = ["shared"]
memfd = "mf"

[[step]]
do = "shmget"
as = "seg"
size = "3 pages"
key = 0x1234
create = true
excl = false
mode = 0o600

[[step]]
do = "shmat"
as = "att"
segment = "seg"
readonly = false
addr = "0x7f00_0000_0000"
rnd = true

[[step]]
do = "fork"
child = "kid"

[[step]]
do = "touch"
in = "kid"
region = "att"
pages = "2"
access = "write"

[[step]]
do = "shmdt"
in = "kid"
region = "att"

[[step]]
do = "rlimit"
in = "kid"
resource = "memlock"
soft = "unlimited"

[[step]]
do = "exit"
in = "kid"

[[step]]
do = "shmctl"
segment = "seg"
cmd = "rmid"

[[step]]
do = "shm_unlink"
name = "/demo"

[[step]]
do = "truncate"
memfd = "mf"
size = "2 MiB"

[[step]]
do = "write"
memfd = "mf"
length = "1 page"
offset = 10
value = 3

[[step]]
do = "fadvise"
file = "data"
advice = "WillNeed"

[[step]]
do = "seal"
memfd = "mf"
seals = ["grow", "F_SEAL_SHRINK"]

[[step]]
do = "mlockall"
flags = ["current", "onfault"]

[[step]]
do = "munlockall"

[[step]]
do = "settle"
file = "data"
seconds = 0.5
"""


def every_op_builder() -> ExperimentBuilder:
    b = ExperimentBuilder(
        about='Every operation once: "quoted" and unicode \u00e9', aslr=False, layout="legacy",
        rlimits={"as": "1 GiB", "memlock": {"soft": "64 KiB", "hard": "unlimited"},
                 "NOFILE": 256},
        user="nobody")
    (b.file(name="data", size="4 pages", fill="byte", value=0x41, on="tmpfs", cache="cold")
     .open(as_="ro", file="data", mode="r")
     .evict(file="data")
     .mmap(as_="anon", length="16 pages", prot="rw", flags=["private", "anonymous"])
     .mmap(as_="fmap", length="4 pages", prot="r", flags=("SHARED",), file="data", offset=0)
     .mmap(in_="main", as_="fdmap", length=8192, prot=["read"], flags=["map_private"], fd="ro",
           offset=1, addr="anon+4 pages")
     .touch(region="anon", pages="0..4", access="write", value=7)
     .read(region="fmap", pages=1)
     .mprotect(region="anon", pages="4..8", prot="r")
     .madvise(region="anon", advice="DONTNEED")
     .msync(region="fmap", flags=["async", "invalidate"])
     .mlock(region="anon", pages="0..2", onfault=True)
     .munlock(region="anon")
     .mremap(region="anon", length="32 pages", flags=["maymove"])
     .touch(region="anon", pages="20..32")
     .munmap(region="fdmap")
     .shm_open(as_="posix", name="/demo", create=True, excl=True, truncate=False, access="rw",
               size="2 pages", mode="0640")
     .mmap(as_="pmap", length="2 pages", prot="rw", flags=["shared"], shm="posix")
     .memfd(as_="mf", name="mem", size="1 MiB")
     .mmap(as_="mmf", length="1 MiB", prot="rw", flags=["shared"], memfd="mf")
     .shmget(as_="seg", size="3 pages", key=0x1234, create=True, excl=False, mode=0o600)
     .shmat(as_="att", segment="seg", readonly=False, addr="0x7f00_0000_0000", rnd=True)
     .fork(child="kid")
     .touch(in_="kid", region="att", pages="2", access="write")
     .shmdt(in_="kid", region="att")
     .rlimit(in_="kid", resource="memlock", soft="unlimited")
     .exit(in_="kid")
     .shmctl(segment="seg", cmd="rmid")
     .shm_unlink(name="/demo")
     .truncate(memfd="mf", size="2 MiB")
     .write(memfd="mf", length="1 page", offset=10, value=3)
     .fadvise(file="data", advice="WillNeed")
     .seal(memfd="mf", seals=["grow", "F_SEAL_SHRINK"])
     .mlockall(flags=["current", "onfault"])
     .munlockall()
     .settle(file="data", seconds=0.5))
    return b


def test_every_operation_parses_and_normalises():
    exp = parse(EVERY_OP)
    assert {s.do for s in exp.steps} == set(OPERATIONS)
    assert exp.path == F and exp.page_size == PS
    assert exp.about == 'Every operation once: "quoted" and unicode \u00e9'
    assert exp.setup == Setup(aslr=False, layout="legacy",
                              rlimits=(("as", 2**30, 2**30), ("memlock", 65536, None),
                                       ("nofile", 256, 256)),
                              user="nobody")
    s = {i: step for i, step in enumerate(exp.steps, 1)}
    assert [st.index for st in exp.steps] == list(range(1, len(exp.steps) + 1))
    assert s[1].arg == {"name": "data", "size": 4 * PS, "fill": "byte", "value": 0x41,
                        "on": "tmpfs", "cache": "cold"}
    assert s[4].arg == {"as": "anon", "length": 16 * PS, "prot": "rw",
                        "flags": ("PRIVATE", "ANONYMOUS"), "file": None, "fd": None,
                        "shm": None, "memfd": None, "offset": 0, "addr": None}
    assert s[5].get("flags") == ("SHARED",) and s[5].get("file") == "data"
    assert s[6].arg["prot"] == "r" and s[6].arg["flags"] == ("PRIVATE",)
    assert s[6].arg["addr"] == ("rel", "anon", 4 * PS) and s[6].arg["offset"] == 1
    assert s[7].arg == {"region": "anon", "pages": (0, 4), "access": "write", "value": 7, "addr": None, "length": None}
    assert s[8].arg == {"region": "fmap", "pages": (1, 2), "addr": None, "length": None}
    assert s[10].arg["advice"] == "dontneed" and s[10].arg["pages"] is None
    assert s[11].arg["flags"] == ("ASYNC", "INVALIDATE")
    assert s[12].arg["onfault"] is True and s[13].arg == {"region": "anon", "pages": None, "addr": None, "length": None}
    assert s[14].arg == {"region": "anon", "pages": None, "length": 32 * PS,
                         "flags": ("MAYMOVE",), "addr": None, "old_addr": None, "old_length": None}
    assert s[15].arg == {"region": "anon", "pages": (20, 32), "access": "read", "value": None, "addr": None, "length": None}
    assert s[17].arg == {"as": "posix", "name": "/demo", "create": True, "excl": True,
                         "truncate": False, "access": "rw", "size": 2 * PS, "mode": 0o640}
    assert s[19].arg == {"as": "mf", "name": "mem", "size": 2**20, "sealing": False}
    assert s[21].arg == {"as": "seg", "size": 3 * PS, "key": 0x1234, "create": True,
                         "excl": False, "mode": 0o600}
    assert s[22].arg["addr"] == ("abs", 0x7F0000000000) and s[22].arg["rnd"] is True
    assert s[23].arg == {"child": "kid"}
    assert s[24].proc == "kid" and s[24].arg["value"] == 1
    assert s[26].arg == {"resource": "memlock", "soft": None, "hard": None}
    assert s[27].arg == {} and s[27].proc == "kid"
    assert s[28].arg == {"segment": "seg", "cmd": "rmid", "mode": None}
    assert s[29].arg == {"name": "/demo"}
    assert s[31].arg == {"file": None, "fd": None, "shm": None, "memfd": "mf", "length": PS,
                         "offset": 10, "value": 3}
    assert s[32].arg["advice"] == "willneed" and s[32].arg["length"] == 0
    assert s[33].arg["seals"] == ("SHRINK", "GROW")
    assert s[34].arg == {"flags": ("CURRENT", "ONFAULT")} and s[35].arg == {}
    assert s[36].arg == {"file": "data", "seconds": 0.5}
    assert s[30].arg == {"file": None, "fd": None, "shm": None, "memfd": "mf", "size": 2**21}
    assert s[4].raw["length"] == "16 pages"  # the original table is kept


def test_handles_are_computed():
    exp = parse(EVERY_OP)
    h = exp.handles
    assert h["main"] == HandleInfo("process", 0, "main", None)
    assert h["kid"] == HandleInfo("process", 23, "main", None)
    assert h["data"] == HandleInfo("file", 1, "main", None)
    assert h["ro"].kind == "fd"
    assert h["anon"] == HandleInfo("region", 4, "main", 16)  # pages at creation
    assert h["fdmap"].pages == 2
    assert h["posix"].kind == "shm" and h["mf"].kind == "memfd"
    assert h["seg"] == HandleInfo("segment", 21, "main", 3)
    assert h["att"] == HandleInfo("region", 22, "main", 3)
    assert list(h)[:3] == ["main", "data", "ro"]
    with pytest.raises(TypeError):
        h["x"] = 1  # read-only


def test_defaults():
    exp = parse(steps("""
        [[step]]
        do = "file"
        name = "f"
        size = 0
        [[step]]
        do = "memfd"
        as = "m"
        [[step]]
        do = "shmget"
        as = "s"
        size = 1
        [[step]]
        do = "shm_open"
        as = "p"
        name = "x"
        [[step]]
        do = "rlimit"
        resource = "RLIMIT_STACK"
        soft = "8 MiB"
        [[step]]
        do = "open"
        as = "o"
        file = "f"
    """))
    assert exp.setup == Setup()
    f, m, s, p, r, o = exp.steps
    assert f.proc == "main"
    assert f.arg == {"name": "f", "size": 0, "fill": "zero", "value": None, "on": "disk",
                     "cache": "warm"}
    assert m.arg == {"as": "m", "name": "m", "size": 0, "sealing": False}
    assert s.arg == {"as": "s", "size": 1, "key": "private", "create": False, "excl": False,
                     "mode": 0o600}
    assert p.arg == {"as": "p", "name": "x", "create": False, "excl": False, "truncate": False,
                     "access": "rw", "size": None, "mode": 0o600}
    assert r.arg == {"resource": "stack", "soft": 8 * 2**20, "hard": 8 * 2**20}
    assert o.arg["mode"] == "rw"


def test_fill_byte_default_value():
    exp = parse(steps('[[step]]\ndo = "file"\nname = "f"\nsize = 1\nfill = "byte"\n'))
    assert exp.steps[0].arg["value"] == 0x5A


def test_msync_default_flags_and_mremap_default_flags():
    exp = parse(steps(MMAP_BUF + """
        [[step]]
        do = "msync"
        region = "buf"
        [[step]]
        do = "mremap"
        region = "buf"
        length = 0
    """))
    assert exp.steps[1].arg["flags"] == ("SYNC",)
    assert exp.steps[2].arg["flags"] == ()


def test_step_helpers():
    step = parse(steps(MMAP_BUF)).steps[0]
    assert step.get("length") == 16 * PS
    assert step.get("nope", 42) == 42
    assert step.get("addr", 42) is None  # present, and absent from the file: None
    assert [k for k, _ in step.args] == sorted(k for k, _ in step.args)
    with pytest.raises(TypeError):
        step.arg["length"] = 1  # type: ignore[index]
    assert hash(step) == hash(step)


# What the kernel refuses is not the parser's business: these are valid experiments.
@pytest.mark.parametrize("body", [
    '[[step]]\ndo="mmap"\nas="a"\nlength=0\nprot="rw"\nflags=["private","anonymous"]\n',
    '[[step]]\ndo="mmap"\nas="a"\nlength=1\nprot="rw"\nflags=["anonymous"]\n',
    '[[step]]\ndo="mmap"\nas="a"\nlength=1\nprot="rw"\nflags=["shared","private"]\n',
    '[[step]]\ndo="mmap"\nas="a"\nlength=1\nprot="none"\nflags=[]\n',
    '[[step]]\ndo="mmap"\nas="a"\nlength=1\nprot=""\nflags=["private","anonymous"]\noffset=3\n',
    '[[step]]\ndo="mmap"\nas="a"\nlength=1\nprot="wx"\nflags=["private","ANON","hugetlb"]\n',
    '[[step]]\ndo="shm_open"\nas="s"\nname="a/b"\n',
    '[[step]]\ndo="rlimit"\nresource="as"\nsoft=10\nhard=5\n',
    '[[step]]\ndo="shmget"\nas="s"\nsize=0\nkey=-1\n',
    '[[step]]\ndo="exit"\n',
])
def test_kernel_decides(body):
    parse(steps(body))


def test_prot_spellings():
    def prot(value):
        b = ExperimentBuilder(about="p").mmap(as_="a", length=1, prot=value, flags=[])
        return b.build(page_size=PS).steps[0].arg["prot"]

    assert prot("none") == prot("") == prot([]) == prot("---") == prot(["none"]) == "none"
    assert prot("wr") == prot("RW-") == prot(["write", "read"]) == "rw"
    assert prot("xwr") == prot("rwx") == prot(["PROT_EXEC", "read", "write"]) == "rwx"
    assert prot("r-x") == "rx"


def test_flags_canonical_order_and_dedup():
    b = ExperimentBuilder(about="f").mmap(as_="a", length=1, prot="r",
                                          flags=["Populate", "MAP_PRIVATE", "anonymous",
                                                 "private", "32bit", "fixed_noreplace"])
    assert b.build(page_size=PS).steps[0].arg["flags"] == (
        "PRIVATE", "ANONYMOUS", "FIXED_NOREPLACE", "POPULATE", "32BIT")


@pytest.mark.parametrize("addr,expected", [
    (0x10000, ("abs", 0x10000)),
    ("0x7fff_0000", ("abs", 0x7FFF0000)),
    ("4096", ("abs", 4096)),
    ("buf", ("rel", "buf", 0)),
    ("buf+2 pages", ("rel", "buf", 2 * PS)),
    ("buf - 1 page", ("rel", "buf", -PS)),
    ("buf+2 MiB", ("rel", "buf", 2 * 2**20)),
    ("buf+0x1000", ("rel", "buf", 0x1000)),
])
def test_addr_forms(addr, expected):
    exp = parse(steps(MMAP_BUF + f"""
        [[step]]
        do = "mmap"
        as = "b2"
        length = 1
        prot = "r"
        flags = ["private", "anonymous", "fixed"]
        addr = {'"' + addr + '"' if isinstance(addr, str) else addr}
    """))
    assert exp.steps[1].arg["addr"] == expected


def test_region_kept_after_munmap_and_shmdt():
    parse(steps(MMAP_BUF + """
        [[step]]
        do = "munmap"
        region = "buf"
        [[step]]
        do = "touch"
        region = "buf"
        pages = "15"
        [[step]]
        do = "shmget"
        as = "seg"
        size = "2 pages"
        [[step]]
        do = "shmat"
        as = "att"
        segment = "seg"
        [[step]]
        do = "shmdt"
        region = "att"
        [[step]]
        do = "read"
        region = "att"
        pages = "0..2"
    """))


def test_fork_inherits_handles_and_processes_are_independent():
    exp = parse(steps(MMAP_BUF + """
        [[step]]
        do = "file"
        name = "f"
        size = 1
        [[step]]
        do = "fork"
        child = "kid"
        [[step]]
        do = "fork"
        in = "kid"
        child = "grandkid"
        [[step]]
        do = "touch"
        in = "grandkid"
        region = "buf"
        [[step]]
        do = "mremap"
        in = "kid"
        region = "buf"
        length = "32 pages"
        [[step]]
        do = "touch"
        in = "kid"
        region = "buf"
        pages = "16..32"
        [[step]]
        do = "exit"
        in = "kid"
        [[step]]
        do = "touch"
        in = "grandkid"
        region = "buf"
        pages = "15"
        [[step]]
        do = "mmap"
        in = "grandkid"
        as = "late"
        length = 1
        prot = "r"
        flags = ["shared"]
        file = "f"
    """))
    assert exp.handles["grandkid"] == HandleInfo("process", 4, "kid", None)


# ---------------------------------------------------------------------------------------------
# parse_size


@pytest.mark.parametrize("value,expected", [
    (0, 0), (4096, 4096), ("4096", 4096), ("0x1000", 4096), ("0X10 KiB", 16 * 1024),
    ("1_000", 1000), ("1 B", 1), ("3 KiB", 3072), ("2 MiB", 2 * 2**20), ("1 GiB", 2**30),
    ("1 TiB", 2**40), ("1 page", PS), ("16 pages", 16 * PS), ("1.5 pages", PS * 3 // 2),
    ("0.5 KiB", 512), (" 7 kib ", 7 * 1024), ("16pages", 16 * PS), (2**64 - 1, 2**64 - 1),
    ("0xffff_ffff_ffff_ffff", 2**64 - 1),
])
def test_parse_size(value, expected):
    assert parse_size(value, PS) == expected


@pytest.mark.parametrize("value,problem", [
    (-1, "negative size"), ("-4 KiB", "negative size"), ("1.5", "not a whole number of bytes"),
    ("0.3 KiB", "not a whole number"), (2**64, "impossible size"), ("16 EiB", "unknown unit"),
    ("17 TiB" * 1, None), ("lots", "cannot read"), ("1 KB", "unknown unit"),
    (True, "expected a size"), (1.5, "expected a size"), ([1], "expected a size"),
    ("1__0", "cannot read"), ("", "cannot read"), ("20000000 TiB", "impossible size"),
])
def test_parse_size_errors(value, problem):
    if problem is None:  # 17 TiB is fine: a sanity row among the errors
        assert parse_size(value, PS) == 17 * 2**40
        return
    with pytest.raises(ValueError) as info:
        parse_size(value, PS)
    assert problem in info.value.problem
    assert "KiB|MiB" in info.value.accepted


def test_parse_size_default_page_size():
    import os
    assert parse_size("1 page") == os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# Error messages: the exact shape


def test_message_shape_step():
    e = error(steps("""
        [[step]]
        do = "mmap"
        as = "buf"
        length = true
        prot = "rw"
        flags = ["private"]
    """))
    assert (e.file, e.step, e.op, e.field) == (F, 1, "mmap", "length")
    assert e.problem == "expected a size, got boolean true"
    assert str(e) == f"{F}: step 1 (do=mmap): length: expected a size, got boolean true; " \
                     f"accepted: {e.accepted}"
    assert e.accepted.startswith("a size: an integer number of bytes")


def test_message_shape_setup():
    e = error('about = "x"\n[setup]\nlayout = "sideways"\n[[step]]\ndo = "exit"\n')
    assert (e.step, e.op, e.field, e.section) == (None, None, "layout", "setup")
    assert str(e) == f'{F}: setup: layout: unknown value string "sideways"; ' \
                     "accepted: one of topdown, legacy"


def test_message_shape_top_level():
    e = error('about = "x"\nsteps = []\n')
    assert str(e) == f"{F}: steps: unknown top-level key (did you mean 'step'?); " \
                     "accepted: about, format, setup, [[step]]"


def test_message_shape_toml_syntax():
    e = error('about = "x"\n[[step]]\ndo = = "mmap"\n')
    assert re.fullmatch(rf"{F}: line 3, column \d+: malformed TOML \(.+\); "
                        r"accepted: TOML 1\.0 as in DESIGN\.md", str(e))
    assert e.section.startswith("line 3, column ")
    e = error('about = "x"\n[[step]]\ndo = ')
    assert str(e).startswith(f"{F}: line 3, column 6: malformed TOML (Invalid value)")
    e = error('about = "x"\nabout = "y"\n')
    assert "malformed TOML (Cannot overwrite a value)" in str(e)


def test_load_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'about = "x"\n\xff = 1\n')
    with pytest.raises(SpecError) as info:
        load(bad)
    assert str(info.value).startswith(f"{bad}: line 2, column 1: malformed TOML (invalid UTF-8")
    with pytest.raises(SpecError) as info:
        load(tmp_path / "missing.toml")
    assert str(info.value) == (f"{tmp_path / 'missing.toml'}: cannot read the file (No such file "
                               "or directory); accepted: a readable experiment file (TOML, "
                               "format 1)")
    good = tmp_path / "good.toml"
    good.write_text(EVERY_OP, encoding="utf-8")
    exp = load(good, page_size=PS)
    assert exp == parse(EVERY_OP, str(good))


@pytest.mark.parametrize("text,field,problem,accepted", [
    ('[[step]]\ndo = "exit"\n', "about", "missing", "a non-empty string"),
    ('about = " "\n[[step]]\ndo = "exit"\n', "about", "expected a non-empty string", "non-empty"),
    ('about = 1\n[[step]]\ndo = "exit"\n', "about", "got integer 1", "non-empty string"),
    ('about = "x"\n', "step", "no steps", "one or more [[step]] tables"),
    ('about = "x"\nstep = []\n', "step", "expected an array of tables", "[[step]]"),
    ('about = "x"\n[step]\ndo = "exit"\n', "step", "a single [step] table; write [[step]]",
     "[[step]]"),
    ('about = "x"\nstep = [1]\n', "step", "element 1 is integer 1, not a table", "[[step]]"),
    ('about = "x"\nformat = 2\n[[step]]\ndo = "exit"\n', "format", "unsupported format",
     "1 (or leave it out)"),
    ('about = "x"\nformat = true\n[[step]]\ndo = "exit"\n', "format", "unsupported format", "1"),
])
def test_top_level_errors(text, field, problem, accepted):
    e = error(text)
    assert e.step is None and e.section is None and e.field == field
    assert problem in e.problem and accepted in e.accepted
    assert str(e).startswith(f"{F}: {field}: ")


@pytest.mark.parametrize("setup,field,problem,accepted", [
    ('color = 1', "color", "unknown field", "aslr, layout, rlimits, user"),
    ('aslr = "no"', "aslr", 'expected a boolean, got string "no"', "true, or false"),
    ('layout = 1', "layout", "expected a string", "topdown, legacy"),
    ('user = ""', "user", "expected a user name", "non-empty user name"),
    ('rlimits = 5', "rlimits", "expected a table", "resources: as, core"),
    ('rlimits = { stak = 1 }', "rlimits.stak", "unknown resource \"stak\" (did you mean 'stack'?)",
     "as, core, data, fsize, memlock, nofile, stack"),
    ('rlimits = { as = -1 }', "rlimits.as", "negative", '"unlimited"'),
    ('rlimits = { as = true }', "rlimits.as", "expected a limit", '"unlimited"'),
    ('rlimits = { as = { hard = 1 } }', "rlimits.as", "missing soft limit", "soft = limit"),
    ('rlimits = { as = { soft = 1, max = 2 } }', "rlimits.as", "unknown field 'max'", "soft"),
    ('rlimits = { as = { soft = 2, hard = 1 } }', "rlimits.as", "above the hard limit",
     "soft <= hard"),
    ('rlimits = { as = { soft = "unlimited", hard = 1 } }', "rlimits.as", "soft limit unlimited",
     "soft <= hard"),
    ('rlimits = { as = 1, AS = 2 }', "rlimits.AS", "given twice", "resources"),
])
def test_setup_errors(setup, field, problem, accepted):
    e = error(f'about = "x"\n[setup]\n{setup}\n[[step]]\ndo = "exit"\n')
    assert (e.section, e.field) == ("setup", field)
    assert problem in e.problem and accepted in e.accepted
    assert str(e).startswith(f"{F}: setup: {field}: ")


def test_setup_not_a_table():
    e = error('about = "x"\nsetup = 1\n[[step]]\ndo = "exit"\n')
    assert str(e).startswith(f"{F}: setup: expected a table, got integer 1; accepted: a [setup]")


def step_error(body: str, step: int, op, field: str, problem: str, accepted: str) -> SpecError:
    e = error(steps(body))
    assert (e.step, e.op, e.field) == (step, op, field), str(e)
    assert problem in e.problem, str(e)
    assert accepted in e.accepted, str(e)
    assert str(e).startswith(f"{F}: step {step} (do={op if op is not None else '?'}): {field}: ")
    return e


def test_do_errors():
    step_error('[[step]]\nin = "main"\n', 1, None, "do", "missing required field",
               "one of file, open, evict, mmap")
    step_error('[[step]]\ndo = 3\n', 1, None, "do", "expected a string, got integer 3", "mmap")
    step_error('[[step]]\ndo = ["mmap"]\n', 1, None, "do", "expected a string", "mmap")
    step_error('[[step]]\ndo = "mmapp"\n', 1, "mmapp", "do",
               "unknown operation \"mmapp\" (did you mean 'mmap'?)", "mmap, munmap")


def test_unknown_and_missing_fields():
    step_error(MMAP_BUF + '[[step]]\ndo = "touch"\nregion = "buf"\npage = 1\n', 2, "touch",
               "page", "unknown field (did you mean 'pages'?)",
               'fields of do = "touch": region, pages, addr, length, access, value (and do, in)')
    step_error('[[step]]\ndo = "exit"\nchild = "x"\n', 1, "exit", "child", "unknown field",
               'fields of do = "exit": no other fields (and do, in)')
    step_error('[[step]]\ndo = "mmap"\nas = "b"\nprot = "r"\nflags = []\n', 1, "mmap", "length",
               "missing required field", "a size")
    step_error('[[step]]\ndo = "fork"\n', 1, "fork", "child", "missing required field",
               "a new process name")
    step_error('[[step]]\ndo = "munmap"\n', 1, "munmap", "region", "missing required field",
               "a region handle (process 'main' has none yet: create one with do = \"mmap\" or "
               "do = \"shmat\")")
    step_error(MMAP_BUF + '[[step]]\ndo = "munmap"\n', 2, "munmap", "region",
               "missing required field", "region handles of process 'main': buf")


def test_process_errors():
    step_error('[[step]]\ndo = "exit"\nin = "kid"\n[[step]]\ndo = "fork"\nchild = "kid"\n',
               1, "exit", "in", "no process 'kid' at this step (it is forked later, at step 2)",
               "a live process: main")
    step_error('[[step]]\ndo = "fork"\nchild = "kid"\n[[step]]\ndo = "exit"\nin = "kid"\n'
               '[[step]]\ndo = "exit"\nin = "kid"\n',
               3, "exit", "in", "no process 'kid' at this step (it exited at step 2)",
               "a live process: main")
    step_error('[[step]]\ndo = "fork"\nchild = "kid"\n[[step]]\ndo = "exit"\nin = "ghost"\n',
               2, "exit", "in", "no process 'ghost' at this step (no fork step creates it)",
               "a live process: main, kid")
    step_error('[[step]]\ndo = "exit"\n[[step]]\ndo = "exit"\n', 2, "exit", "in",
               "no process 'main' at this step (it exited at step 1)", "a live process: ")
    step_error('[[step]]\ndo = "exit"\nin = 1\n', 1, "exit", "in",
               "expected a process name, got integer 1", "a live process: main")
    step_error('[[step]]\ndo = "fork"\nchild = "main"\n', 1, "fork", "child",
               "name 'main' is already used (by the first process)", "a new process name")
    step_error('[[step]]\ndo = "fork"\nchild = "kid"\n[[step]]\ndo = "exit"\nin = "kid"\n'
               '[[step]]\ndo = "fork"\nchild = "kid"\n', 3, "fork", "child",
               "name 'kid' is already used (by the process forked at step 1)", "unique")
    step_error('[[step]]\ndo = "fork"\nchild = "my kid"\n', 1, "fork", "child",
               'invalid name string "my kid"', 'letters, digits, "_" and "."')


def test_handle_belongs_to_another_process():
    e = step_error(MMAP_BUF.replace('"buf"', '"early"') + """
        [[step]]
        do = "fork"
        child = "kid"
        [[step]]
        do = "mmap"
        as = "buf"
        length = 1
        prot = "r"
        flags = ["private", "anonymous"]
        [[step]]
        do = "touch"
        in = "kid"
        region = "buf"
    """, 4, "touch", "region",
        "handle 'buf' belongs to process 'main', not 'kid' (it was created at step 3, after "
        "'kid' was forked at step 2)",
        "region handles of process 'kid': early")
    assert e.problem.startswith("handle 'buf' belongs")


def test_parent_does_not_get_childs_handles():
    step_error("""
        [[step]]
        do = "fork"
        child = "kid"
        [[step]]
        do = "memfd"
        in = "kid"
        as = "m"
        [[step]]
        do = "mmap"
        as = "map"
        length = 1
        prot = "r"
        flags = ["shared"]
        memfd = "m"
    """, 3, "mmap", "memfd",
        "handle 'm' belongs to process 'kid', not 'main' (it was created at step 2 in 'kid', "
        "and a process holds only the handles it created or had when it was forked)",
        "a memfd handle (process 'main' has none yet: create one with do = \"memfd\")")


def test_system_wide_handles_cross_processes():
    parse(steps("""
        [[step]]
        do = "fork"
        child = "kid"
        [[step]]
        do = "file"
        in = "kid"
        name = "f"
        size = 1
        [[step]]
        do = "shmget"
        in = "kid"
        as = "seg"
        size = 1
        [[step]]
        do = "open"
        as = "fd"
        file = "f"
        [[step]]
        do = "shmat"
        as = "att"
        segment = "seg"
    """))


def test_unknown_and_wrong_kind_handles():
    step_error(MMAP_BUF + '[[step]]\ndo = "read"\nregion = "bfu"\n', 2, "read", "region",
               "unknown region handle 'bfu'", "region handles of process 'main': buf")
    step_error(MMAP_BUF + '[[step]]\ndo = "read"\nregion = "later"\n' + MMAP_BUF.replace(
        '"buf"', '"later"'), 2, "read", "region",
        "unknown region handle 'later' (it is created later, at step 3)", "buf")
    step_error('[[step]]\ndo = "file"\nname = "f"\nsize = 1\n[[step]]\ndo = "open"\nas = "o"\n'
               'file = "f"\n[[step]]\ndo = "mmap"\nas = "m"\nlength = 1\nprot = "r"\n'
               'flags = ["shared"]\nfile = "o"\n', 3, "mmap", "file",
               "handle 'o' is an fd handle (created by do = \"open\" at step 2), not a file "
               "handle", "file handles: f")
    step_error('[[step]]\ndo = "evict"\nfile = "main"\n', 1, "evict", "file",
               "handle 'main' is a process handle (created by the start at step 0)",
               'a file handle (none exists yet: create one with do = "file")')
    step_error(MMAP_BUF + '[[step]]\ndo = "shmctl"\nsegment = "buf"\ncmd = "rmid"\n',
               2, "shmctl", "segment", "handle 'buf' is a region handle", "a segment handle")
    step_error('[[step]]\ndo = "evict"\nfile = 7\n', 1, "evict", "file",
               "expected a file name (a string), got integer 7", "a file handle")


def test_handle_name_reuse():
    step_error(MMAP_BUF + MMAP_BUF, 2, "mmap", "as",
               "name 'buf' is already used (by the region handle created at step 1 in process "
               "'main')", "a new region name: handle and process names are unique")
    step_error(MMAP_BUF + '[[step]]\ndo = "file"\nname = "buf"\nsize = 1\n', 2, "file", "name",
               "name 'buf' is already used", "a new file name")
    step_error('[[step]]\ndo = "fork"\nchild = "kid"\n' + MMAP_BUF + MMAP_BUF.replace(
        'do = "mmap"', 'do = "mmap"\nin = "kid"'), 3, "mmap", "as",
        "name 'buf' is already used (by the region handle created at step 2 in process 'main')",
        "unique")
    step_error(MMAP_BUF.replace('"buf"', '"1buf"'), 1, "mmap", "as",
               'invalid name string "1buf"', "starts with a letter")
    step_error(MMAP_BUF.replace('"buf"', '"a+b"'), 1, "mmap", "as", "invalid name", "letters")


@pytest.mark.parametrize("field,value,problem,accepted", [
    ("length", "-1", "negative size", "a size"),
    ("length", '"-16 pages"', "negative size", "a size"),
    ("length", '"1.5"', "is not a whole number of bytes (1.5)", "whole bytes"),
    ("length", '"0.3 pages"', "not a whole number of bytes", "a size"),
    ("length", "18446744073709551616", "impossible size", "a size"),
    ("length", '"16 EiB"', "unknown unit", "B|KiB|MiB|GiB|TiB|page|pages"),
    ("length", '"sixteen"', 'cannot read string "sixteen" as a size', "a size"),
    ("length", "1.5", "expected a size, got float 1.5", "a size"),
    ("length", "[1]", "expected a size, got array [1]", "a size"),
    ("offset", "-4096", "negative size", "a size"),
    ("prot", '"rwz"', 'unknown protection string "rwz"', '"none", or letters from r, w, x'),
    ("prot", '["read", "exe"]', 'unknown protection string "exe" in the list', "exec"),
    ("prot", "1.5", "expected a string or an array, got float 1.5", "letters"),
    ("prot", "18446744073709551616", "prot 18446744073709551616 does not fit in 64 bits", "raw integer"),
    ("flags", '"shared"', 'expected an array of names, got string "shared"',
     "a list of MAP_* names without the prefix, any case, and raw integers: shared, private, shared_validate"),
    ("flags", '["private", "anonymus"]',
     "unknown flag string \"anonymus\" (did you mean 'anonymous'?)", "anonymous"),
    ("flags", "[1.5]", "expected a flag name or an integer, got float 1.5 in the list", "MAP_*"),
    ("addr", '"here"', "unknown region handle 'here'", "region handles of process 'main': buf"),
    ("addr", "-1", "address -1 out of range", "REGION+N pages"),
    ("addr", '"buf+x"', 'bad offset in string "buf+x"', "a region handle"),
    ("addr", '"buf*2"', 'cannot read string "buf*2" as an address', "hex string"),
    ("addr", "true", "expected an address, got boolean true", "an integer"),
    ("addr", '"0x1_0000_0000_0000_0000"', "out of range", "an address"),
    ("fd", '"nofd"', "unknown fd handle 'nofd'", "an fd handle (process 'main' has none yet"),
])
def test_mmap_field_errors(field, value, problem, accepted):
    base = {"as": '"m"', "length": "1", "prot": '"r"', "flags": '["private", "anonymous"]'}
    base[field] = value
    body = MMAP_BUF + '[[step]]\ndo = "mmap"\n' + "".join(f"{k} = {v}\n" for k, v in base.items())
    step_error(body, 2, "mmap", field, problem, accepted)


def test_mmap_at_most_one_source():
    step_error('[[step]]\ndo = "file"\nname = "f"\nsize = 1\n[[step]]\ndo = "memfd"\nas = "m"\n'
               '[[step]]\ndo = "mmap"\nas = "x"\nlength = 1\nprot = "r"\nflags = ["shared"]\n'
               'file = "f"\nmemfd = "m"\n', 3, "mmap", "memfd",
               "at most one of file, fd, shm, memfd (got file, memfd)",
               "one of file, fd, shm, memfd, or none for an anonymous mapping")


def test_truncate_exactly_one_target():
    files = '[[step]]\ndo = "file"\nname = "f"\nsize = 1\n[[step]]\ndo = "memfd"\nas = "m"\n'
    step_error(files + '[[step]]\ndo = "truncate"\nsize = 0\n', 3, "truncate", "file",
               "exactly one of file, fd, shm, memfd (got none)", "one of file (truncate by name)")
    step_error(files + '[[step]]\ndo = "truncate"\nfile = "f"\nmemfd = "m"\nsize = 0\n', 3,
               "truncate", "memfd", "exactly one of file, fd, shm, memfd (got file, memfd)",
               "fd, shm, memfd (ftruncate)")
    step_error(files + '[[step]]\ndo = "truncate"\nmemfd = "m"\n', 3, "truncate", "size",
               "missing required field", "")


@pytest.mark.parametrize("pages,problem,accepted", [
    ('"5..2"', "reversed page range 5..2", "A <= B"),
    ('"0..17"', "page range 0..17 is outside region 'buf' (16 pages at this step)",
     'a range "A..B" with 0 <= A < B <= 16, or a page number 0..15'),
    ("16", "page range 16..17 is outside region 'buf'", "0 <= A < B <= 16"),
    ("-1", "negative page -1", "A..B"),
    ('"1-3"', 'cannot read string "1-3" as a page range', '"A..B"'),
    ('"a..b"', "cannot read", "A..B"),
    ("[0, 1]", "expected a page range, got array [0, 1]", "page number"),
    ("false", "expected a page range, got boolean false", "page number"),
])
def test_pages_errors(pages, problem, accepted):
    step_error(MMAP_BUF + f'[[step]]\ndo = "touch"\nregion = "buf"\npages = {pages}\n',
               2, "touch", "pages", problem, accepted)


def test_pages_follow_mremap_and_unknown_lengths_are_not_checked():
    step_error(MMAP_BUF + '[[step]]\ndo = "mremap"\nregion = "buf"\nlength = "4 pages"\n'
               '[[step]]\ndo = "read"\nregion = "buf"\npages = "3..5"\n', 3, "read", "pages",
               "outside region 'buf' (4 pages at this step)", "<= 4")
    # length 0 (EINVAL at run time): the region's length is unknown, so pages are not checked
    parse(steps(MMAP_BUF.replace('"16 pages"', "0") +
                '[[step]]\ndo = "read"\nregion = "buf"\npages = "3..5"\n'))
    # "1 B" is one page: ceil(length / page size)
    parse(steps(MMAP_BUF.replace('"16 pages"', '"1 B"') +
                '[[step]]\ndo = "read"\nregion = "buf"\npages = 0\n'))
    step_error(MMAP_BUF.replace('"16 pages"', '"4097 B"') +
               '[[step]]\ndo = "read"\nregion = "buf"\npages = "0..3"\n', 2, "read", "pages",
               "(2 pages at this step)", "<= 2")


def test_shmat_region_has_the_segment_size():
    step_error('[[step]]\ndo = "shmget"\nas = "s"\nsize = "2 pages"\n[[step]]\ndo = "shmat"\n'
               'as = "a"\nsegment = "s"\n[[step]]\ndo = "touch"\nregion = "a"\npages = 2\n',
               3, "touch", "pages", "outside region 'a' (2 pages at this step)", "<= 2")


@pytest.mark.parametrize("body,field,problem,accepted", [
    ('do = "file"\nname = "f"\nsize = 1\nvalue = 1\n', "value",
     'value is only used with fill = "byte" (fill is "zero")', 'set fill = "byte"'),
    ('do = "file"\nname = "f"\nsize = 1\nfill = "byte"\nvalue = 256\n', "value",
     "byte value 256 out of range", "0..255"),
    ('do = "file"\nname = "f"\nsize = 1\nfill = "ones"\n', "fill",
     'unknown value string "ones"', "one of zero, random, byte"),
    ('do = "file"\nname = "f"\nsize = 1\non = "nfs"\n', "on", "unknown value", "disk, tmpfs"),
    ('do = "file"\nname = "f"\nsize = 1\ncache = 1\n', "cache", "expected a string",
     "warm, cold"),
    ('do = "file"\nname = "f"\nsize = -1\n', "size", "negative size", "a size"),
    # an empty name is a name glibc refuses (EINVAL): the step's result, not bad input
    ('do = "shm_open"\nas = "s"\nname = 1\n', "name", "expected a string, got integer 1", "a string"),
    ('do = "shm_open"\nas = "s"\nname = "x"\ncreate = "yes"\n', "create",
     'expected a boolean, got string "yes"', "true or false"),
    ('do = "shm_open"\nas = "s"\nname = "x"\naccess = "w"\n', "access", "unknown value",
     "one of r, rw"),
    ('do = "shm_open"\nas = "s"\nname = "x"\nmode = "0999"\n', "mode",
     'not an octal mode: string "0999"', "permission bits"),
    ('do = "shm_open"\nas = "s"\nname = "x"\nmode = 0o10000\n', "mode", "out of range",
     "0..0o7777"),
    ('do = "shm_open"\nas = "s"\nname = "x"\nmode = 1.0\n', "mode",
     "expected permission bits", "octal string"),
    ('do = "shm_unlink"\nname = 5\n', "name", "expected a string, got integer 5", "string"),
    ('do = "memfd"\nas = "m"\nname = 1\n', "name", "expected a string", "a string"),
    ('do = "shmget"\nas = "s"\nsize = 1\nkey = "public"\n', "key",
     'expected "private" or an integer, got string "public"', '"private" (IPC_PRIVATE)'),
    ('do = "shmget"\nas = "s"\nsize = 1\nkey = 0x1_0000_0000\n', "key", "does not fit",
     "-2**31..2**32-1"),
    ('do = "rlimit"\nresource = "cpu"\nsoft = 1\n', "resource", 'unknown resource "cpu"',
     "as, core, data"),
    ('do = "rlimit"\nresource = "as"\nsoft = "lots"\n', "soft", "cannot read",
     '"unlimited", or an integer'),
    ('do = "rlimit"\nresource = "as"\nsoft = 1\nhard = -1\n', "hard", "negative",
     '"unlimited"'),
    ('do = "rlimit"\nresource = "as"\n', "soft", "missing required field", '"unlimited"'),
    ('do = "rlimit"\nresource = 1\nsoft = 1\n', "resource", "expected a resource name",
     "RLIMIT_ prefix optional"),
])
def test_field_errors(body, field, problem, accepted):
    op = re.match(r'do = "(\w+)"', body)[1]
    step_error("[[step]]\n" + body, 1, op, field, problem, accepted)


@pytest.mark.parametrize("body,field,problem,accepted", [
    ('do = "touch"\nregion = "buf"\nvalue = 3\n', "value",
     'value is only used with access = "write"', 'set access = "write"'),
    ('do = "touch"\nregion = "buf"\naccess = "exec"\n', "access", "unknown value",
     "one of read, write"),
    ('do = "touch"\nregion = "buf"\naccess = "write"\nvalue = -1\n', "value", "out of range",
     "0..255"),
    ('do = "touch"\nregion = "buf"\naccess = "write"\nvalue = true\n', "value",
     "expected an integer, got boolean true", "0..255"),
    ('do = "madvise"\nregion = "buf"\nadvice = "dontned"\n', "advice",
     "(did you mean 'dontneed'?)", "dontneed, free, remove"),
    ('do = "madvise"\nregion = "buf"\n', "advice", "missing required field", "collapse"),
    ('do = "msync"\nregion = "buf"\nflags = ["now"]\n', "flags", 'unknown flag string "now"',
     "a list of MS_* names without the prefix, any case, and raw integers: sync, async, invalidate"),
    ('do = "mremap"\nregion = "buf"\nlength = 1\nflags = ["move"]\n', "flags",
     "unknown flag", "maymove, fixed, dontunmap"),
    ('do = "mremap"\nregion = "buf"\n', "length", "missing required field", "a size"),
    ('do = "mlock"\nregion = "buf"\nonfault = 1\n', "onfault", "expected a boolean",
     "true or false"),
    ('do = "munlock"\nregion = "buf"\nonfault = true\n', "onfault", "unknown field",
     'fields of do = "munlock": region, pages, addr, length (and do, in)'),
    ('do = "mprotect"\nregion = "buf"\n', "prot", "missing required field", "letters"),
    ('do = "shmdt"\nregion = "buf"\nlength = 1\n', "length", "unknown field",
     'fields of do = "shmdt": region, pages, addr (and do, in)'),
    ('do = "shmctl"\nsegment = "nope"\ncmd = "rmid"\n', "segment", "unknown segment handle",
     'a segment handle (none exists yet: create one with do = "shmget")'),
])
def test_region_op_errors(body, field, problem, accepted):
    op = re.match(r'do = "(\w+)"', body)[1]
    step_error(MMAP_BUF + "[[step]]\n" + body, 2, op, field, problem, accepted)


def test_shmctl_cmd():
    step_error('[[step]]\ndo = "shmget"\nas = "s"\nsize = 1\n[[step]]\ndo = "shmctl"\n'
               'segment = "s"\ncmd = "remove"\n', 2, "shmctl", "cmd", "unknown value",
               "one of rmid, stat, lock, unlock")


def test_every_error_names_file_step_field_and_accepted():
    """A sweep: break each field of each operation in the every-operation file with a value of
    a wrong type; every failure is a one-line SpecError naming its step and field."""
    base = parse(EVERY_OP)
    for step in base.steps:
        for name in [f.name for f in OPERATIONS[step.do]]:
            b = ExperimentBuilder(about="sweep")
            for other in base.steps[: step.index - 1]:
                b.steps.append(dict(other.raw))
            raw = dict(step.raw)
            raw[name] = {"bad": 1.5}
            b.steps.append(raw)
            with pytest.raises(SpecError) as info:
                b.build(page_size=PS)
            e = info.value
            assert (e.step, e.op, e.field) == (step.index, step.do, name), str(e)
            assert "got table { bad = 1.5 }" in e.problem and e.accepted


# ---------------------------------------------------------------------------------------------
# Builder, emitter, pickling


def test_builder_equals_toml():
    from_toml = parse(EVERY_OP, "same.toml")
    built = every_op_builder().build(path="same.toml", page_size=PS)
    assert built == from_toml
    assert [s.raw for s in built.steps] == [s.raw for s in from_toml.steps]


def test_builder_to_toml_round_trip():
    b = every_op_builder()
    text = b.to_toml()
    assert loads(text, "<builder>", page_size=PS) == b.build(page_size=PS)
    assert "[setup]" in text and text.count("[[step]]") == len(b.steps)


def test_dump_toml_round_trip():
    exp = parse(EVERY_OP)
    again = loads(dump_toml(exp), F, page_size=PS)
    assert again == exp
    assert [s.raw for s in again.steps] == [s.raw for s in exp.steps]
    # default setup: no [setup] table at all
    plain = parse(steps(MMAP_BUF))
    assert "[setup]" not in dump_toml(plain)
    assert loads(dump_toml(plain), F, page_size=PS) == plain


def test_builder_details():
    b = ExperimentBuilder(about="b")
    assert b.mmap(as_="x", length=1, prot="r", flags=["shared"], addr=None) is b
    b.step("fork", in_="main", child="kid").exit(**{"in": "kid"})
    assert b.steps == [{"do": "mmap", "as": "x", "length": 1, "prot": "r", "flags": ["shared"]},
                       {"do": "fork", "in": "main", "child": "kid"},
                       {"do": "exit", "in": "kid"}]
    exp = b.build()
    assert exp.path == "<builder>"
    assert b.build() == exp  # building twice gives the same
    assert "as_" in ExperimentBuilder.mmap.__doc__
    with pytest.raises(SpecError) as info:
        ExperimentBuilder(about="b").touch(region="nowhere").build(path="p")
    assert str(info.value).startswith("p: step 1 (do=touch): region: unknown region handle")
    with pytest.raises(SpecError) as info:
        ExperimentBuilder(about="b", layout="up").exit().build(path="p")
    assert str(info.value).startswith("p: setup: layout: ")
    with pytest.raises(SpecError):
        ExperimentBuilder(about="").exit().build()
    with pytest.raises(SpecError):
        ExperimentBuilder(about="no steps").build()


def test_spec_error_pickles():
    cases = [
        error(steps('[[step]]\ndo = "mmapp"\n')),
        error('about = "x"\n[setup]\naslr = 1\n[[step]]\ndo = "exit"\n'),
        error('about = "x"\n[[step]\n'),
        error('about = "x"\n'),
    ]
    for e in cases:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is SpecError
        assert str(back) == str(e)
        assert (back.file, back.step, back.op, back.field, back.problem, back.accepted,
                back.section) == (e.file, e.step, e.op, e.field, e.problem, e.accepted, e.section)


def test_experiment_pickles_and_hashes():
    exp = parse(EVERY_OP)
    back = pickle.loads(pickle.dumps(exp))
    assert back == exp and back.steps[3].raw == exp.steps[3].raw
    assert hash(back) == hash(exp)


def test_spec_error_is_plain_exception():
    """Turning SpecError into a message without a traceback is the CLI's job: here it is only
    an ordinary Exception subclass whose str() is the whole message."""
    e = SpecError("f.toml", 2, "touch", "pages", "empty page range 0..0", '"A..B"')
    assert isinstance(e, Exception) and e.args == (str(e),)
    assert str(e) == 'f.toml: step 2 (do=touch): pages: empty page range 0..0; accepted: "A..B"'
    assert str(SpecError("f.toml", field="about", problem="missing", accepted="text")) == \
        "f.toml: about: missing; accepted: text"


# ---------------------------------------------------------------------------------------------
# Properties

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,4}", fullmatch=True)
any_text = st.text(max_size=12)
sizes_bytes = st.integers(0, 64 * PS)


@st.composite
def size_spelling(draw, nbytes=None):
    """A spelling of a size and its value in bytes."""
    if nbytes is None:
        nbytes = draw(sizes_bytes)
    forms = [nbytes, str(nbytes), f"0x{nbytes:x}", f"{nbytes} B"]
    if nbytes % PS == 0:
        n = nbytes // PS
        forms += [f"{n} pages", f"{n} page", f"{n}pages"]
    if nbytes % 1024 == 0:
        forms += [f"{nbytes // 1024} KiB", f"{nbytes // 1024} kib"]
    if nbytes % 512 == 0:
        forms.append(f"{nbytes / 1024} KiB")
    return draw(st.sampled_from(forms)), nbytes


@st.composite
def builders(draw):
    """A random *valid* builder: handles are simulated as the validator does."""
    rlimits = draw(st.none() | st.dictionaries(
        st.sampled_from(["as", "data", "memlock", "stack", "nofile", "fsize", "core"]),
        st.sampled_from([1, "64 KiB", "unlimited", {"soft": 1, "hard": "unlimited"},
                         {"soft": "1 page"}]), max_size=3))
    b = ExperimentBuilder(
        about=draw(st.text(min_size=1).filter(str.strip)),
        aslr=draw(st.booleans()), layout=draw(st.sampled_from(["topdown", "legacy", "LEGACY"])),
        rlimits=rlimits, user=draw(st.none() | st.text(min_size=1)))
    counter = iter(range(10**6))

    def new_name():
        return f"{draw(names)}{next(counter)}"

    # per process: regions {name: pages or None}, fds, shms, memfds; system-wide: files, segs
    procs = {"main": {"region": {}, "fd": [], "shm": [], "memfd": []}}
    files: list[str] = []
    segs: dict[str, int | None] = {}
    for _ in range(draw(st.integers(1, 14))):
        proc = draw(st.sampled_from(sorted(procs)))
        me = procs[proc]
        where = {} if proc == "main" and draw(st.booleans()) else {"in_": proc}
        ops = ["file", "mmap", "shm_open", "memfd", "shmget", "fork", "shm_unlink", "rlimit"]
        if files:
            ops += ["open", "evict"]
        if me["region"]:
            ops += ["munmap", "mprotect", "madvise", "msync", "mlock", "munlock", "mremap",
                    "touch", "read", "shmdt"]
        if segs:
            ops += ["shmat", "shmctl"]
        if proc != "main":
            ops.append("exit")
        op = draw(st.sampled_from(ops))
        def opt():
            return draw(st.booleans())

        def pages_for(region):
            n = me["region"][region]
            if n is None or not opt():
                return None
            a = draw(st.integers(0, n - 1))
            bnd = draw(st.integers(a + 1, n))
            return draw(st.sampled_from([f"{a}..{bnd}", f" {a} .. {bnd} "] +
                                        ([a, str(a)] if bnd == a + 1 else [])))

        def addr():
            if not opt():
                return None
            forms = [draw(st.integers(0, 2**47)), f"0x{draw(st.integers(0, 2**47)):x}"]
            if me["region"]:
                r = draw(st.sampled_from(sorted(me["region"])))
                spelled, _ = draw(size_spelling())
                forms += [r, f"{r}+{spelled}", f"{r}-{spelled}"]
            return draw(st.sampled_from(forms))

        def pages_of(nbytes):
            return -(-nbytes // PS) or None

        if op == "file":
            fill = draw(st.sampled_from([None, "zero", "random", "byte"]))
            b.file(**where, name=(n := new_name()), size=draw(size_spelling())[0], fill=fill,
                   value=draw(st.integers(0, 255)) if fill == "byte" and opt() else None,
                   on=draw(st.sampled_from([None, "disk", "tmpfs"])),
                   cache=draw(st.sampled_from([None, "warm", "cold"])))
            files.append(n)
        elif op == "open":
            b.open(**where, as_=(n := new_name()), file=draw(st.sampled_from(files)),
                   mode=draw(st.sampled_from([None, "r", "w", "rw"])))
            me["fd"].append(n)
        elif op == "evict":
            b.evict(**where, file=draw(st.sampled_from(files)))
        elif op == "mmap":
            spelled, nbytes = draw(size_spelling())
            sources = [("none", None)] + [(k, v) for k in ("fd", "shm", "memfd")
                                          for v in me[k]] + [("file", f) for f in files]
            kind, src = draw(st.sampled_from(sources))
            b.mmap(**where, as_=(n := new_name()), length=spelled,
                   prot=draw(st.sampled_from(["none", "", "r", "rw", "RX", "wr-", ["read"],
                                              ["write", "exec"], []])),
                   flags=draw(st.lists(st.sampled_from(["shared", "PRIVATE", "anonymous",
                                                        "map_fixed", "populate", "noreserve",
                                                        "Hugetlb", "anon"]), max_size=4)),
                   **({kind: src} if src else {}),
                   offset=draw(size_spelling())[0] if opt() else None, addr=addr())
            me["region"][n] = pages_of(nbytes)
        elif op in ("munmap", "mprotect", "madvise", "msync", "mlock", "munlock", "touch",
                    "read"):
            r = draw(st.sampled_from(sorted(me["region"])))
            extra = {
                "mprotect": {"prot": draw(st.sampled_from(["r", "none", ["read", "write"]]))},
                "madvise": {"advice": draw(st.sampled_from(["dontneed", "WILLNEED", "cold"]))},
                "msync": {"flags": draw(st.none() | st.lists(
                    st.sampled_from(["sync", "ASYNC", "invalidate"]), max_size=2))},
                "mlock": {"onfault": draw(st.none() | st.booleans())},
            }.get(op, {})
            if op == "touch":
                access = draw(st.sampled_from([None, "read", "write"]))
                extra = {"access": access,
                         "value": draw(st.integers(0, 255)) if access == "write" and opt()
                         else None}
            b.step(op, **where, region=r, pages=pages_for(r), **extra)
        elif op == "mremap":
            r = draw(st.sampled_from(sorted(me["region"])))
            spelled, nbytes = draw(size_spelling())
            b.mremap(**where, region=r, pages=pages_for(r), length=spelled,
                     flags=draw(st.none() | st.lists(st.sampled_from(["maymove", "FIXED",
                                                                      "dontunmap"]))),
                     addr=addr())
            me["region"][r] = pages_of(nbytes)
        elif op == "shmdt":
            b.shmdt(**where, region=draw(st.sampled_from(sorted(me["region"]))))
        elif op == "shm_open":
            b.shm_open(**where, as_=(n := new_name()), name=draw(st.text(min_size=1)),
                       create=draw(st.none() | st.booleans()),
                       excl=draw(st.none() | st.booleans()),
                       truncate=draw(st.none() | st.booleans()),
                       access=draw(st.sampled_from([None, "r", "rw"])),
                       size=draw(size_spelling())[0] if opt() else None,
                       mode=draw(st.sampled_from([None, 0o600, "0644", "0o700", 0])))
            me["shm"].append(n)
        elif op == "shm_unlink":
            b.shm_unlink(**where, name=draw(st.text(min_size=1)))
        elif op == "memfd":
            b.memfd(**where, as_=(n := new_name()), name=draw(st.none() | any_text),
                    size=draw(size_spelling())[0] if opt() else None)
            me["memfd"].append(n)
        elif op == "shmget":
            spelled, nbytes = draw(size_spelling())
            b.shmget(**where, as_=(n := new_name()), size=spelled,
                     key=draw(st.sampled_from([None, "private", 0, 0x1234, -5])),
                     create=draw(st.none() | st.booleans()),
                     excl=draw(st.none() | st.booleans()), mode=draw(st.sampled_from(
                         [None, 0o600, "600"])))
            segs[n] = pages_of(nbytes)
        elif op == "shmat":
            seg = draw(st.sampled_from(sorted(segs)))
            b.shmat(**where, as_=(n := new_name()), segment=seg,
                    readonly=draw(st.none() | st.booleans()), addr=addr(),
                    rnd=draw(st.none() | st.booleans()))
            me["region"][n] = segs[seg]
        elif op == "shmctl":
            b.shmctl(**where, segment=draw(st.sampled_from(sorted(segs))),
                     cmd=draw(st.sampled_from(["rmid", "STAT", "lock", "unlock"])))
        elif op == "fork":
            b.fork(**where, child=(n := new_name()))
            procs[n] = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in me.items()}
        elif op == "exit":
            b.exit(**where)
            del procs[proc]
        elif op == "rlimit":
            b.rlimit(**where, resource=draw(st.sampled_from(["as", "NOFILE", "rlimit_core"])),
                     soft=draw(st.sampled_from([0, "1 MiB", "unlimited"])),
                     hard=draw(st.sampled_from([None, 1, "unlimited"])))
    return b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(builders())
def test_random_builders_round_trip(b):
    exp = b.build(path="rt.toml", page_size=PS)
    text = b.to_toml()
    again = loads(text, "rt.toml", page_size=PS)
    assert again == exp
    assert [s.raw for s in again.steps] == [s.raw for s in exp.steps]
    dumped = loads(dump_toml(exp), "rt.toml", page_size=PS)
    assert dumped == exp
    assert pickle.loads(pickle.dumps(exp)) == exp


toml_scalars = (st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
                | st.floats(allow_nan=False) | st.sampled_from(
                    ["main", "buf", "0..4", "4 pages", "rw", "private", "buf+1 page", "kid",
                     "unlimited", "0x1000"]))
toml_values = st.recursive(toml_scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=4), c, max_size=2), max_leaves=6)
field_names = sorted({f.name for fs in OPERATIONS.values() for f in fs} | {"in", "bogus"})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(OPERATIONS)) | toml_scalars,
                          st.dictionaries(st.sampled_from(field_names), toml_values,
                                          max_size=5)),
                min_size=1, max_size=6))
def test_anything_gives_an_experiment_or_a_spec_error(raw_steps):
    """No input makes the validator fail with anything but a one-line SpecError."""
    b = ExperimentBuilder(about="fuzz")
    b.step("mmap", as_="buf", length="4 pages", prot="rw", flags=["private", "anonymous"])
    for do, fields in raw_steps:
        b.step(do, **fields)
    try:
        exp = b.build(page_size=PS)
    except SpecError as e:
        assert "\n" not in str(e)
        assert pickle.loads(pickle.dumps(e)).args == e.args
        return
    assert loads(b.to_toml(), "<builder>", page_size=PS) == exp


def test_handles_info_is_exported_and_step_constructible():
    s = Step(1, "exit", "main", ())
    assert s.get("x", 3) == 3 and dict(s.arg) == {}


def test_sibling_handle_message():
    step_error("""
        [[step]]
        do = "fork"
        child = "a"
        [[step]]
        do = "fork"
        child = "b"
        [[step]]
        do = "memfd"
        in = "a"
        as = "m"
        [[step]]
        do = "mmap"
        in = "b"
        as = "x"
        length = 1
        prot = "r"
        flags = ["shared"]
        memfd = "m"
    """, 4, "mmap", "memfd",
        "handle 'm' belongs to process 'a', not 'b' (it was created at step 3 in 'a', and a "
        "process holds only the handles it created or had when it was forked)", "a memfd handle")


def test_messages_stay_on_one_line():
    b = ExperimentBuilder(about="x").step("mm\nap")
    with pytest.raises(SpecError) as info:
        b.build(path="p")
    assert str(info.value).startswith('p: step 1 (do="mm\\nap"): do: unknown operation "mm\\nap"')
    with pytest.raises(SpecError) as info:
        ExperimentBuilder(about="x").exit(**{"a\nb": 1}).build(path="p")
    assert str(info.value).startswith('p: step 1 (do=exit): "a\\nb": unknown field')
    with pytest.raises(SpecError) as info:
        ExperimentBuilder(about="x").exit(in_="k\nid").build(path="p")
    assert "\n" not in str(info.value) and "no process \"k\\nid\"" in str(info.value)


def test_bad_page_size_is_a_programming_error():
    with pytest.raises(ValueError):
        loads(steps(MMAP_BUF), page_size=0)
