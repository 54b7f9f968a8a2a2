"""Mutation check: plant one bug at a time in a copy of the checkout and assert that the tests named for it fail.

    .venv/bin/python scripts/mutants.py            # every mutant (make mutants)
    .venv/bin/python scripts/mutants.py resume     # one by name

Each mutant replaces a snippet that must occur exactly once in its file (so a refactor that moves the code makes
this check fail loudly instead of silently testing nothing), in a copy of the tracked and untracked-but-not-ignored
files; the named tests then run against the copy (PYTHONPATH points there, so child processes import it too).
A mutant is caught when every named test fails (pytest exit 1 and no PASSED line); one that still passes lets the
bug through.
tests/test_mutants.py checks the table itself (snippets present once, tests defined) on every `make test`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail


MUTANTS = (
    Mutant("resume", "prune_tracker/core/training.py",
           'None:\n        self.model.load_state_dict(state["model"])',
           "None:\n        return  # mutant: resume loads nothing",
           ("tests/test_training.py::test_resume_from_checkpoint_gives_the_same_weights",
            "tests/test_cli.py::test_resume_after_interruption_reaches_the_same_weights")),
    Mutant("ceiling-search", "prune_tracker/core/pruning/target.py",
           "    return round(high, 4) if probe(round(high, 4)) <= target else high",
           "    return MAX_RATIO  # mutant: always the largest ratio (under the target, never the smallest)",
           ("tests/test_jobs.py::test_search_is_a_ceiling_even_when_the_footprint_is_not_monotone",)),
    Mutant("select-on-test", "prune_tracker/tracking/queries.py",
           'DEFAULT_METRIC = "val_accuracy"',
           'DEFAULT_METRIC = "test_accuracy"  # mutant: rank on the test split',
           ("tests/test_evidence.py::test_winners_follow_validation_where_test_disagrees",)),
    Mutant("trial-key", "prune_tracker/studies/trials.py",
           '"target_bytes": self.target_bytes, "seed": self.seed,',
           '"target_bytes": self.target_bytes,  # mutant: the seed is left out of the key',
           ("tests/test_sweep.py::test_every_grid_value_changes_the_trial_key_and_nothing_else_does",)),
    Mutant("model-identity", "prune_tracker/tracking/identity.py",
           "(resolve(v) if k in MODEL_PARAMS and isinstance(v, str) and v else _resolve_models(v, resolve))",
           "(v if k in MODEL_PARAMS and isinstance(v, str) and v else _resolve_models(v, resolve))",
           ("tests/test_sweep.py::test_every_grid_value_changes_the_trial_key_and_nothing_else_does",)),
    Mutant("byte-rules", "prune_tracker/core/quant/formats.py",
           'return 0 if validate_precision(precision) == "fp16" else 2 * out_channels',
           'return 0 if validate_precision(precision) == "fp16" else out_channels  # mutant: 1-byte scales',
           ("tests/test_quant.py::test_model_bytes_counted_by_hand",)),
)


def checkout_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    return [f for f in listed if (ROOT / f).is_file()]


def apply(mutant: Mutant, copy: Path) -> None:
    target = copy / mutant.path
    text = target.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name}: the snippet occurs {text.count(mutant.old)} times in {mutant.path} "
                         f"(expected once): update scripts/mutants.py")
    target.write_text(text.replace(mutant.old, mutant.new))


def run_mutant(mutant: Mutant, files: list[str]) -> tuple[bool, str]:
    """(caught: every named test failed, one-line summary)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        copy = Path(tmp) / "repo"
        for name in files:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
        apply(mutant, copy)
        env = {**os.environ, "PYTHONPATH": str(copy)}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
                               *mutant.tests], cwd=copy, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode not in (0, 1):
        raise SystemExit(f"mutant {mutant.name}: pytest exit {proc.returncode} (not a test failure): {last}\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    passed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PASSED ")]
    return proc.returncode == 1 and not passed, f"{last} ({seconds:.0f} s){' passed: ' if passed else ''}" + \
        ", ".join(passed)


def main(names: list[str]) -> int:
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        print(f"unknown mutant(s) {', '.join(sorted(unknown))}; allowed: {', '.join(m.name for m in MUTANTS)}",
              file=sys.stderr)
        return 2
    files = checkout_files()
    survivors = []
    for mutant in MUTANTS:
        if names and mutant.name not in names:
            continue
        caught, summary = run_mutant(mutant, files)
        print(f"{'caught  ' if caught else 'SURVIVED'} {mutant.name}: {summary}", flush=True)
        if not caught:
            survivors.append(mutant.name)
    if survivors:
        print(f"{len(survivors)} mutant(s) survived: {', '.join(survivors)}", file=sys.stderr)
        return 1
    print("every planted bug was caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
