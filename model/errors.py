"""How a model system call fails: with the errno the kernel would return."""
from __future__ import annotations


class StepError(Exception):
    """The call failed: result is {"errno": NAME} (or {"skipped": ...})."""

    def __init__(self, result: dict, faults=None):
        super().__init__(result)
        self.result, self.faults = result, faults


def errno(name: str, faults=None):
    return StepError({"errno": name}, faults)
