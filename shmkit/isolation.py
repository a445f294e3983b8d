"""How a run is kept apart from the host: the hermetic mode (namespaces) or the prefix mode.

Hermetic (the default where the host allows it): the main worker, before it does anything
else, leaves the manager's IPC and mount namespaces (kernel/fork.c ksys_unshare with
CLONE_NEWIPC|CLONE_NEWNS), makes every mount private (so nothing it mounts reaches the host)
and mounts a tmpfs of its own on /dev/shm. Its forked children share both namespaces. So:
- POSIX shm names and SysV keys are the experiment's own, with no prefix (nothing else lives
  in that /dev/shm or that IPC namespace);
- shmids start where a fresh namespace starts them (ipc/namespace.c create_ipc_ns ->
  ipc/util.c ipc_init_ids: seq 0, last_idx -1), the same in every run;
- the namespace's own shm sysctls (ipc/ipc_sysctl.c: shmmax, shmall, shmmni are per IPC
  namespace since 2.6.19) can be set from the experiment's [setup];
- when the last process of the run exits, for any reason, the kernel frees the namespace
  (ipc/namespace.c free_ipc_ns -> shm_exit_ns removes every segment) and the tmpfs (the mount
  namespace's last reference drops, and with it the mount and its files). The run's disk temp
  directory is not in a namespace: a guardian process (registry.start_guardian) removes it
  when the manager is gone, however it ended.

The manager stays in the host's namespaces. What it reads of the run is read as the run sees
it: /dev/shm as /proc/PID/root/dev/shm (fs/proc/base.c proc_root_link: the worker's root in
its own mount namespace), and /proc/sysvipc/shm and /proc/sys/kernel/shm* from a thread that
joined the worker's IPC namespace (setns), since both show the IPC namespace of the reader
(ipc/util.c sysvipc_proc_open takes current->nsproxy->ipc_ns; ipc/ipc_sysctl.c
set_lookup likewise).

Prefix mode (`--isolation prefix`, or a host where unshare is refused): today's run-unique
names (registry.Run) and `shmkit clean` for a killed run.
"""
from __future__ import annotations

import os
import threading

from shmkit import libc

HERMETIC, PREFIX = "hermetic", "prefix"
MODES = ("auto", HERMETIC, PREFIX)
# the namespace's shm sysctls an experiment may set ([setup]), ipc/ipc_sysctl.c
IPC_SYSCTLS = ("shmmax", "shmall", "shmmni")
_SYSCTL_DIR = "/proc/sys/kernel"

_probed: tuple[bool, str] | None = None
_asked: str | None = None


def ask(mode: str | None) -> None:
    """The mode the command line asked for (--isolation), for every run of this process."""
    global _asked
    _asked = mode


def asked() -> str:
    """--isolation, else $SHMKIT_ISOLATION, else auto."""
    return _asked or os.environ.get("SHMKIT_ISOLATION") or "auto"


def probe() -> tuple[bool, str]:
    """(True, why) if this process may make the namespaces a hermetic run needs, else
    (False, why not). Measured once, in a forked child that unshares and exits: root (or
    CAP_SYS_ADMIN) may; an unprivileged user may not (this version does not make a user
    namespace, which would give the worker capabilities inside it and change every EPERM/EACCES
    an experiment checks)."""
    global _probed
    if _probed is not None:
        return _probed
    pid = os.fork()
    if pid == 0:     # pragma: no cover (child)
        try:
            libc.unshare(libc.CLONE_NEWIPC | libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE, None)
            libc.mount("tmpfs", "/dev/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    _probed = (ok, "unshare(CLONE_NEWIPC|CLONE_NEWNS) and a tmpfs on /dev/shm work here" if ok else
               "unshare(CLONE_NEWIPC|CLONE_NEWNS) or the tmpfs mount on /dev/shm is refused "
               "(not root?): runs use the prefix mode")
    return _probed


def choose(asked: str) -> str:
    """The mode a run uses: hermetic or prefix. `auto` takes hermetic where the host allows it.
    `hermetic` on a host that does not allow it is a HostRefuses (exit 2)."""
    if asked not in MODES:
        raise HostRefuses(f"isolation {asked!r}: unknown mode; accepted: {', '.join(MODES)}")
    if asked == PREFIX:
        return PREFIX
    ok, why = probe()
    if ok:
        return HERMETIC
    if asked == HERMETIC:
        raise HostRefuses(f"--isolation hermetic: {why}; accepted here: --isolation prefix or auto")
    return PREFIX


class HostRefuses(Exception):
    """The mode asked for cannot run on this host (exit 2, one line)."""


def dev_shm_options(mountinfo: str | None = None) -> str:
    """The options of the run's own /dev/shm tmpfs: the host's size and nr_inodes (so the
    profile's /dev/shm limits and the preflight's free-space check stay true), mode 1777."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    opts = ""
    for line in mountinfo.splitlines():     # the last mount on /dev/shm is the one seen
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        if len(fields) > 4 and fields[4] == "/dev/shm":
            opts = post.split()[2] if len(post.split()) > 2 else ""
    keep = [o for o in opts.split(",") if o.startswith(("size=", "nr_inodes="))]
    return ",".join(["mode=1777", *keep])


def enter(config: dict) -> None:
    """In the worker, first thing: new IPC and mount namespaces, private mounts, a tmpfs on
    /dev/shm, and the namespace's shm sysctls from the experiment's [setup]."""
    libc.unshare(libc.CLONE_NEWIPC | libc.CLONE_NEWNS)
    # fs/namespace.c: a new mount namespace copies the mounts with their propagation; make them
    # private first, or the tmpfs below would propagate to the host's /dev/shm
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE, None)
    libc.mount("tmpfs", "/dev/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               config.get("dev_shm_options") or "mode=1777")
    for name, value in (config.get("sysctl") or {}).items():
        if name not in IPC_SYSCTLS:
            raise ValueError(f"not a namespace sysctl: {name}")
        with open(f"{_SYSCTL_DIR}/{name}", "w") as f:
            f.write(str(int(value)))


def in_ipc_ns(pid: int, fn):
    """fn() run in a thread that joined the IPC namespace of pid (setns(CLONE_NEWIPC) is allowed
    for one thread of a multi-threaded process; the thread ends with the call, the manager's
    other threads never leave the host's namespace). Raises what fn or setns raised."""
    fd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    out: dict = {}

    def run():
        try:
            libc.setns(fd, libc.CLONE_NEWIPC)
            out["value"] = fn()
        except BaseException as e:      # handed to the caller
            out["error"] = e

    try:
        t = threading.Thread(target=run, name=f"shmkit-ipcns-{pid}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in out:
        raise out["error"]
    return out["value"]


def read_ipc_sysctls(pid: int | None) -> dict[str, int]:
    """The shm sysctls of pid's IPC namespace (the host's when pid is None)."""
    def read():
        vals = {}
        for name in IPC_SYSCTLS:
            with open(f"{_SYSCTL_DIR}/{name}") as f:
                vals[name] = int(f.read())
        return vals
    return read() if pid is None else in_ipc_ns(pid, read)


def dev_shm_dir(pid: int | None) -> str:
    """/dev/shm as the run sees it."""
    return "/dev/shm" if pid is None else f"/proc/{pid}/root/dev/shm"


def dev_number(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"


def ns_ids(pid: int) -> dict[str, str]:
    """The namespaces a process is in (readlink /proc/PID/ns/ipc, mnt): 'ipc:[4026531839]'."""
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("ipc", "mnt")}


def describe(rec: dict) -> str:
    """One line saying which mode a run (or prediction) record used, for the terminal account
    and the HTML report."""
    iso = rec.get("isolation") or {}
    if iso.get("mode") == HERMETIC:
        parts = []
        if iso.get("ids"):
            parts.append(f"its own IPC namespace {iso['ids'].get('ipc')} and mount namespace "
                         f"{iso['ids'].get('mnt')}")
        if iso.get("dev_shm_dev"):
            parts.append(f"its own tmpfs on /dev/shm (dev {iso['dev_shm_dev']})")
        if iso.get("ipc_sysctl"):
            parts.append(", ".join(f"{k} {v}" for k, v in iso["ipc_sysctl"].items()))
        return "isolation: hermetic (exact names, keys and shmids" + (": " + "; ".join(parts) if parts else "") + ")"
    return (f"isolation: prefix (names carry the run's prefix {rec.get('prefix') or '?'}, keys are "
            "run-unique, on the host's /dev/shm and SysV table; a killed run needs `shmkit clean`)")
