"""Channel pruning side by side: every registered channel method (structured, channels physically removed) brought to
the same MACs (default: at most half of the parent's) on each parent, then given the same recovery recipe and epoch
budget, per seed; published results printed beside. Library level (no MLflow needed for a `.pt` parent: a lent GPU
box has none): every row runs the code a `prune` run runs (`core.flows`: prune_context, ratio_for_target,
prune_and_recover, evaluate_splits), with the recipe of a `prune` job's spec (`jobs.specs.PruneSpec`).

    # the rows (one invocation per parent, or several --parent at once); rows are merged into --out by key
    python benchmarks/channel_benchmark.py run --parent resnet20=parents/resnet20.pt \
        --parent resnet56=parents/resnet56.pt --parent torchvision:mobilenet_v3_small=parents/mnv3.pt \
        --data-dir cifar10-jpeg.tar.gz --epochs 10 --seeds 0,1 --device cuda --out results/channels.json
    python benchmarks/channel_benchmark.py run --parent runs:/<train run id>/model --epochs 10 --out ...
    # the markdown table (docs/benchmarks/channels.md) from the rows
    python benchmarks/channel_benchmark.py table --out results/channels.json
    # smoke test (no data, seconds): a tiny parent on synthetic images
    python benchmarks/channel_benchmark.py run --parent resnet8=tiny.pt --dataset synthetic --train-subset 300 \
        --val-size 100 --methods li_filters,taylor --epochs 0.05 --seeds 0 --out /tmp/channels.json

`--parent ARCH=FILE`: a state_dict of the zoo's `ARCH` (resnet20, resnet56, ...) or `torchvision:<builder>`, with
`--dataset/--data-dir/--val-size/--split-seed` saying which split it was trained with (pass the parent's, so no
validation image was trained on); `--parent runs:/<id>/model` (or `models:/...`): the logged model, its own split.

Per (parent, method, seed): the smallest ratio whose dense MACs are at most (1 - `--macs-reduction`) x the parent's
(bisected with the method itself, `ratio_for_target` on `flops_dense`: a ceiling, so methods land at equal MACs
within the search tolerance), then prune -> `--epochs` of fine-tuning (cosine from `--lr`, the prune job's recipe)
-> val and test accuracy (flip TTA), MACs, parameters, the fp32 activation peak at batch 1, and eager PyTorch CPU
latency per image (`core.evaluation.latency_ms`, median, `--latency-threads` threads) at batch 1 and 128. A method
that cannot prune a parent (thinet / fm_norm outside the zoo's ResNets and VGGs) gives a `refused` row with its one
line. Wall times are on `--device` (the row's `where`); latencies on this CPU (`latency_where`, with its kind).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_kind, cpu_model, where  # noqa: E402  (benchmarks/machine.py)

from prune_tracker.core.data import DataSplits  # noqa: E402
from prune_tracker.core.evaluation import latency_ms  # noqa: E402
from prune_tracker.core.flows import (  # noqa: E402
    Measurement,
    PrunePlan,
    evaluate_splits,
    image_shape,
    prune_and_recover,
    prune_context,
    ratio_for_target,
)
from prune_tracker.core.footprint import measure_footprint  # noqa: E402
from prune_tracker.core.models import build_model  # noqa: E402
from prune_tracker.core.pruning import get_method, known_methods  # noqa: E402
from prune_tracker.core.recipes import finetune_recipe  # noqa: E402
from prune_tracker.core.seeds import parse_seeds  # noqa: E402
from prune_tracker.core.training import TrainConfig, resolve_device, seed_everything  # noqa: E402
from prune_tracker.jobs.specs import DataSpec, PruneSpec  # noqa: E402

MACS = "flops_dense"  # multiply-accumulates per image of the model as it is (channels removed)
LATENCY_BATCHES = (1, 128)
PARENT = "none (parent)"
# Published results on CIFAR-10 (official data, their own training recipes and budgets: compare drops, not levels).
# `macs_fewer` is 1 - pruned/base MACs ("x fewer" = base/pruned), accuracies in %.
ANCHORS: list[dict[str, Any]] = [
    {"arch": "resnet56", "method": "li_filters", "source": "Li et al. 2017, ResNet-56-pruned-B (L1 filters)",
     "macs_fewer": 0.276, "base": 100 - 6.96, "pruned": 100 - 6.94},
    {"arch": "resnet56", "method": "li_filters", "source": "Torch-Pruning benchmark, Group-L1 (global)",
     "macs_fewer": 1 - 1 / 2.12, "base": 93.53, "pruned": 92.93},
    {"arch": "resnet56", "method": "bn_scale", "source": "Torch-Pruning benchmark, Group-BN (slimming, reg 1e-5)",
     "macs_fewer": 1 - 1 / 2.12, "base": 93.53, "pruned": 93.29},
    {"arch": "resnet56", "method": "group_norm", "source": "DepGraph w/o sparse learning (Torch-Pruning benchmark)",
     "macs_fewer": 1 - 1 / 2.11, "base": 93.53, "pruned": 93.46},
    {"arch": "resnet56", "method": "group_norm", "source": "DepGraph w/o sparse learning (Torch-Pruning benchmark)",
     "macs_fewer": 1 - 1 / 2.51, "base": 93.53, "pruned": 93.36},
    {"arch": "resnet56", "method": "-", "source": "DepGraph with sparse learning (Torch-Pruning benchmark)",
     "macs_fewer": 1 - 1 / 2.13, "base": 93.53, "pruned": 93.77},
    {"arch": "resnet56", "method": "-", "source": "DepGraph with sparse learning (Torch-Pruning benchmark)",
     "macs_fewer": 1 - 1 / 2.57, "base": 93.53, "pruned": 93.64},
]
ANCHOR_NOTES = """Sources: Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, Table 1 (error 6.96% ->
6.94%, 27.6% fewer FLOPs). Torch-Pruning's CIFAR-10 benchmark table (VainF/Torch-Pruning benchmarks/readme.md at commit
4022818e; speed up = base MACs / pruned MACs; "w/o SL" = group_norm without sparse learning, global pruning;
its row "Ours" 93.53% -> 93.77% prints +0.38: the delta here is computed from the two accuracies).
Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019 (taylor): the anchor is ImageNet:
ResNet-101 at 40% fewer FLOPs (30% fewer parameters) loses 0.02 points of top-1 (their abstract)."""


class BenchmarkError(ValueError):
    """Bad input, reported in one line (exit 2)."""


# ------------------------------------------------------------------------------------------ parents


@dataclass
class Parent:
    """A parent model with the split it is evaluated on."""

    name: str  # what --parent said
    arch: str
    model: nn.Module
    splits: DataSplits
    input_shape: tuple[int, ...]


def channel_methods() -> list[str]:
    """Every registered structured method (channels physically removed)."""
    return [name for name in known_methods() if get_method(name).structured]


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()] if text else channel_methods()
    for name in names:
        if not get_method(name).structured:
            raise BenchmarkError(f"method {name!r} does not remove channels; channel methods: "
                                 f"{', '.join(channel_methods())}")
    return names


def state_dict_parent(text: str, args: argparse.Namespace) -> Parent:
    """`ARCH=FILE`: the zoo's (or torchvision's) ARCH with FILE's state_dict, on the split the options name."""
    arch, _, path = text.partition("=")
    if not path:
        raise BenchmarkError(f"--parent {text!r}: expected ARCH=FILE.pt (a state_dict) or a runs:/ or models:/ URI")
    if not Path(path).is_file():
        raise BenchmarkError(f"--parent {text!r}: no such file {path!r}")
    data = DataSpec(args.dataset, args.data_dir, args.train_subset, args.val_size, args.split_seed)
    splits = data.load()
    model = build_model(arch, splits.num_classes)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BenchmarkError(f"--parent {text!r}: not a state_dict of {arch} with {splits.num_classes} classes "
                             f"({first})") from None
    return Parent(text, arch, model.eval(), splits, image_shape(splits))


def logged_parent(uri: str, args: argparse.Namespace) -> Parent:
    """A logged model (`runs:/`, `models:/`) with its own split, as a `prune` job reads it."""
    from prune_tracker.jobs.any_cnn import copy_loaded
    from prune_tracker.jobs.lineage import check_trainable, load_with_data

    found = load_with_data(uri, DataSpec.inherited(args.data_dir))
    check_trainable(found.model)
    return Parent(uri, found.model.spec["arch"], copy_loaded(found.model).eval(), found.splits,
                  tuple(found.model.input_shape))


def load_parent(text: str, args: argparse.Namespace) -> Parent:
    return logged_parent(text, args) if ":/" in text else state_dict_parent(text, args)


# ------------------------------------------------------------------------------------------ rows


def prune_spec(parent: Parent, method: str, seed: int, args: argparse.Namespace) -> PruneSpec:
    """The prune job's spec of a row (validates the method's options; its train config is the recovery recipe)."""
    options = {"scope": args.scope} if "scope" in get_method(method).params else {}
    spec = PruneSpec(parent.name, method, 0.5, options, args.epochs)
    return replace(spec, train=replace(spec.train, lr=args.lr, batch_size=args.batch_size, seed=seed))


def recovery_config(spec: PruneSpec) -> TrainConfig:
    recovery = spec.recovery
    return finetune_recipe(replace(spec.train, epochs=spec.finetune_epochs), recovery.finetune_schedule, None,
                           recovery.rewind_fraction, recovery.distill_alpha, recovery.distill_temperature)


def cpu_latencies(model: nn.Module, input_shape: tuple[int, ...], threads: int) -> dict[str, float]:
    """Eager PyTorch CPU ms per image at each of LATENCY_BATCHES, on `threads` threads (a copy is measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = copy.deepcopy(model).cpu().eval()
        return {f"latency_ms_b{b}": latency_ms(model, b, input_shape) for b in LATENCY_BATCHES}
    finally:
        torch.set_num_threads(before)


def measure(model: nn.Module, parent: Parent, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Val / test accuracy (flip TTA), MACs, parameters, activation peak and CPU latency of `model`."""
    footprint = measure_footprint(model, parent.input_shape).metrics
    return {**evaluate_splits(model, parent.splits, device, True), "macs": footprint[MACS],
            "params": footprint["params_total"], "activation_peak_fp32_bytes": footprint["activation_peak_fp32_bytes"],
            **cpu_latencies(model, parent.input_shape, args.latency_threads),
            "latency_where": f"{args.latency_threads}-thread {cpu_model()} ({cpu_kind()})"}


def parent_row(parent: Parent, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    return {"arch": parent.arch, "parent": parent.name, "method": PARENT, "seed": None, "ratio": 0.0,
            "status": "ok", **measure(parent.model.to(device), parent, device, args)}


def method_row(parent: Parent, method: str, seed: int, base_macs: float, device: torch.device,
               args: argparse.Namespace) -> dict[str, Any]:
    """One method on one parent at one seed: equal MACs, the shared recovery, every measurement."""
    spec = prune_spec(parent, method, seed, args)
    row: dict[str, Any] = {"arch": parent.arch, "parent": parent.name, "method": method, "seed": seed,
                           "options": dict(spec.options), "epochs": args.epochs, "where": where(device)}
    config = recovery_config(spec)
    seed_everything(seed)
    ctx = prune_context(parent.splits, config, device, False, True, input_shape=parent.input_shape)
    model = copy.deepcopy(parent.model).to(device)
    started = time.perf_counter()
    try:
        ratio = ratio_for_target(model, get_method(method), dict(spec.options), ctx,
                                 base_macs * (1 - args.macs_reduction), MACS)
    except ValueError as err:  # the method refuses this model, in its own one line
        return {**row, "status": "refused", "reason": str(err).splitlines()[0]}
    searched = time.perf_counter() - started
    plan = PrunePlan(get_method(method), ratio, dict(spec.options), spec.finetune_epochs)
    measurement = Measurement(parent.splits, device, True, (), parent.input_shape)
    started = time.perf_counter()
    result, after_pruning = prune_and_recover(model, plan, ctx, measurement)
    recovered = time.perf_counter() - started
    return {**row, "status": "ok", "ratio": ratio, "search_seconds": searched, "prune_seconds": result.seconds,
            "prune_recover_seconds": recovered, "test_accuracy_pruned": after_pruning.get("test_accuracy_pruned"),
            **measure(result.model, parent, device, args)}


def row_key(row: dict[str, Any]) -> tuple:
    return row["parent"], row["method"], row["seed"]


def save_rows(path: Path, rows: list[dict[str, Any]], header: dict[str, Any]) -> None:
    """Merge `rows` into `path` (a row of the same parent, method and seed is replaced)."""
    old = json.loads(path.read_text()) if path.exists() else {"runs": [], "rows": []}
    kept = {row_key(r): r for r in old["rows"]}
    kept.update({row_key(r): r for r in rows})
    runs = [*old["runs"], header] if header not in old["runs"] else old["runs"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs, "rows": list(kept.values())}, indent=2))


def parent_rows(parent: Parent, methods: list[str], seeds: list[int], device: torch.device,
                args: argparse.Namespace, save: Any) -> list[dict[str, Any]]:
    """The parent's own row, then every method at every seed (each saved as soon as it is measured)."""
    rows = [parent_row(parent, device, args)]
    print(progress_line(rows[0]), file=sys.stderr, flush=True)
    for method in methods:
        for seed in seeds:
            rows.append(method_row(parent, method, seed, rows[0]["macs"], device, args))
            print(progress_line(rows[-1]), file=sys.stderr, flush=True)
            save(rows)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every parent's rows (merged into `--out` as they come) and where they ran."""
    device = resolve_device(args.device)
    methods, seeds = parse_methods(args.methods), parse_seeds(args.seeds)
    check_numbers(args, seeds)
    header = {"argv": sys.argv[1:], "where": where(device), "cpu": f"{cpu_model()} ({cpu_kind()})",
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows: list[dict[str, Any]] = []
    for text in args.parent:
        parent = load_parent(text, args)
        rows += parent_rows(parent, methods, seeds, device, args,
                            lambda new: save_rows(Path(args.out), new, header) if args.out else None)
    return {"runs": [header], "rows": rows}


def check_numbers(args: argparse.Namespace, seeds: list[int]) -> None:
    if not seeds:
        raise BenchmarkError(f"--seeds {args.seeds!r}: give at least one seed, e.g. 0,1")
    if not (math.isfinite(args.epochs) and args.epochs >= 0):
        raise BenchmarkError(f"--epochs {args.epochs}: must be a finite number >= 0")
    if not 0 < args.macs_reduction < 1:
        raise BenchmarkError(f"--macs-reduction {args.macs_reduction}: must be in (0, 1), e.g. 0.5")
    if args.latency_threads < 1:
        raise BenchmarkError(f"--latency-threads {args.latency_threads}: must be >= 1")


def progress_line(row: dict[str, Any]) -> str:
    name = f"{row['arch']} {row['method']}" + ("" if row["seed"] is None else f" seed {row['seed']}")
    if row["status"] != "ok":
        return f"{name}: refused: {row['reason']}"
    return (f"{name}: ratio {row['ratio']:.3f}, {row['macs'] / 1e6:.2f}M MACs, val {row.get('val_accuracy', 0):.2%}, "
            f"test {row['test_accuracy']:.2%}")


# ------------------------------------------------------------------------------------------ table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _seconds(row: dict[str, Any]) -> str:
    if "prune_recover_seconds" not in row:
        return "–"
    return f"{row['search_seconds']:.0f} + {row['prune_recover_seconds']:.0f}"


ROW_HEADER = ("| method | seed | ratio | MACs | fewer MACs | val acc | test acc | Δ test | params | act. peak fp32 | "
              "CPU ms/img b1 / b128 | search + prune/recover s |\n" + "|---" * 12 + "|")


def row_line(row: dict[str, Any], parent: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"| {row['method']} | {row['seed']} | refused: {row['reason'].replace('|', '/')} |" + " |" * 9
    fewer = 1 - row["macs"] / parent["macs"]
    delta = row["test_accuracy"] - parent["test_accuracy"]
    seed = "–" if row["seed"] is None else row["seed"]
    return (f"| {row['method']} | {seed} | {row['ratio']:.3f} | {row['macs'] / 1e6:.2f}M | {fewer:.1%} "
            f"({parent['macs'] / row['macs']:.2f}x) | {_pct(row.get('val_accuracy'))} | {_pct(row['test_accuracy'])} "
            f"| {100 * delta:+.2f} pt | {row['params']:,.0f} | {row['activation_peak_fp32_bytes']:,.0f} B | "
            f"{row['latency_ms_b1']:.3f} / {row['latency_ms_b128']:.3f} | {_seconds(row)} |")


def mean_line(method: str, rows: list[dict[str, Any]], parent: dict[str, Any]) -> str:
    tests = [r["test_accuracy"] for r in rows]
    spread = f" ± {statistics.stdev(tests):.2%}" if len(tests) > 1 else ""
    return (f"| **{method}** | mean of {len(rows)} | | {statistics.mean(r['macs'] for r in rows) / 1e6:.2f}M | | "
            f"{_pct(statistics.mean(r.get('val_accuracy', 0.0) for r in rows))} | "
            f"{_pct(statistics.mean(tests))}{spread} | "
            f"{100 * (statistics.mean(tests) - parent['test_accuracy']):+.2f} pt |" + " |" * 4)


def arch_table(parent: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"### {parent['arch']} (parent {parent['parent']})", "", ROW_HEADER, row_line(parent, parent)]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        lines += [row_line(r, parent) for r in mine]
        measured = [r for r in mine if r["status"] == "ok"]
        if len(measured) > 1:
            lines.append(mean_line(method, measured, parent))
    return lines


def anchor_lines() -> list[str]:
    lines = ["### Published (CIFAR-10, official data, their own recipes and budgets)", "",
             "| arch | comparable method | source | fewer MACs | base → pruned | Δ |", "|---|---|---|---|---|---|"]
    for a in ANCHORS:
        lines.append(f"| {a['arch']} | {a['method']} | {a['source']} | {a['macs_fewer']:.1%} "
                     f"({1 / (1 - a['macs_fewer']):.2f}x) | {a['base']:.2f}% → {a['pruned']:.2f}% | "
                     f"{a['pruned'] - a['base']:+.2f} pt |")
    return [*lines, "", *ANCHOR_NOTES.splitlines()]


def markdown(data: dict[str, Any]) -> str:
    """The rows of a run (or of several merged ones) as markdown: one table per parent, the anchors beside."""
    rows = data["rows"]
    lines = [f"Ran on: {run['where']} (wall times); latencies on {run['cpu']}; torch {run['torch']}; "
             f"`{' '.join(run['argv'])}`" for run in data["runs"]]
    for parent in (r for r in rows if r["method"] == PARENT):
        lines += ["", *arch_table(parent, [r for r in rows if r["parent"] == parent["parent"]
                                           and r["method"] != PARENT])]
    lines += ["", *anchor_lines()]
    return "\n".join(lines)


def table(args: argparse.Namespace) -> str:
    path = Path(args.out)
    if not path.is_file():
        raise BenchmarkError(f"--out {args.out!r}: no such file (write it with `run --out`)")
    try:
        data = json.loads(path.read_text())
        return markdown(data)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BenchmarkError(f"--out {args.out!r}: not rows written by `run` ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="measure the rows")
    go.add_argument("--parent", action="append", required=True,
                    help="ARCH=FILE.pt (a state_dict) or runs:/<id>/model; repeatable")
    go.add_argument("--dataset", default="cifar10", help="the split of a state_dict parent: cifar10 | cifar100 | "
                                                         "synthetic")
    go.add_argument("--data-dir", default=None, help="CIFAR root, ImageFolder tree or .tar.gz of one")
    go.add_argument("--train-subset", type=int, default=0, help="class-balanced training subset; 0 = all")
    go.add_argument("--val-size", default="auto", help="the parent's validation split size")
    go.add_argument("--split-seed", type=int, default=0, help="the parent's split seed")
    go.add_argument("--methods", default="", help="comma list; default: every channel method")
    go.add_argument("--macs-reduction", type=float, default=0.5, help="fraction of the parent's MACs removed")
    go.add_argument("--scope", default="block", help="the methods' scope option (block | stage | all)")
    go.add_argument("--epochs", type=float, default=10.0, help="the one fine-tuning budget of every row")
    go.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (cosine)")
    go.add_argument("--batch-size", type=int, default=128)
    go.add_argument("--seeds", default="0,1")
    go.add_argument("--device", default="auto", help="auto | cpu | cuda")
    go.add_argument("--latency-threads", type=int, default=1)
    go.add_argument("--out", default=None, help="JSON file the rows are merged into")
    show = commands.add_parser("table", help="render the rows of --out as markdown")
    show.add_argument("--out", required=True, help="JSON file written by `run --out`")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "table":
            print(table(args))
            return 0
        print(markdown(run(args)))
        return 0
    except (ValueError, FileNotFoundError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"Error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
