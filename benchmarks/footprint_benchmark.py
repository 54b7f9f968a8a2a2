"""Time the full footprint of ResNet-56 on CPU (storage formats, written files + gzip, activation trace,
FLOPs, MicroNet score). Goal: median < 2 s. Usage: python benchmarks/footprint_benchmark.py [--runs 5]"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from torch import nn

from prune_tracker.core.footprint import format_table, measure_footprint
from prune_tracker.core.models import build_model


def _timed(model: nn.Module, directory: Path) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    fp = measure_footprint(model, write_files_to=directory)
    return time.perf_counter() - start, fp.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--table", action="store_true", help="print the full breakdown table")
    args = parser.parse_args()
    model = build_model(args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        first, _ = _timed(model, Path(tmp))  # includes one-off lazy imports (torch._dynamo, dispatch modes)
        times, metrics = [], {}
        for _ in range(args.runs):
            seconds, metrics = _timed(model, Path(tmp))
            times.append(seconds)
    print(f"{args.arch} footprint on CPU: median {statistics.median(times):.3f} s over {args.runs} runs "
          f"(min {min(times):.3f}, max {max(times):.3f}; first call {first:.3f} s; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f})")
    for name, value in metrics.items():
        print(f"  {name:32s} {value:,.6g}")
    if args.table:
        print(format_table(measure_footprint(model)))


if __name__ == "__main__":
    main()
