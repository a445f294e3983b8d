"""shmkit.profile: pure helpers on canned text, read_profile on a fake /proc + /sys tree, then
read_profile on this host, checked against independent sources (sysconf, statvfs, stat,
/proc/self/limits, smaps)."""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
import resource
import tempfile

import pytest
from pathlib import Path

from shmkit import profile
from shmkit.procfs import read_smaps
from shmkit.profile import (
    REQUIRED_CONFIG, KernelProfile, find_mount, mount_for_path, parse_config, parse_mountinfo,
    parse_size_option, parse_thp_mode, read_profile,
)

# --------------------------------------------------------------------------------------------
# Canned text
# --------------------------------------------------------------------------------------------

CONFIG_TEXT = """\
#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.18.44 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc (GCC) 15.3.0"
CONFIG_SYSVIPC=y
CONFIG_SHMEM=y
CONFIG_TRANSPARENT_HUGEPAGE=y
# CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS is not set
CONFIG_MEMFD_CREATE=y
# CONFIG_ANON_VMA_NAME is not set
CONFIG_PER_VMA_LOCK=y
CONFIG_ZRAM=m
CONFIG_NR_CPUS=64
CONFIG_PHYSICAL_START=0x1000000
CONFIG_CMDLINE="quoted \\"inner\\" text"
CONFIG_EMPTY_STRING=""
"""

MOUNTINFO_TEXT = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12358300k,nr_inodes=3089575,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24731708k
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 25 0:27 / /dev/shm rw,nosuid,nodev shared:5 master:2 - tmpfs shm rw,size=65536k,inode64
31 27 0:28 / /tmp rw,relatime - tmpfs tmpfs rw,size=1g
32 27 0:29 /sub /mnt/my\\040disk ro,relatime - ext4 /dev/vdb\\040x ro
"""


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, mode", [
    ("always [madvise] never\n", "madvise"),
    ("always defer defer+madvise [madvise] never\n", "madvise"),
    ("always within_size advise [never] deny force\n", "never"),
    ("always [inherit] madvise never\n", "inherit"),
    ("[always] madvise never", "always"),
    (b"always madvise [never]\n", "never"),
])
def test_parse_thp_mode_takes_the_bracketed_word(text, mode):
    assert parse_thp_mode(text) == mode


def test_parse_thp_mode_without_brackets_is_an_error():
    with pytest.raises(ValueError, match="no \\[active\\] mode"):
        parse_thp_mode("always madvise never\n")


def test_parse_config_values():
    config = parse_config(CONFIG_TEXT)
    assert config["SYSVIPC"] is True and config["PER_VMA_LOCK"] is True
    assert config["ZRAM"] == "m"
    assert config["NR_CPUS"] == 64 and config["PHYSICAL_START"] == 0x1000000
    assert config["CC_VERSION_TEXT"] == "gcc (GCC) 15.3.0"
    assert config["CMDLINE"] == 'quoted "inner" text' and config["EMPTY_STRING"] == ""
    assert "ANON_VMA_NAME" not in config and "TRANSPARENT_HUGEPAGE_ALWAYS" not in config
    assert len(config) == 11


def test_parse_config_accepts_bytes():
    assert parse_config(CONFIG_TEXT.encode()) == parse_config(CONFIG_TEXT)


def test_parse_mountinfo_fields_and_escapes():
    mounts = parse_mountinfo(MOUNTINFO_TEXT)
    assert len(mounts) == 7
    root = mounts[3]
    assert (root.mount_id, root.parent_id, root.dev, root.root, root.mount_point) == (
        27, 1, "254:0", "/", "/")
    assert root.optional == ("shared:1",) and root.fstype == "ext4" and root.source == "/dev/vda"
    disk = mounts[6]
    assert disk.mount_point == "/mnt/my disk" and disk.source == "/dev/vdb x"
    assert disk.root == "/sub" and disk.mount_options == ("ro", "relatime")


def test_find_mount_takes_the_mount_on_top():
    shm = find_mount(parse_mountinfo(MOUNTINFO_TEXT), "/dev/shm")
    assert shm.mount_id == 30 and shm.source == "shm"
    assert shm.optional == ("shared:5", "master:2")
    assert shm.options == ("rw", "nosuid", "nodev", "size=65536k", "inode64")
    assert parse_size_option(shm.super_options) == 65536 * 1024
    assert find_mount(parse_mountinfo(MOUNTINFO_TEXT), "/nowhere") is None


@pytest.mark.parametrize("path, mount_point", [
    ("/tmp", "/tmp"), ("/tmp/x/y", "/tmp"), ("/tmpfoo", "/"), ("/", "/"),
    ("/dev/shm/a", "/dev/shm"), ("/dev/shmx", "/dev"), ("/mnt/my disk/f", "/mnt/my disk"),
])
def test_mount_for_path_longest_prefix_by_component(path, mount_point):
    assert mount_for_path(parse_mountinfo(MOUNTINFO_TEXT), path).mount_point == mount_point


@pytest.mark.parametrize("options, size", [
    (("rw", "size=24731708k"), 24731708 * 1024), (("size=1g",), 1 << 30),
    (("size=64m",), 64 << 20), (("size=4096",), 4096), (("rw", "mode=755"), None),
])
def test_parse_size_option(options, size):
    assert parse_size_option(options) == size


# --------------------------------------------------------------------------------------------
# read_profile on a fake tree
# --------------------------------------------------------------------------------------------

def _write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fake_tree(tmp_path, with_config: bool = True, with_thp: bool = True):
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    for name, value in (("overcommit_memory", "2"), ("overcommit_ratio", "80"),
                        ("overcommit_kbytes", "0"), ("max_map_count", "65530"),
                        ("mmap_min_addr", "65536"), ("legacy_va_layout", "1"),
                        ("dirty_writeback_centisecs", "0"), ("dirty_expire_centisecs", "3000")):
        _write(proc, f"sys/vm/{name}", value + "\n")
    for name, value in (("randomize_va_space", "0"), ("shmmax", "18446744073692774399"),
                        ("shmall", "18446744073692774399"), ("shmmni", "4096")):
        _write(proc, f"sys/kernel/{name}", value + "\n")
    _write(proc, "sys/fs/nr_open", "1048576\n")
    _write(proc, "self/mountinfo", MOUNTINFO_TEXT)
    _write(proc, "cmdline", "console=ttyS0 stack_guard_gap=1 quiet\n")
    _write(proc, "meminfo", "MemTotal:        2048000 kB\nSwapTotal:        512000 kB\n"
                            "HugePages_Total:       4\nHugePages_Free:        3\n"
                            "HugePages_Rsvd:        1\nHugePages_Surp:        0\n"
                            "Hugepagesize:       2048 kB\n")
    _write(proc, "sys/vm/nr_overcommit_hugepages", "0\n")
    _write(proc, "cpuinfo", "processor\t: 0\nflags\t\t: fpu pku ospke\n")
    if with_config:
        (proc / "config.gz").write_bytes(gzip.compress(CONFIG_TEXT.encode()))
    if with_thp:
        thp = "kernel/mm/transparent_hugepage"
        _write(sys_, f"{thp}/enabled", "[always] madvise never\n")
        _write(sys_, f"{thp}/defrag", "always defer [defer+madvise] madvise never\n")
        _write(sys_, f"{thp}/shmem_enabled", "always [within_size] advise never deny force\n")
        _write(sys_, f"{thp}/use_zero_page", "0\n")
        _write(sys_, f"{thp}/hpage_pmd_size", "2097152\n")
        _write(sys_, f"{thp}/khugepaged/scan_sleep_millisecs", "10000\n")
        _write(sys_, f"{thp}/hugepages-8kB/shmem_enabled", "always inherit [advise] never\n")
        _write(sys_, f"{thp}/hugepages-64kB/enabled", "always [inherit] madvise never\n")
        _write(sys_, f"{thp}/hugepages-2048kB/enabled", "always inherit [madvise] never\n")
        _write(sys_, f"{thp}/hugepages-2048kB/shmem_enabled", "always [inherit] advise never\n")
        _write(sys_, "kernel/debug/fault_around_bytes", "32768\n")
    return str(proc), str(sys_)


def test_read_profile_on_a_fake_tree(tmp_path):
    p = read_profile(*_fake_tree(tmp_path))
    assert (p.thp_enabled, p.thp_defrag, p.thp_shmem_enabled) == (
        "always", "defer+madvise", "within_size")
    assert (p.thp_use_zero_page, p.hpage_pmd_size) == (0, 2 << 20)
    assert [(t.size_kb, t.enabled, t.shmem_enabled) for t in p.thp_sizes] == [
        (8, None, "advise"), (64, "inherit", None), (2048, "madvise", "inherit")]
    assert p.thp_size(64).enabled == "inherit" and p.thp_size(4) is None
    assert p.sysctl == {"overcommit_memory": 2, "overcommit_ratio": 80, "overcommit_kbytes": 0,
                        "max_map_count": 65530, "mmap_min_addr": 65536, "legacy_va_layout": 1,
                        "dirty_writeback_centisecs": 0, "dirty_expire_centisecs": 3000,
                        "randomize_va_space": 0, "shmmax": 18446744073692774399,
                        "shmall": 18446744073692774399, "shmmni": 4096, "nr_open": 1048576}
    assert (p.overcommit_memory, p.mmap_min_addr, p.randomize_va_space) == (2, 65536, 0)
    assert p.config_flags == {"ANON_VMA_NAME": False, "TRANSPARENT_HUGEPAGE": True,
                              "SHMEM": True, "MEMFD_CREATE": True, "SYSVIPC": True,
                              "PER_VMA_LOCK": True}
    assert p.config["ZRAM"] == "m"
    assert p.dev_shm == {"mount_point": "/dev/shm", "source": "shm", "fstype": "tmpfs", "dev": "0:27",
                         "options": ("rw", "nosuid", "nodev", "size=65536k", "inode64"),
                         "size": 65536 * 1024}
    assert p.fault_around_bytes == 32768 and p.stack_guard_gap_pages == 1
    assert p.cmdline == "console=ttyS0 stack_guard_gap=1 quiet"
    assert (p.mem_total_kb, p.swap_total_kb, p.pkeys) == (2048000, 512000, True)
    assert p.hugetlb == {"total": 4, "free": 3, "rsvd": 1, "surp": 0, "size_kb": 2048,
                         "overcommit": 0}
    assert p.unreadable == ()


def test_read_profile_tmpdir_mount_by_longest_prefix(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    if os.path.realpath("/tmp") != "/tmp":
        pytest.skip("/tmp is a symlink here")
    p = read_profile(*_fake_tree(tmp_path))
    assert p.tmpdir == "/tmp"
    assert p.tmpdir_mount["mount_point"] == "/tmp" and p.tmpdir_mount["fstype"] == "tmpfs"
    assert p.tmpdir_mount["size"] == 1 << 30


def test_read_profile_says_what_it_could_not_read(tmp_path):
    proc, sys_ = _fake_tree(tmp_path, with_config=False, with_thp=False)
    os.unlink(os.path.join(proc, "sys/vm/overcommit_kbytes"))
    with open(os.path.join(proc, "sys/kernel/shmmni"), "w") as f:
        f.write("not a number\n")
    p = read_profile(proc, sys_, boot=str(tmp_path / "boot"))
    assert p.config is None and p.config_flags == {name: None for name in REQUIRED_CONFIG}
    assert p.thp_enabled is None and p.thp_sizes == () and p.fault_around_bytes is None
    assert p.sysctl["overcommit_kbytes"] is None and p.sysctl["shmmni"] is None
    assert p.soft_dirty is None
    assert set(p.unreadable) == {"config", "thp_enabled", "thp_defrag", "thp_shmem_enabled",
                                 "thp_use_zero_page", "hpage_pmd_size", "fault_around_bytes",
                                 "overcommit_kbytes", "shmmni", "smaps", "khugepaged_scan_sleep_ms"}


def test_config_from_boot_when_proc_has_none(tmp_path):
    """Debian's kernels have no /proc/config.gz; their config is /boot/config-RELEASE."""
    proc, sys_ = _fake_tree(tmp_path, with_config=False)
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"config-{os.uname().release}").write_text(CONFIG_TEXT + "CONFIG_MEM_SOFT_DIRTY=y\n")
    p = read_profile(proc, sys_, boot=str(boot))
    assert p.config["ZRAM"] == "m" and p.soft_dirty is True and "config" not in p.unreadable


@pytest.mark.parametrize("vmflags, expected", [("rd wr mr mw me ac sd", True), ("rd wr mr mw me ac", False)])
def test_soft_dirty_seen_in_smaps_without_a_config(tmp_path, vmflags, expected):
    """With CONFIG_MEM_SOFT_DIRTY every VMA is born VM_SOFTDIRTY, so the process's own smaps
    show "sd" (seen in a Debian 6.1 guest); without it no VMA can show it (this host)."""
    proc, sys_ = _fake_tree(tmp_path, with_config=False)
    (Path(proc) / "self" / "smaps").write_text("55d0-55d1 r--p 00000000 00:00 0\nRss: 4 kB\n"
                                         f"VmFlags: {vmflags} \n")
    assert read_profile(proc, sys_, boot=str(tmp_path / "boot")).soft_dirty is expected


def test_read_profile_without_mountinfo(tmp_path):
    proc, sys_ = _fake_tree(tmp_path)
    os.unlink(os.path.join(proc, "self/mountinfo"))
    p = read_profile(proc, sys_)
    assert p.dev_shm is None and p.tmpdir_mount is None
    assert {"mountinfo", "dev_shm", "tmpdir_mount"} <= set(p.unreadable)


# --------------------------------------------------------------------------------------------
# read_profile on this host
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live() -> KernelProfile:
    return read_profile()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_live_kernel_identity(live):
    uname = os.uname()
    assert (live.release, live.version, live.machine) == (uname.release, uname.version,
                                                          uname.machine)
    assert live.release == _read("/proc/sys/kernel/osrelease").strip() == platform.release()
    assert ".".join(map(str, live.release_tuple)) in live.release
    assert len(live.release_tuple) >= 2


def test_live_page_size_agrees_with_sysconf_and_smaps(live):
    assert live.page_size == os.sysconf("SC_PAGE_SIZE") == resource.getpagesize()
    # KernelPageSize of an ordinary mapping of this process (kB).
    stack = [e for e in read_smaps("self") if e.vma.path == "[stack]"]
    assert stack[0].fields["KernelPageSize"] * 1024 == live.page_size


def _bracketed(path: str) -> str:
    (word,) = [w for w in _read(path).split() if w.startswith("[")]
    return word.strip("[]")


def test_live_thp_modes_are_the_bracketed_words(live):
    thp = "/sys/kernel/mm/transparent_hugepage"
    if not os.path.isdir(thp):
        assert live.thp_enabled is None and "thp_enabled" in live.unreadable
        return
    assert live.thp_enabled == _bracketed(f"{thp}/enabled")
    assert live.thp_defrag == _bracketed(f"{thp}/defrag")
    assert live.thp_shmem_enabled == _bracketed(f"{thp}/shmem_enabled")
    assert live.hpage_pmd_size == int(_read(f"{thp}/hpage_pmd_size"))
    assert live.thp_use_zero_page == int(_read(f"{thp}/use_zero_page"))
    dirs = sorted(int(d[10:-2]) for d in os.listdir(thp) if re.fullmatch(r"hugepages-\d+kB", d))
    assert [t.size_kb for t in live.thp_sizes] == dirs
    for t in live.thp_sizes:
        for name in ("enabled", "shmem_enabled"):
            path = f"{thp}/hugepages-{t.size_kb}kB/{name}"
            expected = _bracketed(path) if os.path.exists(path) else None
            assert getattr(t, name) == expected, path


def test_live_sysctls_equal_the_files(live):
    for name, value in live.sysctl.items():
        where = ("vm" if name in profile._VM_SYSCTLS else
                 "fs" if name in profile._FS_SYSCTLS else "kernel")
        assert value == int(_read(f"/proc/sys/{where}/{name}")), name
    assert live.overcommit_memory in (0, 1, 2)
    assert live.randomize_va_space in (0, 1, 2)


def test_live_config_flags(live):
    if not os.path.exists("/proc/config.gz"):
        assert live.config is None and "config" in live.unreadable
        return
    text = gzip.decompress(open("/proc/config.gz", "rb").read()).decode()
    for name in REQUIRED_CONFIG:
        is_set = re.search(rf"^CONFIG_{name}=[ym]$", text, re.M) is not None
        assert live.config_flags[name] is is_set, name
    assert len(live.config) == len(re.findall(r"^CONFIG_\w+=", text, re.M))


def test_live_dev_shm_mount_agrees_with_statvfs(live):
    assert live.dev_shm["mount_point"] == "/dev/shm"
    assert live.dev_shm["fstype"] == "tmpfs"
    st = os.statvfs("/dev/shm")
    if live.dev_shm["size"] is not None:
        assert live.dev_shm["size"] == st.f_blocks * st.f_frsize
    assert ("ro" in live.dev_shm["options"]) == bool(st.f_flag & os.ST_RDONLY)


def test_live_tmpdir_mount_is_the_device_of_the_tmpdir(live):
    assert live.tmpdir == os.path.realpath(tempfile.gettempdir())
    dev = os.stat(live.tmpdir).st_dev
    mounts = parse_mountinfo(_read("/proc/self/mountinfo"))
    mine = mount_for_path(mounts, live.tmpdir)
    assert mine.dev == f"{os.major(dev)}:{os.minor(dev)}"
    assert live.tmpdir_mount["fstype"] == mine.fstype
    assert live.tmpdir_mount["mount_point"] == mine.mount_point


_LIMIT_NAMES = {"AS": "Max address space", "DATA": "Max data size",
                "MEMLOCK": "Max locked memory", "STACK": "Max stack size",
                "NOFILE": "Max open files", "FSIZE": "Max file size", "CORE": "Max core file size"}


def test_live_rlimits_agree_with_proc_self_limits(live):
    limits = _read("/proc/self/limits")
    assert set(live.rlimits) == set(_LIMIT_NAMES)
    for name, (soft, hard) in live.rlimits.items():
        match = re.search(rf"^{_LIMIT_NAMES[name]}\s+(\S+)\s+(\S+)", limits, re.M)
        expected = tuple(None if v == "unlimited" else int(v) for v in match.groups())
        assert (soft, hard) == expected, name


def test_live_fault_around_bytes_or_said_unreadable(live):
    if live.fault_around_bytes is None:
        assert "fault_around_bytes" in live.unreadable
    else:
        assert live.fault_around_bytes % live.page_size == 0
        assert "fault_around_bytes" not in live.unreadable


def test_live_profile_to_dict_is_json_and_round_trips(live):
    d = live.to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    assert back == d
    assert back["page_size"] == live.page_size
    assert back["config_flags"] == live.config_flags
    assert KernelProfile.from_dict(back) == live


def test_soft_dirty_agrees_with_what_smaps_shows(live):
    """The config's CONFIG_MEM_SOFT_DIRTY against the kernel's own output: every VMA of a
    process is born VM_SOFTDIRTY with it, and none can show "sd" without it."""
    with open("/proc/self/smaps") as f:
        shown = any("sd" in line.split()[1:] for line in f if line.startswith("VmFlags:"))
    assert live.soft_dirty is shown


def test_read_profile_hugetlb_pools(tmp_path):
    """Every hstate's pool from /sys/kernel/mm/hugepages/hugepages-<size>kB (MAP_HUGE_2MB and
    MAP_HUGE_1GB pick one: mm/hugetlb.c hstate_sizelog)."""
    proc, sys_ = _fake_tree(tmp_path)
    for size, total in ((2048, 3), (1048576, 0)):
        d = Path(sys_) / f"kernel/mm/hugepages/hugepages-{size}kB"
        d.mkdir(parents=True)
        for f, v in (("nr_hugepages", total), ("free_hugepages", total), ("resv_hugepages", 1),
                     ("surplus_hugepages", 0), ("nr_overcommit_hugepages", 2)):
            (d / f).write_text(f"{v}\n")
    p = read_profile(proc, sys_)
    assert p.hugetlb_pools == (
        {"size_kb": 2048, "total": 3, "free": 3, "rsvd": 1, "surp": 0, "overcommit": 2},
        {"size_kb": 1048576, "total": 0, "free": 0, "rsvd": 1, "surp": 0, "overcommit": 2})
