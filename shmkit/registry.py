"""Run-unique names for every kernel object shmkit creates, and the registry that
makes `shmkit clean` possible after a killed run.

Every object (POSIX name, SysV key/segment, file, memfd) gets a name carrying the
run's prefix ``shmkit-<owner pid>-<6 hex>-`` and is written to the run's
registry file *before* it is created. A run's registry names its owner (pid and
start time, so a recycled pid is not mistaken for it); `clean` acts only on runs
whose owner is gone, and only on the objects their registry lists (psutil's
TESTFN_PREFIX habit, with a record). SysV segments carry no name: a segment is
removed only if its creator pid (cpid) is one of the run's workers and its key
is one of the run's keys, or it is private (or removed: key 0) with a recorded
shmid or a registered private shmget.

Trust (README "Security"): the registry directory is one only this user can write
(registry_path()), and it and every registry file are checked (ours, no group/other
write, no symbolic link) before anything is read or written; otherwise UnsafeState,
nothing done. Even then `clean` acts only on what it can prove is the run's: files
directly inside the run's own temp dir or /dev/shm names with its prefix, POSIX names
with its prefix, and it signals a pid only if that process is a worker of the run
(start time, uid and command line agree: is_worker_of()).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import posix_ipc

from shmkit import libc
from shmkit.procfs import alive, process_start, read_sysvipc_shm  # noqa: F401  (alive, process_start: also registry.*)

PREFIX = "shmkit-"
NAME_MAX = 255  # include/uapi/linux/limits.h; a /dev/shm name is one path component


class UnsafeState(Exception):
    """A registry directory or file that someone else could have written: nothing is read,
    written or removed (exit status 2, the message is one line)."""


def registry_path() -> Path:
    """Where registries go; nothing is made. $SHMKIT_STATE, else a directory only this user
    can write: /run/shmkit for root (/run is root's, a tmpfs emptied at boot), otherwise
    $XDG_RUNTIME_DIR/shmkit, $XDG_STATE_HOME/shmkit or ~/.local/state/shmkit. Never a
    directory in $TMPDIR: anyone can create a name there first (CWE-377)."""
    if os.environ.get("SHMKIT_STATE"):
        return Path(os.environ["SHMKIT_STATE"])
    if os.geteuid() == 0:
        return Path("/run/shmkit")
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "shmkit"
    state = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(state):
        return Path(state) / "shmkit"
    return Path.home() / ".local" / "state" / "shmkit"


_ACCEPTED = ("accepted: a directory (not a symbolic link) owned by uid {uid} that no group or other "
             "user can write (remove it, or set SHMKIT_STATE to such a directory)")


def _untrusted(st: os.stat_result, what: str, path, kind) -> str | None:
    """Why a registry directory or file is not trusted (None if it is): like OpenSSH's
    safe_path() and tmux's socket directory check, owned by us, no group/other write."""
    euid = os.geteuid()
    if not kind(st.st_mode):
        return f"{path}: {what} is {_type_name(st.st_mode)}"
    if st.st_uid != euid:
        return f"{path}: {what} is owned by uid {st.st_uid}, not by uid {euid} (you)"
    if st.st_mode & 0o022:
        return f"{path}: {what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _type_name(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a directory or regular file"


def open_registry_dir(create: bool) -> int | None:
    """A directory fd on the checked registry directory (made with mode 0700
    if `create`); None if it does not exist and not `create`. Raises UnsafeState, having
    read and written nothing, unless the directory is ours and no one else can write it."""
    p = registry_path()
    if create:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)   # ~/.local/state may not exist yet
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise UnsafeState(f"{p}: cannot make the registry directory ({e.strerror}); "
                              + _ACCEPTED.format(uid=os.geteuid())) from None
    try:
        lst = os.lstat(p)
    except FileNotFoundError:
        return None
    why = _untrusted(lst, "the registry directory", p, stat.S_ISDIR)
    if why:
        raise UnsafeState(f"{why}; refusing to use it; " + _ACCEPTED.format(uid=os.geteuid()))
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UnsafeState(f"{p}: the registry directory changed while it was checked ({e.strerror}); "
                          "refusing to use it") from None
    if not os.path.samestat(lst, os.fstat(fd)):   # swapped between lstat and open
        os.close(fd)
        raise UnsafeState(f"{p}: the registry directory changed while it was checked; refusing to use it")
    return fd


def _read_checked(dfd: int, name: str, where: Path) -> list[dict]:
    """The entries of one registry file, opened without following a link and checked
    (ours, a regular file, no group/other write) before a byte is read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise UnsafeState(f"{where / name}: registry file cannot be opened safely ({e.strerror}); "
                          "accepted: a regular file owned by you that no group or other user can write") from None
    with os.fdopen(fd, "rb") as f:
        why = _untrusted(os.fstat(fd), "the registry file", where / name, stat.S_ISREG)
        if why:
            raise UnsafeState(f"{why}; refusing to clean; accepted: a regular file owned by you "
                              "that no group or other user can write")
        return parse_registry(f.read())


def parse_registry(data: bytes) -> list[dict]:
    entries = []
    for line in data.decode(errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write: ignore it
            if isinstance(e, dict):
                entries.append(e)
    return entries


WORKER_MODULE = "shmkit.worker"   # shmkit.manager starts workers as: python -m shmkit.worker FD CONFIG


def worker_run_id(cmdline: bytes) -> str | None:
    """The run id a shmkit worker's command line names (/proc/PID/cmdline: NUL-separated
    `python -m shmkit.worker FD CONFIG`, CONFIG a JSON object with "run"), None for any
    other process. A forked worker keeps its parent's command line."""
    argv = cmdline.split(b"\0")
    if len(argv) < 5 or argv[1:3] != [b"-m", WORKER_MODULE.encode()]:
        return None
    try:
        config = json.loads(argv[4])
    except ValueError:
        return None
    run = config.get("run") if isinstance(config, dict) else None
    return run if isinstance(run, str) else None


def status_uids(status: bytes) -> tuple[int, int] | None:
    """Real and effective uid from /proc/PID/status ("Uid:\treal\teffective\tsaved\tfs")."""
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            f = line.split()
            return int(f[1]), int(f[2])
    return None


def is_worker_of(pid: int, start: int | None, run_id: str, uids: set[int], procfs: str = "/proc") -> bool:
    """True only if pid is now a shmkit worker of this run: the start time the registry
    recorded, a real and effective uid of ours (or the run's user), and a command line
    naming the worker module and this run id all agree. Read start, uid and command line,
    then the start again: a pid that died and was reused meanwhile fails the second check."""
    if start is None or process_start(pid, procfs) != start:
        return False
    try:
        with open(f"{procfs}/{pid}/status", "rb") as f:
            ids = status_uids(f.read())
        with open(f"{procfs}/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    if ids is None or not set(ids) <= uids or worker_run_id(cmdline) != run_id:
        return False
    return process_start(pid, procfs) == start


RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,63}")


@dataclass
class Run:
    """One run of one experiment: its prefix, its temp dir, its registry file."""

    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(3)}")
    user: str | None = None
    # shmkit.isolation: "hermetic" (the workers have their own IPC namespace and /dev/shm: names
    # and keys are the experiment's own) or "prefix" (run-unique names on the host's)
    isolation: str = "prefix"

    def __post_init__(self) -> None:
        self.prefix = f"{PREFIX}{self.run_id}-"     # the run's temp dir and registry file
        self.hermetic = self.isolation == "hermetic"
        # what a POSIX name, tmpfs file or memfd name carries before the experiment's name
        self.name_prefix = "" if self.hermetic else self.prefix
        self._guardian = None             # (socket, Popen) of the guardian (hermetic)
        self.reg_path = registry_path() / f"{self.run_id}.jsonl"
        self.dir = Path(tempfile.gettempdir()) / f"{PREFIX}{self.run_id}"
        self._reg: int | None = None      # the registry file (O_APPEND)
        self._dfd: int | None = None      # the checked registry directory
        self._user_lock: int | None = None  # held while a run acts as another user (user_lock)
        self.entries: list[dict] = []     # what this run registered, for its own cleanup
        self._made_dir = False
        # the names the run's steps create: model.resolve.Names (shmkit.manager.Manager.naming)

    # ----- naming -------------------------------------------------------------------------
    def posix_name(self, name: str) -> str:
        """The real shm_open name for an experiment's name. Hermetic: the name itself, byte
        for byte (the run has a /dev/shm of its own). Prefix: '/' + prefix + name; a name the
        C library refuses ('a/b') is passed on: its errno is the result."""
        if self.hermetic:
            return name
        return "/" + self.prefix + name.lstrip("/")

    def file_path(self, name: str, on: str) -> str:
        if on == "tmpfs":     # hermetic: in the run's own /dev/shm, apart from POSIX names
            return f"{DEV_SHM}/{self.name_prefix or PREFIX}f-{name}"
        return str(self.dir / name)

    def memfd_name(self, name: str) -> str:
        return self.name_prefix + name

    def sysv_key(self, key: int | str) -> int:
        """The real key for an experiment's key. Hermetic: the key itself (the run has an
        IPC namespace of its own). Prefix: a run-unique key, 0x53 ('S') in the top byte, 24
        bits from the run id and the key. IPC_PRIVATE stays 0."""
        if key == "private":
            return libc.IPC_PRIVATE
        if self.hermetic:
            return int(key)
        h = zlib.crc32(f"{self.run_id}:{key}".encode()) & 0xFFFFFF
        k = 0x53000000 | h
        return k if k < 0x80000000 else k - (1 << 32)

    # ----- registry --------------------------------------------------------------------------
    def open(self) -> None:
        """Checks the registry directory (UnsafeState if it is not ours alone), creates the
        run's registry file (O_EXCL|O_NOFOLLOW, 0600) and notes the run, then makes the temp
        dir (mkdir 0700 fails if the name exists: nobody can hand us a directory)."""
        self._dfd = open_registry_dir(create=True)
        try:
            self._reg = os.open(self.reg_path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                                | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._dfd)
        except OSError as e:
            raise UnsafeState(f"{self.reg_path}: cannot create the registry file ({e.strerror}); "
                              "accepted: a new name in a registry directory only you can write") from None
        uid = None
        if self.user:
            import pwd

            pw = pwd.getpwnam(self.user)
            uid, gid = pw.pw_uid, pw.pw_gid
            self._user_lock = user_lock(self._dfd, pw.pw_uid)
        self.note({"kind": "run", "run": self.run_id, "owner": os.getpid(),
                   "owner_start": process_start(os.getpid()), "dir": str(self.dir),
                   "user_uid": uid})
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            raise UnsafeState(f"{self.dir}: exists already, so it is not this run's; refusing to use it; "
                              "accepted: a TMPDIR where the run can create its own directory") from None
        self._made_dir = True
        if uid is not None:
            os.chown(self.dir, uid, gid, follow_symlinks=False)
        if self.hermetic:
            self._guardian = start_guardian(self.dir, self._dfd, self._reg, self.reg_path.name)

    def guard_namespace(self, pid: int) -> None:
        """Hands the guardian an fd on pid's IPC namespace (the run's): if the manager dies,
        the guardian kills every process left in it (see GUARDIAN)."""
        import socket

        if self._guardian is None:
            return
        fd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        try:
            socket.send_fds(self._guardian[0], [b"n"], [fd])
        finally:
            os.close(fd)

    # Kernel objects a hermetic run's namespaces hold: they go with the namespaces, and a
    # registry entry for them could only ever name a host object that is not the run's.
    NAMESPACED = ("posix", "sysv", "memfd")

    def note(self, entry: dict) -> None:
        """Appends one entry and flushes it to the file before the object exists."""
        self.entries.append(entry)
        if self.hermetic and entry.get("kind") in self.NAMESPACED:
            return
        os.write(self._reg, (json.dumps(entry) + "\n").encode())
        os.fsync(self._reg)

    def cleanup(self) -> list[str]:
        """Removes everything of this run (called by the owner at the end, on every path),
        by the same proofs as `shmkit clean`. The registry directory stays (other runs)."""
        entries = self.entries if self._made_dir else [  # a dir we did not make is not ours
            dict(e, dir=None) if e.get("kind") == "run" else e for e in self.entries]
        removed = clean_run(entries, own=True, run_id=self.run_id)
        if self._reg is not None:
            os.close(self._reg)
            self._reg = None
            try:
                os.unlink(self.reg_path.name, dir_fd=self._dfd)
            except FileNotFoundError:
                pass
        if self._dfd is not None:
            os.close(self._dfd)
            self._dfd = None
        if self._guardian is not None:    # its work is done: EOF tells it so
            sock, proc = self._guardian
            self._guardian = None
            sock.close()
            try:
                proc.wait(timeout=10)
            except Exception:          # subprocess.TimeoutExpired: it finishes on its own
                pass
        if self._user_lock is not None:
            os.close(self._user_lock)   # releases the flock
            self._user_lock = None
        return removed


# The guardian of a hermetic run (python -S -c GUARDIAN): a process in a session of its own
# that outlives the manager. It holds the run's temp dir, its parent directory, the registry
# directory and the run's registry file open from the moment they were made, and reads a
# socket only the manager holds the other end of. The manager sends it, over that socket, an fd
# on the run's IPC namespace (/proc/PID/ns/ipc) once the main worker has made it: holding it,
# the namespace's nsfs inode cannot be reused by another namespace. At EOF (the manager closed
# the socket, or died: SIGKILL included) the guardian
#  1. kills every process still in the run's IPC namespace, which only the run's workers
#     can be in (each checked through a pidfd opened before the check: a pid reused meanwhile is
#     not signalled). A worker forked by a worker does not die with the manager by itself
#     (PR_SET_PDEATHSIG is not inherited by fork) and may be busy in a long step;
#  2. drops the namespace fds: with its last process gone the kernel frees the namespace, its
#     segments (ipc/namespace.c free_ipc_ns) and, with the mount namespace, the /dev/shm tmpfs;
#  3. removes the temp dir and the registry file, each only if the name still refers to the
#     very object it holds (samestat), with rmtree's fd-based walk; a file a dying worker makes
#     meanwhile makes rmtree fail with ENOTEMPTY, and it tries again for up to 30 s.
GUARDIAN = r"""
import os, shutil, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
r, pfd, dfd, rdfd, regfd = map(int, sys.argv[1:6])
name, regname = sys.argv[6], sys.argv[7]
sock = socket.socket(fileno=r)
ns = []
while True:
    data, fds, _, _ = socket.recv_fds(sock, 64, 8)
    ns += fds
    if not data and not fds:
        break
def in_run(pid):
    try:
        st = os.stat(f"/proc/{pid}/ns/ipc")
    except OSError:
        return False
    return any(os.path.samestat(st, os.fstat(fd)) for fd in ns)
deadline = time.monotonic() + 30
while ns and time.monotonic() < deadline:
    found = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not in_run(entry):
            continue
        try:
            pidfd = os.pidfd_open(int(entry))
        except OSError:
            continue
        try:
            if in_run(entry):
                found = True
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)
    if not found:
        break
    time.sleep(0.02)
for fd in ns:
    os.close(fd)
def same(n, d, fd):
    try:
        return os.path.samestat(os.stat(n, dir_fd=d, follow_symlinks=False), os.fstat(fd))
    except OSError:
        return False
deadline = time.monotonic() + 30
while same(name, pfd, dfd) and time.monotonic() < deadline:
    try:
        shutil.rmtree(name, dir_fd=pfd)
    except OSError:
        time.sleep(0.05)
if same(regname, rdfd, regfd):
    os.unlink(regname, dir_fd=rdfd)
"""


def start_guardian(run_dir: Path, reg_dfd: int, reg_fd: int, reg_name: str):
    """Starts the guardian of a hermetic run (see GUARDIAN); returns (our socket end, Popen).
    Run.guard_namespace() hands it the run's namespace."""
    import socket
    import subprocess
    import sys

    assert shutil.rmtree.avoids_symlink_attacks
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)   # both close-on-exec
    pfd = os.open(run_dir.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dfd = os.open(run_dir.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        fds = (theirs.fileno(), pfd, dfd, reg_dfd, reg_fd)
        proc = subprocess.Popen([sys.executable, "-S", "-c", GUARDIAN, *map(str, fds), run_dir.name, reg_name],
                                pass_fds=fds, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
        os.close(pfd)
        os.close(dfd)
    return ours, proc


def user_lock(dfd: int, uid: int) -> int:
    """An exclusive flock, held for a whole run, on `user-UID.lock` in the checked registry
    directory: runs that switch to the same user take turns. The kernel charges SHM_LOCK and
    mlock()ed shm to the user, not to the process or the namespace (mm/mlock.c:user_shm_lock
    against RLIMIT_MEMLOCK, counted in the user's ucounts), so two runs as `nobody` at once
    see each other's charge (measured: shmctl-lock-unprivileged got ENOMEM in 4 of 6 runs with
    two copies at once). The file is opened O_NOFOLLOW and must be ours, regular, and writable
    by no one else; else UnsafeState. Runs of other programs as that user still count: their
    charge is the host's doing and shows as a different errno, never absorbed."""
    import fcntl

    name = f"user-{uid}.lock"
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as e:
        raise UnsafeState(f"{registry_path() / name}: cannot open the user lock ({e.strerror}); "
                          "accepted: a regular file of yours in the registry directory") from None
    why = _untrusted(os.fstat(fd), "the user lock", registry_path() / name, stat.S_ISREG)
    if why:
        os.close(fd)
        raise UnsafeState(f"{why}; refusing to use it; " + _ACCEPTED.format(uid=os.geteuid()))
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


DEV_SHM = "/dev/shm"


def _simple_name(name) -> bool:
    """One path component: no '/', not '.', '..' or empty, no NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _open_run_dir(d: Path, run_id: str, uids: set[int]) -> tuple[int, int] | None:
    """(parent fd, run dir fd) when d is provably the run's temp dir: named exactly
    PREFIX + run id, a directory and not a symbolic link, owned by us or the run's user.
    None otherwise (or if it is gone)."""
    if d.name != f"{PREFIX}{run_id}" or not d.is_absolute():
        return None
    try:
        pfd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(d.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    except OSError:
        os.close(pfd)
        return None
    if os.fstat(fd).st_uid not in uids:
        os.close(fd)
        os.close(pfd)
        return None
    return pfd, fd


def clean_run(entries: list[dict], own: bool = False, run_id: str | None = None) -> list[str]:
    """Removes the objects a registry lists that can be proved to be the run's own
    (module docstring), and nothing else. Returns what it removed."""
    removed: list[str] = []
    run = next((e for e in entries if e.get("kind") == "run"), None)
    if run is None or not isinstance(run.get("run"), str) or not RUN_ID.fullmatch(run["run"]):
        return removed                      # nothing can be proved to be anyone's
    if run_id is not None and run["run"] != run_id:
        return removed
    rid = run["run"]
    prefix = f"{PREFIX}{rid}-"
    uids = {os.geteuid()} | {u for u in (run.get("user_uid"),) if isinstance(u, int)}
    workers = {(e.get("pid"), e.get("start")) for e in entries
               if e.get("kind") == "worker" and isinstance(e.get("pid"), int) and e["pid"] > 0}
    for pid, start in workers:
        if not own and is_worker_of(pid, start, rid, uids):
            try:
                os.kill(pid, signal.SIGKILL)
                removed.append(f"worker pid {pid}")
            except ProcessLookupError:
                pass
    worker_pids = {pid for pid, _ in workers}
    run_dir = Path(run["dir"]) if isinstance(run.get("dir"), str) else None
    opened = _open_run_dir(run_dir, rid, uids) if run_dir is not None else None
    try:
        shm_fd = os.open(DEV_SHM, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        shm_fd = None
    try:
        for e in entries:
            kind = e.get("kind")
            if kind == "posix":
                name = e.get("name")
                # POSIX names only with the run's prefix: "/" + prefix + one component
                if not (isinstance(name, str) and name.startswith("/" + prefix) and _simple_name(name[1:])):
                    continue
                try:
                    posix_ipc.unlink_shared_memory(name)
                    removed.append(f"POSIX shm {name}")
                except (posix_ipc.ExistentialError, ValueError, posix_ipc.PermissionsError, OSError):
                    pass
            elif kind == "file":
                path = e.get("path")
                if not isinstance(path, str):
                    continue
                parent, base = os.path.split(path)
                if not _simple_name(base):
                    continue
                if parent == DEV_SHM and base.startswith(prefix) and shm_fd is not None:
                    dfd = shm_fd            # a tmpfs file: /dev/shm/<run prefix>...
                elif opened is not None and parent == str(run_dir):
                    dfd = opened[1]         # a disk file: directly inside the run's own dir
                else:
                    continue
                try:
                    os.unlink(base, dir_fd=dfd)   # unlinkat: a symbolic link is removed, not followed
                    removed.append(f"file {path}")
                except OSError:
                    pass
        shmids = {e["shmid"] for e in entries if e.get("kind") == "sysv" and isinstance(e.get("shmid"), int)}
        keys = {e["key"] for e in entries if e.get("kind") == "sysv" and isinstance(e.get("key"), int) and e["key"]}
        private = any(e.get("kind") == "sysv" and not e.get("key") for e in entries)
        try:
            segments = read_sysvipc_shm()
        except OSError:
            segments = []
        for seg in segments:
            # created by one of the run's workers, under one of its keys, or private
            # (or IPC_RMID'd: key 0) with a recorded shmid or a registered private shmget
            ours = seg.cpid in worker_pids and (
                seg.key in keys or (seg.key == 0 and (seg.shmid in shmids or private)))
            if ours:
                try:
                    libc.shmctl(seg.shmid, libc.IPC_RMID)
                    removed.append(f"SysV shmid {seg.shmid} key {seg.key:#x}")
                except OSError:
                    pass
        if opened is not None:
            # fd-based rmtree: it refuses a symbolic link and does not follow links inside
            # (rmtree reopens the name: it must still be the directory whose owner was checked)
            assert shutil.rmtree.avoids_symlink_attacks
            try:
                if os.path.samestat(os.fstat(opened[1]),
                                    os.stat(run_dir.name, dir_fd=opened[0], follow_symlinks=False)):
                    shutil.rmtree(run_dir.name, dir_fd=opened[0])
                    removed.append(f"dir {run_dir}")
            except OSError:
                pass
    finally:
        if shm_fd is not None:
            os.close(shm_fd)
        if opened is not None:
            os.close(opened[0])
            os.close(opened[1])
    return removed


def clean() -> tuple[list[str], list[str]]:
    """`shmkit clean`: every registry whose owner is gone. Returns (removed, skipped).
    Every registry file is checked before any is acted on: one untrusted file, or an
    untrusted directory, raises UnsafeState with nothing done."""
    removed: list[str] = []
    skipped: list[str] = []
    dfd = open_registry_dir(create=False)
    if dfd is None:
        return removed, skipped      # no run ever registered here: nothing to clean, nothing made
    where = registry_path()
    try:
        runs = [(name, _read_checked(dfd, name, where))
                for name in sorted(os.listdir(dfd)) if name.endswith(".jsonl")]
        for name, entries in runs:
            run = next((e for e in entries if e.get("kind") == "run"), None)
            if run and isinstance(run.get("owner"), int) and alive(run["owner"], run.get("owner_start")):
                skipped.append(f"run {run.get('run')} (owner pid {run['owner']} is alive)")
                continue
            removed.extend(clean_run(entries, run_id=name[:-len(".jsonl")]))
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
    finally:
        os.close(dfd)
    return removed, skipped
