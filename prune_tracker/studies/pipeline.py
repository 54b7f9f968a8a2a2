"""The `main` pipeline: train a base model, prune it with each method at each ratio (fine-tuning inside
each prune run), optionally train a dense-small baseline at each pruned model's bytes and training budget
(`baselines`), all of it once per seed (`seeds`), then evaluate, compare (averaged over seeds when there are
several), register and report. Each step is its own MLflow run, nested under the pipeline run.
Train, evaluate, prune and baseline steps that already FINISHED with the same `reuse_key` (tracking/identity.py:
the code's identity, every model the step starts from by content, the data and every parameter) are reused;
compare and report always run again, since they read whatever the experiment holds now."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prune_tracker import tracking
from prune_tracker.core.budget import check_budget, parse_budget
from prune_tracker.core.frontier import resolve_footprint
from prune_tracker.core.models import build_model, width_archs
from prune_tracker.core.pruning import get_method, validate_ratio
from prune_tracker.core.quant import PRECISIONS
from prune_tracker.core.seeds import parse_seeds
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import (
    DataSpec,
    EvaluateSpec,
    PruneSpec,
    Recovery,
    RunSpec,
    TrainSpec,
    evaluate_model,
    prune_model,
    train,
)
from prune_tracker.jobs.runs import start_run
from prune_tracker.tracking.identity import REUSE_KEY_TAG, code_identity, finished_run_with_key, reuse_key

SELECTION_METRIC = "val_accuracy"  # the champion is chosen on validation; test accuracy is reported beside it


def demo_data() -> DataSpec:
    return DataSpec(train_subset=0, val_size=2000)


def demo_train() -> TrainConfig:
    """A base of ~80% on CIFAR-10 in 5 epochs: progressive resizing spends half of them at 16 px."""
    return TrainConfig(epochs=5, resize_schedule="16:0.5,24:0.3", ema_decay=0.0)


@dataclass
class PipelineConfig:
    """`main`'s defaults are the demo's study: the full training set, a short base recipe, two unstructured
    methods at 75% sparsity with one fine-tuning epoch, and a budget of 1/8 of the base's fp32 bytes (which
    only the quantised variants fit: int8 weights + a 1-bit mask)."""

    arch: str = "resnet20"
    data: DataSpec = field(default_factory=demo_data)
    train: TrainConfig = field(default_factory=demo_train)
    methods: list[str] = field(default_factory=lambda: ["lamp", "global_l1"])
    ratios: list[float] = field(default_factory=lambda: [0.75])
    finetune_epochs: float = 1.0
    finetune_lr: float = 0.01
    tta_flip: bool = True
    footprint: str = "footprint_best_bytes"
    budget: str | None = "1/8"
    register: bool = True
    registered_name: str | None = None
    experiment_name: str = "prune-tracker"
    device: str = "auto"
    progress: bool = False
    precisions: tuple[str, ...] = PRECISIONS
    recovery: Recovery = field(default_factory=Recovery)
    # Seeds of the whole study (base, prune steps, baselines once per seed; compare averages over them); empty:
    # the one seed of `train.seed`, with today's step names. The split (`data.split_seed`) is the same for all.
    seeds: list[int] = field(default_factory=list)
    # A dense-small baseline per pruned model: a dense `arch` at the largest width within its bytes (`footprint`,
    # or footprint_best_bytes for a non-byte footprint), trained for its total budget (base + fine-tuning epochs).
    baselines: bool = False

    def seed_list(self) -> list[int]:
        return list(self.seeds) or [self.train.seed]

    def validate(self) -> None:
        build_model(self.arch, zero_init=self.train.zero_init_residual, width=self.train.width)
        parse_seeds([str(s) for s in self.seeds])
        for name in self.methods:
            get_method(name)
        for ratio in self.ratios:
            validate_ratio(ratio)
        if not self.methods or not self.ratios:
            raise ValueError("methods and ratios must each name at least one value")
        self.train.validate()
        check_budget(self.budget)
        if self.baselines and self.arch not in width_archs():
            raise ValueError(f"baselines=true needs an arch that takes a width multiplier ({', '.join(width_archs())})"
                             f"; arch={self.arch!r} does not: set baselines=false or choose one of those")


@dataclass
class PipelineResult:
    run_id: str
    steps: dict[str, str] = field(default_factory=dict)  # step name -> run id
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # step name -> error line
    champion_uri: str | None = None


class PipelineError(RuntimeError):
    pass


class _Steps:
    def __init__(self, result: PipelineResult, experiment_id: str, base_options: RunSpec):
        self.result, self.experiment_id, self.base_options = result, experiment_id, base_options

    def run(self, name: str, stage: str, params: dict[str, Any], action: Callable[[RunSpec], str],
            reuse: bool = True) -> str | None:
        key = reuse_key(stage, params)
        if reuse and (previous := finished_run_with_key(self.experiment_id, key)):
            print(f"[main] {name}: reusing finished run {previous}", flush=True)
            self.result.steps[name] = previous
            self.result.reused.append(name)
            return previous
        print(f"[main] {name}: running", flush=True)
        options = replace(self.base_options, nested=True, run_name=name,
                          extra_tags={REUSE_KEY_TAG: key, "pipeline_step": name})
        try:
            run_id = action(options)
        except Exception as err:  # noqa: BLE001 - a failed step is reported, the others go on
            line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"[main] {name}: FAILED: {line}", flush=True)
            traceback.print_exc()
            self.result.failed[name] = line
            return None
        self.result.steps[name] = run_id
        return run_id


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    config.validate()
    if config.recovery.teacher_uri:  # the one model main does not train itself: it must load, before any step
        tracking.load_model(config.recovery.teacher_uri)
    run_options = RunSpec(config.experiment_name, config.device, config.progress, precisions=config.precisions)
    seeds = config.seed_list()
    with tracking.tracked_run("pipeline", config.experiment_name, "main",
                              {"dataset": config.data.dataset, "arch": config.arch}) as active:
        tracking.log_params({"arch": config.arch, **config.data.logged(), **asdict(config.train),
                             "methods": ",".join(config.methods), "ratios": ",".join(map(str, config.ratios)),
                             "finetune_epochs": config.finetune_epochs, "finetune_lr": config.finetune_lr,
                             "tta_flip": config.tta_flip, "footprint": config.footprint,
                             "budget": config.budget or "", "register": config.register,
                             "precisions": ",".join(config.precisions), **config.recovery.logged(),
                             "seeds": ",".join(map(str, config.seeds)), "baselines": config.baselines})
        result = PipelineResult(active.info.run_id)
        steps = _Steps(result, active.info.experiment_id, run_options)
        budget: int | None = None
        for seed in seeds:
            base = _seed_study(_with_seed(config, seed), steps, result, f"-seed{seed}" if len(seeds) > 1 else "")
            if seed == seeds[0]:
                budget = parse_budget(config.budget, tracking.run_metrics(base).get("footprint_fp32_bytes"))
        _compare_register_report(replace(config, budget=budget), steps, result, "seed" if len(seeds) > 1 else None)
        tracking.log_dict({"steps": result.steps, "reused": result.reused, "failed": result.failed,
                           "code": code_identity(), "budget_bytes": budget, "seeds": seeds}, "pipeline.json")
        tracking.log_metrics({"steps_run": len(result.steps) - len(result.reused),
                              "steps_reused": len(result.reused), "steps_failed": len(result.failed)})
        if result.failed:
            tracking.set_tags({"failed_steps": ",".join(result.failed)})
            raise PipelineError(f"{len(result.failed)} step(s) failed: "
                                + "; ".join(f"{k}: {v}" for k, v in result.failed.items()))
        return result


def _with_seed(config: PipelineConfig, seed: int) -> PipelineConfig:
    """The study of one seed: training, pruning and fine-tuning use it; the split stays `data.split_seed`."""
    return replace(config, train=replace(config.train, seed=seed))


def _seed_study(config: PipelineConfig, steps: _Steps, result: PipelineResult, suffix: str) -> str:
    """One seed's steps: base, its evaluation, the prune steps and (with `baselines`) the dense-small baselines;
    step names end with `suffix` (e.g. `-seed1`, empty for a single seed). Returns the base run id."""
    finetune_config = replace(config.train, lr=config.finetune_lr, schedule="cosine", ema_decay=0.0,
                              warmup_fraction=0.0)
    common = {"arch": config.arch, **config.data.logged(), "precisions": list(config.precisions)}
    base = steps.run(f"train{suffix}", "train", {**common, **asdict(config.train)},
                     lambda opts: train(TrainSpec(config.arch, config.data, config.train, opts)))
    if base is None:
        raise PipelineError(f"step 'train{suffix}' failed: " + result.failed[f"train{suffix}"])
    base_uri = f"runs:/{base}/model"
    inherited = DataSpec.inherited(config.data.data_dir)  # the base run's split
    steps.run(f"evaluate-base{suffix}", "evaluate", {"model_uri": base_uri, **common, "tta": config.tta_flip},
              lambda opts: evaluate_model(EvaluateSpec(base_uri, inherited, opts, tta_flip=config.tta_flip)))
    pruned: dict[str, str | None] = {}
    for method in config.methods:
        for ratio in config.ratios:
            params = {"model_uri": base_uri, "method": method, "ratio": ratio, **common,
                      "finetune_epochs": config.finetune_epochs, **asdict(finetune_config),
                      **config.recovery.logged(), "tta": config.tta_flip}
            pruned[f"{method}-{ratio}"] = steps.run(
                f"prune-{method}-{ratio}{suffix}", "prune", params,
                lambda opts, m=method, r=ratio: prune_model(PruneSpec(
                    base_uri, m, r, finetune_epochs=config.finetune_epochs, data=inherited,
                    train=replace(finetune_config, tta_flip=config.tta_flip), recovery=config.recovery, run=opts)))
    if config.baselines:
        _baseline_steps(config, steps, result, base, pruned, suffix)
    return base


def baseline_target_metric(footprint: str) -> str:
    """The byte metric dense-small baselines are sized in: compare's `footprint` when it is one, else
    footprint_best_bytes."""
    footprint = resolve_footprint(footprint)
    return footprint if footprint.endswith("_bytes") else "footprint_best_bytes"


def _baseline_steps(config: PipelineConfig, steps: _Steps, result: PipelineResult, base: str,
                    pruned: dict[str, str | None], suffix: str) -> None:
    """A dense-small baseline per finished prune step, at most its bytes and trained for its total budget (base
    epochs + fine-tuning epochs + the method's own retraining); prune steps whose baseline comes out the same
    (arch, width, epochs) share one baseline run."""
    from prune_tracker.core.dense_small import DenseSmall
    from prune_tracker.studies.baselines import baseline_identity, dense_small_baseline, size_for_pruned_run

    metric = baseline_target_metric(config.footprint)
    num_classes = int(float(tracking.run_params(base).get("num_classes", 10)))
    planned: dict[tuple[str, float, float], DenseSmall] = {}
    for label, run_id in pruned.items():
        if run_id is None:
            continue  # the failed prune step is reported already
        try:
            epochs, sized = size_for_pruned_run(run_id, tracking.run_metrics(run_id), config.train.epochs,
                                                config.finetune_epochs, metric, config.arch, num_classes)
        except ValueError as err:
            name = f"baseline-for-{label}{suffix}"
            result.failed[name] = str(err).splitlines()[0]
            print(f"[main] {name}: FAILED: {result.failed[name]}", flush=True)
            continue
        planned.setdefault((sized.arch, sized.width, epochs), sized)
    for (arch, width, epochs), sized in planned.items():
        steps.run(f"baseline-{arch}-w{width:g}-{epochs:g}ep{suffix}", "train",
                  baseline_identity(sized, epochs, config.data, config.train, config.precisions, base),
                  lambda opts, s=sized, e=epochs: dense_small_baseline(s, e, config.data, config.train, opts,
                                                                       base_run_id=base)[0])


def _compare_register_report(config: PipelineConfig, steps: _Steps, result: PipelineResult,
                             aggregate: str | None = None) -> None:
    from prune_tracker.analysis.compare import run_compare
    from prune_tracker.analysis.report import run_report

    # The whole experiment for this dataset and architecture: reused steps belong to earlier pipeline runs.
    scope = {"dataset": config.data.dataset, "arch": config.arch, "footprint": config.footprint,
             "budget": config.budget, "metric": SELECTION_METRIC, **({"aggregate": aggregate} if aggregate else {})}

    def compare_step(opts: RunSpec) -> str:
        with start_run(opts, "compare", {"dataset": config.data.dataset, "arch": config.arch}, "compare") as run:
            outcome = run_compare([config.experiment_name], **scope, register=config.register,
                                  registered_name=config.registered_name)
            print(outcome.table, flush=True)
            if outcome.registration is not None and outcome.registration.champions:
                name = next(iter(outcome.registration.champions))
                result.champion_uri = outcome.registration.champion_uri(name)
            return run.info.run_id

    steps.run("compare", "compare", scope, compare_step, reuse=False)

    def report_step(opts: RunSpec) -> str:
        with start_run(opts, "report", {"dataset": config.data.dataset, "arch": config.arch}, "report") as run:
            run_report([config.experiment_name], **scope)
            return run.info.run_id

    steps.run("report", "report", scope, report_step, reuse=False)
    if result.champion_uri:
        # The champion may come from an earlier pipeline of the experiment: evaluate it on its own run's split.
        inherited = DataSpec.inherited(config.data.data_dir)
        steps.run("evaluate-champion", "evaluate", {"model_uri": result.champion_uri, "run": result.run_id},
                  lambda opts: evaluate_model(EvaluateSpec(result.champion_uri, inherited, opts,
                                                           tta_flip=config.tta_flip)),
                  reuse=False)
