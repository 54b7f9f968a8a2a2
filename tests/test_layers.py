"""Layering: the numeric core (data, models, training, pruning, footprint, frontier) never imports MLflow.

A fresh interpreter imports each module in turn; the first one after which ``mlflow`` is in ``sys.modules``
is the one that pulled it in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("prune_tracker.data", "prune_tracker.training", "prune_tracker.frontier")
PACKAGES = ("prune_tracker.models", "prune_tracker.pruning", "prune_tracker.footprint")  # and all their modules

PROBE = """
import importlib, json, pkgutil, sys

imported, culprit = [], None

def load(name):
    global culprit
    module = importlib.import_module(name)
    imported.append(name)
    if culprit is None and "mlflow" in sys.modules:
        culprit = name
    return module

for name in {modules}:
    load(name)
for package in {packages}:
    for info in pkgutil.iter_modules(load(package).__path__, package + "."):
        load(info.name)
print(json.dumps({{"imported": imported, "culprit": culprit}}))
"""


def test_core_modules_import_no_mlflow() -> None:
    code = PROBE.format(modules=list(MODULES), packages=list(PACKAGES))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"prune_tracker.pruning.lamp", "prune_tracker.footprint.formats"} <= set(report["imported"])
    assert report["culprit"] is None, f"{report['culprit']} imports mlflow"
