"""Run several training recipes side by side (one `train_benchmark.py` process each) and print a table.

Meant for a lent GPU, where one ResNet-20 run leaves the card mostly idle: a dozen short recipes fit in the
time of one. Used to choose the quick CPU recipe before spending 30 CPU minutes per candidate. Each recipe is
NAME=ARGS (arguments for train_benchmark.py); logs go to OUT/NAME.log as the runs go, so a run cut short
still leaves its per-epoch figures.

    python benchmarks/recipe_sweep.py --out sweep --common "--data-dir c10.tar.gz --val-size 1000" \
        "base=--epochs 16 --resize-schedule 16:0.4,24:0.3" "noema=--epochs 16 --ema-decay 0"
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FINAL = re.compile(r"train_seconds=(\d+) test_accuracy\(flip TTA\)=([\d.]+) test_accuracy\(no TTA\)=([\d.]+)")
EPOCH = re.compile(r"epoch (\d+): loss ([\d.]+) val ([\d.]+)")


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, sep, args = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SystemExit(f"recipe {text!r} must look like NAME=ARGS (NAME: letters, digits, _ . -)")
    return name, shlex.split(args)


def summary(log: Path) -> str:
    text = log.read_text() if log.exists() else ""
    final = FINAL.search(text)
    if final:
        return f"{final.group(2)} (no TTA {final.group(3)}), {final.group(1)} s"
    epochs = EPOCH.findall(text)
    if epochs:
        return f"unfinished: epoch {epochs[-1][0]} val {epochs[-1][2]}"
    return "no output"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--common", default="", help="arguments shared by every recipe")
    p.add_argument("recipes", nargs="+", help="NAME=ARGS")
    args = p.parse_args()
    recipes = [parse_recipe(r) for r in args.recipes]
    args.out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, extra in recipes:
        cmd = [sys.executable, str(HERE / "train_benchmark.py"), *shlex.split(args.common), *extra,
               "--out", str(args.out / f"{name}.pt")]
        log = (args.out / f"{name}.log").open("w")
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    started = time.perf_counter()
    for _, proc in procs:
        proc.wait()
    print(f"{len(procs)} recipes side by side in {time.perf_counter() - started:.0f} s")
    for name, proc in procs:
        print(f"{name:24s} rc={proc.returncode}  {summary(args.out / f'{name}.log')}")


if __name__ == "__main__":
    main()
