"""The parent of a run: spawns workers, sends each step to the process it names,
enforces timeouts, observes every live process after every step, detects steps
perturbed by the interpreter, retries, and cleans up on every path.

Role split as in pyperf's _manager.py; the worker side is shmkit.worker.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from model import pads as padding
from shmkit import interrupt, isolation, libc, procfs, protocol, record
from shmkit.observe import PAGE, process_view, residency, system_view, zero_page_pfn
from shmkit.procfs import alive, process_start
from shmkit.registry import Run
from shmkit.predict import process_inputs
from model.pages import page_align, pages_of
from model.flags import MCL, bits
from model.resolve import Names, Skip

PR_SET_CHILD_SUBREAPER = 36
READY_TIMEOUT = 60.0


class HarnessError(Exception):
    """The harness itself failed (not the experiment): exit status 2."""


class WorkerLost(Exception):
    def __init__(self, proc: str, how: dict, step: int | None):
        super().__init__(f"process '{proc}' {how} at step {step}")
        self.proc, self.how, self.step = proc, how, step


@dataclass
class Proc:
    name: str
    pid: int
    sock: socket.socket
    parent: str | None
    popen: subprocess.Popen | None = None
    alive: bool = True
    regions: dict = field(default_factory=dict)
    interp: dict = field(default_factory=dict)  # (start,end) -> fingerprint of the interpreter's VMAs
    pads: list = field(default_factory=list)
    seen: set = field(default_factory=set)      # (start, end) of every VMA at the last observation


class Manager:
    """Runs one experiment once (an attempt). Use run_experiment() for retries."""

    def __init__(self, exp, step_timeout: float = 60.0, zero_pfn: int | None = None,
                 isolate: str | None = None):
        self.exp = exp
        self.timeout = step_timeout
        # shmkit.isolation: hermetic where the host allows it, unless asked otherwise
        self.isolation = isolation.choose(isolate or isolation.asked())
        limits = ipc_limits(exp.setup)
        if limits and self.isolation != isolation.HERMETIC:
            raise HarnessError(f"{exp.path}: setup: {', '.join(limits)}: a SysV limit can be set only in "
                               "the hermetic mode (this run uses the prefix mode); accepted: "
                               "--isolation hermetic or auto on a host that allows namespaces (root)")
        self.run = Run(user=exp.setup.user, isolation=self.isolation)
        self.ns: dict = {}                  # the run's namespaces, as read once the worker is ready
        # a worker's start (interpreter, heap, warm-up, pads) may take as long as a step: under
        # QEMU's TCG (shmkit matrix, --guest-step-timeout) it took over 60 s on a loaded host
        self.ready_timeout = max(READY_TIMEOUT, step_timeout)
        self.procs: dict[str, Proc] = {}
        self.zero_pfn = zero_pfn
        # the names the steps create and each handle's shmid (model.resolve.Names, as the model's)
        self.naming = Names(self.run)
        self.collapsed: int | None = None   # khugepaged's pages_collapsed at the last observation
        self.last_view: dict = {}           # the processes as the last observation saw them

    # ----- process management --------------------------------------------------------
    def spawn_main(self) -> Proc:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        setup = self.exp.setup
        config = {
            "name": "main", "manager": os.getpid(), "aslr": setup.aslr, "layout": setup.layout,
            "rlimits": [list(r) for r in setup.rlimits], "user": setup.user, "cwd": str(self.run.dir),
            "run": self.run.run_id,   # on the command line: `shmkit clean` proves a pid is this run's worker
            "isolation": self.isolation,
        }
        if self.isolation == isolation.HERMETIC:
            config["dev_shm_options"] = isolation.dev_shm_options()
            config["sysctl"] = ipc_limits(setup)
        env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONTRACEMALLOC", None)
        with interrupt.deferred():      # a worker that runs is a worker shutdown() knows
            popen = subprocess.Popen(
                [sys.executable, "-m", "shmkit.worker", str(theirs.fileno()), json.dumps(config)],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, close_fds=True,
                # a process group of its own: a terminal's Ctrl-C (sent to the foreground group)
                # reaches the manager alone, which stops the run and kills its workers itself; a
                # worker hit by SIGINT while its interpreter starts would only print a traceback
                # (shmkit.bench's workers have their own session for the same reason)
                process_group=0)
            theirs.close()
            proc = Proc("main", popen.pid, ours, None, popen)
            self.procs["main"] = proc
            self.run.note({"kind": "worker", "pid": popen.pid, "start": process_start(popen.pid), "name": "main"})
        ready = self._recv(proc, self.ready_timeout, None)
        if "ready" not in ready:
            raise HarnessError(f"worker did not start: {ready.get('error', ready)}")
        if self.isolation == isolation.HERMETIC:
            self.run.guard_namespace(proc.pid)
            # what the kernel shows of the run's namespaces (not what was asked for)
            self.ns = {"ids": isolation.ns_ids(proc.pid),
                       "ipc_sysctl": isolation.read_ipc_sysctls(proc.pid),
                       "dev_shm_dev": isolation.dev_number(isolation.dev_shm_dir(proc.pid))}
        proc.pads = ready.get("pads", [])
        _write_back_mapped_files(proc.pid)
        self._record_interp(proc)
        self.collapsed = khugepaged_collapsed()
        return proc

    def _recv(self, proc: Proc, timeout: float, step: int | None):
        r, _, _ = select.select([proc.sock], [], [], timeout)
        if not r:
            self._kill(proc)
            raise WorkerLost(proc.name, {"timeout": timeout, "status": self._reap(proc)}, step)
        try:
            return protocol.recv(proc.sock)
        except (EOFError, ConnectionResetError):
            proc.alive = False
            raise WorkerLost(proc.name, {"died": self._reap(proc)}, step)

    def _kill(self, proc: Proc) -> None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.alive = False

    def _reap(self, proc: Proc):
        """Exit status of a worker: the manager waits for its own child; a forked
        worker is waited for by its parent worker, or by us as subreaper once that
        parent is gone (kernel/exit.c: forget_original_parent)."""
        if proc.popen is not None:
            try:
                code = proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                return None
            return {"signal": signal.Signals(-code).name} if code < 0 else {"exit": code}
        parent = self.procs.get(proc.parent or "")
        if parent is not None and parent.alive:
            try:
                protocol.send(parent.sock, {"cmd": "reap", "pid": proc.pid})
                return self._recv(parent, 10, None).get("status")
            except (WorkerLost, OSError):
                pass
        try:
            _, status = os.waitpid(proc.pid, 0)
        except ChildProcessError:
            return None
        if os.WIFSIGNALED(status):
            return {"signal": signal.Signals(os.WTERMSIG(status)).name}
        return {"exit": os.WEXITSTATUS(status)}

    def open(self) -> None:
        """Creates the run's directory and registry: both, or (on a signal) neither yet."""
        with interrupt.deferred():
            self.run.open()

    def close(self) -> list[str]:
        """Kills every worker and removes everything the run created, whole: a signal that
        arrives meanwhile is raised after it (shmkit.interrupt). Returns what was removed."""
        with interrupt.deferred():
            try:
                self.shutdown()
            finally:
                removed = self.run.cleanup()
        return removed

    def shutdown(self) -> None:
        killed = {proc.pid: process_start(proc.pid) for proc in self.procs.values() if proc.alive}
        for proc in reversed(list(self.procs.values())):
            if proc.alive:
                self._kill(proc)
        for proc in reversed(list(self.procs.values())):
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            proc.sock.close()
        self._reap_orphans()
        # A SIGKILLed worker holds its SysV attachments until exit_mm (kernel/exit.c do_exit):
        # wait, bounded, until every worker killed here is gone or a zombie (its mm released),
        # so that the cleanup and what follows see the final nattch (a forked worker is not
        # ours to wait for until its parent is gone; under load it may still be exiting).
        deadline = time.monotonic() + 10
        while any(alive(pid, start) for pid, start in killed.items() if start is not None) \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        # orphans adopted by us as subreaper
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break

    def _reap_orphans(self) -> None:
        """Kills and waits for every worker of this run that is now our child: the forked ones,
        orphaned by the kill of their parent worker above and so ours as subreaper
        (kernel/exit.c: forget_original_parent runs before the parent can be reaped), including
        one that no Proc names (forked by a step whose reply a signal or a timeout cut off).
        After this no worker of the run runs or holds a SysV attachment (a dying process holds
        its attachments until exit_mm). A worker's command line carries the run's directory."""
        mark = json.dumps(str(self.run.dir)).encode()
        for _ in range(10):
            strays = [pid for pid in procfs.children(os.getpid()) if _is_worker_of(pid, mark)]
            if not strays:
                return
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass

    # ----- observation -------------------------------------------------------------------
    def _record_interp(self, proc: Proc) -> None:
        """Fingerprints of the VMAs that are not the experiment's (the interpreter's,
        the pads): any later change to them that a step cannot explain is a perturbation."""
        view = process_view(proc.pid)
        exp = [(a, a + page_align(max(n, 1), PAGE)) for a, n, _m, _k in proc.regions.values()]
        proc.interp = {(v["start"], v["end"]): _fingerprint(v) for v in view["vmas"]
                       if not any(s < v["end"] and v["start"] < e for s, e in exp)}

    def observe(self) -> dict:
        out = {}
        for name, proc in self.procs.items():
            if not proc.alive:
                continue
            view = process_view(proc.pid)
            regions = {}
            for handle, (addr, length, mapped, kind) in proc.regions.items():
                if handle.startswith("_"):
                    continue
                npages = pages_of(length, PAGE)
                # an unmapped region's range may hold another mapping now: no residency
                res = residency(proc.pid, addr, npages, self.zero_pfn) if mapped and npages < (1 << 22) else None
                regions[handle] = {"addr": addr, "length": length, "mapped": mapped, "kind": kind,
                                   **(res.to_dict() if res else {})}
            out[name] = {"pid": proc.pid, "maps": view["lines"], "vmas": view["vmas"], "regions": regions}
        self.last_view = out
        return out

    def ns_pid(self) -> int | None:
        """A live process of the run, through which its namespaces are read (hermetic mode);
        None in the prefix mode. When none lives, the namespaces are gone."""
        if self.isolation != isolation.HERMETIC:
            return None
        return next((p.pid for p in self.procs.values() if p.alive), -1)

    def sysv_segments(self) -> list:
        """/proc/sysvipc/shm as the run's processes see it."""
        pid = self.ns_pid()
        if pid is None:
            return procfs.read_sysvipc_shm()
        if pid < 0:
            return []
        return isolation.in_ipc_ns(pid, procfs.read_sysvipc_shm)

    def system(self) -> dict:
        pid = self.ns_pid()
        if pid is not None and pid < 0:
            return {"dev_shm": [], "sysv": []}     # the namespaces went with the last process
        if pid is None:
            return system_view(self.run.prefix, set(self.naming.keys), set(self.naming.shmids.values()))
        # hermetic: the run's /dev/shm and IPC namespace hold nothing but the run's own
        return system_view("", None, None, dev_shm=isolation.dev_shm_dir(pid), segments=self.sysv_segments())

    def perturbation(self, proc: Proc, view: dict, affected: list, op: str) -> list[str]:
        """Interpreter VMAs that changed though the step could not have changed them."""
        if op in ("fork", "mlockall-populate"):
            return []
        problems = []
        now = {(v["start"], v["end"]): v for v in view["vmas"]}
        for (s, e), fp in proc.interp.items():
            if any(a < e and s < b for a, b in affected):
                continue
            v = now.get((s, e))
            if v is None:
                problems.append(f"interpreter VMA {s:x}-{e:x} changed shape")
            elif (now_fp := _fingerprint(v)) != fp:
                what = f"interpreter VMA {s:x}-{e:x} {v['path'] or '[anon]'}"
                if _only_lost_pages(fp, now_fp):
                    # A step can only add pages to a VMA it does not touch (by faulting);
                    # pages leaving a file VMA were taken by the kernel: reclaim or invalidation.
                    problems.append(f"{what} {LOST_PAGES} (Rss {fp[4]} -> {now_fp[4]} kB)")
                else:
                    problems.append(f"{what} changed: {fp} -> {now_fp}")
        # A VMA "appears" when it was not there at the last observation: the experiment's own
        # VMAs that no handle covers any more (the rest of a region after a partial mremap,
        # the old range of MREMAP_DONTUNMAP) were there, and are not the interpreter's doing.
        known = set(proc.interp) | proc.seen
        for (s, e), v in now.items():
            if (s, e) in known or any(a < e and s < b for a, b in affected):
                continue
            if not any(r[0] < e and s < r[0] + max(r[1], 1) for r in proc.regions.values()):
                problems.append(f"VMA {s:x}-{e:x} {v['path'] or '[anon]'} appeared outside the step")
        return problems

    # ----- steps ------------------------------------------------------------------------------
    def resolve(self, step) -> dict:
        """The worker's arguments: the step's call (model.resolve, the one resolver the model
        uses too) against the acting process's regions; raises model.resolve.Skip. The run's
        bookkeeping of the names it creates (for the record and the cleanup) goes with it."""
        regions = {h: (r[0], r[1]) for h, r in self.procs[step.proc].regions.items()}
        return self.naming.resolve(step.do, step.arg, regions, PAGE, note=self.run.note)

    def take_step(self, step) -> dict:
        """Runs one step and observes every process: the step's record (docs/record.md), with
        the perturbations found. After a perturbed step the interpreter's VMAs are recorded
        again, so the next step is judged against this state, not the perturbed one."""
        vm_before = procfs.read_vmstat()
        before = self.last_view
        reply = self.do_step(step)
        processes = self.observe()
        vm_after = procfs.read_vmstat()
        problems = []
        for name, view in processes.items():
            aff = reply.get("affected", []) if name == step.proc else []
            problems += [f"{name}: {p}" for p in self.perturbation(self.procs[name], view, aff, _kind_of(step))]
        problems += self._khugepaged(processes)
        problems += self._writeback(step, reply, before, processes, vm_before, vm_after)
        if problems:  # say what the kernel was doing meanwhile, if /proc/vmstat shows it
            moved = procfs.background_activity(vm_before, vm_after)
            problems.append("kernel background activity during the step: " + (
                ", ".join(f"{k} +{v}" for k, v in moved.items()) if moved
                else "none seen in /proc/vmstat"))
            for name in processes:
                self._record_interp(self.procs[name])
        for name, view in processes.items():
            self.procs[name].seen = {(v["start"], v["end"]) for v in view["vmas"]}
        return record.step_record(
            step, result=reply["result"], faults=_faults(reply.get("faults")), value=reply.get("value"),
            note=reply.get("note"), call=reply.get("call"), processes=processes, system=self.system(),
            perturbed=problems or None, exit_status=reply.get("status"), yielded=reply.get("yielded") or None)

    def pads_in_the_way(self, proc: Proc, op: str, call: dict) -> list[list[int]]:
        """The pieces of the worker's pads inside the address range the call asks for
        (model.pads, the same rule the model applies), from the worker's maps as they are now."""
        target = padding.target_range(op, call)
        if target is None:
            return []
        _, vmas = procfs.read_maps(proc.pid)
        return [[a, b] for a, b in padding.pieces_in_the_way(((v.start, v.end, v.path) for v in vmas), target)]

    def _expect_yield(self, proc: Proc, pieces) -> None:
        """The pads the worker unmapped before the step are explained by the step: what is left
        of each must stay as it was (the upper part's offset grows by the distance cut off), and
        the range itself is the step's to fill."""
        for (s, e), fp in list(proc.interp.items()):
            if any(a < e and s < b for a, b in pieces):
                del proc.interp[(s, e)]
                for a, b, offset in padding.what_is_left(s, e, fp[1], pieces):
                    proc.interp[(a, b)] = (fp[0], offset) + fp[2:]

    def _khugepaged(self, processes: dict) -> list[str]:
        """khugepaged collapses PTE-mapped ranges of VM_HUGEPAGE VMAs (or of any anonymous VMA
        under THP "always") into new THPs on its own schedule (mm/khugepaged.c
        khugepaged_scan_mm_slot -> collapse_huge_page, every scan_sleep_millisecs): a collapse
        in a run's process changes its smaps (AnonHugePages, Rss, Pss), pagemap and later faults
        between two steps, at a moment no model can know (measured: thp-fork-split's split
        THP collapsed back in 2 of 30 runs run two at a time). The kernel counts every
        khugepaged collapse on the host (khugepaged/pages_collapsed; MADV_COLLAPSE does not
        count there): when it moved since the last observation and a process of the run has
        memory khugepaged may collapse, the step is perturbed (and the experiment retried)."""
        before, self.collapsed = self.collapsed, khugepaged_collapsed()
        if before is None or self.collapsed is None or self.collapsed <= before:
            return []
        always = _thp_enabled() == "always"
        if not any(always or "hg" in (v.get("vmflags") or []) for view in processes.values()
                   for v in view["vmas"]):
            return []
        return [f"{KHUGEPAGED} {self.collapsed - before} huge page(s) on this host since the "
                "last observation (khugepaged/pages_collapsed), and this run has memory it may collapse"]

    def _disk_file_vmas(self, view: dict) -> dict:
        """The VMAs of a process that map one of the run's own disk files (not /dev/shm):
        (start, end, inode, offset) -> (perms, Rss kB, dirty kB)."""
        own = str(self.run.dir) + "/"
        out = {}
        for v in view["vmas"]:
            if v["path"].startswith(own) and v["path"] in self.naming.files:
                k = v.get("smaps_kb", {})
                out[(v["start"], v["end"], v["inode"], v["offset"])] = (
                    v["perms"], k.get("Rss") or 0, (k.get("Private_Dirty") or 0) + (k.get("Shared_Dirty") or 0))
        return out

    def _writeback(self, step, reply: dict, before: dict, after: dict, vm_before: dict,
                   vm_after: dict) -> list[str]:
        """The kernel's flusher writing back the run's own mapped disk files during a step.
        Writeback cleans a mapped page (mm/page-writeback.c:folio_clear_dirty_for_io ->
        folio_mkclean clears the pte's dirty bit), so smaps moves it from *_Dirty to *_Clean
        at a moment no model can know: the dirty_expire_centisecs timer, or another process
        pushing the host past dirty_background_ratio (measured: under CI writing gigabytes,
        mmap-shared-file showed Private_Clean where every page had been written).
        Two signs, both from the kernel's own rules rather than from the model:
        - after a step that cannot clean a page (CANNOT_CLEAN: no msync, fsync, fadvise,
          truncate, unmap or zap), the dirty total of a disk-file VMA that is still there
          went down;
        - a successful write touch of a shared disk-file mapping left fewer dirty kB in a VMA
          than it wrote there while /proc/vmstat nr_written moved during the step (every page
          the step wrote must be dirty: mm/memory.c:wp_page_shared / do_shared_fault ->
          folio_mark_dirty, and pte_mkdirty on the write fault)."""
        if step.do not in CANNOT_CLEAN:
            return []
        problems = []
        for name, view in after.items():
            now = self._disk_file_vmas(view)
            was = self._disk_file_vmas(before[name]) if name in before else {}
            for key, (perms, rss, dirty) in now.items():
                if key in was and dirty < was[key][2]:
                    problems.append(f"{name}: {WRITTEN_BACK}: VMA {key[0]:x}-{key[1]:x} dirty "
                                    f"{was[key][2]} -> {dirty} kB after a {step.do} step")
        written = vm_after.get("nr_written", 0) - vm_before.get("nr_written", 0)
        touched = self._written_range(step, reply.get("call")) if reply.get("result") == "ok" else None
        if not problems and written > 0 and touched and step.proc in after:
            a, b = touched
            for (s, e, _ino, _off), (perms, rss, dirty) in self._disk_file_vmas(after[step.proc]).items():
                must = (min(b, e) - max(a, s)) // 1024     # kB the step wrote in this VMA
                if "s" in perms and must > 0 and dirty < must:
                    problems.append(f"{step.proc}: {WRITTEN_BACK}: the step wrote {must} kB of the shared "
                                    f"disk-file VMA {s:x}-{e:x} and only {dirty} kB of it are dirty; the "
                                    f"kernel wrote back {written} page(s) host-wide meanwhile (/proc/vmstat nr_written)")
        return problems

    @staticmethod
    def _written_range(step, call: dict | None) -> tuple[int, int] | None:
        """The page-aligned byte range a successful write touch wrote: the pages of its call
        (model.resolve), one access in each."""
        if step.do != "touch" or call is None or call["access"] != "write":
            return None
        start = call["addr"] - call["addr"] % PAGE
        return start, start + call["pages"] * PAGE

    def names(self) -> dict:
        """The real name of every handle (the record's "names"), for the normal form."""
        return self.naming.record()

    def do_step(self, step) -> dict:
        proc = self.procs[step.proc]
        try:
            args = self.resolve(step)
        except Skip as e:       # the same result the model gives (model.resolve)
            return {"result": e.result, "call": None}
        fds: list[int] = []
        child_sock = None
        if step.do == "fork":
            child_sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds = [theirs.fileno()]
        msg = {"cmd": "step", "op": step.do, "args": args}
        in_the_way = self.pads_in_the_way(proc, step.do, args)
        if in_the_way:
            msg["yield"] = in_the_way
        protocol.send(proc.sock, msg, fds)
        if child_sock is not None:
            theirs.close()
        reply = self._recv(proc, self.timeout, step.index)
        if "error" in reply:
            raise HarnessError(f"step {step.index} (do={step.do}): the worker refused: {reply['error']}")
        if reply.get("yielded"):
            self._expect_yield(proc, reply["yielded"])
        proc.regions = reply.get("regions", proc.regions)
        self.naming.done(step.do, step.arg, reply["result"], reply.get("value"))
        if step.do == "shmget" and reply["result"] == "ok":
            self.run.note({"kind": "sysv", "key": args["key"], "shmid": reply["value"]["shmid"]})
        if step.do == "fork":
            if reply["result"] == "ok":
                pid = reply["value"]["pid"]
                self.run.note({"kind": "worker", "pid": pid, "start": process_start(pid), "name": args["child"]})
                child = Proc(args["child"], pid, child_sock, proc.name)
                self.procs[child.name] = child
                ready = self._recv(child, self.ready_timeout, step.index)
                child.regions = ready.get("regions", {})
                child.pads = proc.pads
                self._record_interp(child)
                self._record_interp(proc)
            else:
                child_sock.close()
        if _kind_of(step) == "mlockall-populate":
            # mlockall(MCL_CURRENT) locks and faults in the interpreter's own VMAs too: what
            # they hold now is the new reference for the next steps
            self._record_interp(proc)
        if step.do == "exit" and reply["result"] == "ok":
            proc.alive = False
            reply["status"] = self._reap(proc)
        reply["call"] = args
        return reply


WRITTEN_BACK = "mapped file pages written back by the kernel"
# Operations that cannot make a resident page of a mapped file clean (see Manager._writeback).
CANNOT_CLEAN = frozenset({"noop", "touch", "read", "mmap", "mprotect", "mlock", "munlock", "open",
                          "shm_open", "shm_unlink", "memfd", "shmget", "shmat", "shmctl", "rlimit",
                          "fork", "write", "mlockall", "munlockall", "settle"})
LOST_PAGES = "lost pages or dirtiness the step did not touch"
KHUGEPAGED = "khugepaged collapsed"
_THP = "/sys/kernel/mm/transparent_hugepage"


def khugepaged_collapsed() -> int | None:
    """How many huge pages khugepaged has collapsed on this host since boot (None: unknown)."""
    try:
        with open(f"{_THP}/khugepaged/pages_collapsed") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _thp_enabled() -> str | None:
    try:
        with open(f"{_THP}/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.find("[") + 1:text.find("]")] if "[" in text else None


def _only_lost_pages(before: tuple, after: tuple) -> bool:
    """In a file VMA without anonymous pages, Rss or the dirty total only went down: the
    kernel took pages away (reclaim, invalidation) or wrote them back (the flusher cleans a
    freshly written library about 30 s after it was written). A step's own accesses to
    memory it does not name can only add pages, dirty ones, or anonymous copies."""
    if not (before[:4] == after[:4] and before[3] is not None and before[3].startswith("/")):
        return False
    if before[5] or after[5]:
        return False
    rss_b, rss_a = before[4] or 0, after[4] or 0
    dirty_b, dirty_a = before[6] or 0, after[6] or 0
    return rss_a <= rss_b and dirty_a <= dirty_b and (rss_a < rss_b or dirty_a < dirty_b)


def _write_back_mapped_files(pid: int) -> None:
    """fsync every regular file the worker maps (its interpreter, libraries and extension
    modules) before its memory is fingerprinted: a library written moments ago (a fresh
    install) has dirty page-cache pages, and the flusher cleaning them mid-run would change
    the worker's smaps without any step doing so."""
    seen = set()
    for v in process_view(pid)["vmas"]:
        path = v["path"]
        if not path.startswith("/") or path.endswith(" (deleted)") or path in seen:
            continue
        seen.add(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _kind_of(step) -> str:
    """The step's operation, or "mlockall-populate" for an mlockall that faults in every VMA
    of the process (MCL_CURRENT without MCL_ONFAULT: mm/mlock.c sys_mlockall -> mm_populate(0,
    TASK_SIZE)), which changes the interpreter's VMAs as fork does."""
    flags = bits(MCL, step.get("flags") or ()) if step.do == "mlockall" else 0
    return "mlockall-populate" if flags & MCL["CURRENT"] and not flags & MCL["ONFAULT"] else step.do


def _fingerprint(v: dict) -> tuple:
    k = v.get("smaps_kb", {})
    # Rss, Anonymous and the dirty total change only by this process's own accesses;
    # the Shared/Private split changes when another process forks or exits.
    return (v["perms"], v["offset"], v["inode"], v["path"], k.get("Rss"), k.get("Anonymous"),
            (k.get("Private_Dirty") or 0) + (k.get("Shared_Dirty") or 0))


def _is_worker_of(pid: int, mark: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"shmkit.worker" in argv and any(mark in a for a in argv)


def run_attempt(exp, step_timeout: float, zero_pfn, isolate: str | None = None) -> dict:
    m = Manager(exp, step_timeout, zero_pfn, isolate)
    rec = record.experiment_record(exp, m.run)
    try:
        m.open()
        rec["inputs"] = process_inputs(str(m.run.dir.parent))
        m.spawn_main()
        rec["isolation"].update(m.ns)
        rec["initial"] = {"processes": m.observe(), **m.system()}
        rec["pads"] = {"main": m.procs["main"].pads}
        for step in exp.steps:
            rec["steps"].append(m.take_step(step))
        if any(s["perturbed"] for s in rec["steps"]):
            rec["status"] = "perturbed"
    except WorkerLost as lost:
        rec["status"] = "aborted"
        rec["abort"] = {"process": lost.proc, "step": lost.step, **lost.how}
    finally:
        rec["cleaned"] = m.close()
        rec["names"] = m.names()
    return rec


def _faults(f):
    return None if f is None else {"minor": f[0], "major": f[1]}


def ipc_limits(setup) -> dict[str, int]:
    """The SysV limits an experiment's [setup] sets in its IPC namespace (shmkit.isolation)."""
    return {k: getattr(setup, k) for k in isolation.IPC_SYSCTLS if getattr(setup, k, None) is not None}


_SUBREAPER_SET = False


def become_subreaper() -> None:
    global _SUBREAPER_SET
    if not _SUBREAPER_SET:
        try:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        except OSError:
            pass
        _SUBREAPER_SET = True


def run_experiment(exp, attempts: int = 3, step_timeout: float = 60.0, zero_pfn="auto",
                   isolate: str | None = None) -> dict:
    """Runs an experiment until an attempt has no perturbed step (at most `attempts`).
    isolate: auto, hermetic or prefix (shmkit.isolation; None: --isolation or $SHMKIT_ISOLATION)."""
    become_subreaper()
    if zero_pfn == "auto":
        zero_pfn = zero_page_pfn()
    tried = []
    for n in range(1, attempts + 1):
        rec = run_attempt(exp, step_timeout, zero_pfn, isolate)
        rec["attempt"] = n
        tried.append(rec)
        if rec["status"] != "perturbed":
            break
    best = min(tried, key=lambda r: sum(1 for s in r["steps"] if s["perturbed"]))
    best["attempts"] = len(tried)
    return best

