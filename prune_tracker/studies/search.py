"""Budget search: Optuna chooses the pruning method, the deployment precision whose bytes must fit the budget (which
sets the ratio) and the recipe options, to maximise validation accuracy within a footprint budget; the winner is
registered as `champion`. Test accuracy is reported beside it, never used to select.

Every trial is one prune run through the sweep's :class:`~prune_tracker.studies.sweep.TrialRunner` (same executors, same
reuse of FINISHED trials, one retry, nested under a `stage=search` run). A trial prunes to `target_bytes = budget`
on the chosen precision's footprint metric (the ceiling search of `prune`: the smallest ratio whose measured
footprint fits), so every trial fits by construction; its objective is the best validation accuracy among its
points (run, precision) whose footprint is within the budget — exactly the points `compare` answers the budget
question with. A trial whose final model no longer fits (fine-tuning moved which weights quantise to zero) is
PRUNED in the study. The search ends with `compare -P budget=...` over its trials (nested) and registers the budget
winner: one version, alias `champion`, by the registry code `compare` uses.

The search space: `methods` x the precisions measured (fp16, int8, int4) x each recipe or method option given as a
comma list (a categorical choice; a single value is fixed). Default recipe space: :data:`DEFAULT_RECIPE_SPACE`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from prune_tracker import tracking
from prune_tracker.core.budget import check_budget, fraction, parse_budget
from prune_tracker.core.footprint import human_bytes
from prune_tracker.core.frontier import FP16, PRECISIONS, accuracy_metric, precision_footprint, resolve_footprint
from prune_tracker.studies.sweep import (
    FINISHED,
    PruneBase,
    SweepError,
    TrialResult,
    TrialRunner,
    TrialSpec,
    check_executor,
    collect_orphans,
    compare_trials,
    make_executor,
    model_origin,
    option_axes_for,
    study_metrics,
    tag_failures,
)
from prune_tracker.tracking import trials as trial_runs
from prune_tracker.tracking.models import is_local_file

SELECTION_METRIC = "val_accuracy"  # chosen on validation; test accuracy is reported, never used to select
TARGET_PRECISIONS = (FP16, "int8", "int4")  # precisions whose bytes a trial's ratio search can fit to the budget
DEFAULT_METHODS = ("lamp", "global_l1", "li_filters")
DEFAULT_RECIPE_SPACE: dict[str, list[Any]] = {"finetune_epochs": [1.0], "finetune_schedule": ["cosine", "rewind"],
                                              "distill_alpha": [0.0, 0.5]}


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("search needs the optuna package: pip install 'prune-tracker[search]' (or pip install optuna)"
                         ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def base_fp32_bytes(model_uri: str | None) -> float | None:
    """The dense fp32 weights (`footprint_fp32_bytes`) of the run a base model URI names; None without one."""
    run_id = tracking.resolve_run_id(model_uri) if model_uri and not is_local_file(model_uri) else None
    return tracking.run_metrics(run_id).get("footprint_fp32_bytes") if run_id else None


def parse_budget_bytes(budget: str, model_uri: str | None = None) -> int:
    """`core.budget.parse_budget` with the base model's dense fp32 weights for a fraction (`1/8`); an empty budget
    is an error here (a search needs one)."""
    text = (budget or "").strip()
    if not text:
        raise ValueError("budget is empty; give a footprint budget such as 100KB, 1.5MB, 120000 or 1/8")
    check_budget(text)  # the form first, before the base model is looked up
    return parse_budget(text, base_fp32_bytes(model_uri) if fraction(text) is not None else None)


def in_budget(metrics: dict[str, float], footprint: str, budget: float, metric: str = SELECTION_METRIC
              ) -> tuple[float, str, float] | None:
    """(accuracy, precision, bytes) of the run's most accurate point within the budget (ties: fewer bytes), the
    points as `compare` builds them; None when none fits."""
    best = None
    for precision in PRECISIONS:
        x_name, acc_name = precision_footprint(footprint, precision), accuracy_metric(metric, precision, metrics)
        if x_name in metrics and acc_name in metrics and metrics[x_name] <= budget:
            point = (metrics[acc_name], precision, metrics[x_name])
            if best is None or (point[0], -point[2]) > (best[0], -best[2]):
                best = point
    return best


@dataclass
class SearchConfig:
    """An Optuna search of `trials` trials over `base` within `budget` (see the module's docstring)."""

    base: PruneBase
    budget: str
    trials: int = 20
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    recipe_space: dict[str, list[Any]] = field(default_factory=dict)  # merged over DEFAULT_RECIPE_SPACE
    option_space: dict[str, str] = field(default_factory=dict)
    footprint: str = "footprint_best_bytes"
    seed: int = 0  # the sampler's seed and every trial's seed
    executor: str = "local"
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    cpus_per_trial: int = 1
    registered_name: str | None = None
    run_name: str | None = None
    log: Callable[[str], None] = field(default=print, repr=False)

    @property
    def space(self) -> dict[str, list[Any]]:
        return {**DEFAULT_RECIPE_SPACE, **self.recipe_space}

    @property
    def targets(self) -> list[str]:
        """The precisions a trial may fit to the budget: fp16 and those of int8 / int4 that are measured."""
        chosen = [p for p in TARGET_PRECISIONS if p == FP16 or p in self.base.precisions]
        return [p for p in chosen if precision_footprint(self.footprint, p)]

    def validate(self) -> int:
        """Check everything before any run exists; returns the budget in bytes."""
        if "/" not in (self.budget or ""):
            parse_budget_bytes(self.budget)  # a bad byte budget fails first; a fraction needs the base model
        self.base.validate()
        check_executor(self.executor, self.ray_address, self.cpus_per_trial)
        if self.trials < 1:
            raise ValueError(f"trials={self.trials} must be an integer >= 1")
        if not self.methods:
            raise ValueError("methods is empty; name at least one pruning method (see `prune-tracker methods`)")
        self.footprint = resolve_footprint(self.footprint)
        if "target_metric" in self.recipe_space:
            raise ValueError("target_metric is chosen by the search (the precision a trial fits to the budget); "
                             "choose the footprint family with footprint=")
        for name, values in self.space.items():
            for value in values:
                self.base.recipe.with_overrides({name: value}).validate()
        option_axes_for(self.methods, self.option_space)
        self.base.check_model([])  # the base model loads (a foreign one only with the pickle opt-in) and is fp32
        if not self.targets:
            raise ValueError(f"footprint={self.footprint!r} has no counterpart for precisions "
                             f"{', '.join(TARGET_PRECISIONS)}; use footprint_best_bytes")
        budget = parse_budget_bytes(self.budget, self.base.model_uri)
        import_optuna()
        return budget

    def sample(self, trial: Any, budget: int) -> TrialSpec:
        """The trial's spec from the Optuna trial's choices (method options are named `<method>.<option>`)."""
        method = trial.suggest_categorical("method", self.methods)
        precision = trial.suggest_categorical("precision", self.targets)
        overrides = {name: _choose(trial, name, values) for name, values in self.space.items()}
        overrides["target_metric"] = precision_footprint(self.footprint, precision)
        axes = option_axes_for([method], self.option_space)[method]
        options = {name: _choose(trial, f"{method}.{name}", values) for name, values in axes.items()}
        return TrialSpec(method, None, budget, self.seed, options, overrides)

    def logged(self, budget: int) -> dict[str, Any]:
        return {"model_uri": self.base.model_uri, "budget": self.budget, "budget_bytes": budget,
                "trials": self.trials, "methods": ",".join(self.methods), "targets": ",".join(self.targets),
                "footprint": self.footprint, "executor": self.executor, "ray_address": self.ray_address or "",
                "cpus_per_trial": self.cpus_per_trial, "sampler": f"TPESampler(seed={self.seed})",
                "space": json.dumps(self.space, default=str), "options": json.dumps(self.option_space),
                "precisions": ",".join(self.base.precisions), **self.base.data.logged()}


def _choose(trial: Any, name: str, values: list[Any]) -> Any:
    return trial.suggest_categorical(name, values) if len(values) > 1 else values[0]


@dataclass
class SearchResult:
    run_id: str
    budget_bytes: int
    trials: list[dict[str, Any]]
    champion_run_id: str | None = None
    champion_precision: str | None = None
    champion_uri: str | None = None
    champion_version: str | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    champion_bytes: float | None = None
    method: str | None = None


class _Study:
    """The Optuna study and what each of its trials became."""

    def __init__(self, optuna: Any, config: SearchConfig, budget: int, runner: TrialRunner):
        self.optuna, self.config, self.budget, self.runner = optuna, config, budget, runner
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
        self.asked: dict[int, Any] = {}
        self.rows: dict[int, dict[str, Any]] = {}

    def ask(self, index: int) -> None:
        trial = self.study.ask()
        self.asked[index] = trial
        spec = self.config.sample(trial, self.budget)
        done = self.runner.add(index, spec)
        if done is not None:
            self.tell(done)

    def tell(self, result: TrialResult) -> None:
        trial, state = self.asked[result.index], self.optuna.trial.TrialState
        row = {"trial": result.index, "params": dict(trial.params), "run_id": result.run_id,
               "reused": result.reused, "error": result.error}
        if result.status != FINISHED:
            self.study.tell(trial, state=state.FAIL)
            self.rows[result.index] = {**row, "state": "FAIL"}
            return
        metrics = tracking.run_metrics(result.run_id)
        best = in_budget(metrics, self.config.footprint, self.budget)
        row["ratio"] = metrics.get("searched_ratio", metrics.get("ratio"))  # a byte target: the searched ratio
        if best is None:
            self.study.tell(trial, state=state.PRUNED)
            trial_runs.set_run_tags(result.run_id, {"over_budget": "true"})
            self.config.log(f"[search] trial {result.index}: no point within {human_bytes(self.budget)}: pruned")
            self.rows[result.index] = {**row, "state": "PRUNED"}
            return
        accuracy, precision, size = best
        self.study.tell(trial, accuracy)
        self.config.log(f"[search] trial {result.index}: {SELECTION_METRIC} {accuracy:.4f} at {precision}, "
                        f"{human_bytes(size)}")
        self.rows[result.index] = {**row, "state": "COMPLETE", "value": accuracy, "precision": precision,
                                   "bytes": size}

    def run(self) -> None:
        capacity, index = self.runner.executor.capacity, 0
        while index < self.config.trials or self.runner.in_flight:
            while index < self.config.trials and self.runner.in_flight < capacity:
                index += 1
                self.ask(index)
            if self.runner.in_flight:
                for result in self.runner.next_results():
                    self.tell(result)


def run_search(config: SearchConfig) -> SearchResult:
    """Run the search; register the budget winner as `champion`. SweepError when no trial fits the budget."""
    budget = config.validate()
    optuna = import_optuna()
    base, log = config.base, config.log
    name = config.run_name or f"search {human_bytes(budget)} {config.trials} trials <- {model_origin(base.model_uri)}"
    # The executor first: a Ray cluster that cannot be reached is an error before any run exists.
    with make_executor(config.executor, config.ray_address, config.ray_num_cpus, config.cpus_per_trial) as executor, \
            tracking.tracked_run("search", base.experiment_name, name, {"executor": config.executor}) as active:
        tracking.log_params(config.logged(budget))
        run_id, experiment_id = active.info.run_id, active.info.experiment_id
        base = replace(base, experiment_name=trial_runs.experiment_name(experiment_id))
        collect_orphans(base.experiment_name, log)
        runner = TrialRunner(base, executor, experiment_id, run_id, "search", config.cpus_per_trial, log)
        runner.total = config.trials
        study = _Study(optuna, config, budget, runner)
        try:
            study.run()
        finally:
            runner.close()
        results = runner.ordered()
        rows = [study.rows[i] for i in sorted(study.rows)]
        tracking.log_dict({"budget_bytes": budget, "trials": rows}, "search.json")
        tracking.log_metrics({**study_metrics(results), "trials_pruned": sum(r["state"] == "PRUNED" for r in rows)})
        failed = tag_failures(results)
        outcome = compare_trials(results, experiment_id, "search", run_id, metric=SELECTION_METRIC,
                                 footprint=config.footprint, budget=budget)
        winner = outcome.best_under_budget if outcome is not None else None
        if winner is None:
            raise SweepError(f"no trial of the search fits budget={config.budget!r} ({human_bytes(budget)}): "
                             f"{len(failed)} of {len(results)} trial(s) failed; see the trial runs",
                             SearchResult(run_id, budget, rows))
        log(outcome.table)
        return _register(config, SearchResult(run_id, budget, rows), winner)


def _register(config: SearchConfig, result: SearchResult, winner: Any) -> SearchResult:
    """Register the budget winner (one version, alias champion) and log it on the search run."""
    from prune_tracker.tracking.registry import register_front

    registration = register_front([winner], config.registered_name, winner.run_id,
                                  champion_precision=winner.precision)
    name, version = next(iter(registration.champions.items()))
    result = replace(result, champion_run_id=winner.run_id, champion_precision=winner.precision,
                     champion_uri=registration.champion_uri(name), champion_version=version,
                     val_accuracy=winner.accuracy, test_accuracy=winner.test_accuracy,
                     champion_bytes=winner.footprint, method=winner.method)
    tracking.set_tags({"champion_run_id": winner.run_id, "champion_precision": winner.precision,
                       "champion_uri": result.champion_uri, "registered_name": name, "champion_version": version})
    tracking.log_metrics({"best_val_accuracy": winner.accuracy, "champion_test_accuracy": winner.test_accuracy,
                          "champion_bytes": winner.footprint})
    return result
