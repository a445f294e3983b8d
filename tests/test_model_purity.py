"""model/ is pure: it imports nothing from shmkit and no OS-level module (DESIGN.md), so it
runs on any host from plain data."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "model"
FORBIDDEN = {"shmkit", "os", "sys", "mmap", "ctypes", "posix_ipc", "sysv_ipc", "psutil", "resource",
             "subprocess", "socket", "signal", "fcntl", "pathlib", "shutil", "tempfile", "io",
             "time", "threading", "multiprocessing", "select", "pwd", "platform"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_model_sources_import_no_os_module_and_nothing_of_shmkit():
    files = sorted(MODEL.glob("*.py"))
    assert len(files) >= 8
    bad = [f"{p.name}:{line}: import {mod}" for p in files for line, mod in _imports(p)
           if mod.split(".")[0] in FORBIDDEN]
    assert not bad, "model/ must stay pure:\n" + "\n".join(bad)


def test_importing_the_model_loads_no_os_module():
    code = ("import sys; before = set(sys.modules); import model.kernel, model.known_differences; "
            "new = set(sys.modules) - before; "
            f"bad = sorted(m for m in new if m.split('.')[0] in {sorted(FORBIDDEN - {'sys'})!r}); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=MODEL.parent, capture_output=True, text=True)
    assert out.returncode == 0, f"importing model/ pulled in {out.stdout.strip()} {out.stderr}"


def _model_imports(path: Path) -> set[str]:
    """The model modules one file of model/ imports, at module level or inside a function:
    `import model.x`, `from model.x import y`, `from model import x` (x a module of model/),
    and relative imports."""
    modules = {p.stem for p in MODEL.glob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "model" + ("." + base if base else "")
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "model" and len(parts) > 1 and parts[1] in modules:
                out.add(parts[1])
    out.discard(path.stem)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    # the finder itself: a cycle made only by an import inside a function is still a cycle
    graph = {"kernel": {"ipc", "mm"}, "ipc": {"mm"}, "mm": set()}
    assert _cycle(graph) is None
    graph["ipc"].add("kernel")
    assert _cycle(graph) == ["ipc", "kernel", "ipc"]
    src = tmp_path / "ipc.py"
    src.write_text("def f():\n    from model.kernel import errno\n    return errno\n")
    assert "kernel" in _model_imports(src)


def test_model_has_no_import_cycle():
    """No module of model/ imports (directly or through others, at any level, including inside
    a function) a module that imports it back."""
    graph = {p.stem: _model_imports(p) for p in MODEL.glob("*.py")}
    assert graph["kernel"], "the import graph came out empty: the parser is broken"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle in model/: " + " -> ".join(cycle)


def test_no_mixin_shadows_another():
    """Kernel and Memory are put together from one mixin per file (a system call family);
    a method defined in two of them would silently hide one (the MRO picks the first)."""
    from model.kernel import Kernel
    from model.memory import Memory

    for cls in (Kernel, Memory):
        owners: dict[str, str] = {}
        for base in cls.__mro__[:-1]:
            for name, value in vars(base).items():
                if name.startswith("__") or not callable(value) and not isinstance(value, (staticmethod, classmethod, property)):
                    continue
                assert name not in owners, f"{cls.__name__}: {name} is defined in {owners[name]} and {base.__module__}.{base.__name__}"
                owners[name] = f"{base.__module__}.{base.__name__}"
