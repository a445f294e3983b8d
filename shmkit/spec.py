"""Experiment files, format 1: parse, validate, normalise (DESIGN.md, "Experiment files, format 1").

An experiment file is TOML (read with the stdlib ``tomllib``).  ``load``/``loads`` turn it into an
``Experiment``: frozen values whose step arguments are normalised (sizes in bytes, page ranges as
``(A, B)``, flags as upper-case tuples, ...).  Validation is static: no kernel is involved.  It
simulates the processes and handles through the steps so that a step naming a process that is not
alive, or a handle that its process does not hold, is refused with a message that names the file,
the step, the field and what is accepted instead.

What is *not* refused, on purpose: anything the kernel or the C library decides.  mmap with
neither or both of MAP_SHARED/MAP_PRIVATE, a zero length, an unaligned offset, a POSIX shm name
with a "/" inside, soft > hard in an ``rlimit`` step: these are valid experiments whose result is
an errno.  The experiment is there to show that errno.

Normalised values in ``Step.args`` (every field of the operation is present; None = left out):
sizes are int bytes; ``pages`` is ``(A, B)`` or None (the whole region); ``addr`` is
``("abs", int)``, ``("rel", region_handle, signed_byte_offset)`` or None; ``prot`` is "none" or
the letters in the order "rwx" ("rw", "rx", ...); flag lists are tuples of upper-case names
without prefix, in a fixed canonical order, duplicates dropped; one-of-several strings are lower
case; ``mode`` is an int; ``key`` is "private" or an int; rlimit ``soft``/``hard`` are int or
None (unlimited).  Fields with a documented default hold it (``value`` of ``file`` is 0x5a only
with fill = "byte", ``value`` of ``touch`` is 1 only with access = "write", ``name`` of ``memfd``
is its handle name, ``hard`` of ``rlimit`` is ``soft``).

Handle and process names form one namespace, unique in an experiment (``Experiment.handles`` is
keyed by name); a name is ``[A-Za-z_][A-Za-z0-9_.]*`` so that "buf+2 pages" parses.

``ExperimentBuilder`` builds the same raw tables in Python and validates them through the very same
code path; ``dump_toml``/``ExperimentBuilder.to_toml`` write TOML that ``loads`` reads back equal.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from model import flags as _flags
from model.pages import pages_of

__all__ = [
    "FORMAT",
    "OPERATIONS",
    "RLIMIT_RESOURCES",
    "Experiment",
    "ExperimentBuilder",
    "HandleInfo",
    "Setup",
    "SpecError",
    "Step",
    "dump_toml",
    "load",
    "loads",
    "parse_size",
]

FORMAT = 1
MAX_SIZE = 2**64 - 1  # the largest value a size_t / rlim_t can carry
TOML_ACCEPTED = "TOML 1.0 as in DESIGN.md"

# setrlimit(2) resources an experiment may set, by their lower-case name without RLIMIT_.
RLIMIT_RESOURCES = ("as", "core", "data", "fsize", "memlock", "nofile", "stack")

# MAP_* names (include/uapi/linux/mman.h, asm-generic/mman-common.h), in canonical order.
# The names (and, through model.resolve, the numbers) come from one table, model/flags.py.
MMAP_FLAGS = tuple(_flags.MAP)  # MAP_*
MMAP_FLAG_ALIASES = _flags.MAP_ALIASES
MSYNC_FLAGS = tuple(_flags.MS)  # MS_*
MREMAP_FLAGS = tuple(_flags.MREMAP)  # MREMAP_*
MADVICE = tuple(_flags.MADV)
SHMCTL_CMDS = tuple(_flags.SHMCTL_CMD)
# A raw number where a name is accepted: what a C long can carry (the live side passes it in a
# 64-bit register, as the kernel reads it; an int argument takes its low 32 bits).
RAW_MIN, RAW_MAX = -(2**63), 2**64 - 1
RAW_ACCEPTED = f"an integer {RAW_MIN}..2**64-1, passed to the kernel as given"
LOFF_MAX = 2**63 - 1          # loff_t: file offsets and lengths of pwrite and fadvise
WRITE_MAX = 4 << 20           # bytes one `write` step may copy
FADVICE = tuple(_flags.FADV)  # POSIX_FADV_*, by their lower-case name
MCL_FLAGS = tuple(_flags.MCL)  # MCL_* (mlockall(2))
SEAL_FLAGS = tuple(_flags.F_SEAL)  # F_SEAL_* (fcntl F_ADD_SEALS)

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_NAME_ACCEPTED = 'a name of letters, digits, "_" and "." that starts with a letter or "_"'

# Which operation creates each kind of handle (for messages that say the fix).
_CREATOR = {
    "region": 'do = "mmap" or do = "shmat"', "file": 'do = "file"', "fd": 'do = "open"',
    "shm": 'do = "shm_open"', "memfd": 'do = "memfd"', "segment": 'do = "shmget"',
    "process": 'do = "fork"',
}
# File handles, SysV segments (and POSIX names) are system-wide; the others belong to a process
# and are inherited by fork.
_SYSTEM_WIDE = frozenset({"file", "segment"})


# --------------------------------------------------------------------------------------------
# Errors


class SpecError(Exception):
    """A bad experiment file, in one line.

    ``str(e)`` is ``"FILE: step N (do=OP): FIELD: PROBLEM; accepted: ACCEPTED"``; for the setup
    table ``"FILE: setup: FIELD: ..."``, at top level ``"FILE: FIELD: ..."``, and for TOML syntax
    ``"FILE: line L, column C: malformed TOML (MSG); accepted: ..."``.  ``section`` holds "setup"
    or "line L, column C" in the last two cases.  Pickles intact (``__reduce__``), so a worker's
    error reaches its parent.
    """

    def __init__(self, file: str, step: int | None = None, op: str | None = None,
                 field: str | None = None, problem: str = "", accepted: str = "",
                 section: str | None = None) -> None:
        self.file = file
        self.step = step
        self.op = op
        self.field = field
        self.problem = problem
        self.accepted = accepted
        self.section = section
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [str(self.file)]
        if self.step is not None:
            op = "?" if self.op is None else _one_line(self.op)
            parts.append(f"step {self.step} (do={op})")
        elif self.section is not None:
            parts.append(self.section)
        if self.field is not None:
            parts.append(_one_line(self.field))
        parts.append(self.problem)
        return ": ".join(parts) + f"; accepted: {self.accepted}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):
        return (type(self), (self.file, self.step, self.op, self.field, self.problem,
                             self.accepted, self.section))


def _one_line(text: str) -> str:
    """A key or operation name from the file, quoted when it holds control characters."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return _toml_str(text)
    return text


def _quote(text: str) -> str:
    """'name' for a message, or a TOML string when the name holds control characters."""
    one = _one_line(text)
    return f"'{text}'" if one == text else one


class _Problem(ValueError):
    """A field's problem before the file/step context is known.  ``subfield`` refines the field
    name (``rlimits.as``).  Public helpers such as ``parse_size`` raise it as a ValueError."""

    def __init__(self, problem: str, accepted: str, subfield: str | None = None) -> None:
        super().__init__(f"{problem}; accepted: {accepted}")
        self.problem = problem
        self.accepted = accepted
        self.subfield = subfield


def _show(value: Any, limit: int = 60) -> str:
    """A TOML value for a message: its type name and its TOML spelling, on one line."""
    if isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, int):
        kind = "integer"
    elif isinstance(value, float):
        kind = "float"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, (list, tuple)):
        kind = "array"
    elif isinstance(value, dict):
        kind = "table"
    else:
        kind = type(value).__name__  # TOML dates and times
    try:
        text = _toml_value(value)
    except TypeError:
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{kind} {text}"


def _suggest(word: Any, choices) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _a(kind: str) -> str:
    return "an" if kind in ("fd", "shm") else "a"


def _names(names) -> str:
    return ", ".join(names)


# --------------------------------------------------------------------------------------------
# Sizes

_SIZE_RE = re.compile(
    r"\s*(?P<neg>-)?\s*(?P<num>0[xX][0-9A-Fa-f]+(?:_[0-9A-Fa-f]+)*|\d+(?:_\d+)*(?:\.\d+(?:_\d+)*)?)"
    r"\s*(?P<unit>[A-Za-z]+)?\s*\Z"
)
_UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "k": 2**10, "m": 2**20, "g": 2**30}
SIZE_ACCEPTED = ('a size: an integer number of bytes, or a string "N B|KiB|MiB|GiB|TiB|page|pages"'
                 ' (N: digits, 0x-hex, or a decimal that gives whole bytes; "_" between digits;'
                 ' "N" alone is bytes; k, m, g are KiB, MiB, GiB)')


def _page_size_default() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def parse_size(value: Any, page_size: int | None = None) -> int:
    """Bytes from an int (bytes) or a string "N B|KiB|MiB|GiB|TiB|page|pages".

    N may be decimal digits, "0x" hex, or a decimal fraction as long as the result is whole bytes
    ("1.5 pages" is fine, "1.5 B" is not); "_" may separate digits.  Raises ValueError (with a
    ``problem`` and an ``accepted`` attribute) for negative, fractional, impossible (> 2**64-1)
    or unparseable sizes.
    """
    if page_size is None:
        page_size = _page_size_default()
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Problem(f"expected a size, got {_show(value)}", SIZE_ACCEPTED)
    if isinstance(value, int):
        size = Fraction(value)
    else:
        m = _SIZE_RE.match(value)
        if not m:
            raise _Problem(f"cannot read {_show(value)} as a size", SIZE_ACCEPTED)
        num = m["num"].replace("_", "")
        size = Fraction(int(num, 16)) if num[:2].lower() == "0x" else Fraction(num)
        unit = (m["unit"] or "b").lower()
        if unit in ("page", "pages"):
            size *= page_size
        elif unit in _UNITS:
            size *= _UNITS[unit]
        else:
            raise _Problem(f"unknown unit \"{m['unit']}\" in {_show(value)}", SIZE_ACCEPTED)
        if m["neg"]:
            size = -size
    if size < 0:
        raise _Problem(f"negative size {_show(value)}", SIZE_ACCEPTED)
    if size.denominator != 1:
        raise _Problem(f"{_show(value)} is not a whole number of bytes ({float(size)})",
                       SIZE_ACCEPTED)
    if size > MAX_SIZE:
        raise _Problem(f"impossible size {_show(value)}: more than 2**64-1 bytes", SIZE_ACCEPTED)
    return int(size)


# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class HandleInfo:
    """What validation learnt about a name: its kind, the step that created it (0 for "main"),
    the process that created it (for a process: its parent; "main" for itself), and for regions
    and segments their length in pages when known at creation."""

    kind: str
    step: int
    proc: str
    pages: int | None = None


@dataclass(frozen=True)
class Setup:
    aslr: bool = True
    layout: str = "topdown"
    # (resource, soft, hard), sorted by resource; None = unlimited (RLIM_INFINITY).
    rlimits: tuple[tuple[str, int | None, int | None], ...] = ()
    user: str | None = None
    # the SysV limits of the run's own IPC namespace (hermetic mode only, shmkit.isolation);
    # None: the fresh namespace's defaults (ipc/shm.c shm_init_ns)
    shmmax: int | None = None
    shmall: int | None = None
    shmmni: int | None = None


@dataclass(frozen=True)
class Step:
    """One step.  ``args`` holds every field of the operation except ``do`` and ``in``, normalised,
    sorted by name; a field the file left out holds its default, or None when it has none (for
    ``pages``: the whole region; for ``soft``/``hard`` of ``rlimit``, None means unlimited)."""

    index: int
    do: str
    proc: str
    args: tuple[tuple[str, Any], ...]
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.args:
            if key == name:
                return value
        return default

    @property
    def arg(self) -> Mapping[str, Any]:
        return types.MappingProxyType(dict(self.args))


class _FrozenMap(Mapping):
    """A read-only mapping that hashes and pickles (MappingProxyType does neither)."""

    __slots__ = ("_d",)

    def __init__(self, items=()) -> None:
        self._d = dict(items)

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {v!r}' for k, v in self._d.items())}}}"

    def __reduce__(self):
        return (_FrozenMap, (self._d,))


@dataclass(frozen=True)
class Experiment:
    path: str
    about: str
    setup: Setup
    steps: tuple[Step, ...]
    # Every name in the experiment (processes included, "main" at step 0), in creation order.
    handles: Mapping[str, HandleInfo] = field(default_factory=_FrozenMap)
    # The page size that sizes in pages were converted with.
    page_size: int | None = None


# --------------------------------------------------------------------------------------------
# Field kinds: each parses one TOML value into its normalised form or raises _Problem.


class _Kind:
    accepted = ""

    def parse(self, value: Any, page_size: int) -> Any:
        raise NotImplementedError


class _Str(_Kind):
    def __init__(self, nonempty: bool = True) -> None:
        self.nonempty = nonempty
        self.accepted = "a non-empty string" if nonempty else "a string"

    def parse(self, value, page_size):
        if not isinstance(value, str):
            raise _Problem(f"expected a string, got {_show(value)}", self.accepted)
        if self.nonempty and not value:
            raise _Problem("empty string", self.accepted)
        return value


class _Bool(_Kind):
    accepted = "true or false"

    def parse(self, value, page_size):
        if not isinstance(value, bool):
            raise _Problem(f"expected a boolean, got {_show(value)}", self.accepted)
        return value


class _Choice(_Kind):
    """One string among a few, any case; normalised to lower case."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.accepted = "one of " + _names(choices)

    def parse(self, value, page_size):
        if not isinstance(value, str):
            raise _Problem(f"expected a string, got {_show(value)}", self.accepted)
        if value.lower() not in self.choices:
            raise _Problem(f"unknown value {_show(value)}{_suggest(value, self.choices)}",
                           self.accepted)
        return value.lower()


class _ChoiceOrRaw(_Choice):
    """One of several names (lower case), or a raw integer passed to the kernel as given."""

    def __init__(self, *choices: str) -> None:
        super().__init__(*choices)
        self.accepted = self.accepted + ", or " + RAW_ACCEPTED

    def parse(self, value, page_size):
        if isinstance(value, int) and not isinstance(value, bool):
            return _raw_int(value, "value", self.accepted)
        return super().parse(value, page_size)


class _Byte(_Kind):
    accepted = "an integer 0..255 (such as 7 or 0x5a)"

    def parse(self, value, page_size):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Problem(f"expected an integer, got {_show(value)}", self.accepted)
        if not 0 <= value <= 255:
            raise _Problem(f"byte value {value} out of range", self.accepted)
        return value


class _Seconds(_Kind):
    accepted = "a number of seconds from 0 to 10 (such as 0.2)"

    def parse(self, value, page_size):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Problem(f"expected a number of seconds, got {_show(value)}", self.accepted)
        if not 0 <= value <= 10:
            raise _Problem(f"{value} seconds out of range", self.accepted)
        return float(value)


class _Size(_Kind):
    accepted = SIZE_ACCEPTED

    def parse(self, value, page_size):
        return parse_size(value, page_size)


def _raw_int(value: Any, what: str, accepted: str) -> int:
    """A raw number given where a name is accepted: any value a C long can carry."""
    if not RAW_MIN <= value <= RAW_MAX:
        raise _Problem(f"{what} {value} does not fit in 64 bits", accepted)
    return value


class _Prot(_Kind):
    """Letters or names, normalised to "rw"-style letters; an integer is a raw prot (kept an int:
    mm/mprotect.c do_mprotect_pkey and mm/mmap.c do_mmap decide on unknown bits)."""

    accepted = ('"none", or letters from r, w, x in any order ("r", "rw", "rx", "rwx", "rw-"), '
                'or a list of "read", "write", "exec", or a raw integer such as 7')
    _LIST = {"read": "r", "write": "w", "exec": "x", "prot_read": "r", "prot_write": "w",
             "prot_exec": "x"}

    def parse(self, value, page_size):
        letters: set[str] = set()
        if isinstance(value, int) and not isinstance(value, bool):
            return _raw_int(value, "prot", self.accepted)
        if isinstance(value, str):
            text = value.strip().lower()
            if text not in ("none", "prot_none"):
                for ch in text:
                    if ch not in "rwx-":
                        raise _Problem(f"unknown protection {_show(value)}", self.accepted)
                    if ch != "-":
                        letters.add(ch)
        elif isinstance(value, (list, tuple)):
            for item in value:
                name = item.strip().lower() if isinstance(item, str) else None
                if name in ("none", "prot_none") and len(value) == 1:
                    continue
                if name not in self._LIST:
                    raise _Problem(f"unknown protection {_show(item)} in the list", self.accepted)
                letters.add(self._LIST[name])
        else:
            raise _Problem(f"expected a string or an array, got {_show(value)}", self.accepted)
        return "".join(c for c in "rwx" if c in letters) or "none"


class _Flags(_Kind):
    """A list of flag names without their prefix, any case, and raw integers (passed on as
    given); normalised to an upper-case tuple in the canonical order, then the integers in the
    order given.  Impossible combinations and unknown bits are the kernel's to refuse."""

    def __init__(self, prefix: str, names: tuple[str, ...], aliases: dict | None = None) -> None:
        self.prefix = prefix
        self.names = names
        self.aliases = aliases or {}
        self.accepted = (f"a list of {prefix}* names without the prefix, any case, and raw integers:"
                         " " + _names(n.lower() for n in names))

    def parse(self, value, page_size):
        if not isinstance(value, (list, tuple)):
            raise _Problem(f"expected an array of names, got {_show(value)}", self.accepted)
        found = set()
        raw: list[int] = []
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                item = _raw_int(item, "flag value", self.accepted)
                if item not in raw:
                    raw.append(item)
                continue
            if not isinstance(item, str):
                raise _Problem(f"expected a flag name or an integer, got {_show(item)} in the list",
                               self.accepted)
            name = item.strip().upper()
            if name.startswith(self.prefix):
                name = name[len(self.prefix):]
            name = self.aliases.get(name, name)
            if name not in self.names:
                raise _Problem(f"unknown flag {_show(item)}{_suggest(item, self.names)}",
                               self.accepted)
            found.add(name)
        return tuple(n for n in self.names if n in found) + tuple(raw)


class _Mode(_Kind):
    accepted = ('permission bits: an integer 0..0o7777 (in TOML: 0o600 or 384) or an octal string'
                ' such as "0600" or "0o600"')

    def parse(self, value, page_size):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Problem(f"expected permission bits, got {_show(value)}", self.accepted)
        if isinstance(value, str):
            m = re.fullmatch(r"\s*(?:0[oO])?([0-7]+)\s*", value)
            if not m:
                raise _Problem(f"not an octal mode: {_show(value)}", self.accepted)
            value = int(m[1], 8)
        if not 0 <= value <= 0o7777:
            raise _Problem(f"mode {oct(value)} out of range", self.accepted)
        return value


class _Key(_Kind):
    accepted = '"private" (IPC_PRIVATE) or an integer key -2**31..2**32-1'

    def parse(self, value, page_size):
        if isinstance(value, str) and value.strip().lower() in ("private", "ipc_private"):
            return "private"
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Problem(f"expected \"private\" or an integer, got {_show(value)}",
                           self.accepted)
        if not -(2**31) <= value <= 2**32 - 1:
            raise _Problem(f"key {value} does not fit in a key_t", self.accepted)
        return value


class _Limit(_Kind):
    accepted = '"unlimited", or an integer, or a size string (such as "64 KiB")'

    def parse(self, value, page_size):
        if isinstance(value, str) and value.strip().lower() in ("unlimited", "infinity"):
            return None
        try:
            return parse_size(value, page_size)
        except _Problem as e:
            raise _Problem(e.problem.replace("expected a size", "expected a limit"),
                           self.accepted) from None


class _Resource(_Kind):
    accepted = "one of " + _names(RLIMIT_RESOURCES) + " (any case, RLIMIT_ prefix optional)"

    def parse(self, value, page_size):
        if not isinstance(value, str):
            raise _Problem(f"expected a resource name, got {_show(value)}", self.accepted)
        return _resource_name(value, self.accepted)


def _resource_name(text: str, accepted: str) -> str:
    name = text.strip().lower()
    if name.startswith("rlimit_"):
        name = name[len("rlimit_"):]
    if name not in RLIMIT_RESOURCES:
        raise _Problem(f"unknown resource {_toml_str(text)}{_suggest(name, RLIMIT_RESOURCES)}",
                       accepted)
    return name


class _Name(_Kind):
    """A handle name: a new one (``new``) or a reference to one of ``handle_kind``."""

    def __init__(self, handle_kind: str, new: bool) -> None:
        self.handle_kind = handle_kind
        self.new = new
        self.accepted = (f"a new {handle_kind} name: {_NAME_ACCEPTED}" if new
                         else f"{_a(handle_kind)} {handle_kind} handle")

    def parse(self, value, page_size):
        if not isinstance(value, str):
            raise _Problem(f"expected {_a(self.handle_kind)} {self.handle_kind} name (a string), "
                           f"got {_show(value)}",
                           self.accepted)
        if not _NAME_RE.match(value):
            raise _Problem(f"invalid name {_show(value)}", _NAME_ACCEPTED)
        return value


class _NameOrRaw(_Name):
    """A handle of handle_kind, or a raw integer id passed to the kernel as given (shmat/shmctl
    segment = -1: the kernel's own answer to a shmid it does not know)."""

    def __init__(self, handle_kind: str) -> None:
        super().__init__(handle_kind, False)
        self.accepted = f"{_a(handle_kind)} {handle_kind} handle, or {RAW_ACCEPTED}"

    def parse(self, value, page_size):
        if isinstance(value, int) and not isinstance(value, bool):
            return _raw_int(value, f"raw {self.handle_kind} id", self.accepted)
        return super().parse(value, page_size)


_ADDR_ACCEPTED = ('an address: an integer, a hex string "0x7f...", or "REGION", "REGION+N pages",'
                  ' "REGION-N pages" (N: a size such as 2, "2 pages" or "2 MiB") with REGION'
                  ' a region handle')
_ADDR_REL_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:([+-])(.*))?\Z")


class _Addr(_Kind):
    """Normalised to ("abs", int) or ("rel", region_handle, signed_byte_offset)."""

    accepted = _ADDR_ACCEPTED

    def parse(self, value, page_size):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Problem(f"expected an address, got {_show(value)}", self.accepted)
        if isinstance(value, int):
            if not 0 <= value <= MAX_SIZE:
                raise _Problem(f"address {value} out of range 0..2**64-1", self.accepted)
            return ("abs", value)
        text = value.strip()
        if re.fullmatch(r"0[xX][0-9A-Fa-f]+(?:_[0-9A-Fa-f]+)*|\d+(?:_\d+)*", text):
            number = int(text.replace("_", ""), 0 if text[:2].lower() == "0x" else 10)
            if number > MAX_SIZE:
                raise _Problem(f"address {text} out of range 0..2**64-1", self.accepted)
            return ("abs", number)
        m = _ADDR_REL_RE.match(text)
        if not m:
            raise _Problem(f"cannot read {_show(value)} as an address", self.accepted)
        offset = 0
        if m[2]:
            try:
                offset = parse_size(m[3], page_size)
            except _Problem as e:
                raise _Problem(f"bad offset in {_show(value)}: {e.problem}",
                               self.accepted) from None
            if m[2] == "-":
                offset = -offset
        return ("rel", m[1], offset)


class _Pages(_Kind):
    """A half-open page range "A..B" or a page number N (= N..N+1); normalised to (A, B)."""

    accepted = ('a half-open page range "A..B" with A <= B inside the region ("A..A" is empty:'
                ' a zero length), or a page number N (= "N..N+1"); leave it out for the whole'
                ' region')

    def parse(self, value, page_size):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Problem(f"expected a page range, got {_show(value)}", self.accepted)
        if isinstance(value, int):
            a, b = value, value + 1
        else:
            m = re.fullmatch(r"\s*(\d+(?:_\d+)*)\s*(?:\.\.\s*(\d+(?:_\d+)*)\s*)?", value)
            if not m:
                raise _Problem(f"cannot read {_show(value)} as a page range", self.accepted)
            a = int(m[1].replace("_", ""))
            b = int(m[2].replace("_", "")) if m[2] is not None else a + 1
        if a < 0:
            raise _Problem(f"negative page {a}", self.accepted)
        if a > b:
            raise _Problem(f"reversed page range {a}..{b}", self.accepted)
        return (a, b)


@dataclass(frozen=True)
class _Field:
    name: str
    kind: _Kind
    required: bool = False
    default: Any = None


def _f(name, kind, required=False, default=None) -> _Field:
    return _Field(name, kind, required, default)


def _region_fields(addr: str = "addr", length: str | None = "length") -> list[_Field]:
    """A range: a region handle (with `pages`), or an address and a byte length (`addr`,
    `length`; mremap calls them old_addr, old_length: its addr and length are the new ones)."""
    out = [_f("region", _Name("region", False)), _f("pages", _Pages()), _f(addr, _ADDR)]
    return out + ([_f(length, _SIZE)] if length else [])


# range field names of each operation that takes a range: (address field, length field)
RANGE_FIELDS = {op: ("addr", "length") for op in (
    "munmap", "mprotect", "madvise", "msync", "mlock", "munlock", "touch", "read")}
RANGE_FIELDS.update(mremap=("old_addr", "old_length"), shmdt=("addr", None))


_BOOL = _Bool()
_SIZE = _Size()
_ADDR = _Addr()
_PROT = _Prot()
_MODE = _Mode()

# The operations, their fields in the order they are checked (and written back).
OPERATIONS: dict[str, tuple[_Field, ...]] = {
    op: tuple(fields) for op, fields in {
        "file": [_f("name", _Name("file", True), True), _f("size", _SIZE, True),
                 _f("fill", _Choice("zero", "random", "byte"), default="zero"),
                 _f("value", _Byte()),  # default 0x5a with fill = "byte"
                 _f("on", _Choice("disk", "tmpfs"), default="disk"),
                 _f("cache", _Choice("warm", "cold"), default="warm")],
        "open": [_f("as", _Name("fd", True), True), _f("file", _Name("file", False), True),
                 _f("mode", _Choice("r", "w", "rw"), default="rw")],
        "evict": [_f("file", _Name("file", False), True)],
        "mmap": [_f("as", _Name("region", True), True), _f("length", _SIZE, True),
                 _f("prot", _PROT, True),
                 _f("flags", _Flags("MAP_", MMAP_FLAGS, MMAP_FLAG_ALIASES), True),
                 _f("file", _Name("file", False)), _f("fd", _Name("fd", False)),
                 _f("shm", _Name("shm", False)), _f("memfd", _Name("memfd", False)),
                 _f("offset", _SIZE, default=0), _f("addr", _ADDR)],
        "munmap": _region_fields(),
        "mprotect": _region_fields() + [_f("prot", _PROT, True)],
        "madvise": _region_fields() + [_f("advice", _ChoiceOrRaw(*MADVICE), True)],
        "msync": _region_fields() + [_f("flags", _Flags("MS_", MSYNC_FLAGS),
                                        default=("SYNC",))],
        "mlock": _region_fields() + [_f("onfault", _BOOL, default=False)],
        "munlock": _region_fields(),
        "mremap": _region_fields("old_addr", "old_length") + [_f("length", _SIZE, True),
                                      _f("flags", _Flags("MREMAP_", MREMAP_FLAGS), default=()),
                                      _f("addr", _ADDR)],
        "touch": _region_fields() + [_f("access", _Choice("read", "write"), default="read"),
                                     _f("value", _Byte())],  # default 1 with access = "write"
        "read": _region_fields(),
        "shm_open": [_f("as", _Name("shm", True), True), _f("name", _Str(nonempty=False), True),
                     _f("create", _BOOL, default=False), _f("excl", _BOOL, default=False),
                     _f("truncate", _BOOL, default=False),
                     _f("access", _Choice("r", "rw"), default="rw"), _f("size", _SIZE),
                     _f("mode", _MODE, default=0o600)],
        "shm_unlink": [_f("name", _Str(nonempty=False), True)],
        # truncate(2) of a file by name, or ftruncate(2) of an open handle (fd, shm, memfd)
        "truncate": [_f("file", _Name("file", False)), _f("fd", _Name("fd", False)),
                     _f("shm", _Name("shm", False)), _f("memfd", _Name("memfd", False)),
                     _f("size", _SIZE, True)],
        "memfd": [_f("as", _Name("memfd", True), True),
                  _f("name", _Str(nonempty=False)),  # default: the handle name
                  _f("size", _SIZE, default=0),
                  _f("sealing", _BOOL, default=False)],  # MFD_ALLOW_SEALING
        # pwrite(2) of `length` bytes of `value` at `offset` (a file by name is opened O_RDWR)
        "write": [_f("file", _Name("file", False)), _f("fd", _Name("fd", False)),
                  _f("shm", _Name("shm", False)), _f("memfd", _Name("memfd", False)),
                  _f("length", _SIZE, True), _f("offset", _SIZE, default=0),
                  _f("value", _Byte(), default=1)],
        # posix_fadvise(2); length 0 means "to the end of the file"
        "fadvise": [_f("file", _Name("file", False)), _f("fd", _Name("fd", False)),
                    _f("shm", _Name("shm", False)), _f("memfd", _Name("memfd", False)),
                    _f("advice", _Choice(*FADVICE), True), _f("offset", _SIZE, default=0),
                    _f("length", _SIZE, default=0)],
        # fcntl(F_ADD_SEALS) of an open handle
        "seal": [_f("fd", _Name("fd", False)), _f("shm", _Name("shm", False)),
                 _f("memfd", _Name("memfd", False)),
                 _f("seals", _Flags("F_SEAL_", SEAL_FLAGS), True)],
        "mlockall": [_f("flags", _Flags("MCL_", MCL_FLAGS), True)],
        "munlockall": [],
        # a pause; with a file, first until its disk has no read in flight (bounded)
        "settle": [_f("file", _Name("file", False)), _f("seconds", _Seconds(), default=0.2)],
        "shmget": [_f("as", _Name("segment", True), True), _f("size", _SIZE, True),
                   _f("key", _Key(), default="private"), _f("create", _BOOL, default=False),
                   _f("excl", _BOOL, default=False), _f("mode", _MODE, default=0o600)],
        "shmat": [_f("as", _Name("region", True), True),
                  _f("segment", _NameOrRaw("segment"), True),
                  _f("readonly", _BOOL, default=False), _f("addr", _ADDR),
                  _f("rnd", _BOOL, default=False), _f("remap", _BOOL, default=False),
                  _f("exec", _BOOL, default=False)],
        "shmdt": _region_fields(length=None),
        "shmctl": [_f("segment", _NameOrRaw("segment"), True),
                   _f("cmd", _ChoiceOrRaw(*SHMCTL_CMDS), True),
                   _f("mode", _MODE)],  # IPC_SET: the new permission bits
        "fork": [_f("child", _Name("process", True), True)],
        "exit": [],
        "rlimit": [_f("resource", _Resource(), True), _f("soft", _Limit(), True),
                   _f("hard", _Limit())],  # default: soft
    }.items()
}
_MMAP_SOURCES = ("file", "fd", "shm", "memfd")
_OPS_ACCEPTED = "one of " + _names(OPERATIONS)


# --------------------------------------------------------------------------------------------
# Validation: the handles simulated through the steps


@dataclass
class _Proc:
    name: str
    forked_at: int  # 0 for main
    handles: set[str] = field(default_factory=set)
    region_pages: dict[str, int | None] = field(default_factory=dict)
    exited_at: int | None = None
    parent: str | None = None


class _State:
    def __init__(self, future: dict[str, tuple[int, Any]]) -> None:
        self.procs: dict[str, _Proc] = {"main": _Proc("main", 0)}
        self.names: dict[str, HandleInfo] = {"main": HandleInfo("process", 0, "main")}
        self.created_by: dict[str, str] = {"main": "the start"}
        self.segment_pages: dict[str, int | None] = {}
        self.future = future  # name -> first step that creates it, for "created later" hints

    def ancestors(self, proc: str) -> list[str]:
        out = []
        while (proc := self.procs[proc].parent) is not None:
            out.append(proc)
        return out

    def live(self) -> list[str]:
        return [p.name for p in self.procs.values() if p.exited_at is None]

    def known(self, kind: str, proc: str) -> str:
        if kind in _SYSTEM_WIDE:
            names = [n for n, i in self.names.items() if i.kind == kind]
            where = f"{kind} handles"
        else:
            held = self.procs[proc].handles
            names = [n for n, i in self.names.items() if i.kind == kind and n in held]
            where = f"{kind} handles of process '{proc}'"
        if not names:
            owner = "none exists" if kind in _SYSTEM_WIDE else f"process '{proc}' has none"
            return f"{_a(kind)} {kind} handle ({owner} yet: create one with {_CREATOR[kind]})"
        return f"{where}: {_names(names)}"

    def resolve(self, name: str, kind: str, proc: str, index: int) -> None:
        info = self.names.get(name)
        if info is None:
            later = self.future.get(name, (0, None))[0]
            hint = f" (it is created later, at step {later})" if later > index else ""
            raise _Problem(f"unknown {kind} handle '{name}'{hint}", self.known(kind, proc))
        if info.kind != kind:
            raise _Problem(f"handle '{name}' is {_a(info.kind)} {info.kind} handle (created by "
                           f"{self.created_by[name]} at step {info.step}), not "
                           f"{_a(kind)} {kind} handle",
                           self.known(kind, proc))
        if kind in _SYSTEM_WIDE or name in self.procs[proc].handles:
            return
        me = self.procs[proc]
        if 0 < me.forked_at < info.step and info.proc in self.ancestors(proc):
            why = f"it was created at step {info.step}, after '{proc}' was forked at step " \
                  f"{me.forked_at}"
        else:
            why = f"it was created at step {info.step} in '{info.proc}', and a process holds " \
                  f"only the handles it created or had when it was forked"
        raise _Problem(f"handle '{name}' belongs to process '{info.proc}', not '{proc}' ({why})",
                       self.known(kind, proc))

    def check_new(self, name: str, kind: str) -> None:
        info = self.names.get(name)
        if info is None:
            return
        if info.kind == "process":
            what = "the first process" if name == "main" else \
                f"the process forked at step {info.step}"
        else:
            what = f"the {info.kind} handle created at step {info.step} in process '{info.proc}'"
        raise _Problem(f"name '{name}' is already used (by {what})",
                       f"a new {kind} name: handle and process names are unique in an experiment")

    def add(self, name: str, kind: str, index: int, op: str, proc: str,
            pages: int | None = None) -> None:
        self.names[name] = HandleInfo(kind, index, proc, pages)
        self.created_by[name] = f'do = "{op}"'
        if kind == "process":
            parent = self.procs[proc]
            self.procs[name] = _Proc(name, index, set(parent.handles), dict(parent.region_pages),
                                     parent=proc)
        elif kind == "segment":
            self.segment_pages[name] = pages
        elif kind not in _SYSTEM_WIDE:
            self.procs[proc].handles.add(name)
            if kind == "region":
                self.procs[proc].region_pages[name] = pages


def _pages_of(size: int | None, page_size: int) -> int | None:
    """Pages of a region of `size` bytes (whole pages, as the kernel maps them: model/pages.py),
    None when unknown: a zero length, or one whose PAGE_ALIGN wraps to 0 (the call fails)."""
    return (pages_of(size, page_size) or None) if size else None


class _StepCtx:
    def __init__(self, file: str, index: int, op: str | None) -> None:
        self.file, self.index, self.op = file, index, op

    def err(self, fieldname: str | None, problem: str, accepted: str) -> SpecError:
        return SpecError(self.file, self.index, self.op, fieldname, problem, accepted)

    def wrap(self, fieldname: str, p: _Problem) -> SpecError:
        return self.err(p.subfield or fieldname, p.problem, p.accepted)


def _future_names(steps: list) -> dict[str, tuple[int, Any]]:
    """Each name some step creates -> (that step, its do), to tell "not yet" from "never"."""
    future: dict[str, tuple[int, Any]] = {}
    for i, raw in enumerate(steps, 1):
        if not isinstance(raw, dict):
            continue
        op = raw.get("do")
        key = {"file": "name", "fork": "child"}.get(op, "as") if isinstance(op, str) else "as"
        name = raw.get(key)
        if isinstance(name, str):
            future.setdefault(name, (i, op))
    return future


def _check_range(ctx: _StepCtx, op: str, raw: dict, vals: dict, regions: str) -> None:
    """A range is a region (with pages), or an address with a byte length: exactly one of the
    two. touch and read at an address without a length access the one byte there.
    regions: the region handles the process holds (the accepted values of region)."""
    addr_f, len_f = RANGE_FIELDS[op]
    by_addr = (f"{addr_f}" + (f" and {len_f}" if len_f else "")
               + ' (an address: "0x7f...", "REGION+N", "REGION-N", N in bytes, "4k" or "2 pages")')
    accepted = f"region (and pages), or {by_addr}"
    if "region" not in raw and addr_f not in raw:
        raise ctx.err("region", "missing required field", f"{regions}; or {by_addr}")
    if "region" in raw and addr_f in raw:
        raise ctx.err("region", f"give exactly one of region, {addr_f} (both given)", accepted)
    if len_f is None:
        return
    if "region" in raw and len_f in raw:
        raise ctx.err(len_f, f"{len_f} goes with {addr_f}, not with region", accepted)
    if addr_f in raw and len_f not in raw:
        if op in ("touch", "read"):
            vals[len_f] = 1
        else:
            raise ctx.err(len_f, f"missing: {addr_f} needs a byte length",
                          'a size in bytes, "4k" or "2 pages" (0 allowed)')


def _validate_step(raw: dict, index: int, file: str, state: _State, page_size: int) -> Step:
    op = raw.get("do")
    ctx = _StepCtx(file, index, op if isinstance(op, str) else None)
    if "do" not in raw:
        raise ctx.err("do", "missing required field (the operation)", _OPS_ACCEPTED)
    if not isinstance(op, str):
        raise ctx.err("do", f"expected a string, got {_show(op)}", _OPS_ACCEPTED)
    if op not in OPERATIONS:
        raise ctx.err("do", f"unknown operation {_toml_str(op)}{_suggest(op, OPERATIONS)}",
                      _OPS_ACCEPTED)
    fields = OPERATIONS[op]
    names = [f.name for f in fields]
    for key in raw:
        if key not in ("do", "in") and key not in names:
            listed = _names(names) if names else "no other fields"
            raise ctx.err(key, f"unknown field{_suggest(key, names + ['in'])}",
                          f"fields of do = \"{op}\": {listed} (and do, in)")

    proc = raw.get("in", "main")
    if not isinstance(proc, str):
        raise ctx.err("in", f"expected a process name, got {_show(proc)}",
                      "a live process: " + _names(state.live()))
    p = state.procs.get(proc)
    if p is None or p.exited_at is not None:
        if p is not None:
            why = f"it exited at step {p.exited_at}"
        elif state.future.get(proc, (0, None))[1] == "fork":
            why = f"it is forked later, at step {state.future[proc][0]}"
        else:
            why = "no fork step creates it"
        raise ctx.err("in", f"no process {_quote(proc)} at this step ({why})",
                      "a live process: " + _names(state.live()))

    vals: dict[str, Any] = {}
    new: list[tuple[str, str]] = []  # (name, kind) created by this step
    for f in fields:
        is_ref = isinstance(f.kind, _Name) and not f.kind.new
        if f.name not in raw:
            if f.required:
                accepted = state.known(f.kind.handle_kind, proc) if is_ref else f.kind.accepted
                raise ctx.err(f.name, "missing required field", accepted)
            vals[f.name] = f.default
            continue
        try:
            value = f.kind.parse(raw[f.name], page_size)
            if isinstance(f.kind, _Name) and isinstance(value, int):
                pass                        # a raw id (_NameOrRaw): the kernel's to judge
            elif isinstance(f.kind, _Name):
                if f.kind.new:
                    state.check_new(value, f.kind.handle_kind)
                    new.append((value, f.kind.handle_kind))
                else:
                    state.resolve(value, f.kind.handle_kind, proc, index)
            elif isinstance(f.kind, _Addr) and value[0] == "rel":
                state.resolve(value[1], "region", proc, index)
            elif isinstance(f.kind, _Pages):
                if vals.get("region") is None:
                    raise _Problem("pages is a page range of a region: region is not given",
                                   "give region too, or addr and length instead of pages")
                npages = state.procs[proc].region_pages.get(vals["region"])
                a, b = value
                if npages is not None and b > npages:
                    raise _Problem(
                        f"page range {a}..{b} is outside region '{vals['region']}' "
                        f"({npages} pages at this step)",
                        f'a range "A..B" with 0 <= A < B <= {npages}, or a page number '
                        f'0..{npages - 1}; leave it out for the whole region')
        except _Problem as e:
            if is_ref and e.accepted == f.kind.accepted:
                e = _Problem(e.problem, state.known(f.kind.handle_kind, proc))
            raise ctx.wrap(f.name, e) from None
        vals[f.name] = value

    # Cross-field rules.
    if op in RANGE_FIELDS:
        _check_range(ctx, op, raw, vals, state.known("region", proc))
    if op == "file":
        if vals["fill"] == "byte":
            vals["value"] = 0x5A if vals["value"] is None else vals["value"]
        elif "value" in raw:
            raise ctx.err("value", f"value is only used with fill = \"byte\" (fill is "
                                   f"\"{vals['fill']}\")", 'leave it out, or set fill = "byte"')
    elif op == "touch":
        if vals["access"] == "write":
            vals["value"] = 1 if vals["value"] is None else vals["value"]
        elif "value" in raw:
            raise ctx.err("value", "value is only used with access = \"write\"",
                          'leave it out, or set access = "write"')
    elif op == "mmap":
        given = [s for s in _MMAP_SOURCES if s in raw]
        if len(given) > 1:
            raise ctx.err(given[1], f"at most one of file, fd, shm, memfd (got {_names(given)})",
                          "one of file, fd, shm, memfd, or none for an anonymous mapping")
    elif op in ("truncate", "write", "fadvise", "seal"):
        sources = _MMAP_SOURCES if op != "seal" else _MMAP_SOURCES[1:]
        given = [s for s in sources if s in raw]
        if len(given) != 1:
            raise ctx.err(given[1] if given else sources[0],
                          f"exactly one of {_names(sources)} (got {_names(given) if given else 'none'})",
                          {"truncate": "one of file (truncate by name), fd, shm, memfd (ftruncate)",
                           "seal": "one of fd, shm, memfd (an open descriptor)"}.get(
                              op, "one of file (opened by name), fd, shm, memfd"))
    if op in ("write", "fadvise"):
        for name in ("offset", "length"):
            if vals[name] is not None and vals[name] > LOFF_MAX:
                raise ctx.err(name, f"{vals[name]} does not fit a loff_t",
                              f"a size up to 2**63-1 bytes ({LOFF_MAX})")
        if op == "write" and vals["length"] > WRITE_MAX:
            raise ctx.err("length", f"{vals['length']} bytes is more than one write step may "
                          "copy (the worker's buffer lives in its pre-grown heap)",
                          f"a size up to {WRITE_MAX // 2**20} MiB; split a larger write into steps")
    if op == "shmctl":
        is_set = vals["cmd"] in ("set", _flags.IPC_SET)     # by name or as the raw IPC_SET
        if is_set and vals["mode"] is None:
            raise ctx.err("mode", 'missing required field with cmd = "set"', _MODE.accepted)
        if not is_set and "mode" in raw:
            raise ctx.err("mode", f'mode is only used with cmd = "set" (cmd is "{vals["cmd"]}")',
                          'leave it out, or set cmd = "set"')
    elif op == "memfd":
        vals["name"] = vals["as"] if vals["name"] is None else vals["name"]
    elif op == "rlimit":
        vals["hard"] = vals["soft"] if "hard" not in raw else vals["hard"]

    # Effects on the simulated handles.
    for name, kind in new:
        pages = None
        if op == "mmap":
            pages = _pages_of(vals["length"], page_size)
        elif op == "shmget":
            pages = _pages_of(vals["size"], page_size)
        elif op == "shmat":
            pages = state.segment_pages.get(vals["segment"])
        state.add(name, kind, index, op, proc, pages)
    if op == "mremap" and vals["region"] is not None:
        state.procs[proc].region_pages[vals["region"]] = _pages_of(vals["length"], page_size)
    elif op == "exit":
        state.procs[proc].exited_at = index

    return Step(index, op, proc, tuple(sorted(vals.items())), copy.deepcopy(raw))


_SETUP_FIELDS = ("aslr", "layout", "rlimits", "user", "shmmax", "shmall", "shmmni")
# ipc/ipc_sysctl.c: shmmax (bytes) and shmall (pages) are unsigned longs, shmmni an int from
# 0 to IPCMNI (32768, ipc/util.h)
_IPC_LIMITS = {"shmmax": ("bytes: an integer or a size string", 1 << 64),
               "shmall": ("pages: an integer", 1 << 64),
               "shmmni": ("segments: an integer from 0 to 32768", 32769)}
_LIMIT = _Limit()
_RLIMITS_ACCEPTED = ("a table of resource = limit, or resource = { soft = limit, hard = limit }"
                     " (hard defaults to soft), resources: " + _names(RLIMIT_RESOURCES) +
                     '; limits: "unlimited", an integer or a size string')


def _validate_setup(raw: Any, file: str, page_size: int) -> Setup:
    def err(fieldname, problem, accepted):
        return SpecError(file, None, None, fieldname, problem, accepted, section="setup")

    if not isinstance(raw, dict):
        raise SpecError(file, None, None, "setup", f"expected a table, got {_show(raw)}",
                        "a [setup] table with " + _names(_SETUP_FIELDS))
    for key in raw:
        if key not in _SETUP_FIELDS:
            raise err(key, f"unknown field{_suggest(key, _SETUP_FIELDS)}", _names(_SETUP_FIELDS))
    aslr = raw.get("aslr", True)
    if not isinstance(aslr, bool):
        raise err("aslr", f"expected a boolean, got {_show(aslr)}",
                  "true, or false (workers run with ADDR_NO_RANDOMIZE)")
    layout_kind = _Choice("topdown", "legacy")
    try:
        layout = layout_kind.parse(raw.get("layout", "topdown"), page_size)
    except _Problem as e:
        raise err("layout", e.problem, e.accepted) from None
    user = raw.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise err("user", f"expected a user name, got {_show(user)}",
                  "a non-empty user name (workers started as root drop to it)")
    rlimits_raw = raw.get("rlimits", {})
    if not isinstance(rlimits_raw, dict):
        raise err("rlimits", f"expected a table, got {_show(rlimits_raw)}", _RLIMITS_ACCEPTED)
    rlimits: dict[str, tuple[str, int | None, int | None]] = {}
    for key, value in rlimits_raw.items():
        where = f"rlimits.{key}"
        try:
            name = _resource_name(key, _RLIMITS_ACCEPTED)
            if name in rlimits:
                raise _Problem(f"resource '{name}' given twice", _RLIMITS_ACCEPTED)
            if isinstance(value, dict):
                for sub in value:
                    if sub not in ("soft", "hard"):
                        raise _Problem(f"unknown field {_quote(sub)} in the limit table",
                                       "{ soft = limit, hard = limit }")
                if "soft" not in value:
                    raise _Problem("missing soft limit", "{ soft = limit, hard = limit }")
                soft = _LIMIT.parse(value["soft"], page_size)
                hard = _LIMIT.parse(value["hard"], page_size) if "hard" in value else soft
            else:
                soft = hard = _LIMIT.parse(value, page_size)
            if hard is not None and (soft is None or soft > hard):
                raise _Problem(f"soft limit {'unlimited' if soft is None else soft} is above "
                               f"the hard limit {hard}", "soft <= hard")
        except _Problem as e:
            raise err(where, e.problem, e.accepted) from None
        rlimits[name] = (name, soft, hard)
    limits = {}
    for key, (accepted, top) in _IPC_LIMITS.items():
        if key not in raw:
            continue
        value = raw[key]
        accepted = f"{accepted}, set in the run's own IPC namespace (hermetic mode)"
        try:
            n = parse_size(value, page_size) if key == "shmmax" else value
        except _Problem as e:
            raise err(key, e.problem, accepted) from None
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < top:
            raise err(key, f"expected {accepted.split(':')[0]}, got {_show(value)}", accepted)
        limits[key] = n
    return Setup(aslr, layout, tuple(sorted(rlimits.values())), user, **limits)


_TOP_FIELDS = ("about", "format", "setup", "step")
_TOP_ACCEPTED = "about, format, setup, [[step]]"


def _validate(data: dict, path: str, page_size: int | None) -> Experiment:
    if page_size is None:
        page_size = _page_size_default()
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"page_size must be a positive integer, not {page_size!r}")
    for key in data:
        if key not in _TOP_FIELDS:
            raise SpecError(path, None, None, key,
                            f"unknown top-level key{_suggest(key, _TOP_FIELDS)}", _TOP_ACCEPTED)
    if "format" in data:
        fmt = data["format"]
        if isinstance(fmt, bool) or fmt != FORMAT:
            raise SpecError(path, None, None, "format", f"unsupported format {_show(fmt)}",
                            f"{FORMAT} (or leave it out)")
    about_accepted = "a non-empty string saying what the experiment shows"
    if "about" not in data:
        raise SpecError(path, None, None, "about", "missing", about_accepted)
    about = data["about"]
    if not isinstance(about, str) or not about.strip():
        raise SpecError(path, None, None, "about", f"expected a non-empty string, got "
                        f"{_show(about)}", about_accepted)
    setup = _validate_setup(data.get("setup", {}), path, page_size)
    steps_accepted = "one or more [[step]] tables"
    if "step" not in data:
        raise SpecError(path, None, None, "step", "no steps", steps_accepted)
    raw_steps = data["step"]
    if isinstance(raw_steps, dict):
        raise SpecError(path, None, None, "step", "a single [step] table; write [[step]]",
                        steps_accepted)
    if not isinstance(raw_steps, (list, tuple)) or not raw_steps:
        raise SpecError(path, None, None, "step",
                        f"expected an array of tables, got {_show(raw_steps)}", steps_accepted)
    for i, raw in enumerate(raw_steps, 1):
        if not isinstance(raw, dict):
            raise SpecError(path, None, None, "step",
                            f"element {i} is {_show(raw)}, not a table", steps_accepted)
    state = _State(_future_names(list(raw_steps)))
    steps = tuple(_validate_step(raw, i, path, state, page_size)
                  for i, raw in enumerate(raw_steps, 1))
    return Experiment(path, about, setup, steps, _FrozenMap(state.names), page_size)


# --------------------------------------------------------------------------------------------
# Reading


_TOML_AT = re.compile(r"(?s)(.*) \(at line (\d+), column (\d+)\)\Z")


def _syntax_error(path: str, line: int, column: int, message: str) -> SpecError:
    return SpecError(path, None, None, None, f"malformed TOML ({message})", TOML_ACCEPTED,
                     section=f"line {line}, column {column}")


def _end_of(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def loads(text: str, path: str = "<string>", page_size: int | None = None) -> Experiment:
    """Parse and validate an experiment from TOML text; raises SpecError."""
    path = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_AT.match(message)
        if m:
            raise _syntax_error(path, int(m[2]), int(m[3]), m[1]) from None
        message = message.removesuffix(" (at end of document)")
        raise _syntax_error(path, *_end_of(text), message) from None
    return _validate(data, path, page_size)


def load(path, page_size: int | None = None) -> Experiment:
    """Read, parse and validate an experiment file; raises SpecError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SpecError(str(path), None, None, None,
                        f"cannot read the file ({e.strerror or e})",
                        "a readable experiment file (TOML, format 1)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = _end_of(data[: e.start].decode("utf-8", "replace"))
        raise _syntax_error(str(path), line, column,
                            f"invalid UTF-8 byte 0x{data[e.start]:02x}") from None
    return loads(text, str(path), page_size)


# --------------------------------------------------------------------------------------------
# Writing: a small TOML emitter for the values experiment files hold


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _emit(top: dict) -> str:
    lines = []
    for key in ("about", "format"):
        if key in top:
            lines.append(f"{key} = {_toml_value(top[key])}")
    setup = top.get("setup")
    if setup:
        lines += ["", "[setup]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in setup.items()]
    for raw in top.get("step", ()):
        lines += ["", "[[step]]"]
        keys = [k for k in ("do", "in") if k in raw] + [k for k in raw if k not in ("do", "in")]
        lines += [f"{_toml_key(k)} = {_toml_value(raw[k])}" for k in keys]
    return "\n".join(lines) + "\n"


def _setup_raw(setup: Setup) -> dict:
    raw: dict[str, Any] = {}
    if setup.aslr is not True:
        raw["aslr"] = setup.aslr
    if setup.layout != "topdown":
        raw["layout"] = setup.layout
    if setup.rlimits:
        def limit(v):
            return "unlimited" if v is None else v
        raw["rlimits"] = {name: limit(soft) if soft == hard
                          else {"soft": limit(soft), "hard": limit(hard)}
                          for name, soft, hard in setup.rlimits}
    if setup.user is not None:
        raw["user"] = setup.user
    for key in _IPC_LIMITS:
        if getattr(setup, key) is not None:
            raw[key] = getattr(setup, key)
    return raw


def dump_toml(experiment: Experiment) -> str:
    """TOML text for an experiment (steps from their raw tables) that `loads` reads back equal."""
    return _emit({"about": experiment.about, "setup": _setup_raw(experiment.setup),
                  "step": [s.raw for s in experiment.steps]})


# --------------------------------------------------------------------------------------------
# Building in Python


def _to_raw(value: Any) -> Any:
    """Builder values as tomllib would give them: tuples become lists, containers are copied."""
    if isinstance(value, (list, tuple)):
        return [_to_raw(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_raw(v) for k, v in value.items()}
    return value


class ExperimentBuilder:
    """Build an experiment in Python: the raw tables a TOML file would hold, validated by the
    same code as `loads`.  ``in_``/``as_`` stand for ``in``/``as``; a keyword given None is left
    out.  Every method that adds a step returns the builder::

        b = ExperimentBuilder(about="COW after fork")
        b.mmap(as_="buf", length="16 pages", prot="rw", flags=["private", "anonymous"])
        b.touch(region="buf", access="write").fork(child="kid")
        exp = b.build()
    """

    def __init__(self, about: str = "", aslr: bool = True, layout: str = "topdown",
                 rlimits: dict | None = None, user: str | None = None, **limits: int) -> None:
        self.about = about
        self.setup: dict[str, Any] = {}
        if aslr is not True:
            self.setup["aslr"] = aslr
        if layout != "topdown":
            self.setup["layout"] = layout
        if rlimits is not None:
            self.setup["rlimits"] = _to_raw(rlimits)
        if user is not None:
            self.setup["user"] = user
        self.setup.update(limits)       # shmmax, shmall, shmmni: validated by build()
        self.steps: list[dict] = []

    def step(self, do: str, **fields: Any) -> ExperimentBuilder:
        raw: dict[str, Any] = {"do": do}
        for key, value in fields.items():
            if value is None:
                continue
            raw[{"in_": "in", "as_": "as"}.get(key, key)] = _to_raw(value)
        self.steps.append(raw)
        return self

    def _raw(self) -> dict:
        top: dict[str, Any] = {"about": self.about}
        if self.setup:
            top["setup"] = copy.deepcopy(self.setup)
        top["step"] = copy.deepcopy(self.steps)
        return top

    def build(self, path: str = "<builder>", page_size: int | None = None) -> Experiment:
        return _validate(self._raw(), path, page_size)

    def to_toml(self) -> str:
        return _emit(self._raw())


def _op_method(op: str):
    def method(self: ExperimentBuilder, **fields: Any) -> ExperimentBuilder:
        return self.step(op, **fields)

    fields = [("as_" if f.name == "as" else f.name) + ("" if f.required else "?")
              for f in OPERATIONS[op]]
    method.__name__ = method.__qualname__ = op
    method.__doc__ = (f"Add a do = \"{op}\" step (in_ = process, default \"main\"). Fields "
                      f"(? = optional): {', '.join(fields) or 'none'}.")
    return method


for _op in OPERATIONS:
    setattr(ExperimentBuilder, _op, _op_method(_op))
del _op
