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
