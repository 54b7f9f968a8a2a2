"""The compression frontier from a converged parent, with its controls, at the library level (no MLflow: a lent GPU
box has none). Every row runs the code a `prune` run runs (`core.flows`: prune_context, ratio_for_target,
prune_and_recover, precision_metrics); the jobs add only the logging.

    # 1. the parent, from the tracking store (a train run), into one file
    python benchmarks/frontier_study.py export --model runs:/<id>/model --out .gpu/parent.pt
    # 2. the rows, in parallel processes (GPU: --device cuda --jobs 16); each writes <out>/<row>.json + .pt
    python benchmarks/frontier_study.py rows --parent .gpu/parent.pt --data-dir cifar10-jpeg.tar.gz --plan headline \
        --out results/rows --device cuda --jobs 16 --deadline 520
    # 3. dense-small controls (narrow models: cheap on a CPU), the same recovery after their own training
    python benchmarks/frontier_study.py rows --parent .gpu/parent.pt --data-dir ... --plan dense-small --out ...
    # 4. ONNX Runtime int8 of every saved model (accuracy, .onnx bytes, latency on this CPU: run it on a CPU box,
    #    calibrated on 512 training images, the row's TTA), into each row's `ort`, then the table
    python benchmarks/frontier_study.py deploy --parent .gpu/parent.pt --data-dir ... --out results/rows
    python benchmarks/frontier_study.py table --parent .gpu/parent.pt --out results/rows

Rows (`--plan headline`): per target (10x smaller in int8 bytes; 20x in int4 bytes with int4 QAT) and recovery
recipe, seeds 0,1,2: the pruned model (lamp, the smallest ratio whose bytes fit: a ceiling), and with the first
seed the equal-budget control "dense + budget" (the parent through the same recovery, ratio 0).
`--plan dense-small`: per target, the widest dense ResNet of at most the row's bytes, trained from scratch with the
parent's recipe for the parent's epochs, then the same recovery: equal bytes, equal budget. Recipes, targets and
winners are chosen on validation accuracy; test accuracy is reported beside it. "x smaller" is against the parent's
dense fp32 weights (`core.frontier.dense_reference`). Every row says where it ran.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import where  # noqa: E402  (benchmarks/machine.py)

from prune_tracker.core.data import load_splits  # noqa: E402
from prune_tracker.core.dense_small import size_dense_small  # noqa: E402
from prune_tracker.core.flows import (  # noqa: E402
    CALIBRATION_IMAGES,
    Measurement,
    PrunePlan,
    deploy_saved_model,
    evaluate_splits,
    precision_metrics,
    prune_and_recover,
    prune_context,
    ratio_for_target,
)
from prune_tracker.core.footprint import measure_footprint  # noqa: E402
from prune_tracker.core.frontier import dense_reference  # noqa: E402
from prune_tracker.core.models import architecture_spec, build_from_spec, build_model  # noqa: E402
from prune_tracker.core.pruning import get_method  # noqa: E402
from prune_tracker.core.recipes import finetune_recipe, logged_train_config  # noqa: E402
from prune_tracker.core.training import TrainConfig, Trainer, fit, resolve_device, seed_everything  # noqa: E402

RECIPES: dict[str, dict[str, Any]] = {  # name -> recovery (rewinding replays the parent's own schedule)
    "finetune": {},
    "rewind": {"finetune_schedule": "rewind"},
    "distill+rewind": {"finetune_schedule": "rewind", "distill_alpha": 0.7},
    "iterative+distill+rewind": {"finetune_schedule": "rewind", "distill_alpha": 0.7, "rounds": 3},
}
TARGETS: dict[str, dict[str, Any]] = {  # name -> x smaller than the dense fp32 weights, in which bytes, with QAT
    "10x-int8": {"factor": 10, "metric": "footprint_best_int8_bytes", "precision": "int8", "qat": "none"},
    "20x-int4": {"factor": 20, "metric": "footprint_best_int4_bytes", "precision": "int4", "qat": "int4"},
}
PLANS = {  # target -> recipes compared there (each at every seed), with the dense + budget control of each
    "headline": {"10x-int8": ["rewind", "distill+rewind"], "20x-int4": ["distill+rewind", "rewind"]},
    "smoke": {"10x-int8": ["rewind"]},
}
PRECISIONS = ("fp16", "int8", "int4")
ROW_TTA = True  # rows are evaluated with flip test-time augmentation (recorded as the row's `tta`)
ANCHORS = """Published anchors (CIFAR-10, official data; this lab uses a JPEG copy, so compare drops, not levels):
- Renda et al. 2020 (learning-rate rewinding, unstructured): ResNet-20 79% sparse +0.02 pt, 89% -0.96 pt;
  ResNet-56 89% +0.1 pt (their budgets: the full original schedule again).
- Carreira-Perpinan & Idelbayev 2018 (Learning-Compression): ResNet-32 90% sparse -0.16 pt.
- Choi et al. 2017 (pruning + quantisation): ResNet-32 80% pruned + quantised, 22x smaller, +0.1 pt.
- Han et al. 2016 (Deep Compression): pruning 9-13x, with quantisation 35-49x (ImageNet)."""


# ------------------------------------------------------------------------------------------ the parent


def export_parent(model_uri: str, out: Path) -> None:
    """The parent (spec, state_dict, its train run's params and metrics) in one file: what a machine without the
    tracking store needs."""
    from prune_tracker import tracking

    loaded = tracking.load_model(model_uri)
    run_id = loaded.source_run_id
    blob = {"spec": loaded.spec, "state_dict": loaded.model.state_dict(), "run_id": run_id,
            "train_params": tracking.run_params(run_id), "metrics": tracking.run_metrics(run_id)}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    print(f"parent {model_uri}: test {blob['metrics']['test_accuracy']:.4f} -> {out}")


def load_parent(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def parent_model(parent: dict[str, Any]) -> torch.nn.Module:
    model = build_from_spec(parent["spec"])
    model.load_state_dict(parent["state_dict"])
    return model.eval()


def parent_splits(parent: dict[str, Any], data_dir: str | None):
    """The parent's own split (its dataset, val_size, split seed; stores before `split_seed`: its `seed`)."""
    params = parent["train_params"]
    split_seed = params.get("split_seed") or params.get("seed") or 0
    return load_splits(params.get("dataset", "cifar10"), data_dir, int(params.get("train_subset") or 0),
                       params.get("val_size") or "auto", int(float(split_seed)))


# ------------------------------------------------------------------------------------------ rows


def plan_rows(plan: str, epochs: float, seeds: Iterable[int]) -> list[dict[str, Any]]:
    rows = []
    if plan == "dense-small":
        for target, recipes in PLANS["headline"].items():
            rows.append({"kind": "dense_small", "target": target, "recipe": recipes[0], "seed": 0, "epochs": epochs})
    else:
        seeds = list(seeds)
        for target, recipes in PLANS[plan].items():
            for recipe in recipes:
                rows += [{"kind": "pruned", "target": target, "recipe": recipe, "seed": seed, "epochs": epochs}
                         for seed in seeds]
                rows.append({"kind": "dense_budget", "target": target, "recipe": recipe, "seed": seeds[0],
                             "epochs": epochs})
    for row in rows:
        row["name"] = f"{row['kind']}-{row['target']}-{row['recipe']}-s{row['seed']}".replace("+", "_")
    return rows


def recovery_config(row: dict[str, Any], parent: dict[str, Any], lr: float):
    """The fine-tuning config of the row's recipe (rewind: the parent's schedule) and its plan's rounds."""
    recipe = RECIPES[row["recipe"]]
    finetune = float(row["epochs"])
    rounds = recipe.get("rounds")
    round_epochs = None
    if rounds:  # half of the budget retrains between rounds, half at the end
        round_epochs, finetune = finetune / 2 / rounds, finetune / 2
    # `prune`'s own fine-tuning defaults (lr 0.01 cosine, batch 128, ...), the row's seed and budget
    config = finetune_recipe(TrainConfig(epochs=finetune, lr=lr, schedule="cosine", seed=int(row["seed"])),
                             recipe.get("finetune_schedule", "cosine"), parent["train_params"], None,
                             recipe.get("distill_alpha", 0.0))
    return config, finetune, rounds, round_epochs


def train_dense_small(row: dict[str, Any], parent: dict[str, Any], splits, device: torch.device, target_bytes: float,
                      pretrained: Path | None = None):
    """The widest dense model of at most the row's bytes, trained from scratch with the parent's recipe (or read from
    `pretrained`, a file `pretrain` wrote for this target)."""
    target = TARGETS[row["target"]]
    arch = parent["spec"]["arch"]
    sized = size_dense_small(target_bytes, target["metric"], [arch], splits.num_classes)
    config = replace(logged_train_config(parent["train_params"]), width=sized.width, seed=int(row["seed"]))
    extra = {"width": sized.width, "pretrain_epochs": config.epochs}
    if pretrained is not None and pretrained.exists():
        blob = torch.load(pretrained, map_location="cpu", weights_only=True)
        model = build_from_spec(blob["spec"])
        model.load_state_dict(blob["state_dict"])
        return model, {**extra, **blob["extra"]}
    seed_everything(config.seed)
    model = build_model(arch, splits.num_classes, width=sized.width)
    trainer = Trainer(model, splits, config, device, progress=False)
    started = time.perf_counter()
    fit(trainer)
    extra["pretrain_seconds"] = time.perf_counter() - started
    extra["pretrain_where"] = where(device)
    extra["pretrain_metrics"] = evaluate_splits(trainer.eval_model, splits, device, True)
    return trainer.eval_model, extra


def pretrain(args: argparse.Namespace) -> None:
    """The dense-small models of `--plan dense-small`, trained from scratch into `<out>/pretrained-<target>.pt`
    (they need no parent weights, only its recipe; the rows' recovery then starts from them)."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    parent = load_parent(Path(args.parent))
    splits = parent_splits(parent, args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for row in plan_rows("dense-small", args.epochs, [0]):
        if args.target and row["target"] != args.target:
            continue
        target = TARGETS[row["target"]]
        target_bytes = dense_reference(parent["metrics"], target["metric"]) / target["factor"]
        model, extra = train_dense_small(row, parent, splits, device, target_bytes)
        torch.save({"spec": architecture_spec(model.cpu(), parent["spec"]["arch"], splits.num_classes),
                    "state_dict": model.cpu().state_dict(), "extra": extra}, out / f"pretrained-{row['target']}.pt")
        print(f"{row['target']}: width {extra['width']:g}, {extra['pretrain_seconds']:.0f} s, "
              f"val {extra['pretrain_metrics']['val_accuracy']:.4f} ({extra['pretrain_where']})", flush=True)


def run_row(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    parent = load_parent(Path(args.parent))
    splits = parent_splits(parent, args.data_dir)
    target = TARGETS[row["target"]]
    reference = dense_reference(parent["metrics"], target["metric"])
    target_bytes = reference / target["factor"]
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    teacher_model = parent_model(parent)
    if row["kind"] == "dense_small":
        model, extra = train_dense_small(row, parent, splits, device, target_bytes,
                                         Path(args.out) / f"pretrained-{row['target']}.pt")
    else:
        model = copy.deepcopy(teacher_model)
    model = model.to(device)
    config, finetune, rounds, round_epochs = recovery_config(row, parent, args.lr)
    teacher = teacher_model.to(device).eval() if config.distill_alpha else None
    seed_everything(config.seed)
    measurement = Measurement(splits, device, ROW_TTA, PRECISIONS, tuple(splits.test.images.shape[1:]))
    ctx = prune_context(splits, config, device, False, ROW_TTA, teacher)
    method = get_method(args.method)
    options = method.resolve_options({})
    ratio = 0.0
    if row["kind"] == "pruned":
        ratio = ratio_for_target(model, method, options, ctx, int(target_bytes), target["metric"])
    plan = PrunePlan(method, ratio, options, finetune, target["qat"], rounds, round_epochs)
    result, after_pruning = prune_and_recover(model, plan, ctx, measurement)
    final = result.model.eval()
    metrics = evaluate_splits(final, splits, device, ROW_TTA)
    footprint = measure_footprint(final.cpu(), measurement.input_shape).metrics
    metrics |= precision_metrics(final.to(device), measurement, footprint)
    metrics |= {k: footprint[k] for k in ("footprint_fp32_bytes", "footprint_best_bytes", "flops_effective",
                                           "activation_peak_fp32_bytes", "params_nonzero")}
    seconds = time.perf_counter() - started
    out = Path(args.out)
    torch.save({"spec": architecture_spec(final.cpu(), parent["spec"]["arch"], splits.num_classes),
                "state_dict": final.cpu().state_dict()}, out / f"{row['name']}.pt")
    result_row = {**row, **extra, "ratio": ratio, "target_bytes": target_bytes, "reference_bytes": reference,
                  "bytes": metrics[target["metric"]], "x_smaller": reference / metrics[target["metric"]],
                  "precision": target["precision"], "metrics": metrics, "after_pruning": after_pruning,
                  "seconds": seconds, "where": where(device), "torch": torch.__version__, "tta": ROW_TTA}
    (out / f"{row['name']}.json").write_text(json.dumps(result_row, indent=2))
    return result_row


def probe(args: argparse.Namespace) -> None:
    """Fine-tuning steps of the parent for `--probe-seconds` (after a warm-up): prints steps per second, so the
    driver can measure how `--jobs` processes share the device."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    parent = load_parent(Path(args.parent))
    splits = parent_splits(parent, args.data_dir)
    trainer = Trainer(parent_model(parent).to(device), splits, TrainConfig(epochs=1000, lr=0.01, schedule="cosine"),
                      device, progress=False)
    loader = (batch for _ in iter(int, 1) for batch in trainer.loader)  # epochs without end
    for _ in range(20):  # warm-up: kernels chosen, memory allocated
        trainer._train_step(*next(loader))
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.probe_seconds:
        trainer._train_step(*next(loader))
        steps += 1
    print(json.dumps({"steps_per_second": steps / (time.perf_counter() - started),
                      "steps_per_epoch": len(trainer.loader)}), flush=True)


def measure_sharing(args: argparse.Namespace, jobs: int) -> dict[str, float]:
    """Steps per second of one process alone and of each of `jobs` processes at once."""
    def run(count: int) -> list[dict[str, float]]:
        command = [sys.executable, __file__, "probe", *forwarded(args), "--probe-seconds", str(args.probe_seconds)]
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    alone, shared = run(1)[0], run(jobs)
    rate = min(r["steps_per_second"] for r in shared)
    return {"alone_steps_per_second": alone["steps_per_second"], "shared_steps_per_second": rate, "jobs": jobs,
            "steps_per_epoch": alone["steps_per_epoch"],
            "aggregate_speedup": rate * jobs / alone["steps_per_second"]}


SLOWEST_RECIPE = 1.6  # distillation (a teacher forward) with int4 QAT costs about this much more than a plain step


def fitting_epochs(sharing: dict[str, float], seconds: float, wanted: float, overhead: float) -> float:
    """The fine-tuning budget every row can finish in `seconds` when all run at once (at most `wanted`), whole
    epochs: measured, so a row is never cut short."""
    epoch_seconds = sharing["steps_per_epoch"] / sharing["shared_steps_per_second"]
    return float(min(wanted, max(1, int((seconds - overhead) / (SLOWEST_RECIPE * epoch_seconds)))))


def run_rows(args: argparse.Namespace) -> None:
    """Each row in its own process (`--jobs` at a time), stopped at `--deadline` seconds: rows not done by then are
    reported as not run, never guessed. With `--fit-deadline`, the fine-tuning budget is first fitted to the
    deadline from a measurement of how the processes share the device (every row gets the same budget)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parent = load_parent(Path(args.parent))
    splits = parent_splits(parent, args.data_dir)  # decodes (and caches) the data once, before the workers
    print(f"parent: test {parent['metrics']['test_accuracy']:.4f}; split: {len(splits.train)} train / "
          f"{len(splits.val)} val / {len(splits.test)} test, val labels digest "
          f"{int((splits.val.labels * torch.arange(len(splits.val))).sum())}; {where(resolve_device(args.device))}",
          flush=True)
    rows = [r for r in plan_rows(args.plan, args.epochs, [int(s) for s in args.seeds.split(",")])
            if not (out / f"{r['name']}.json").exists()]
    if args.fit_deadline and rows:
        started = time.monotonic()
        sharing = measure_sharing(args, min(args.jobs, len(rows)))
        left = args.deadline - (time.monotonic() - started)
        epochs = fitting_epochs(sharing, left, args.epochs, args.row_overhead)
        print(f"sharing: {json.dumps(sharing)}; fine-tuning budget {epochs:g} epochs per row", flush=True)
        (out / "sharing.txt").write_text(json.dumps({**sharing, "epochs": epochs}))
        args.deadline = left
        for row in rows:
            row["epochs"] = epochs
    started, running, pending = time.monotonic(), {}, list(rows)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    while pending or running:
        while pending and len(running) < args.jobs:
            row = pending.pop(0)
            command = [sys.executable, __file__, "one", "--row", json.dumps(row), *forwarded(args)]
            log = open(out / f"{row['name']}.log", "w")  # noqa: SIM115  (closed when the process ends)
            running[row["name"]] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                running.pop(name)
                status = "done" if (out / f"{name}.json").exists() else f"FAILED ({proc.returncode})"
                print(f"{time.monotonic() - started:6.0f} s  {name}: {status}", flush=True)
        if time.monotonic() - started > args.deadline:
            for name, (proc, log) in running.items():
                finished = proc.poll() is not None  # ended since the loop above looked: its row counts if written
                proc.kill()
                log.close()
                written = finished and (out / f"{name}.json").exists()
                print(f"deadline: {name} {'done' if written else 'stopped, not run'}", flush=True)
            print(f"deadline: {len(pending)} row(s) never started", flush=True)
            return
        time.sleep(2)


def forwarded(args: argparse.Namespace) -> list[str]:
    return ["--parent", args.parent, "--data-dir", args.data_dir or "", "--out", args.out, "--device", args.device,
            "--threads", str(args.threads), "--lr", str(args.lr), "--method", args.method]


# ------------------------------------------------------------------------------------------ ONNX Runtime int8


class StudyError(Exception):
    """Bad input to a step: printed as one line, exit 2."""


def deploy_rows(args: argparse.Namespace) -> None:
    """ONNX Runtime int8 of every row's saved model (`<out>/<name>.pt`), measured as a run measures ort_int8
    (`core.flows.deploy_saved_model`): calibrated on the first CALIBRATION_IMAGES training images of the parent's
    split, evaluated on its val and test splits with the row's TTA setting, latencies on this CPU, one thread. Writes
    the figures as the row's `ort` dict and the quantised model as `<out>/<name>.ort_int8.onnx` (the file whose bytes
    are `file_ort_int8_bytes`). Rows that have an `ort` dict are kept unless `--redo`."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    paths = sorted(out.glob("*.json")) if out.is_dir() else []
    if not paths:
        raise StudyError(f"--out {out}: no row files (<name>.json) to deploy")
    rows = []
    for path in paths:  # every row checked before anything is measured
        row = read_row(path)
        if row.get("ort") and not args.redo:
            print(f"{row['name']}: ort_int8 already measured (--redo measures it again)", flush=True)
            continue
        saved = out / f"{row['name']}.pt"
        if not saved.exists():
            raise StudyError(f"{path}: its saved model {saved} does not exist")
        rows.append((path, row, saved))
    if not rows:
        return
    import onnxruntime

    parent = load_parent(Path(args.parent))
    splits = parent_splits(parent, args.data_dir)
    for path, row, saved in rows:
        tta = bool(row.get("tta", ROW_TTA))  # rows written before `tta` was recorded all ran with ROW_TTA
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                deployed = deploy_saved_model(torch.load(saved, map_location="cpu", weights_only=True), splits,
                                              Path(tmp), tta=tta, label=str(saved), min_run_time=args.latency_seconds)
            except ValueError as error:
                raise StudyError(str(error)) from None
            onnx_file = out / f"{row['name']}.ort_int8.onnx"
            shutil.copyfile(deployed.path, onnx_file)
        row["ort"] = {**deployed.metrics, "tta": tta, "calibration_images": CALIBRATION_IMAGES,
                      "onnx_file": onnx_file.name, "seconds": time.perf_counter() - started,
                      "where": where(torch.device("cpu")), "onnxruntime": onnxruntime.__version__}
        path.write_text(json.dumps(row, indent=2))
        ort, fake = row["ort"], accuracy_at(row, "test")
        print(f"{row['name']}: ORT int8 test {ort['test_accuracy_ort_int8']:.4f} (fake-quantised {row['precision']}: "
              f"{'-' if fake is None else f'{fake:.4f}'}), .onnx {ort['file_ort_int8_bytes']:,.0f} B, batch 1 "
              f"{ort['latency_ms_ort_int8']:.2f} ms (ORT fp32 {ort['latency_ms_ort_fp32']:.2f} ms)", flush=True)


def read_row(path: Path) -> dict[str, Any]:
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StudyError(f"{path}: not JSON ({error})") from None
    if not isinstance(row, dict) or not {"name", "metrics", "precision"} <= set(row):
        raise StudyError(f"{path}: not a row of this study (a row has name, metrics, precision)")
    return row


# ------------------------------------------------------------------------------------------ the table


def load_rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def accuracy_at(row: dict[str, Any], split: str, precision: str | None = None) -> float | None:
    return row["metrics"].get(f"{split}_accuracy_{precision or row['precision']}")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}") + f" (n={len(values)})"


def select_on_validation(groups: dict[str, list[dict[str, Any]]]) -> str | None:
    """The recipe whose mean validation accuracy (at the row's precision) is highest: recipes, targets and winners
    are chosen on validation, never on test."""
    scored = {name: statistics.fmean(accuracy_at(r, "val") for r in rows) for name, rows in groups.items() if rows}
    return max(scored, key=scored.get) if scored else None


def table(parent: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    base = parent["metrics"]
    lines = [f"Parent: {parent['spec']['arch']}, val {100 * base['val_accuracy']:.2f} / test "
             f"{100 * base['test_accuracy']:.2f} (fp32), int8 test {100 * base.get('test_accuracy_int8', 0):.2f}; "
             f"dense fp32 weights {base['footprint_fp32_bytes']:.0f} B.", "",
             "| target | recipe | chosen on val | kind | seeds | fine-tuning epochs | bytes | x smaller | val acc | "
             "test acc | drop vs parent (pt) | drop vs dense+budget (pt) | ORT int8 test | .onnx bytes | where |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        at_target = [r for r in rows if r["target"] == target]
        pruned = {}
        for r in at_target:
            if r["kind"] == "pruned":
                pruned.setdefault(r["recipe"], []).append(r)
        chosen = select_on_validation(pruned)
        for recipe in sorted({r["recipe"] for r in at_target}):
            control = [r for r in at_target if r["recipe"] == recipe and r["kind"] == "dense_budget"]
            control_test = [accuracy_at(r, "test") for r in control]
            for kind in ("pruned", "dense_budget", "dense_small"):
                group = [r for r in at_target if r["recipe"] == recipe and r["kind"] == kind]
                if group:
                    lines.append(row_line(target, recipe, recipe == chosen and kind == "pruned", kind, group, base,
                                          control_test))
    deployed = sorted({f"{r['ort']['where']}, onnxruntime {r['ort']['onnxruntime']}" for r in rows if "ort" in r})
    if deployed:
        lines += ["", f"ORT int8 columns: measured by `deploy` on {'; '.join(deployed)} (the rows' test split, TTA as "
                      "the row); an int4 row's ORT figure is its weights in int8 (ONNX Runtime has no int4 kernels)."]
    return "\n".join(lines)


def row_line(target: str, recipe: str, chosen: bool, kind: str, group: list[dict[str, Any]], base: dict[str, float],
             control_test: list[float]) -> str:
    val = [accuracy_at(r, "val") for r in group]
    test = [accuracy_at(r, "test") for r in group]
    drop = 100 * (base["test_accuracy"] - statistics.fmean(test))
    versus = f"{100 * (statistics.fmean(control_test) - statistics.fmean(test)):+.2f}" if control_test and \
        kind != "dense_budget" else "-"
    ort = [r["ort"]["test_accuracy_ort_int8"] for r in group if "ort" in r]
    onnx = [r["ort"]["file_ort_int8_bytes"] for r in group if "ort" in r]
    label = {"pruned": "pruned (lamp)", "dense_budget": "dense + budget", "dense_small": "dense-small"}[kind]
    if kind == "dense_small":
        label += f" w{group[0]['width']:g}"
    return (f"| {target} | {recipe} | {'**yes**' if chosen else ''} | {label} | "
            f"{','.join(str(r['seed']) for r in group)} | {group[0]['epochs']:g} | "
            f"{statistics.fmean(r['bytes'] for r in group):,.0f} | "
            f"{statistics.fmean(r['x_smaller'] for r in group):.2f} | {fmt(val)} | {fmt(test)} | {drop:+.2f} | "
            f"{versus} | {fmt(ort)} | {f'{statistics.fmean(onnx):,.0f}' if onnx else '-'} | {group[0]['where']} |")


def figure(parent: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """Test accuracy (mean and std over seeds) against the bytes of the deployable format, log x axis: the parent
    (dense fp32 and its int8 file), each target's recipes, and the controls; one PNG for the README."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), dpi=130)
    ax = fig.add_subplot()
    base = parent["metrics"]
    ax.scatter([base["footprint_fp32_bytes"]], [100 * base["test_accuracy"]], marker="*", s=160, color="black",
               label="parent (dense fp32)", zorder=3)
    styles = {"pruned": ("o", "pruned (lamp)"), "dense_budget": ("s", "dense + budget"),
              "dense_small": ("^", "dense-small, same bytes")}
    for (kind, target, recipe), group in sorted(_groups(rows).items()):
        marker, label = styles[kind]
        test = [100 * accuracy_at(r, "test") for r in group]
        mean, std = mean_std(test)
        ax.errorbar([statistics.fmean(r["bytes"] for r in group)], [mean], yerr=[std or 0.0], fmt=marker,
                    capsize=3, label=f"{label}: {target} {recipe}, {group[0]['epochs']:g} ep")
    ax.set_xscale("log")
    ax.set_xlabel("bytes of the deployable weights (int8 / int4; parent: fp32)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10 (JPEG copy), ResNet-20: accuracy vs bytes (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["target"], r["recipe"]), []).append(r)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("export", "rows", "one", "probe", "pretrain", "deploy", "table", "figure"))
    parser.add_argument("--target", default="", help="pretrain: only this target (e.g. 10x-int8)")
    parser.add_argument("--model", help="export: the parent's model URI")
    parser.add_argument("--parent", default=".gpu/parent.pt")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--plan", default="headline", choices=(*PLANS, "dense-small"))
    parser.add_argument("--epochs", type=float, default=30.0, help="fine-tuning budget of every row")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--method", default="lamp")
    parser.add_argument("--lr", type=float, default=0.01, help="peak lr of cosine recipes (rewind: the parent's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds; rows still running stop")
    parser.add_argument("--out", default="frontier_rows")
    parser.add_argument("--row", help="one: the row as JSON")
    parser.add_argument("--fit-deadline", action="store_true", help="rows: fit the budget to the deadline")
    parser.add_argument("--png", default="docs/img/frontier.png", help="figure: where the PNG goes")
    parser.add_argument("--probe-seconds", type=float, default=12.0)
    parser.add_argument("--latency-seconds", type=float, default=1.0,
                        help="deploy: timed seconds per latency figure (after a warm-up)")
    parser.add_argument("--redo", action="store_true", help="deploy: measure rows that have an `ort` dict again")
    parser.add_argument("--row-overhead", type=float, default=90.0,
                        help="seconds a row spends outside fine-tuning (ratio search, evaluation, saving)")
    args = parser.parse_args()
    args.data_dir = args.data_dir or None
    if args.command == "export":
        export_parent(args.model, Path(args.out))
    elif args.command == "one":
        run_row(json.loads(args.row), args)
    elif args.command == "rows":
        run_rows(args)
    elif args.command == "probe":
        probe(args)
    elif args.command == "pretrain":
        pretrain(args)
    elif args.command == "deploy":
        try:
            deploy_rows(args)
        except StudyError as error:
            parser.exit(2, f"{parser.prog} deploy: error: {error}\n")
    elif args.command == "figure":
        figure(load_parent(Path(args.parent)), load_rows(Path(args.out)), Path(args.png))
    else:
        text = table(load_parent(Path(args.parent)), load_rows(Path(args.out)))
        print(text + "\n\n" + ANCHORS)


if __name__ == "__main__":
    main()
