"""The package stays readable: short functions, few parameters, no hidden import circles."""

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gradcam_repro"
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
# Heavy or optional dependencies that may be imported where they are used, so that `import gradcam_repro`
# and `--help` stay fast and the package works without them.
LAZY_IMPORTS_ALLOWED = {"captum", "captum.attr", "scipy.stats", "skimage.metrics", "PIL", "tqdm.auto", "ray",
                        "matplotlib", "resource", "fcntl", "webbrowser", "http.server", "sklearn",
                        # the shortcut audit (measure/spray.py): heavy, only `audit` needs them
                        "sklearn.cluster", "sklearn.neighbors", "sklearn.metrics", "scipy.ndimage", "scipy.sparse",
                        "scipy.sparse.csgraph", "scipy.sparse.linalg"}


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def test_no_function_is_longer_than_a_screen():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_no_function_takes_more_than_eight_parameters():
    def count(node):
        a = node.args
        names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
        return len([n for n in names if n.arg not in ("self", "cls")])

    many = [f"{path}:{node.lineno} {node.name} ({count(node)} parameters)"
            for path, node in _functions() if count(node) > MAX_PARAMETERS]
    assert not many, f"functions over {MAX_PARAMETERS} parameters:\n" + "\n".join(many)


def test_imports_inside_functions_are_only_for_optional_heavy_dependencies():
    found = []
    for path, node in _functions():
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom):
                module = inner.module or ""
            elif isinstance(inner, ast.Import):
                module = inner.names[0].name
            else:
                continue
            if module.startswith("gradcam_repro") or module not in LAZY_IMPORTS_ALLOWED:
                found.append(f"{path}:{inner.lineno} imports {module} inside {node.name}")
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    # A circle hidden by import order shows up when a module is imported first.
    modules = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in PACKAGE.rglob("*.py"))
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"

    def fresh_import(module):  # ~3 s each, mostly torch: one interpreter per core at a time
        return module, subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for module, result in pool.map(fresh_import, modules):
            assert result.returncode == 0, f"{module}: {result.stderr.strip().splitlines()[-1:]}"
