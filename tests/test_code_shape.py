"""The package stays readable: short functions, few parameters, no hidden import circles."""

import ast
import multiprocessing
import os
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
                        "scipy.sparse.csgraph", "scipy.sparse.linalg",
                        # model/sources.py: timm is an optional extra, only `--arch timm:NAME` needs it
                        "timm"}


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
    # A circle hidden by import order shows up when a module is imported first. Each module is imported in its own
    # process forked from a server that has loaded torch and the other third-party packages, never gradcam_repro
    # (a fresh interpreter per module spent ~3 s of its 3 s on torch).
    modules = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in PACKAGE.rglob("*.py"))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchvision", "numpy", "matplotlib", "PIL.Image"])
    with context.Pool(os.cpu_count() or 1, maxtasksperchild=1) as pool:
        jobs = {m: pool.apply_async(exec, (f"import importlib, sys\nassert 'gradcam_repro' not in sys.modules\n"
                                           f"importlib.import_module({m!r})", {})) for m in modules}
        for module, job in jobs.items():
            try:
                job.get(timeout=300)
            except Exception as error:  # noqa: BLE001 - any import failure fails the test, named
                pytest.fail(f"{module}: {type(error).__name__}: {error}")


# The stages, lowest first: a module may import from its own stage and those before it, never from a later one.
STAGES = ("base", "data", "model", "explain", "measure", "report", "pipeline", "cli")
BASE_MODULES = {"errors", "config", "options", "runtime", "store", "__init__"}


def _stage(module_parts: tuple[str, ...]) -> str:
    """The stage of a module inside the package, e.g. ("measure", "scores") -> "measure", ("store",) -> "base"."""
    if (PACKAGE / module_parts[0]).is_dir():
        return module_parts[0]
    return "base" if module_parts[0] in BASE_MODULES else "cli"


def _package_imports():
    """(importing module, its stage, imported gradcam_repro module, its stage) for every package import."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradcam_repro"):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("gradcam_repro")]
            else:
                continue
            for name in names:
                target = tuple(name.split(".")[1:]) or ("__init__",)
                yield ".".join(parts), _stage(parts), name, _stage(target)


def test_no_import_runs_back_up_the_stages():
    upward = [f"{module} ({stage}) imports {name} ({target})" for module, stage, name, target in _package_imports()
              if STAGES.index(target) > STAGES.index(stage)]
    assert not upward, "\n".join(upward)


def test_config_and_the_base_modules_import_no_stage():
    found = [f"{module} imports {name}" for module, stage, name, target in _package_imports()
             if stage == "base" and target != "base"]
    assert not found, "\n".join(found)


def test_the_package_map_names_every_module():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    modules = sorted(p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__"))
    missing = [m for m in modules if f"`{m}`" not in doc]
    assert not missing, f"gradcam_repro/__init__.py's map omits {missing}"
