"""The kernel profile: what the model must know about the live host, as plain data.

:func:`read_profile` reads the host once (sysctls, THP modes, kernel config, mounts, rlimits) and
returns a frozen :class:`KernelProfile`; ``to_dict()`` gives JSON-ready values and
``KernelProfile.from_dict`` reads them back, so ``shmkit predict --snapshot`` can run on a saved
profile. The pure helpers (:func:`parse_thp_mode`, :func:`parse_config`, :func:`parse_mountinfo`)
take text and are tested on canned files; everything that reads takes the /proc and /sys roots.

A value that cannot be read is None and its name is listed in ``unreadable``: nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import resource
import tempfile
from dataclasses import dataclass
from typing import Any

from shmkit.damon import read_damon

__all__ = [
    "KernelProfile", "ThpSize", "Mount", "REQUIRED_CONFIG",
    "parse_thp_mode", "parse_config", "parse_mountinfo", "find_mount", "mount_for_path",
    "parse_size_option", "read_profile",
]

# Config flags the model depends on; exposed as booleans even when /proc/config.gz is absent
# (then None).
REQUIRED_CONFIG = ("ANON_VMA_NAME", "TRANSPARENT_HUGEPAGE", "SHMEM", "MEMFD_CREATE", "SYSVIPC",
                   "PER_VMA_LOCK")

# dirty_writeback_centisecs / dirty_expire_centisecs: when the flusher cleans a run's own
# dirty file pages behind a step (shmkit matrix turns the periodic pass off in a guest, and the
# record says so through these)
_VM_SYSCTLS = ("overcommit_memory", "overcommit_ratio", "overcommit_kbytes", "max_map_count",
               "mmap_min_addr", "legacy_va_layout", "dirty_writeback_centisecs",
               "dirty_expire_centisecs")
_KERNEL_SYSCTLS = ("randomize_va_space", "shmmax", "shmall", "shmmni")
_FS_SYSCTLS = ("nr_open",)   # fs/file.c sysctl_nr_open: the ceiling of RLIMIT_NOFILE
_RLIMITS = ("AS", "DATA", "MEMLOCK", "STACK", "NOFILE", "FSIZE", "CORE")
_THP = "kernel/mm/transparent_hugepage"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ThpSize:
    """Per-size THP modes (mm/huge_memory.c, sysfs hugepages-<size>kB/ since Linux 6.8)."""

    size_kb: int
    enabled: str | None                 # always | inherit | madvise | never; None: no file
    shmem_enabled: str | None = None    # always | inherit | within_size | advise | never;
                                        # None: no file (before Linux 6.11)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/PID/mountinfo (fs/proc_namespace.c show_mountinfo)."""

    mount_id: int
    parent_id: int
    dev: str                    # "major:minor"
    root: str
    mount_point: str            # octal escapes (\\040 for a space) decoded
    mount_options: tuple[str, ...]
    optional: tuple[str, ...]   # shared:N, master:N, ...
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def options(self) -> tuple[str, ...]:
        """Per-mount options, then the superblock's (where tmpfs keeps size=)."""
        return self.mount_options + tuple(o for o in self.super_options
                                          if o not in self.mount_options)


@dataclass(frozen=True)
class KernelProfile:
    """The host's kernel as the model sees it. Sizes in bytes unless the name says otherwise."""

    release: str                                    # os.uname().release, "6.18.44-fc-v657"
    version: str                                    # os.uname().version
    machine: str
    release_tuple: tuple[int, ...]                  # (6, 18, 44)
    page_size: int
    thp_enabled: str | None                         # bracketed word: always | madvise | never
    thp_defrag: str | None
    thp_shmem_enabled: str | None
    thp_use_zero_page: int | None
    hpage_pmd_size: int | None
    thp_sizes: tuple[ThpSize, ...]                  # sorted by size
    sysctl: dict[str, int | None]                   # overcommit_*, max_map_count, shm*, ...
    config: dict[str, bool | str | int] | None      # /proc/config.gz; None when absent
    config_flags: dict[str, bool | None]            # REQUIRED_CONFIG -> set?; None when unknown
    dev_shm: dict[str, Any] | None                  # source, fstype, mount_point, options, size
    tmpdir: str
    tmpdir_mount: dict[str, Any] | None             # mount_point, fstype, source
    rlimits: dict[str, tuple[int | None, int | None]]   # (soft, hard); None = RLIM_INFINITY
    fault_around_bytes: int | None
    stack_guard_gap_pages: int | None               # "stack_guard_gap=" in /proc/cmdline
    cmdline: str | None
    unreadable: tuple[str, ...] = ()
    # /proc/meminfo, kB: what the overcommit heuristic compares a request with (mm/util.c
    # __vm_enough_memory, OVERCOMMIT_GUESS: totalram_pages() + total_swap_pages)
    mem_total_kb: int | None = None
    swap_total_kb: int | None = None
    # the default hstate's pool (/proc/meminfo HugePages_*, Hugepagesize; vm.nr_overcommit_hugepages):
    # whether hugetlb_reserve_pages() can reserve pages for a MAP_HUGETLB mapping
    hugetlb: dict[str, int | None] | None = None
    # every hstate's pool (/sys/kernel/mm/hugepages/hugepages-<size>kB/*): MAP_HUGE_2MB and
    # MAP_HUGE_1GB pick one (hstate_sizelog), EINVAL when that size has no hstate
    hugetlb_pools: tuple[dict, ...] = ()
    # "ospke" in /proc/cpuinfo: arch_pkeys_enabled(), so PROT_EXEC alone gets the execute-only
    # protection key (arch/x86/mm/pkeys.c execute_only_pkey)
    pkeys: bool | None = None
    # CONFIG_MEM_SOFT_DIRTY: VM_SOFTDIRTY exists, every new VMA gets it (mmap_region) and smaps
    # prints "sd". From the config when readable, else seen in this process's own smaps.
    soft_dirty: bool | None = None
    # the host's DAMON (shmkit.damon.read_damon): each kdamond's state, operations (paddr,
    # vaddr, fvaddr), targets and schemes, and the DAMON modules; None when the kernel has none.
    # A running paddr context clears accessed bits that smaps Referenced shows
    # (model/known_differences.py "damon-accessed-bits").
    damon: dict[str, Any] | None = None
    khugepaged_scan_sleep_ms: int | None = None
    lru_gen_enabled: int | None = None

    # Convenience views of the sysctls most rules use.
    @property
    def overcommit_memory(self) -> int | None:
        return self.sysctl.get("overcommit_memory")

    @property
    def mmap_min_addr(self) -> int | None:
        return self.sysctl.get("mmap_min_addr")

    @property
    def randomize_va_space(self) -> int | None:
        return self.sysctl.get("randomize_va_space")

    def thp_size(self, size_kb: int) -> ThpSize | None:
        return next((t for t in self.thp_sizes if t.size_kb == size_kb), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: tuples become lists, dataclasses dicts."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KernelProfile":
        """The inverse of to_dict (for a profile saved with a snapshot)."""
        d = dict(d)
        d["release_tuple"] = tuple(d["release_tuple"])
        d["thp_sizes"] = tuple(ThpSize(**t) for t in d["thp_sizes"])
        d["rlimits"] = {k: tuple(v) for k, v in d["rlimits"].items()}
        d["unreadable"] = tuple(d["unreadable"])
        d["hugetlb_pools"] = tuple(dict(p) for p in d.get("hugetlb_pools") or ())
        for key in ("dev_shm", "tmpdir_mount"):
            if d[key] is not None:
                d[key] = {**d[key], "options": tuple(d[key]["options"])}
        return cls(**d)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Pure parsers
# --------------------------------------------------------------------------------------------

def parse_thp_mode(text: bytes | str) -> str:
    """The active mode of a THP sysfs file: the bracketed word of "always [madvise] never".

    mm/huge_memory.c (enabled_show, defrag_show) and mm/shmem.c (shmem_enabled_show) print
    every choice and bracket the active one. ValueError when no word is bracketed.
    """
    if isinstance(text, bytes):
        text = text.decode()
    match = re.search(r"\[([^\]]+)\]", text)
    if not match:
        raise ValueError(f"no [active] mode in {text.strip()!r}")
    return match.group(1)


_CONFIG_LINE = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")


def _config_value(raw: str) -> bool | str | int:
    if raw == "y":
        return True
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    try:
        return int(raw, 0)      # decimal or 0x... hex
    except ValueError:
        return raw              # "m", and anything new


def parse_config(text: bytes | str) -> dict[str, bool | str | int]:
    """Parse a kernel .config (as /proc/config.gz holds it, kernel/configs.c).

    ``CONFIG_X=y`` -> True, ``=m`` -> "m", ``="str"`` -> str, numbers (decimal or 0x hex) -> int.
    Keys lose the ``CONFIG_`` prefix. "# CONFIG_X is not set" and comments are left out: an
    absent key means the option is off.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    config = {}
    for line in text.splitlines():
        match = _CONFIG_LINE.fullmatch(line.strip())
        if match:
            config[match.group(1)] = _config_value(match.group(2))
    return config


def _unescape_mount(s: str) -> str:
    """Undo fs/proc_namespace.c mangle(): space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _parse_mountinfo_line(line: str) -> Mount:
    left, sep, right = line.partition(" - ")
    a, b = left.split(), right.split()
    if not sep or len(a) < 6 or len(b) < 2:
        raise ValueError(f"not a mountinfo line: {line!r}")
    return Mount(
        mount_id=int(a[0]), parent_id=int(a[1]), dev=a[2], root=_unescape_mount(a[3]),
        mount_point=_unescape_mount(a[4]), mount_options=tuple(a[5].split(",")),
        optional=tuple(a[6:]), fstype=b[0], source=_unescape_mount(b[1]),
        super_options=tuple(b[2].split(",")) if len(b) > 2 else (),
    )


def parse_mountinfo(text: bytes | str) -> list[Mount]:
    """Parse /proc/PID/mountinfo (fs/proc_namespace.c show_mountinfo), in file order."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return [_parse_mountinfo_line(line) for line in text.splitlines() if line.strip()]


def find_mount(mounts: list[Mount], mount_point: str) -> Mount | None:
    """The visible mount at exactly mount_point: the last one listed (later mounts stack on top)."""
    found = [m for m in mounts if m.mount_point == mount_point]
    return found[-1] if found else None


def _covers(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def mount_for_path(mounts: list[Mount], path: str) -> Mount | None:
    """The mount holding an absolute, resolved path: longest mount-point prefix, last listed wins."""
    best = None
    for m in mounts:
        if _covers(m.mount_point, path) and (best is None
                                             or len(m.mount_point) >= len(best.mount_point)):
            best = m
    return best


def parse_size_option(options: tuple[str, ...] | list[str]) -> int | None:
    """Bytes of a tmpfs ``size=`` option (mm/shmem.c shmem_show_options prints "size=%luk")."""
    for opt in options:
        if opt.startswith("size="):
            value = opt[5:]
            units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
            scale = units.get(value[-1:].lower())
            return int(value[:-1]) * scale if scale else int(value)
    return None


def _cmdline_int(cmdline: str, name: str) -> int | None:
    match = re.search(rf"(?:^|\s){re.escape(name)}=(\S+)", cmdline)
    return int(match.group(1), 0) if match else None


def _release_tuple(release: str) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", release)
    return tuple(int(x) for x in match.group(1).split(".")) if match else ()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

class _Reader:
    """Reads files under the /proc and /sys roots, noting what could not be read."""

    def __init__(self, procfs: str, sysfs: str, boot: str = "/boot"):
        self.procfs, self.sysfs, self.boot = procfs, sysfs, boot
        self.unreadable: list[str] = []

    def text(self, path: str, what: str) -> str | None:
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "surrogateescape")
        except OSError:
            self.unreadable.append(what)
            return None

    def proc(self, rel: str, what: str) -> str | None:
        return self.text(os.path.join(self.procfs, rel), what)

    def sys(self, rel: str, what: str) -> str | None:
        return self.text(os.path.join(self.sysfs, rel), what)

    def int_value(self, text: str | None, what: str) -> int | None:
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            self.unreadable.append(what)
            return None

    def thp_mode(self, rel: str, what: str, optional: bool = False) -> str | None:
        if optional and not os.path.exists(os.path.join(self.sysfs, rel)):
            return None
        text = self.sys(rel, what)
        try:
            return None if text is None else parse_thp_mode(text)
        except ValueError:
            self.unreadable.append(what)
            return None


def _read_sysctls(r: _Reader) -> dict[str, int | None]:
    values = {}
    for name in _VM_SYSCTLS:
        values[name] = r.int_value(r.proc(f"sys/vm/{name}", name), name)
    for name in _KERNEL_SYSCTLS:
        values[name] = r.int_value(r.proc(f"sys/kernel/{name}", name), name)
    for name in _FS_SYSCTLS:
        values[name] = r.int_value(r.proc(f"sys/fs/{name}", name), name)
    return values


def _read_thp_sizes(r: _Reader) -> tuple[ThpSize, ...]:
    root = os.path.join(r.sysfs, _THP)
    try:
        names = os.listdir(root)
    except OSError:
        return ()
    sizes = []
    for name in names:
        match = re.fullmatch(r"hugepages-(\d+)kB", name)
        if match:
            rel = f"{_THP}/{name}"
            sizes.append(ThpSize(
                size_kb=int(match.group(1)),
                # Anonymous mTHP needs order >= 2: hugepages-8kB has only shmem_enabled.
                enabled=r.thp_mode(f"{rel}/enabled", f"thp_sizes.{name}.enabled",
                                   optional=True),
                shmem_enabled=r.thp_mode(f"{rel}/shmem_enabled",
                                         f"thp_sizes.{name}.shmem_enabled", optional=True),
            ))
    return tuple(sorted(sizes, key=lambda t: t.size_kb))


def _read_config(r: _Reader, release: str | None = None) -> dict[str, bool | str | int] | None:
    """/proc/config.gz (CONFIG_IKCONFIG_PROC), else /boot/config-RELEASE as distributions
    install it (Debian's kernels have no IKCONFIG); None when neither is there."""
    path = os.path.join(r.procfs, "config.gz")
    try:
        with gzip.open(path, "rb") as f:
            return parse_config(f.read())
    except (OSError, EOFError):
        pass
    if release:
        try:
            with open(os.path.join(r.boot, f"config-{release}"), "rb") as f:
                return parse_config(f.read())
        except OSError:
            pass
    r.unreadable.append("config")
    return None


def _read_soft_dirty(r: _Reader, config: dict | None) -> bool | None:
    """CONFIG_MEM_SOFT_DIRTY. Without a readable config, this process's own smaps tell: with
    the option every VMA is born VM_SOFTDIRTY (mm/vma.c __mmap_complete, 6.1 mm/mmap.c
    mmap_region) and only a write of 4 to clear_refs clears it, which shmkit never does."""
    if config is not None:
        return config.get("MEM_SOFT_DIRTY") in (True, "m")
    text = r.proc("self/smaps", "smaps")
    if text is None:
        return None
    flags = [line.split()[1:] for line in text.splitlines() if line.startswith("VmFlags:")]
    return any("sd" in f for f in flags) if flags else None


def _config_flags(config: dict | None) -> dict[str, bool | None]:
    if config is None:
        return {name: None for name in REQUIRED_CONFIG}
    return {name: config.get(name) in (True, "m") for name in REQUIRED_CONFIG}


def _read_fault_around(r: _Reader) -> int | None:
    """mm/memory.c fault_around_bytes: a debugfs file (/sys/kernel/debug/fault_around_bytes)."""
    for rel in ("kernel/mm/fault_around_bytes", "kernel/debug/fault_around_bytes"):
        path = os.path.join(r.sysfs, rel)
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    r.unreadable.append("fault_around_bytes")
    return None


def _read_meminfo(r: _Reader) -> dict[str, int]:
    """/proc/meminfo (fs/proc/meminfo.c): "Name:   N kB" -> {Name: N}."""
    text = r.proc("meminfo", "meminfo")
    out = {}
    for line in (text or "").splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            out[name.strip()] = int(words[0])
    return out


def _read_hugetlb(r: _Reader, meminfo: dict[str, int]) -> dict[str, int | None] | None:
    if "HugePages_Total" not in meminfo:
        return None
    return {"total": meminfo.get("HugePages_Total"), "free": meminfo.get("HugePages_Free"),
            "rsvd": meminfo.get("HugePages_Rsvd"), "surp": meminfo.get("HugePages_Surp"),
            "size_kb": meminfo.get("Hugepagesize"),
            "overcommit": r.int_value(r.proc("sys/vm/nr_overcommit_hugepages",
                                             "nr_overcommit_hugepages"), "nr_overcommit_hugepages")}


def _read_hugetlb_pools(r: _Reader) -> tuple[dict, ...]:
    root = os.path.join(r.sysfs, "kernel/mm/hugepages")
    try:
        names = os.listdir(root)
    except OSError:
        return ()
    pools = []
    for name in names:
        match = re.fullmatch(r"hugepages-(\d+)kB", name)
        if not match:
            continue
        rel = f"kernel/mm/hugepages/{name}"

        def value(f, name=name, rel=rel):
            return r.int_value(r.sys(f"{rel}/{f}", f"hugetlb_pools.{name}.{f}"), f"hugetlb_pools.{name}.{f}")
        pools.append({"size_kb": int(match.group(1)), "total": value("nr_hugepages"),
                      "free": value("free_hugepages"), "rsvd": value("resv_hugepages"),
                      "surp": value("surplus_hugepages"), "overcommit": value("nr_overcommit_hugepages")})
    return tuple(sorted(pools, key=lambda p: p["size_kb"]))


def _read_pkeys(r: _Reader) -> bool | None:
    """arch/x86/kernel/cpu/proc.c prints the "ospke" flag when X86_FEATURE_OSPKE is set."""
    text = r.proc("cpuinfo", "cpuinfo")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return "ospke" in line.split(":", 1)[-1].split()
    return False


def _rlimits() -> dict[str, tuple[int | None, int | None]]:
    def plain(v: int) -> int | None:
        return None if v == resource.RLIM_INFINITY else v
    result = {}
    for name in _RLIMITS:
        soft, hard = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))
        result[name] = (plain(soft), plain(hard))
    return result


def _mount_dict(m: Mount | None) -> dict[str, Any] | None:
    if m is None:
        return None
    # dev ("major:minor", decimal) is what /proc/PID/maps shows (in hex) for a file on this mount
    return {"mount_point": m.mount_point, "source": m.source, "fstype": m.fstype, "dev": m.dev,
            "options": m.options, "size": parse_size_option(m.super_options)}


def _read_mounts(r: _Reader) -> tuple[dict | None, str, dict | None]:
    text = r.proc("self/mountinfo", "mountinfo")
    mounts = parse_mountinfo(text) if text is not None else []
    tmpdir = os.path.realpath(tempfile.gettempdir())
    dev_shm = _mount_dict(find_mount(mounts, "/dev/shm"))
    tmp_mount = _mount_dict(mount_for_path(mounts, tmpdir))
    if dev_shm is None:
        r.unreadable.append("dev_shm")
    if tmp_mount is None:
        r.unreadable.append("tmpdir_mount")
    return dev_shm, tmpdir, tmp_mount


def _hex_or_none(path: str) -> int | None:
    """A sysfs file holding a hex mask; None when it is absent (the option is not built)."""
    try:
        with open(path) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None


def _read_thp(r: _Reader) -> dict[str, Any]:
    return {
        "thp_enabled": r.thp_mode(f"{_THP}/enabled", "thp_enabled"),
        "thp_defrag": r.thp_mode(f"{_THP}/defrag", "thp_defrag"),
        "thp_shmem_enabled": r.thp_mode(f"{_THP}/shmem_enabled", "thp_shmem_enabled"),
        "thp_use_zero_page": r.int_value(r.sys(f"{_THP}/use_zero_page", "thp_use_zero_page"),
                                         "thp_use_zero_page"),
        "hpage_pmd_size": r.int_value(r.sys(f"{_THP}/hpage_pmd_size", "hpage_pmd_size"),
                                      "hpage_pmd_size"),
        "thp_sizes": _read_thp_sizes(r),
        # how often khugepaged scans (its passes collapse a run's own heaps behind a step;
        # shmkit matrix spaces them to an hour in a guest, and the record says so)
        # the multi-gen LRU's runtime switch (a hex mask, bit 0 LRU_GEN_CORE); absent without
        # CONFIG_LRU_GEN (model.objects.lru_gen_enabled)
        "lru_gen_enabled": _hex_or_none(os.path.join(r.sysfs, "kernel/mm/lru_gen/enabled")),
        "khugepaged_scan_sleep_ms": r.int_value(
            r.sys(f"{_THP}/khugepaged/scan_sleep_millisecs", "khugepaged_scan_sleep_ms"),
            "khugepaged_scan_sleep_ms"),
    }


def read_profile(procfs: str = "/proc", sysfs: str = "/sys", boot: str = "/boot") -> KernelProfile:
    """Read the kernel profile of this host (and of this process: rlimits, mount namespace)."""
    r = _Reader(procfs, sysfs, boot)
    uts = os.uname()
    config = _read_config(r, uts.release)
    cmdline = r.proc("cmdline", "cmdline")
    dev_shm, tmpdir, tmp_mount = _read_mounts(r)
    meminfo = _read_meminfo(r)
    return KernelProfile(
        release=uts.release, version=uts.version, machine=uts.machine,
        release_tuple=_release_tuple(uts.release),
        page_size=os.sysconf("SC_PAGE_SIZE"),
        **_read_thp(r),
        sysctl=_read_sysctls(r),
        config=config, config_flags=_config_flags(config),
        dev_shm=dev_shm, tmpdir=tmpdir, tmpdir_mount=tmp_mount,
        rlimits=_rlimits(),
        fault_around_bytes=_read_fault_around(r),
        stack_guard_gap_pages=_cmdline_int(cmdline, "stack_guard_gap") if cmdline else None,
        cmdline=cmdline.strip("\0\n ") if cmdline is not None else None,
        mem_total_kb=meminfo.get("MemTotal"), swap_total_kb=meminfo.get("SwapTotal"),
        hugetlb=_read_hugetlb(r, meminfo), hugetlb_pools=_read_hugetlb_pools(r), pkeys=_read_pkeys(r),
        soft_dirty=_read_soft_dirty(r, config),
        damon=read_damon(sysfs),
        unreadable=tuple(r.unreadable),
    )
