"""How a modelled system call fails: StepError carries the step's result ({"errno": NAME}, a
signal, or {"skipped": why}) and the faults taken before the failure. Shared by model.kernel,
its system call files (model.mmap, model.mprotect, ...) and model.ipc, so none of them imports
another for it.

Kernel sources: include/uapi/asm-generic/errno-base.h and errno.h (the error names)."""
from __future__ import annotations


class StepError(Exception):
    """The call failed: result is {"errno": NAME} (or {"skipped": ...})."""

    def __init__(self, result: dict, faults=None):
        super().__init__(result)
        self.result, self.faults = result, faults


def errno(name: str, faults=None):
    return StepError({"errno": name}, faults)
