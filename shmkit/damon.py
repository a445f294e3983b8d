"""The host's DAMON (Data Access MONitor): what runs, whether it clears the accessed bits of the
pages an experiment maps, and an opt-in pause for a run.

Why it matters. A DAMON context on the physical address space ("paddr" operations: the sysfs
admin interface, mm/damon/sysfs.c, or the DAMON_RECLAIM / DAMON_LRU_SORT / DAMON_STAT modules)
picks one random address in each of its regions every sampling interval and calls
damon_pa_mkold() on the folio there (mm/damon/paddr.c damon_pa_prepare_access_checks). That
walks the folio's rmap and, in every page table mapping it, clears the young bit of the PTE or
PMD (damon_ptep_mkold / damon_pmdp_mkold, mm/damon/ops-common.c), setting PG_young and PG_idle
on the folio when the bit was set. smaps counts a page as Referenced when its PTE/PMD is young
*or* its folio has PG_young or PG_referenced (fs/proc/task_mmu.c smaps_account). So a folio
that one process touched (young PTE) and another maps with an old PTE (a fork copies PTEs and
PMDs old: __copy_present_ptes, copy_huge_pmd) shows as Referenced in the second process too
once DAMON happened to sample it: smaps Referenced depends on where the kernel placed the page
and when DAMON sampled it, which no model of the kernel alone can know. Measured on this
project's host (Linux 6.18, kdamond 0: paddr, sampling 0.5 s, pageout scheme): a 2 MiB THP
written and then forked showed Referenced 2048 kB in the child in 39 of 40 forks made 1 s after
the write, and in 0 of 20 with the kdamond off (the model says 0: the child's PMD is old).

A "vaddr"/"fvaddr" context walks only its target processes' page tables (mm/damon/vaddr.c
damon_va_mkold); it is recorded, and counts only when a target is one of the run's processes.

Reading takes the /sys root (tests pass a fake tree); nothing here writes unless asked to pause.
"""
from __future__ import annotations

import fcntl
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from shmkit.procfs import read_text

ADMIN = "kernel/mm/damon/admin/kdamonds"
# DAMON's special-purpose modules: each runs one kdamond on the physical address space
# (mm/damon/reclaim.c, lru_sort.c, stat.c) and is switched by its "enabled" parameter.
MODULES = ("damon_reclaim", "damon_lru_sort", "damon_stat")
# The operations sets whose access checks clear accessed bits (mm/damon/paddr.c, vaddr.c).
PHYSICAL = ("paddr",)
VIRTUAL = ("vaddr", "fvaddr")


class DamonError(Exception):
    """Pausing or restoring DAMON failed; the message says what to do by hand."""


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _indexed(path: str) -> list[str]:
    """The numbered subdirectories of a DAMON sysfs directory (0, 1, ...), in order."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return [os.path.join(path, n) for n in sorted((n for n in names if n.isdigit()), key=int)]


def _filters(scheme: str) -> list[str]:
    """A scheme's filters as "type allow|reject[ non-matching]" in the order the kernel applies
    them (core_filters, then ops_filters; "filters" before Linux 6.15 holds both)."""
    out = []
    for kind in ("core_filters", "ops_filters", "filters"):
        for f in _indexed(os.path.join(scheme, kind)):
            ftype = read_text(os.path.join(f, "type"))
            if ftype is None:
                continue
            allow = read_text(os.path.join(f, "allow"))
            matching = read_text(os.path.join(f, "matching"))
            text = f"{ftype} {'allow' if allow == 'Y' else 'reject'}"
            out.append(text + ("" if matching in (None, "Y") else " non-matching"))
    return out


def _context(ctx: str) -> dict[str, Any]:
    attrs = os.path.join(ctx, "monitoring_attrs", "intervals")
    targets = []
    for t in _indexed(os.path.join(ctx, "targets")):
        regions = [[_int(read_text(os.path.join(r, "start"))), _int(read_text(os.path.join(r, "end")))]
                   for r in _indexed(os.path.join(t, "regions"))]
        targets.append({"pid": _int(read_text(os.path.join(t, "pid_target"))), "regions": regions})
    schemes = [{"action": read_text(os.path.join(s, "action")), "filters": _filters(s)}
               for s in _indexed(os.path.join(ctx, "schemes"))]
    return {"operations": read_text(os.path.join(ctx, "operations")),
            "sample_us": _int(read_text(os.path.join(attrs, "sample_us"))),
            "aggr_us": _int(read_text(os.path.join(attrs, "aggr_us"))),
            "targets": targets, "schemes": schemes}


def read_damon(sysfs: str = "/sys") -> dict[str, Any] | None:
    """What DAMON runs on this host, as plain data; None when the kernel has no DAMON sysfs
    interface and no DAMON module.

    {"kdamonds": [{"index", "state" ("on"/"off"), "pid" (-1 when off), "contexts":
    [{"operations", "sample_us", "aggr_us", "targets": [{"pid", "regions"}],
      "schemes": [{"action", "filters"}]}]}],
     "modules": {name: {"enabled": bool, "kdamond_pid": int | None}}}"""
    admin = os.path.join(sysfs, ADMIN)
    kdamonds = []
    for k in _indexed(admin):
        kdamonds.append({"index": int(os.path.basename(k)), "state": read_text(os.path.join(k, "state")),
                         "pid": _int(read_text(os.path.join(k, "pid"))),
                         "contexts": [_context(c) for c in _indexed(os.path.join(k, "contexts"))]})
    modules = {}
    for name in MODULES:
        params = os.path.join(sysfs, "module", name, "parameters")
        enabled = read_text(os.path.join(params, "enabled"))
        if enabled is not None:
            modules[name] = {"enabled": enabled == "Y",
                             "kdamond_pid": _int(read_text(os.path.join(params, "kdamond_pid")))}
    if not kdamonds and not modules and not os.path.isdir(admin):
        return None
    return {"kdamonds": kdamonds, "modules": modules}


def clearers(state: dict[str, Any] | None, pids: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """Every running DAMON context that can clear the accessed bits of pages the run's
    processes (``pids``) map, as text: "kdamond 0 (paddr, pid 81)". Empty when none runs."""
    if not state:
        return []
    out = []
    for k in state.get("kdamonds", []):
        if k.get("state") != "on":
            continue
        for i, c in enumerate(k.get("contexts", [])):
            ops = c.get("operations")
            if ops in PHYSICAL or (ops in VIRTUAL and any(t.get("pid") in pids for t in c.get("targets", []))):
                out.append(f"kdamond {k['index']} context {i} ({ops}, pid {k.get('pid')})")
    for name, m in sorted(state.get("modules", {}).items()):
        if m.get("enabled"):
            out.append(f"{name} (paddr, pid {m.get('kdamond_pid')})")
    return out


def describe(state: dict[str, Any] | None) -> str:
    """One line for a person: "kdamond 0: on, paddr, schemes pageout" or "none"."""
    if state is None:
        return "no DAMON interface"
    parts = []
    for k in state.get("kdamonds", []):
        ctxs = "; ".join(
            f"{c.get('operations')}"
            + (f", schemes {', '.join(str(s.get('action')) for s in c['schemes'])}" if c.get("schemes") else "")
            for c in k.get("contexts", []))
        parts.append(f"kdamond {k['index']}: {k.get('state')}" + (f", {ctxs}" if ctxs else ""))
    for name, m in sorted(state.get("modules", {}).items()):
        parts.append(f"{name}: {'on' if m.get('enabled') else 'off'}")
    return "; ".join(parts) or "no kdamond"


def _running(state: dict[str, Any] | None) -> tuple:
    """What identifies the running kdamonds: (index, state, pid), module (name, enabled, pid)."""
    if not state:
        return ()
    return (tuple((k["index"], k.get("state"), k.get("pid")) for k in state.get("kdamonds", []))
            + tuple((n, m.get("enabled"), m.get("kdamond_pid")) for n, m in sorted(state.get("modules", {}).items())))


@dataclass
class Watch:
    """DAMON around one live run: read before and after. ``clearers(pids)`` lists what may have
    cleared accessed bits during the run: what ran at either end, and a note when DAMON was
    switched on or off in between (a kdamond's state or pid changed)."""

    sysfs: str = "/sys"
    before: dict | None = None
    after: dict | None = None

    def __enter__(self) -> "Watch":
        self.before = read_damon(self.sysfs)
        return self

    def __exit__(self, *exc) -> None:
        self.after = read_damon(self.sysfs)

    def clearers(self, pids: set[int] | frozenset[int] = frozenset()) -> list[str]:
        out = clearers(self.before, pids)
        out += [c for c in clearers(self.after, pids) if c not in out]
        if _running(self.before) != _running(self.after):
            out.append("DAMON was switched on or off during the run")
        return out


# --------------------------------------------------------------------------------------------
# Pausing (shmkit run/validate --pause-damon)
# --------------------------------------------------------------------------------------------

_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass
class Pause:
    """Turn every running kdamond and DAMON module off for a run, and exactly those back on at
    the end: on a normal exit, an exception, Ctrl-C and SIGTERM/SIGHUP (shmkit.cli turns those
    into KeyboardInterrupt), with those signals blocked while it restores. Only the state is
    written ("off", then "on"; a module's "enabled" N, then Y): the monitoring parameters in
    sysfs are left as they are, so a kdamond turned back on runs with whatever its owner has
    configured meanwhile. A kdamond that someone else turned back on during the run is left
    alone and reported. Pausers take an exclusive flock on the DAMON admin directory's
    nr_kdamonds file for the whole pause, so two paused runs do not overlap (the second waits):
    the first one's restore cannot end the second one's pause.

    After a SIGKILL nothing can restore it: the pause message says the command that does."""

    sysfs: str = "/sys"
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    paused: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock_fd: int | None = None

    def _path(self, *parts: str) -> str:
        return os.path.join(self.sysfs, *parts)

    def _lock(self) -> None:
        candidates = [self._path(ADMIN, "nr_kdamonds")] + [
            self._path("module", m, "parameters", "enabled") for m in MODULES]
        for path in candidates:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self.say("shmkit: --pause-damon: waiting for another shmkit run that paused DAMON")
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
            return

    def _write(self, path: str, value: str) -> None:
        with open(path, "w") as f:
            f.write(value)

    def _turn_off(self) -> None:
        state = read_damon(self.sysfs)
        for k in (state or {}).get("kdamonds", []):
            if k.get("state") != "on":
                continue
            path = self._path(ADMIN, str(k["index"]), "state")
            self._write(path, "off")
            self.paused.append({"what": f"kdamond {k['index']}", "path": path, "on": "on",
                                "pid_before": k.get("pid"),
                                "operations": [c.get("operations") for c in k.get("contexts", [])]})
        for name, m in sorted((state or {}).get("modules", {}).items()):
            if not m.get("enabled"):
                continue
            path = self._path("module", name, "parameters", "enabled")
            self._write(path, "N")
            self.paused.append({"what": name, "path": path, "on": "Y",
                                "pid_before": m.get("kdamond_pid"), "operations": ["paddr"]})

    def __enter__(self) -> "Pause":
        self._lock()
        try:
            # Ctrl-C or SIGTERM between a write and its note would leave DAMON off unrecorded:
            # they wait until the notes are made (and then raise here, restoring).
            old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
            try:
                self._turn_off()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except BaseException as e:
            try:
                self._restore()
            finally:
                self._unlock()
            if isinstance(e, OSError):
                raise DamonError(f"--pause-damon: could not turn DAMON off ({e}); "
                                 "it needs root and the DAMON sysfs interface") from e
            raise
        if self.paused:
            self.say("shmkit: --pause-damon: turned off "
                     + ", ".join(f"{p['what']} ({'/'.join(map(str, p['operations']))})" for p in self.paused)
                     + " for this run; it is turned back on when the run ends (after a SIGKILL: "
                     + "; ".join(f"echo {p['on']} > {p['path']}" for p in self.paused) + ")")
        else:
            self.notes.append("no DAMON context was running: nothing paused")
            self.say("shmkit: --pause-damon: no DAMON context was running; nothing paused")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            errors = self._restore()
        finally:
            self._unlock()
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if errors and exc_type is None:
            raise DamonError("; ".join(errors))
        for e in errors:
            self.say(f"shmkit: {e}")

    def _restore(self) -> list[str]:
        errors = []
        for p in self.paused:
            if "restored" in p:
                continue
            now = read_text(p["path"])
            if now is not None and now.strip() in ("on", "Y"):
                p["restored"] = False
                note = f"{p['what']} was turned back on by someone else during the run"
                self.notes.append(note)
                self.say(f"shmkit: --pause-damon: {note}")
                continue
            try:
                self._write(p["path"], p["on"])
                p["restored"] = True
            except OSError as e:
                p["restored"] = False
                errors.append(f"--pause-damon: could not turn {p['what']} back on ({e}); "
                              f"do it by hand: echo {p['on']} > {p['path']}")
        done = [p["what"] for p in self.paused if p.get("restored")]
        if done:
            self.say(f"shmkit: --pause-damon: turned {', '.join(done)} back on")
        return errors

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def account(self) -> dict[str, Any]:
        """For the record: what was paused, whether it was turned back on, and notes."""
        return {"paused": [{k: p.get(k) for k in ("what", "operations", "pid_before", "restored")}
                           for p in self.paused],
                "notes": list(self.notes)}
