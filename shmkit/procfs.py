"""Readers and pure parsers for the /proc files shmkit observes.

Every ``parse_*`` function takes the file's text (``bytes`` or ``str``) and returns plain records,
so tests can feed canned /proc text (the habit of psutil's ``_pslinux.py``). Every ``read_*``
function takes the /proc root as ``procfs`` and does nothing but read the file and call its parser.

Bytes are decoded with ``surrogateescape`` (as :func:`os.fsdecode` does), so a path that is not
valid UTF-8 survives a parse and a :func:`render_maps_line` byte for byte.

Each parser names the kernel function that prints its file; the line formats below were checked
against Linux 6.18 on x86-64.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field

__all__ = [
    "Vma", "SmapsEntry", "Faults", "SysvSegment", "ShmEntry",
    "MAPS_PAD_WIDTH",
    "parse_maps", "parse_maps_line", "render_maps_line", "parse_smaps", "parse_stat_faults",
    "parse_sysvipc_shm", "parse_meminfo", "list_dev_shm", "parse_stat",
    "read_maps", "read_smaps", "read_stat_faults", "read_sysvipc_shm", "read_meminfo",
    "read_stat", "process_state", "process_start", "alive",
]

# fs/proc/task_mmu.c show_vma_header_prefix(): seq_setwidth(m, 25 + sizeof(void *) * 6 - 1),
# i.e. 72 on a 64-bit kernel. show_map_vma() then calls seq_pad(m, ' ') before the name, which
# fills with spaces up to that width *and then writes one more space*: a name starts at column 73.
MAPS_PAD_WIDTH = 25 + 8 * 6 - 1

_DELETED = " (deleted)"


def _text(data: bytes | str) -> str:
    """Decode /proc bytes losslessly (undecodable bytes become surrogates, as os.fsdecode)."""
    if isinstance(data, bytes):
        return data.decode("utf-8", "surrogateescape")
    return data


# --------------------------------------------------------------------------------------------
# /proc/PID/maps
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Vma:
    """One line of /proc/PID/maps (fs/proc/task_mmu.c show_map_vma)."""

    start: int
    end: int
    perms: str          # "rw-p": r, w, x, then s (VM_MAYSHARE) or p
    offset: int         # bytes (the kernel prints vm_pgoff << PAGE_SHIFT)
    dev: str            # "fe:00", as printed (major may take more than two hex digits)
    inode: int
    path: str           # "" for none; " (deleted)" is kept as the kernel appends it (d_path)
    line: str           # the exact line, without its newline

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def deleted(self) -> bool:
        return self.path.endswith(_DELETED)


def _maps_path(line: str, prefix_len: int) -> str:
    """The name part of a maps line whose header (with its trailing space) is prefix_len long.

    show_map_vma() pads the header to MAPS_PAD_WIDTH and adds one space (seq_pad); a name may
    itself begin with spaces, so the padding is cut by position, not stripped.
    """
    rest = line[prefix_len:]
    if not rest:
        return ""
    pad = max(MAPS_PAD_WIDTH - prefix_len, 0) + 1
    if rest[:pad].strip(" "):
        # Not the kernel's padding (hand-written text): fall back to stripping.
        return rest.lstrip(" ")
    return rest[pad:]


def parse_maps_line(line: str) -> Vma:
    """Parse one /proc/PID/maps line (no newline) into a Vma; ValueError on a malformed line."""
    fields = line.split(" ", 5)
    if len(fields) < 5 or "" in fields[:5]:
        return _parse_loose_maps_line(line)
    addr, perms, offset, dev, inode = fields[:5]
    prefix_len = len(addr) + len(perms) + len(offset) + len(dev) + len(inode) + 5
    return _vma(addr, perms, offset, dev, inode, _maps_path(line, prefix_len), line)


def _parse_loose_maps_line(line: str) -> Vma:
    """Fields separated by runs of blanks (hand-written text): the name is what follows them."""
    fields = line.split(None, 5)
    if len(fields) < 5:
        raise ValueError(f"not a maps line: {line!r}")
    path = fields[5] if len(fields) == 6 else ""
    return _vma(*fields[:5], path, line)


def _vma(addr: str, perms: str, offset: str, dev: str, inode: str, path: str, line: str) -> Vma:
    start, sep, end = addr.partition("-")
    if not sep or len(perms) != 4 or ":" not in dev:
        raise ValueError(f"not a maps line: {line!r}")
    return Vma(start=int(start, 16), end=int(end, 16), perms=perms, offset=int(offset, 16),
               dev=dev, inode=int(inode), path=path, line=line)


def parse_maps(text: bytes | str) -> list[Vma]:
    """Parse /proc/PID/maps, printed by fs/proc/task_mmu.c show_map_vma().

    Format: ``%08lx-%08lx %c%c%c%c %08llx %02x:%02x %lu `` then, when the VMA has a name, spaces
    up to column MAPS_PAD_WIDTH, one more space, and the name (a path from d_path, escaped for
    "\\n" only, so a path may hold spaces; or [heap], [stack], [vdso], [anon:NAME], ...).
    """
    return [parse_maps_line(line) for line in _text(text).split("\n") if line]


def render_maps_line(v: Vma) -> str:
    """Recreate the kernel's maps line for v, without newline (fs/proc/task_mmu.c show_map_vma).

    show_vma_header_prefix() prints the fields with a trailing space; when a name follows,
    seq_pad(m, ' ') pads with spaces to MAPS_PAD_WIDTH and writes one more space.
    """
    major, _, minor = v.dev.partition(":")
    head = (f"{v.start:08x}-{v.end:08x} {v.perms} {v.offset:08x} "
            f"{int(major, 16):02x}:{int(minor, 16):02x} {v.inode} ")
    if not v.path:
        return head
    return head.ljust(MAPS_PAD_WIDTH) + " " + v.path


# --------------------------------------------------------------------------------------------
# /proc/PID/smaps
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmapsEntry:
    """One VMA of /proc/PID/smaps: its maps header and its counters.

    ``fields`` holds every numeric line, in kB for lines printed with " kB" (Size, Rss, Pss,
    Shared_Clean, ..., AnonHugePages, Swap, Locked) and as plain numbers otherwise
    (THPeligible, ProtectionKey). ``vmflags`` is the VmFlags line as two-letter names.
    """

    vma: Vma
    fields: dict[str, int] = field(default_factory=dict)
    vmflags: tuple[str, ...] = ()

    @property
    def rss_bytes(self) -> int:
        return self.fields.get("Rss", 0) * 1024


_SMAPS_HEADER = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")


def _smaps_value(value: str) -> int | None:
    """'1234 kB' -> 1234, '1' -> 1; None when the value is not a number."""
    number = value.removesuffix(" kB").strip()
    try:
        return int(number)
    except ValueError:
        return None


def parse_smaps(text: bytes | str) -> list[SmapsEntry]:
    """Parse /proc/PID/smaps, printed by fs/proc/task_mmu.c show_smap().

    Each VMA is its show_map_vma() header line followed by ``Name:  value kB`` lines
    (__show_smap, SEQ_PUT_DEC), ``THPeligible:`` and ``ProtectionKey:`` as bare numbers, and
    ``VmFlags:`` (show_smap_vma_flags). Lines that are not numbers are skipped, except VmFlags.
    """
    entries: list[SmapsEntry] = []
    vma, fields, flags = None, {}, ()
    for line in _text(text).split("\n"):
        if not line:
            continue
        if _SMAPS_HEADER.match(line):
            if vma is not None:
                entries.append(SmapsEntry(vma, fields, flags))
            vma, fields, flags = parse_maps_line(line), {}, ()
            continue
        name, sep, value = line.partition(":")
        if not sep or vma is None:
            raise ValueError(f"not a smaps line: {line!r}")
        if name == "VmFlags":
            flags = tuple(value.split())
        elif (number := _smaps_value(value)) is not None:
            fields[name] = number
    if vma is not None:
        entries.append(SmapsEntry(vma, fields, flags))
    return entries


# --------------------------------------------------------------------------------------------
# /proc/PID/stat
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Faults:
    """Fault counters of /proc/PID/stat (fields 10-13, man 5 proc)."""

    minflt: int
    cminflt: int
    majflt: int
    cmajflt: int


def parse_stat_faults(text: bytes | str) -> Faults:
    """Fault counts from /proc/PID/stat, printed by fs/proc/array.c do_task_stat().

    Field 2 is ``(comm)``, and comm may hold spaces and parentheses: the fields after it start
    after the *last* ')'. Field 3 (state) is then index 0, so field N is index N - 3.
    """
    minflt, cminflt, majflt, cmajflt = (int(x) for x in parse_stat(text)[7:11])
    return Faults(minflt, cminflt, majflt, cmajflt)


def parse_stat(text: bytes | str) -> list[str]:
    """The fields of /proc/PID/stat (fs/proc/array.c do_task_stat()) from field 3 (state) on:
    field N is index N - 3, read after the *last* ')' (comm may hold spaces and parentheses)."""
    s = _text(text)
    return s[s.rindex(")") + 1:].split()


# --------------------------------------------------------------------------------------------
# /proc/sysvipc/shm
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SysvSegment:
    """One SysV shared memory segment as /proc/sysvipc/shm shows it."""

    key: int            # signed, as printed with %10d (IPC_PRIVATE is 0)
    shmid: int
    perms: int          # shm_perm.mode, printed %4o: includes SHM_DEST (0o1000), SHM_LOCKED (0o2000)
    size: int           # bytes
    cpid: int
    lpid: int
    nattch: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    atime: int
    dtime: int
    ctime: int
    rss: int | None = None    # bytes; added in Linux 4.1
    swap: int | None = None   # bytes; added in Linux 4.1

    @property
    def destroyed(self) -> bool:
        """IPC_RMID was done; the segment lives on until its last detach (SHM_DEST)."""
        return bool(self.perms & 0o1000)


def _sysv_row(line: str) -> SysvSegment:
    cols = line.split()
    if len(cols) < 14:
        raise ValueError(f"not a /proc/sysvipc/shm line: {line!r}")
    ints = [int(c) for c in cols[:16]]
    ints[2] = int(cols[2], 8)
    return SysvSegment(*ints)


def parse_sysvipc_shm(text: bytes | str) -> list[SysvSegment]:
    """Parse /proc/sysvipc/shm, printed by ipc/shm.c sysvipc_shm_proc_show().

    Format: ``%10d %10d  %4o %21lu %5u %5u  %5lu %5u %5u %5u %5u %10llu %10llu %10llu
    %21lu %21lu`` after one header line; rss and swap are missing before Linux 4.1.
    """
    lines = [line for line in _text(text).split("\n") if line.strip()]
    return [_sysv_row(line) for line in lines if not line.split()[0] == "key"]


# --------------------------------------------------------------------------------------------
# /proc/meminfo
# --------------------------------------------------------------------------------------------

def parse_meminfo(text: bytes | str) -> dict[str, int]:
    """Parse /proc/meminfo, printed by fs/proc/meminfo.c meminfo_proc_show().

    Values are as printed: kB for lines ending in " kB", plain counts for HugePages_*.
    """
    result: dict[str, int] = {}
    for line in _text(text).split("\n"):
        name, sep, value = line.partition(":")
        if sep and (number := _smaps_value(value)) is not None:
            result[name] = number
    return result


# --------------------------------------------------------------------------------------------
# /proc/vmstat
# --------------------------------------------------------------------------------------------

def parse_vmstat(text: bytes | str) -> dict[str, int]:
    """Parse /proc/vmstat (mm/vmstat.c vmstat_show(): one "name value" pair per line)."""
    result: dict[str, int] = {}
    for line in _text(text).split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            result[parts[0]] = int(parts[1])
    return result


# Kernel activity that can change a process's page tables or smaps without the process asking:
# reclaim (mm/vmscan.c shrink_folio_list -> try_to_unmap), migration and compaction
# (mm/migrate.c), THP splits and khugepaged collapses, NUMA hinting, writeback (nr_written).
BACKGROUND_COUNTERS = ("pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct",
                       "pgscan_proactive", "pgsteal_proactive", "pgscan_khugepaged",
                       "pgmigrate_success", "compact_migrate_scanned", "thp_split_page",
                       "thp_collapse_alloc", "numa_pages_migrated", "workingset_refault_file",
                       "pswpout", "drop_pagecache", "nr_written")


def background_activity(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The BACKGROUND_COUNTERS that moved between two /proc/vmstat readings."""
    return {k: after[k] - before[k] for k in BACKGROUND_COUNTERS
            if k in before and k in after and after[k] != before[k]}


# --------------------------------------------------------------------------------------------
# /dev/shm
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShmEntry:
    """One entry of /dev/shm (a POSIX shm object, as shm_open names it without its '/')."""

    name: str
    size: int
    mode: int       # permission bits only (stat.S_IMODE)
    uid: int


def list_dev_shm(root: str = "/dev/shm", prefix: str = "") -> list[ShmEntry]:
    """The entries of root whose names start with prefix, sorted by name (os.lstat of each)."""
    entries = []
    for name in sorted(os.listdir(root)):
        if not name.startswith(prefix):
            continue
        try:
            st = os.lstat(os.path.join(root, name))
        except FileNotFoundError:       # unlinked meanwhile by its owner
            continue
        entries.append(ShmEntry(name, st.st_size, stat.S_IMODE(st.st_mode), st.st_uid))
    return entries


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

def _read_pid_file(pid: int | str, name: str, procfs: str) -> bytes:
    """Read /proc/PID/NAME whole; a process that is gone raises ProcessLookupError."""
    path = os.path.join(procfs, str(pid), name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid} (reading {path})") from None
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessLookupError(errno.ESRCH, f"no process {pid} (reading {path})") from None
        raise


def read_text(path: str) -> str | None:
    """A small kernel file's text without its trailing newline (sysfs, /proc/sys); None if
    it cannot be read (absent on this kernel, no permission)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_maps(pid: int | str, procfs: str = "/proc") -> tuple[str, list[Vma]]:
    """The text of /proc/PID/maps and its VMAs."""
    text = _text(_read_pid_file(pid, "maps", procfs))
    return text, parse_maps(text)


def read_smaps(pid: int | str, procfs: str = "/proc") -> list[SmapsEntry]:
    return parse_smaps(_read_pid_file(pid, "smaps", procfs))


def read_stat_faults(pid: int | str, procfs: str = "/proc") -> Faults:
    return parse_stat_faults(_read_pid_file(pid, "stat", procfs))


def read_stat(pid: int | str, procfs: str = "/proc") -> list[str] | None:
    """parse_stat of /proc/PID/stat; None if the pid is gone."""
    try:
        return parse_stat(_read_pid_file(pid, "stat", procfs))
    except ProcessLookupError:
        return None


def process_state(pid: int | str, procfs: str = "/proc") -> str | None:
    """The state letter of /proc/PID/stat (field 3: R, S, D, T, t, Z, X, ...); None if the
    pid is gone."""
    fields = read_stat(pid, procfs)
    return None if fields is None else fields[0]


def process_start(pid: int | str, procfs: str = "/proc") -> int | None:
    """Start time in clock ticks (/proc/PID/stat field 22), None if the pid is gone."""
    fields = read_stat(pid, procfs)
    return None if fields is None else int(fields[19])


def alive(pid: int | str, start: int | None = None, procfs: str = "/proc") -> bool:
    """The process with this pid (and, given, this start time) still runs: shmkit's one
    liveness check. A zombie (state Z, or X while it is being reaped) does not: it has exited,
    its memory and SysV attachments are released (kernel/exit.c do_exit: exit_mm before
    exit_notify), and only its parent's wait() is missing, as for a SIGKILLed owner whose
    parent has not reaped it. A pid reused by a new process fails the start time."""
    fields = read_stat(pid, procfs)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def read_sysvipc_shm(procfs: str = "/proc") -> list[SysvSegment]:
    return parse_sysvipc_shm(_read_file(os.path.join(procfs, "sysvipc", "shm")))


def read_meminfo(procfs: str = "/proc") -> dict[str, int]:
    return parse_meminfo(_read_file(os.path.join(procfs, "meminfo")))


def read_vmstat(procfs: str = "/proc") -> dict[str, int]:
    return parse_vmstat(_read_file(os.path.join(procfs, "vmstat")))


def children(pid: int, procfs: str = "/proc") -> list[int]:
    """The pids of a process's children (/proc/PID/task/TID/children, every thread's)."""
    out = []
    try:
        for tid in os.listdir(f"{procfs}/{pid}/task"):
            with open(f"{procfs}/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out
