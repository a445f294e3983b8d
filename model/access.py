"""The steps that load from and store to a region (touch, read): user accesses whose faults
model.memory takes (mm/memory.c handle_mm_fault and what it calls). Methods of Kernel
(AccessOps).
"""
from __future__ import annotations

from model.errors import StepError
from model.flags import PAGE_SIZE
from model.process import Process


class AccessOps:
    """touch and read: user accesses (model.access)."""

    def sys_touch(self, proc: Process, args: dict):
        addr, n = args["addr"], args["pages"]     # one access in each page (model.resolve)
        write = args["access"] == "write"
        done, minor, major, fault = self.mem.access(proc.mm, addr, n, write, args["value"] & 0xFF)
        if fault is not None:
            self.note(f"{fault.signal}: {fault.why}")
            raise StepError({"signal": fault.signal, "page": (addr - args["base"]) // PAGE_SIZE + done},
                            self._faults(minor, major))
        return self._faults(minor, major), None

    def sys_read(self, proc: Process, args: dict):
        addr, n = args["addr"], args["pages"]     # one access in each page (model.resolve)
        vals = bytearray()
        done, minor, major, fault = self.mem.access(proc.mm, addr, n, False, 0, vals)
        runs = value_runs(vals)
        if fault is not None:
            self.note(f"{fault.signal}: {fault.why}")
            raise _ReadFault({"signal": fault.signal, "page": (addr - args["base"]) // PAGE_SIZE + done},
                             self._faults(minor, major), {"bytes": runs})
        return self._faults(minor, major), {"bytes": runs}


class _ReadFault(StepError):
    def __init__(self, result, faults, value):
        super().__init__(result, faults)
        self.value = value


def value_runs(values: bytes) -> list[list[int]]:
    """[value, count] runs of the first bytes read from each page: a read step's "bytes" value
    on both sides (the worker's too, shmkit.worker op_read)."""
    out: list[list[int]] = []
    for b in values:
        if out and out[-1][0] == b:
            out[-1][1] += 1
        else:
            out.append([b, 1])
    return out
