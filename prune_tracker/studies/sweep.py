"""Sweeps: methods x ratios (or `target_bytes`) x seeds x recipe and method options from one base model. Each trial
is one prune run made by `jobs.prune_model`, the code path of `prune-tracker prune`, run by a
:class:`~prune_tracker.studies.trials.TrialRunner` on an executor (studies/executors.py: `local`, one after another in
this process, or `ray`).

Everything is checked before any run exists: the grid, every trial's options, the executor, and the base model
against the methods and the baselines (a foreign model without the pickle opt-in, `scope=stage` on a model without
option-A stages, `baselines=true` on a base without a width multiplier all fail here, in one line).

Every trial is a run nested under the study's run (`stage=sweep`, or `stage=search` for an Optuna search, which
drives the same runner). Before anything starts, orphan runs of the experiment are marked KILLED and each trial gets
its run, created SCHEDULED; the trial reopens it, so a trial rejected before pruning starts still has its FAILED
run, and a retry continues the same run. A trial that already FINISHED with the same `reuse_key` (code, base model
and teacher by content, data, every parameter: tracking/identity.py) is reused instead of run again; a failed trial
is retried once, then marked FAILED while the others go on. The sweep ends with `compare` over its trials' runs,
nested under it, and prints the front.

Seeds: each trial's `seed` seeds its pruning and fine-tuning (the prune run's `seed`); the data split stays the
base run's (`split_seed`, inherited), so the base model's training images never reach validation.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prune_tracker import tracking
from prune_tracker.core.budget import check_budget, fraction, parse_budget
from prune_tracker.core.pruning import get_method, validate_ratio
from prune_tracker.core.recipes import logged_train_config
from prune_tracker.core.seeds import parse_seeds
from prune_tracker.jobs import RunSpec
from prune_tracker.studies.executors import (  # noqa: F401  (re-exported: the sweep is where callers look)
    EXECUTORS,
    LocalExecutor,
    RayExecutor,
    check_executor,
    make_executor,
)
from prune_tracker.studies.pipeline import PipelineError
from prune_tracker.studies.trials import (  # noqa: F401  (re-exported: the sweep is where callers look)
    FAILED,
    FINISHED,
    MAX_ATTEMPTS,
    RECIPE_OPTIONS,
    UNSPLIT_OPTIONS,
    PruneBase,
    Recipe,
    TrialOutcome,
    TrialResult,
    TrialRunner,
    TrialSpec,
    TrialTask,
    collect_orphans,
    first_line,
    model_origin,
)
from prune_tracker.tracking import trials as trial_runs
from prune_tracker.tracking.identity import REUSE_KEY_TAG, finished_run_with_key, reuse_key


class SweepError(PipelineError):
    """Some trials of a sweep failed (the others finished), or no search trial fits its budget: the study's run
    ends FAILED naming them; `result` holds what the study did."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------ the grid


def split_values(text: str | Sequence[Any]) -> list[Any]:
    """"a,b" -> ["a", "b"]; a sequence as it is."""
    if isinstance(text, str):
        return [part.strip() for part in text.split(",") if part.strip()] or [""]
    return list(text)


def option_axes_for(methods: Sequence[str], raw: Mapping[str, str]) -> dict[str, dict[str, list[str]]]:
    """Per method, its method options as grid axes: an option applies to every method of the sweep that has it (an
    option none of them has is an error); a comma list is an axis, except for options whose value is a list itself
    (e.g. li_filters' sensitivity_ratios). Every value is checked against each method now."""
    per_method: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
    for name, value in raw.items():
        owners = [m for m in methods if name in get_method(m).params]
        if not owners:
            raise ValueError(f"{name!r} is neither a recipe option of prune nor an option of methods "
                             f"{', '.join(methods)}; see `prune-tracker methods`")
        for m in owners:
            is_list = isinstance(get_method(m).params[name], tuple)
            values = [value] if is_list or not isinstance(value, str) else split_values(value)
            for v in values:
                get_method(m).resolve_options({name: v})
            per_method[m][name] = values
    return per_method


def _product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def expand_grid(methods: Sequence[str], ratios: Sequence[float], target_bytes: Sequence[int], seeds: Sequence[int],
                recipe_axes: Mapping[str, Sequence[Any]] | None = None,
                option_axes: Mapping[str, str] | None = None) -> list[TrialSpec]:
    """methods x (target_bytes, else ratios) x seeds x recipe axes x each method's own option axes, in that order;
    duplicates dropped."""
    if not methods:
        raise ValueError("methods is empty; name at least one pruning method (see `prune-tracker methods`)")
    for name in methods:
        get_method(name)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. 0 or 0,1,2")
    sizes: list[tuple[float | None, int | None]] = (
        [(None, t) for t in target_bytes] if target_bytes else [(float(r), None) for r in ratios])
    if not sizes:
        raise ValueError("ratios is empty; give ratios (e.g. 0.5,0.75) or target_bytes (e.g. 100KB,200KB)")
    options = option_axes_for(methods, option_axes or {})
    recipes = _product(recipe_axes or {})
    specs, seen = [], set()
    for method in methods:
        for (ratio, target), seed, recipe, opts in itertools.product(sizes, seeds, recipes, _product(options[method])):
            spec = TrialSpec(method, ratio, target, int(seed), opts, recipe)
            marker = json.dumps(asdict(spec), sort_keys=True, default=str)
            if marker not in seen:
                seen.add(marker)
                specs.append(spec)
    return specs


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(r) for r in split_values(text) if r != ""]
    except ValueError:
        raise ValueError(f"ratios={text!r} must be comma-separated numbers in [0, 1), e.g. 0.5,0.75") from None
    for ratio in ratios:
        validate_ratio(ratio)
    return ratios


def parse_target_bytes(text: str) -> list[int | str]:
    """"100KB,200KB" -> [100000, 200000]; "1/8" stays a fraction of the base's dense fp32 weights (each trial's prune
    job resolves it); "" -> [] (the ratios apply). One parser for every budget: `core.budget`."""
    values: list[int | str] = []
    for item in (t for t in split_values(text) if t not in ("", "0")):
        check_budget(item, "target_bytes")
        values.append(item if fraction(item) is not None else parse_budget(item, name="target_bytes"))
    return values


def parse_seed_list(text: str) -> list[int]:
    seeds = parse_seeds(text)
    if not seeds:
        raise ValueError(f"seeds={text!r} is empty; expected comma-separated integers >= 0, e.g. 0,1,2")
    return seeds


# ------------------------------------------------------------------------------------------ after the trials


def run_baselines(results: Sequence[TrialResult], base: PruneBase, experiment_id: str, footprint: str,
                  log: Callable[[str], None] = print) -> list[str]:
    """`baselines=true`: for each FINISHED trial a dense-small model (the base's arch at the largest width whose
    dense bytes are at most the trial's, in compare's footprint metric) trained from scratch with the base run's
    own recipe for the trial's total budget (base epochs + fine-tuning epochs + the method's own retraining);
    trials that land on the same (arch, width, epochs) share one. Each is a `stage=train` run tagged
    `baseline=dense-small`, nested under the sweep's run; one that already FINISHED for the same base, width and
    budget is reused (the same `reuse_key` as `main`'s baseline steps). Returns the baselines' run ids."""
    from prune_tracker.studies.baselines import baseline_identity, dense_small_baseline, size_for_pruned_run
    from prune_tracker.studies.pipeline import baseline_target_metric

    finished = [r for r in results if r.status == FINISHED and r.run_id]
    if not finished:
        return []
    base_run = tracking.resolve_run_id(base.model_uri)
    base_params = tracking.run_params(base_run)
    recipe, arch = logged_train_config(base_params), base_params.get("arch", "")
    num_classes = int(float(base_params.get("num_classes", 10)))
    metric = baseline_target_metric(footprint)
    planned: dict[tuple[str, float, float], Any] = {}
    for trial in finished:
        finetune_epochs = float(tracking.run_params(trial.run_id).get("finetune_epochs") or 0)
        epochs, sized = size_for_pruned_run(trial.run_id, tracking.run_metrics(trial.run_id), recipe.epochs,
                                            finetune_epochs, metric, arch, num_classes)
        planned.setdefault((sized.arch, sized.width, epochs), sized)
    data = base.data.inherit(base_params)
    baselines = []
    for (arch_name, width, epochs), sized in planned.items():
        key = reuse_key("train", baseline_identity(sized, epochs, data, recipe, base.precisions, base_run))
        reused = finished_run_with_key(experiment_id, key)
        if reused:
            log(f"[sweep] dense-small {arch_name} w{width:g} {epochs:g} epochs: reused run {reused}")
            baselines.append(reused)
            continue
        run = RunSpec(base.experiment_name, base.device, progress=False, nested=True, precisions=base.precisions,
                      extra_tags={REUSE_KEY_TAG: key})
        run_id, _ = dense_small_baseline(sized, epochs, data, recipe, run, base_run_id=base_run)
        log(f"[sweep] dense-small {arch_name} w{width:g} {epochs:g} epochs: run {run_id}")
        baselines.append(run_id)
    return baselines


def compare_trials(results: Iterable[TrialResult], experiment_id: str, stage: str, study_run_id: str,
                   baseline_run_ids: Sequence[str] = (), **options: Any):
    """`compare` over the FINISHED trials' runs (and the dense-small baselines), as a run nested under the study's
    run; None when none finished."""
    from prune_tracker.analysis.compare import run_compare

    finished = [r.run_id for r in results if r.status == FINISHED and r.run_id] + list(baseline_run_ids)
    if not finished:
        return None
    name = trial_runs.experiment_name(experiment_id)
    tags = {f"{stage}_run_id": study_run_id}
    with tracking.tracked_run("compare", None, f"compare {stage} {tracking.short_id(study_run_id)}", tags,
                              nested=True):
        return run_compare([name], filter_string=trial_runs.run_ids_filter(finished), **options)


def tag_failures(results: Sequence[TrialResult]) -> list[TrialResult]:
    """Tag the study's run with its failed trials (`failed_trials`: their indices); returns them."""
    failed = [r for r in results if r.status == FAILED]
    if failed:
        tracking.set_tags({"failed_trials": ",".join(str(r.index) for r in failed)})
    return failed


def study_metrics(results: Sequence[TrialResult]) -> dict[str, float]:
    return {"trials": len(results), "trials_finished": sum(r.status == FINISHED for r in results),
            "trials_failed": sum(r.status == FAILED for r in results),
            "trials_reused": sum(r.reused for r in results)}


# ------------------------------------------------------------------------------------------ the sweep


@dataclass
class SweepConfig:
    """A sweep: `methods` x (`target_bytes`, else `ratios`) x `seeds` x `recipe_axes` (typed values of prune's
    recipe options) x `option_axes` (method options as given, "a,b" an axis) over `base`, on `executor`."""

    base: PruneBase
    methods: list[str] = field(default_factory=lambda: ["lamp", "global_l1"])
    ratios: list[float] = field(default_factory=lambda: [0.5, 0.75])
    target_bytes: list[int | str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    recipe_axes: dict[str, list[Any]] = field(default_factory=dict)
    option_axes: dict[str, str] = field(default_factory=dict)
    executor: str = "local"
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    cpus_per_trial: int = 1
    run_name: str | None = None
    metric: str = "val_accuracy"
    footprint: str = "footprint_best_bytes"
    baselines: bool = False  # a dense-small baseline per finished trial (see `run_baselines`)
    log: Callable[[str], None] = field(default=print, repr=False)

    def expand(self) -> list[TrialSpec]:
        """Validate everything and list the trials (bad input fails here, before any run exists)."""
        self.base.validate()
        check_executor(self.executor, self.ray_address, self.cpus_per_trial)
        specs = expand_grid(self.methods, self.ratios, self.target_bytes, self.seeds, self.recipe_axes,
                            self.option_axes)
        for spec in specs:
            spec.validate(self.base)
        self.base.check_model(specs, baselines=self.baselines)  # the base model against methods and baselines
        return specs

    def logged(self, n_trials: int) -> dict[str, Any]:
        return {"model_uri": self.base.model_uri, "methods": ",".join(self.methods),
                "ratios": "" if self.target_bytes else ",".join(f"{r:g}" for r in self.ratios),
                "target_bytes": ",".join(map(str, self.target_bytes)), "seeds": ",".join(map(str, self.seeds)),
                "executor": self.executor, "ray_address": self.ray_address or "", "cpus_per_trial": self.cpus_per_trial,
                "n_trials": n_trials, "precisions": ",".join(self.base.precisions), "baselines": self.baselines,
                **self.base.data.logged(),
                **{f"axis.{k}": ",".join(map(str, v)) for k, v in self.recipe_axes.items()},
                **{f"option.{k}": v for k, v in self.option_axes.items()}}


@dataclass
class SweepResult:
    run_id: str
    trials: list[TrialResult]
    compare: Any = None  # compare.CompareResult of the finished trials (None when none finished)

    @property
    def finished(self) -> list[TrialResult]:
        return [t for t in self.trials if t.status == FINISHED]

    @property
    def failed(self) -> list[TrialResult]:
        return [t for t in self.trials if t.status == FAILED]


def run_sweep(config: SweepConfig) -> SweepResult:
    """Run the sweep (see the module's docstring); SweepError after the compare when a trial failed."""
    specs = config.expand()
    base, log = config.base, config.log
    name = config.run_name or f"sweep {len(specs)} trials <- {model_origin(base.model_uri)}"
    # The executor first: a Ray cluster that cannot be reached is an error before any run exists.
    with make_executor(config.executor, config.ray_address, config.ray_num_cpus, config.cpus_per_trial) as executor, \
            tracking.tracked_run("sweep", base.experiment_name, name, {"executor": config.executor}) as active:
        tracking.log_params(config.logged(len(specs)))
        run_id, experiment_id = active.info.run_id, active.info.experiment_id
        base = replace(base, experiment_name=trial_runs.experiment_name(experiment_id))
        collect_orphans(base.experiment_name, log)
        started = time.perf_counter()
        runner = TrialRunner(base, executor, experiment_id, run_id, "sweep", config.cpus_per_trial, log)
        runner.total = len(specs)
        try:
            for index, spec in enumerate(specs, 1):
                runner.add(index, spec)
            runner.drain()
        finally:
            runner.close()
        results = runner.ordered()
        wall = time.perf_counter() - started
        baselines = run_baselines(results, base, experiment_id, config.footprint, log) if config.baselines else []
        outcome = compare_trials(results, experiment_id, "sweep", run_id, baselines, metric=config.metric,
                                 footprint=config.footprint)
        if outcome is not None:
            log(outcome.table)
            log("front: " + ", ".join(f"{p.run_id} ({p.method}, {p.precision})" for p in outcome.front))
        tracking.log_dict({"trials": [r.summary() for r in results], "wall_seconds": wall,
                           "front": [p.run_id for p in outcome.front] if outcome else [],
                           "compare_run_id": outcome.run_id if outcome else None}, "sweep.json")
        tracking.log_metrics({**study_metrics(results), "wall_seconds": wall})
        result = SweepResult(run_id, results, outcome)
        if failed := tag_failures(results):
            raise SweepError(f"{len(failed)} of {len(results)} trial(s) failed: "
                             + "; ".join(f"trial {r.index} ({r.spec.label()}): {r.error}" for r in failed), result)
        return result
