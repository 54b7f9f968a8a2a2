"""The mutation check's table (scripts/mutants.py, run by `make mutants`) stays valid: every planted bug still
matches exactly one place in the code, and every test named to catch it exists."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from conftest import PROJECT_ROOT


def _mutants_module():
    spec = importlib.util.spec_from_file_location("mutants", PROJECT_ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MUTANTS = _mutants_module().MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_the_snippet_occurs_once_and_the_named_tests_exist(mutant):
    source = (PROJECT_ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.name}: snippet not found exactly once in {mutant.path}"
    assert mutant.new != mutant.old
    for node in mutant.tests:
        path, name = node.split("::")
        assert re.search(rf"^def {re.escape(name)}\(", (PROJECT_ROOT / path).read_text(), re.M), node


def test_the_script_refuses_an_unknown_mutant(capsys):
    assert _mutants_module().main(["nope"]) == 2
    assert "unknown mutant(s) nope; allowed: resume" in capsys.readouterr().err
