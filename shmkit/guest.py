"""Other kernels: boot one under QEMU with virtme-ng and run `shmkit validate` inside (issue 13).

The host's root filesystem is shared read-only into the guest (virtme-ng's 9p export), so the
guest runs this very shmkit with this very Python; the kernel is the only thing that changes.
What the guest needs that a shared root does not give, this module provides:

- **the kernel:** a vmlinuz path, or a Debian package name (``linux-image-6.1.0-50-amd64-unsigned``)
  fetched with ``apt-get download`` into the cache directory and unpacked there with
  ``dpkg -x``: nothing is installed, the host's boot loader is never touched. virtme-ng finds
  the unpacked modules next to the image (``ROOT/lib/modules/VERSION``, made usable with
  ``depmod``) and links them at /lib/modules in the guest;
- **a disk filesystem:** a scratch ext4 image (``mkfs.ext4``, 2 GiB sparse; created O_EXCL, mode 0600, in the
  cache directory, removed on every path; one left by a run killed with SIGKILL is removed by
  the next run once its owner process is gone) attached as a virtio-blk disk, mounted in the
  guest, and the run's TMPDIR pointed into it, so "disk" files are on ext4 as on a user's host
  and not on the guest's 9p/overlay root. /dev/shm is a tmpfs (mounted if the guest has none);
  the profile read inside the guest records both mounts (``tmpdir_mount``, ``dev_shm``);
- **writable state:** the probe store and the registry (SHMKIT_STATE) on the guest's /run;
- **a way back:** the run directory is shared read-write (``--rwdir``); the guest writes its
  progress there line by line and the record, gzip-compressed (the 9p share is slow: a full
  record is hundreds of MB of JSON), which `shmkit.record.read_json` reads as it is.

KVM is used when it works (a quick qemu start with ``-accel kvm -cpu host``, which aborts on
hosts whose KVM rejects the host CPU's MSRs), TCG emulation otherwise; the choice is reported.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from shmkit import procfs

__all__ = ["GuestError", "Kernel", "cache_dir", "resolve_kernel", "kvm_works", "ScratchDisk",
           "GuestRun", "run_guest", "find_vng", "check_kernel_spec", "DEB_NAME"]

# A Debian kernel image package: linux-image-<abi>-<flavour>[-unsigned], e.g.
# linux-image-6.1.0-50-amd64-unsigned, linux-image-6.12.118+deb12-amd64
DEB_NAME = re.compile(r"linux-image-[0-9][0-9A-Za-z.+~-]*")
# sparse: only what the guest writes takes room on the host. shmkit's preflight keeps 1 GiB of
# the temp directory's filesystem free for everybody else (shmkit/preflight.py), so the disk
# holds that reserve plus room for the experiments' files.
SCRATCH_MIB = 2048
MOUNT_POINT = "/run/shmkit-disk"


class GuestError(Exception):
    """A kernel could not be fetched or booted, or its guest did not give a record. The text is
    one line, said to the user as is (exit status 2 for bad input)."""


@dataclasses.dataclass(frozen=True)
class Kernel:
    spec: str           # as given on the command line
    vmlinuz: str        # absolute path of the image
    release: str        # from the image's name (vmlinuz-RELEASE), or the spec


def _check_private_dir(path: Path) -> None:
    """A directory shmkit keeps kernels and disk images in: ours (owned by this user) and not
    writable by anyone else, since root acts on what is in it."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise GuestError(f"{path}: cache directory is not a directory owned by uid {os.geteuid()} "
                         "and writable by it alone; accepted: such a directory (SHMKIT_CACHE)")


def cache_dir() -> Path:
    """SHMKIT_CACHE, else $XDG_CACHE_HOME/shmkit, else ~/.cache/shmkit; made 0700."""
    base = os.environ.get("SHMKIT_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = os.path.join(xdg, "shmkit")
    p = Path(base)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private_dir(p)
    return p


def _release_of(vmlinuz: str) -> str:
    name = os.path.basename(vmlinuz)
    return name[len("vmlinuz-"):] if name.startswith("vmlinuz-") else name


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise GuestError(f"{what}: {cmd[0]} not found; install it (Debian: "
                         f"{ {'apt-get': 'apt', 'dpkg': 'dpkg', 'mkfs.ext4': 'e2fsprogs', 'depmod': 'kmod'}.get(cmd[0], cmd[0]) })") from None
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise GuestError(f"{what}: {' '.join(cmd)} exited {p.returncode}: {last}")
    return p


def check_kernel_spec(spec: str) -> None:
    """A --kernel argument is an existing file or names a Debian kernel image package
    (checked before anything is fetched or booted); GuestError otherwise."""
    if os.sep in spec or os.path.exists(spec):
        if not os.path.isfile(spec):
            raise GuestError(f"--kernel {spec}: no such file; accepted: a kernel image (vmlinuz) "
                             "path, or a Debian package name such as linux-image-6.1.0-50-amd64-unsigned")
    elif not DEB_NAME.fullmatch(spec):
        raise GuestError(f"--kernel {spec}: neither a file nor a Debian kernel package name; accepted: "
                         "a vmlinuz path, or linux-image-VERSION-FLAVOUR[-unsigned] (e.g. "
                         "linux-image-6.1.0-50-amd64-unsigned)")


def resolve_kernel(spec: str, cache: Path | None = None,
                   say: Callable[[str], None] = lambda s: None) -> Kernel:
    """A --kernel argument: an existing vmlinuz file, or a Debian kernel image package fetched
    and unpacked into the cache (reused when already there). Anything else is bad input."""
    check_kernel_spec(spec)
    if os.sep in spec or os.path.exists(spec):
        path = os.path.abspath(spec)
        return Kernel(spec, path, _release_of(path))
    return _fetch_deb(spec, cache or cache_dir(), say)


def _vmlinuz_in(root: Path) -> Path | None:
    found = sorted((root / "boot").glob("vmlinuz-*"))
    return found[0] if len(found) == 1 else None


def _fetch_deb(pkg: str, cache: Path, say: Callable[[str], None]) -> Kernel:
    kernels = cache / "kernels"
    kernels.mkdir(mode=0o700, exist_ok=True)
    _check_private_dir(kernels)
    root = kernels / pkg
    if not root.exists():
        say(f"{pkg}: apt-get download, dpkg -x into {root}")
        work = Path(tempfile.mkdtemp(prefix=f".{pkg}-", dir=kernels))
        try:
            # apt-get download runs its fetch as the _apt user where it can: let it write here
            os.chmod(work, 0o755)
            _run(["apt-get", "download", "-q", pkg], f"--kernel {pkg}", cwd=work)
            debs = list(work.glob("*.deb"))
            if len(debs) != 1:
                raise GuestError(f"--kernel {pkg}: apt-get download gave {len(debs)} .deb files; expected one")
            _run(["dpkg", "-x", str(debs[0]), str(work / "root")], f"--kernel {pkg}")
            img = _vmlinuz_in(work / "root")
            if img is None:
                raise GuestError(f"--kernel {pkg}: the package holds no single boot/vmlinuz-*; "
                                 "accepted: a linux-image-* package with the kernel image in it")
            # virtme-ng needs modules.dep to load the guest's modules (virtio, 9p, ext4);
            # dpkg -x does not run the package's depmod trigger
            _run(["depmod", "-a", "-b", str(work / "root"), _release_of(str(img))], f"--kernel {pkg}")
            os.chmod(work / "root", 0o700)
            os.rename(work / "root", root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    img = _vmlinuz_in(root)
    if img is None:
        raise GuestError(f"--kernel {pkg}: {root} holds no single boot/vmlinuz-*; remove it to fetch again")
    return Kernel(pkg, str(img), _release_of(str(img)))


def kvm_works(qemu: str = "qemu-system-x86_64") -> bool:
    """Whether QEMU can start a vCPU under KVM with the host's CPU model. On some hosts
    /dev/kvm exists but KVM refuses the host CPU's MSRs and QEMU aborts at vCPU reset
    ("failed to set MSR 0x10a"); that shows within a second, before any guest code runs."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(qemu) is None:
        return False
    try:
        p = subprocess.run([qemu, "-accel", "kvm", "-cpu", "host", "-nodefaults", "-display", "none",
                            "-S", "-qmp", "stdio"],
                           input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
                           capture_output=True, text=True, timeout=60)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return p.returncode == 0 and "error" not in p.stderr.lower()


class ScratchDisk:
    """A scratch ext4 image for one guest run, in the cache directory: created with O_EXCL and
    mode 0600 under a name that carries this process's pid, formatted with mkfs.ext4, removed
    when the context ends (normally, on an exception or an interrupt). Images whose owner
    process is gone (a run killed with SIGKILL) are removed on entry."""

    def __init__(self, cache: Path, mib: int = SCRATCH_MIB):
        self.dir = cache / "disks"
        self.mib = mib
        self.path: Path | None = None

    def _remove_stale(self) -> None:
        for p in self.dir.glob("scratch-*.img"):
            m = re.fullmatch(r"scratch-(\d+)-[0-9a-z_]+\.img", p.name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if m and stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not procfs.alive(int(m.group(1))):
                p.unlink(missing_ok=True)

    def __enter__(self) -> "ScratchDisk":
        self.dir.mkdir(mode=0o700, exist_ok=True)
        _check_private_dir(self.dir)
        self._remove_stale()
        token = os.urandom(6).hex()
        self.path = self.dir / f"scratch-{os.getpid()}-{token}.img"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.mib << 20)
        finally:
            os.close(fd)
        try:
            # no lazy init: the guest's first writes would otherwise race ext4lazyinit's zeroing
            _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                  "-L", "shmkit-scratch", str(self.path)], "scratch disk")
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def find_vng() -> str | None:
    """virtme-ng's `vng`: on PATH, or beside this Python (a venv with the `matrix` extra)."""
    here = Path(sys.executable).parent / "vng"
    return shutil.which("vng") or (str(here) if here.exists() else None)


# The command run inside the guest (as root, by virtme-ng's init). It says each phase on the
# progress file, so the host can show it while the guest runs.
GUEST_SCRIPT = r"""#!/bin/sh
out={out}
say() {{ echo "$*" >> "$out/progress"; }}
fail() {{ say "error $*"; echo 2 > "$out/rc"; exit 0; }}
say "booted $(uname -r)"
modprobe -q virtio_blk 2>/dev/null; modprobe -q ext4 2>/dev/null
# the scratch disk is the guest's only virtio-blk disk (vd*), whatever its serial
dev=""
for d in /sys/block/vd*; do
    [ -e "$d" ] || continue
    [ -z "$dev" ] || fail "more than one virtio disk in the guest"
    dev=/dev/${{d##*/}}
done
i=0
while [ -z "$dev" ] && [ $i -lt 30 ]; do
    sleep 1; i=$((i + 1))
    for d in /sys/block/vd*; do [ -e "$d" ] && dev=/dev/${{d##*/}}; done
done
[ -n "$dev" ] || fail "no virtio disk in the guest (virtio_blk not loaded?)"
mkdir -p {mnt} && mount -t ext4 "$dev" {mnt} 2>>"$out/guest.err" || fail "cannot mount $dev as ext4 on {mnt}"
mkdir -p {mnt}/tmp && chmod 1777 {mnt}/tmp
# /dev/shm must be a tmpfs, as on a user's host
if ! awk '$5 == "/dev/shm" && $0 ~ / - tmpfs / {{ f = 1 }} END {{ exit !f }}' /proc/self/mountinfo; then
    mkdir -p /dev/shm && mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm || fail "cannot mount a tmpfs on /dev/shm"
fi
say "disk $dev ext4 on {mnt}"
# khugepaged: Debian's kernels default to THP "always", and under TCG a run lasts ~12 times
# longer, so khugepaged's background passes (every 10 s) collapse the workers' own heaps
# mid-step and runs come out perturbed (seen on 6.12: the write_notify probe perturbed on
# all its attempts). Its passes are spaced to an hour; THP modes stay as the kernel set them
# and MADV_COLLAPSE (synchronous) is untouched.
k=/sys/kernel/mm/transparent_hugepage/khugepaged
if [ -w $k/scan_sleep_millisecs ]; then
    echo 3600000 > $k/scan_sleep_millisecs && echo 3600000 > $k/alloc_sleep_millisecs &&
        say "khugepaged passes every hour (was every 10 s)"
fi
# the same for the periodic writeback of dirty pages (every 5 s, of pages dirty for 30 s):
# mid-step it cleans the experiments' own shared file pages, which validate reports as a
# perturbation. msync, fsync and writeback under memory pressure work as before.
echo 0 > /proc/sys/vm/dirty_writeback_centisecs && say "periodic writeback off (vm.dirty_writeback_centisecs 0)"
# the kernel's build config, as a distribution installs it next to its image: the guest sees
# the host's /boot, so the package's config-RELEASE goes on a tmpfs /boot of the guest's own
# (Debian's kernels have no /proc/config.gz); the profile reads the config the model keys on
config={config}
if [ -n "$config" ] && [ -r "$config" ]; then
    mount -t tmpfs -o mode=0755 tmpfs /boot && cp "$config" "/boot/config-$(uname -r)" &&
        say "kernel config $config as /boot/config-$(uname -r)"
fi
mkdir -p -m 0700 /run/shmkit-state
export TMPDIR={mnt}/tmp SHMKIT_STATE=/run/shmkit-state
cd {mnt}/tmp
{python} -m shmkit validate {args} --progress-file "$out/progress" --json {mnt}/record.json \
    > "$out/validate.out" 2> "$out/validate.err"
rc=$?
if [ -f {mnt}/record.json ]; then
    say "record"
    gzip -1 -c {mnt}/record.json > "$out/record.json.gz.part" && mv "$out/record.json.gz.part" "$out/record.json.gz"
fi
sync
umount {mnt}
echo $rc > "$out/rc"
say "done $rc"
"""


@dataclasses.dataclass
class GuestRun:
    """What one guest gave back."""

    kernel: Kernel
    accel: str                      # "kvm" or "tcg"
    seconds: float
    status: int | None              # validate's exit status in the guest; None: none came back
    record: str | None              # the record (gzip JSON), while the run directory exists
    error: str | None = None
    progress: list[str] = dataclasses.field(default_factory=list)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _set_pdeathsig() -> None:
    # the guest dies with this process, even when it is killed with SIGKILL
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_guest(kernel: Kernel, files: list[str], run_dir: Path, cache: Path, *, accel: str, cpus: int = 2,
              memory: str = "4G", attempts: int = 3, step_timeout: float = 600.0,
              boot_timeout: float = 900.0, timeout: float | None = None,
              on_progress: Callable[[str], None] = lambda s: None) -> GuestRun:
    """Boots `kernel` with virtme-ng, runs validate on `files` inside with a scratch ext4 disk,
    and returns what came back. `run_dir` (private, empty) is shared with the guest read-write;
    the record stays there until the caller removes it. A guest that does not say it booted
    within `boot_timeout` seconds, or does not finish within `timeout`, is stopped."""
    vng = find_vng()
    if vng is None:
        raise GuestError("vng (virtme-ng) not found on PATH nor beside this Python; install it: "
                         "pip install 'shmkit[matrix]' (or pip install virtme-ng)")
    if shutil.which("qemu-system-x86_64") is None:
        raise GuestError("qemu-system-x86_64 not found; install it (Debian: apt-get install qemu-system-x86)")
    args = " ".join(shlex.quote(a) for a in
                    [*map(os.path.abspath, files), "--attempts", str(attempts), "--timeout", str(step_timeout)])
    script = run_dir / "guest.sh"
    config = Path(kernel.vmlinuz).parent / f"config-{kernel.release}"
    script.write_text(GUEST_SCRIPT.format(out=shlex.quote(str(run_dir)), mnt=MOUNT_POINT,
                                          python=shlex.quote(sys.executable), args=args,
                                          config=shlex.quote(str(config)) if config.is_file() else "''"))
    os.chmod(script, 0o700)
    t0 = time.monotonic()
    with ScratchDisk(cache) as disk:
        cmd = [vng, "--run", kernel.vmlinuz, "--force-9p", "--cpus", str(cpus), "--memory", memory,
               "--rwdir", str(run_dir), "--disk", str(disk.path), "--exec", str(script)]
        if accel == "tcg":
            cmd.append("--disable-kvm")
        env = dict(os.environ)
        # vng starts virtme-run through /bin/sh: its directory must be on PATH
        env["PATH"] = os.path.dirname(os.path.abspath(vng)) + os.pathsep + env.get("PATH", "")
        log = open(run_dir / "vng.log", "wb")
        seen: list[str] = []
        error = None
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, preexec_fn=_set_pdeathsig)
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    seen = _progress(run_dir, seen, on_progress)
                    took = time.monotonic() - t0
                    if not seen and took > boot_timeout:
                        error = f"the guest did not boot within {boot_timeout:.0f} s"
                        break
                    if timeout is not None and took > timeout:
                        error = f"the guest did not finish within {timeout:.0f} s"
                        break
            finally:
                _kill_group(proc)
        finally:
            log.close()
        seen = _progress(run_dir, seen, on_progress)
    rc_file = run_dir / "rc"
    status = int(rc_file.read_text().strip()) if rc_file.exists() else None
    rec = run_dir / "record.json.gz"
    errs = [s[len("error "):] for s in seen if s.startswith("error ")]
    if error is None and errs:
        error = errs[0]
    if error is None and not rec.exists():
        tail = _tail(run_dir / "validate.err") or _tail(run_dir / "vng.log")
        error = f"no record came back (vng exit {proc.returncode}): {tail}"
    return GuestRun(kernel, accel, time.monotonic() - t0, status, str(rec) if rec.exists() else None,
                    error, seen)


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _progress(run_dir: Path, seen: list[str], on_progress: Callable[[str], None]) -> list[str]:
    try:
        lines = (run_dir / "progress").read_text(errors="replace").split("\n")[:-1]   # whole lines
    except OSError:
        return seen
    for ln in lines[len(seen):]:
        on_progress(ln)
    return lines
