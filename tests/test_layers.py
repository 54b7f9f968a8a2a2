"""Layering: core -> tracking -> analysis -> jobs -> studies -> cli, checked on the source (every import of a
prune_tracker module goes to the same or a lower layer) and at run time (the numeric core never imports MLflow: a
fresh interpreter imports every core module; the first one after which ``mlflow`` is in ``sys.modules`` is the
culprit)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prune_tracker"
LAYERS = ("core", "tracking", "analysis", "jobs", "studies", "cli")  # each may import itself and those before it

PROBE = """
import importlib, json, pkgutil, sys
import prune_tracker.core as core

imported, culprit = [], None
for info in pkgutil.walk_packages(core.__path__, "prune_tracker.core."):
    importlib.import_module(info.name)
    imported.append(info.name)
    if culprit is None and "mlflow" in sys.modules:
        culprit = info.name
print(json.dumps({"imported": imported, "culprit": culprit}))
"""


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "prune_tracker" and parts[1] in LAYERS else None


def _imports(path: Path, root: Path = ROOT) -> list[str]:
    """Absolute names of the prune_tracker modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n.startswith("prune_tracker.")]


def test_every_import_goes_to_the_same_or_a_lower_layer() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(".".join(path.relative_to(ROOT).parts))
        assert layer is not None or path.parent == PACKAGE, f"{path} is in no layer: put it in one of {LAYERS}"
        for name in _imports(path):
            target = _layer(name)
            if layer and target and LAYERS.index(target) > LAYERS.index(layer):
                violations.append(f"{path.relative_to(ROOT)} ({layer}) imports {name} ({target})")
    assert not violations, "\n".join(violations)


def test_the_layer_check_resolves_relative_imports(tmp_path) -> None:
    """A core module importing `..jobs` is seen as importing the jobs layer."""
    fake = tmp_path / "prune_tracker" / "core" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..jobs import specs\nfrom . import data\n")
    names = _imports(fake, tmp_path)
    assert "prune_tracker.jobs.specs" in names and "prune_tracker.core.data" in names
    assert [_layer(n) for n in names if n.endswith("specs")] == ["jobs"]


def test_core_modules_import_no_mlflow() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"prune_tracker.core.pruning.lamp", "prune_tracker.core.footprint.formats",
            "prune_tracker.core.flows"} <= set(report["imported"])
    assert report["culprit"] is None, f"{report['culprit']} imports mlflow"


# ---------------------------------------------------------------- the house: short functions, modules that fit


MAX_PARAMETERS = 8  # a job takes a spec, not a list of its fields
MAX_MODULE_LINES = 500
LONG_MODULE_REASON = "Long module:"  # a module over the limit says why in its docstring, after this marker


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (bool(names) and names[0].arg in ("self", "cls"))


def test_no_function_takes_more_than_eight_parameters():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _parameter_count(node) > MAX_PARAMETERS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({_parameter_count(node)})")
    assert not offenders, offenders


def test_long_modules_say_why():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES and LONG_MODULE_REASON not in (
                ast.get_docstring(ast.parse(source)) or ""):
            offenders.append(f"{path.relative_to(ROOT)} ({len(source.splitlines())} lines)")
    assert not offenders, offenders


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.relative_to(ROOT)}: {node.module}.{alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not offenders, offenders
