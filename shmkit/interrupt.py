"""How a shmkit command stops on Ctrl-C, SIGTERM or SIGHUP, and the sections a signal may not cut.

A command's main() calls install() first. From then on the first of these signals raises
Interrupted (a KeyboardInterrupt) in the main thread, so every `finally` on the way out kills the
workers and removes what the run created, and the command exits 128 + the signal's number (130
Ctrl-C, 143 SIGTERM, 129 SIGHUP; exit_status()).

- **At most one raise.** Only the first signal raises; later ones are remembered and nothing more.
  A second Ctrl-C while the first one's cleanup runs cannot cut that cleanup short (SIGKILL, then
  `shmkit clean`, is the way to stop harder).
- **Sections that must be whole** run inside `deferred()`: a worker started but not yet known to
  its manager, a run directory made but not yet in the registry, the cleanup at the end of a run
  that was not interrupted. A signal arriving there is raised when the outermost section ends.
- **A signal ignored on entry stays ignored.** A non-interactive program started with a signal
  ignored keeps it ignored: POSIX sh ("Signals that were ignored on entry to a non-interactive
  shell cannot be trapped or reset"), and CPython installs its own KeyboardInterrupt handler only
  when SIGINT was not ignored. A background job of a script (`cmd &`: SIGINT and SIGQUIT ignored)
  is not stopped by the Ctrl-C meant for the foreground, and `nohup shmkit ...` survives its
  terminal closing; SIGTERM stops such a job.
- **After disarm()** (the command has decided its exit status) the signals are ignored: one that
  comes later changes nothing, and the process exits with the status it decided. A handler
  alone would not do: the interpreter puts SIG_DFL back for every Python handler while it
  finalizes (_PySignal_Fini), and a SIGTERM then ended the process as killed by it; blocking
  them in the main thread would not do either, since a process-directed signal goes to any
  thread that does not block it (rich's refresh thread in validate). There is always a last
  instant after which a signal cannot change what a process reports; this makes it one
  well-defined point.

Signal handlers run in the main thread only (Python's rule), so the state here is the main
thread's; `deferred()` from another thread would only delay that thread's own view of it.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

# SIGTERM last: a test reading /proc/PID/status sees SIGTERM caught only once all three are.
SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was told to stop by `signum`."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


_first: int | None = None   # the first signal received
_raised = False             # Interrupted was raised (or will never be: disarmed)
_depth = 0                  # nesting of deferred() sections


def _handler(signum, frame) -> None:
    global _first, _raised
    if _first is None:
        _first = signum
    if _raised or _depth:
        return
    _raised = True
    raise Interrupted(signum)


def install() -> None:
    """Handle each of SIGNALS that was not ignored on entry (see the module's docstring)."""
    for s in SIGNALS:
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, _handler)


def disarm() -> None:
    """The command's exit status is decided: from now on the signals handled here are ignored
    (see above). The process's entry point calls this last, from the main thread."""
    global _raised
    _raised = True
    for s in SIGNALS:
        if signal.getsignal(s) is _handler:
            signal.signal(s, signal.SIG_IGN)


def received() -> int | None:
    """The first signal received, if any."""
    return _first


def exit_status(status: int) -> int:
    """128 + the first signal received, else `status`."""
    return 128 + _first if _first is not None else status


@contextmanager
def deferred():
    """A section a signal may not cut in two: it is raised when the outermost section ends
    (or not at all, if a signal already stopped the command or it was disarmed)."""
    global _depth, _raised
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _first is not None and not _raised:
            _raised = True
            raise Interrupted(_first)


def run_command(dispatch, argv, interrupted: str) -> int:
    """A command's main(): install(), run dispatch(argv) and return its status, disarm() once it
    is decided. On the first Ctrl-C, SIGTERM or SIGHUP: print `interrupted` (with the signal's
    name put in for {signal}) to stderr and return 128 + the signal's number."""
    import sys

    install()
    try:
        status = dispatch(argv)
        disarm()                        # decided: a later signal changes nothing
        return status
    except KeyboardInterrupt:
        disarm()                        # only the first signal raises: nothing more comes
    name = signal.Signals(received() or signal.SIGINT).name
    print(interrupted.format(signal=name), file=sys.stderr)
    return exit_status(130)
