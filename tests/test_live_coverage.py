"""Every option of experiment format 1 is checked against the live kernel.

The model has a rule for every operation, flag, advice and choice the spec accepts; a rule is
only trusted when some experiment runs it live and tests/test_model_live.py compares it with the
kernel field by field. This test lists the option space from shmkit/spec.py itself (so an option
added to the spec is covered by this test at once) and fails with the options no bundled
experiment or regression uses. An option that cannot be shown live in format 1 is listed in
NOT_LIVE with the reason; the test also fails when such an entry has become covered (stale).
"""
from __future__ import annotations

from pathlib import Path

from shmkit import spec

ROOT = Path(__file__).resolve().parent.parent / "experiments"
FILES = sorted(ROOT.glob("*.toml")) + sorted((ROOT / "regressions").glob("*.toml"))

# option -> why no experiment runs it live. Keys are as built by _option_space().
NOT_LIVE: dict[tuple, str] = {
}


def _option_space() -> set[tuple]:
    """Every operation; every value of a choice, flag, boolean and protection field; every
    optional field given explicitly; every rlimit resource; the non-default setups."""
    space: set[tuple] = set()
    for op, fields in spec.OPERATIONS.items():
        space.add(("do", op))
        for f in fields:
            kind = f.kind
            if isinstance(kind, spec._Choice):
                space.update((op, f.name, c) for c in kind.choices)
            elif isinstance(kind, spec._Flags):
                space.update((op, f.name, n) for n in kind.names)
            elif isinstance(kind, spec._Bool):
                space.update((op, f.name, v) for v in (True, False))
            elif isinstance(kind, spec._Prot):
                space.update((op, f.name, p) for p in ("none", "r", "w", "x"))
            elif not f.required:
                space.add((op, f.name, "given"))
    space.update(("rlimit", r) for r in spec.RLIMIT_RESOURCES)
    space.update({("setup", "aslr", False), ("setup", "layout", "legacy"), ("setup", "user")})
    return space


def _used(exp: spec.Experiment) -> set[tuple]:
    used: set[tuple] = set()
    s = exp.setup
    if not s.aslr:
        used.add(("setup", "aslr", False))
    if s.layout == "legacy":
        used.add(("setup", "layout", "legacy"))
    if s.user:
        used.add(("setup", "user"))
    used.update(("rlimit", name) for name, _, _ in s.rlimits)
    for step in exp.steps:
        used.add(("do", step.do))
        for f in spec.OPERATIONS[step.do]:
            value = step.get(f.name)
            kind = f.kind
            # a raw number (issue 10: advice = 18, prot = 7, flags = ["shared", 1024]) is passed
            # as given; it covers no named option
            if isinstance(kind, spec._Flags):
                used.update((step.do, f.name, n) for n in value or () if not isinstance(n, int))
            elif isinstance(kind, spec._Prot):
                if not isinstance(value, int):
                    used.update((step.do, f.name, c) for c in (["none"] if value == "none" else value))
            elif isinstance(kind, (spec._Choice, spec._Bool)):
                used.add((step.do, f.name, value))
            elif not f.required and f.name in step.raw:
                used.add((step.do, f.name, "given"))
        if step.do == "rlimit":
            used.add(("rlimit", step.get("resource")))
    return used


def test_every_option_of_format_1_runs_live_somewhere():
    used: set[tuple] = set()
    for path in FILES:
        used |= _used(spec.load(path))
    space = _option_space()
    missing = sorted(space - used - NOT_LIVE.keys(), key=repr)
    stale = sorted(NOT_LIVE.keys() & used, key=repr)
    unknown = sorted(NOT_LIVE.keys() - space, key=repr)
    assert not missing, ("options of format 1 that no bundled experiment or regression runs live "
                         "(add an experiment, or list the option in NOT_LIVE with the reason): "
                         + ", ".join(map(repr, missing)))
    assert not stale, f"NOT_LIVE lists options an experiment now covers: {stale}"
    assert not unknown, f"NOT_LIVE lists options the spec does not have: {unknown}"


def test_not_live_entries_say_why():
    for option, why in NOT_LIVE.items():
        assert len(why.split()) >= 6, f"{option}: give the reason in a sentence"
