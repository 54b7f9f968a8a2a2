"""Sweeps: methods x ratios (or `target_bytes`) x seeds x recipe and method options from one base model. Each trial
is one prune run made by `jobs.prune_model`, the code path of `prune-tracker prune`, executed one after another in
this process (`local`) or as Ray tasks (`ray`: `@ray.remote(num_cpus=cpus_per_trial)`, each task setting the
tracking URI, the client credentials and its torch threads itself).

Every trial is a run nested under the study's run (`stage=sweep`, or `stage=search` for an Optuna search, which
drives the same :class:`TrialRunner`). Before anything starts, orphan runs of the experiment are marked KILLED and
each trial gets its run, created SCHEDULED; the trial reopens it, so a trial rejected before pruning starts still
has its FAILED run, and a retry continues the same run. A trial that already FINISHED with the same parameters
and the same code (tag `trial_key`: a hash like the `main` pipeline's `pipeline_step_key`) is reused instead of
run again; a failed trial is retried once, then marked FAILED while the others go on. The sweep ends with
`compare` over its trials' runs, nested under it, and prints the front.

Seeds: each trial's `seed` seeds its pruning and fine-tuning (the prune run's `seed`); the data split stays the
base run's (`split_seed`, inherited), so the base model's training images never reach validation.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from prune_tracker import tracking
from prune_tracker.core.budget import check_budget, fraction, parse_budget
from prune_tracker.core.deploy import validate_run_precisions
from prune_tracker.core.footprint import human_bytes
from prune_tracker.core.pruning import get_method, validate_ratio
from prune_tracker.core.quant import PRECISIONS, validate_qat
from prune_tracker.core.recipes import logged_train_config
from prune_tracker.core.seeds import parse_seeds
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import DataSpec, PruneSpec, Recovery, RunSpec, prune_model
from prune_tracker.studies.pipeline import PipelineError
from prune_tracker.tracking import trials as trial_runs
from prune_tracker.tracking.identity import reuse_key

MAX_ATTEMPTS = 2  # a failed trial is retried once
EXECUTORS = ("local", "ray")
TRIAL_KEY_TAG = "trial_key"
TRIAL_INDEX_TAG = "trial_index"
TRIAL_SEED_TAG = "trial_seed"
FINISHED, FAILED = "FINISHED", "FAILED"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# The recipe options of `prune` (names as the CLI and MLproject spell them): the recovery recipe, the fine-tuning
# config and four of prune's own. Recovery's names win where TrainConfig has the same field (distill_alpha, ...).
RECOVERY_FIELDS = tuple(f.name for f in fields(Recovery))
RECIPE_TOP = ("finetune_epochs", "target_metric", "qat", "arch")
_PRUNE_TRAIN_FIELDS = ("batch_size", "lr", "weight_decay", "momentum", "schedule", "warmup_fraction", "label_smoothing",
                       "ema_decay", "tta_flip", "resize_schedule", "bn_weight_decay")
RECIPE_OPTIONS = (*RECIPE_TOP, *_PRUNE_TRAIN_FIELDS, *RECOVERY_FIELDS)
UNSPLIT_OPTIONS = frozenset({"resize_schedule"})  # recipe values that are comma lists themselves: never a grid axis


class SweepError(PipelineError):
    """Some trials of a sweep failed (the others finished), or no search trial fits its budget: the study's run
    ends FAILED naming them; `result` holds what the study did."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


def first_line(err: BaseException | str) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def prune_train_defaults() -> TrainConfig:
    """The fine-tuning config `prune` uses by default (its CLI defaults; tests/test_defaults.py checks them)."""
    return TrainConfig(lr=0.01, schedule="cosine")


@dataclass
class Recipe:
    """How every trial prunes and recovers (the `prune` command's recipe options) before a grid axis overrides one:
    `train` the fine-tuning config, `recovery` the recovery recipe, and prune's `finetune_epochs`, `target_metric`
    (what `target_bytes` applies to), `qat` and `arch`."""

    train: TrainConfig = field(default_factory=prune_train_defaults)
    recovery: Recovery = field(default_factory=Recovery)
    finetune_epochs: float = 0.0
    target_metric: str = "footprint_best_bytes"
    qat: str = "none"
    arch: str | None = None

    def with_overrides(self, overrides: Mapping[str, Any]) -> Recipe:
        unknown = sorted(set(overrides) - set(RECIPE_OPTIONS))
        if unknown:
            raise ValueError(f"unknown recipe option(s) {', '.join(unknown)}; known: {', '.join(RECIPE_OPTIONS)}")
        recovery = {k: v for k, v in overrides.items() if k in RECOVERY_FIELDS}
        if "teacher_uri" in recovery:
            recovery["teacher_uri"] = recovery["teacher_uri"] or None
        if "finetune_schedule" in recovery:
            recovery["finetune_schedule"] = recovery["finetune_schedule"] or "cosine"
        train = {k: v for k, v in overrides.items() if k in _PRUNE_TRAIN_FIELDS}
        top = {k: v for k, v in overrides.items() if k in RECIPE_TOP}
        if "arch" in top:
            top["arch"] = top["arch"] or None
        return replace(self, train=replace(self.train, **train), recovery=replace(self.recovery, **recovery), **top)

    def validate(self) -> None:
        if not (math.isfinite(self.finetune_epochs) and self.finetune_epochs >= 0):
            raise ValueError(f"finetune_epochs={self.finetune_epochs} must be a finite number >= 0")
        replace(self.train, epochs=self.finetune_epochs).validate()
        validate_qat(self.qat)

    def identity(self) -> dict[str, Any]:
        """Every recipe value, each under its own name (for a trial's key)."""
        train = asdict(self.train)
        return {"finetune_epochs": self.finetune_epochs, "target_metric": self.target_metric, "qat": self.qat,
                "arch": self.arch or "", "train": {k: train[k] for k in _PRUNE_TRAIN_FIELDS},
                "recovery": asdict(self.recovery)}


@dataclass
class PruneBase:
    """What every trial shares: the base model, the data (fields left None: the base run's split), the recipe before
    grid overrides, the precisions measured on every model, the device and the experiment."""

    model_uri: str
    data: DataSpec = field(default_factory=DataSpec.inherited)
    recipe: Recipe = field(default_factory=Recipe)
    precisions: tuple[str, ...] = PRECISIONS
    device: str = "auto"
    experiment_name: str = "prune-tracker"

    def validate(self) -> None:
        if not self.model_uri:
            raise ValueError("model_uri is empty; pass the base model, e.g. runs:/<run_id>/model")
        self.precisions = validate_run_precisions(self.precisions)
        self.recipe.validate()


@dataclass
class TrialSpec:
    """One prune run of a study: a method at a `ratio` (or pruned to `target_bytes`, the ratio searched), a `seed`,
    method `options` (as given: strings from the CLI) and recipe `overrides` (typed values)."""

    method: str
    ratio: float | None = None
    target_bytes: int | str | None = None  # a str: a fraction of the base's dense fp32 weights ("1/8")
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        target = self.target_bytes
        size = (f"ratio={self.ratio:g}" if target is None else
                f"target={target if isinstance(target, str) else human_bytes(target)}")
        extra = " ".join(f"{k}={v}" for k, v in {**self.overrides, **self.options}.items())
        return f"{self.method} {size} seed={self.seed}" + (f" {extra}" if extra else "")

    def recipe(self, base: PruneBase) -> Recipe:
        return base.recipe.with_overrides(self.overrides)

    def validate(self, base: PruneBase) -> None:
        if self.target_bytes is None:
            validate_ratio(self.ratio if self.ratio is not None else -1.0)
        self.recipe(base).validate()
        self.prune_spec(base, RunSpec(base.experiment_name, base.device, precisions=base.precisions))

    def prune_spec(self, base: PruneBase, run: RunSpec) -> PruneSpec:
        """The prune job of this trial (validated on construction): the trial's `seed` seeds pruning and fine-tuning."""
        recipe = self.recipe(base)
        return PruneSpec(base.model_uri, self.method, self.ratio if self.ratio is not None else 0.0,
                         dict(self.options), recipe.finetune_epochs, self.target_bytes, recipe.target_metric,
                         recipe.qat, recipe.arch, data=base.data, train=replace(recipe.train, seed=self.seed),
                         recovery=recipe.recovery, run=run)

    def identity(self, base: PruneBase, model: str) -> dict[str, Any]:
        """Everything that decides the trial's result (its key hashes this and the code's identity)."""
        return {"model": model, "data": base.data.logged(), "precisions": list(base.precisions),
                "recipe": self.recipe(base).identity(), "method": self.method, "ratio": self.ratio,
                "target_bytes": self.target_bytes, "seed": self.seed,
                "options": get_method(self.method).resolve_options(self.options)}


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


# ------------------------------------------------------------------------------------------ running one trial


@dataclass
class TrialTask:
    """What a process needs to run one trial: picklable, sent to a Ray worker as it is."""

    index: int
    spec: TrialSpec
    base: PruneBase
    run_id: str  # the trial's run (created SCHEDULED), reopened by prune_model
    tags: dict[str, str]
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)  # tracking URI and credentials for another process
    attempt: int = 1


@dataclass
class TrialOutcome:
    index: int
    ok: bool
    run_id: str
    error: str = ""
    detail: str = ""
    seconds: float = 0.0


def run_prune_trial(task: TrialTask) -> str:
    """The prune job of one trial, in its pre-created run; returns the run id."""
    base = task.base
    run = RunSpec(base.experiment_name, base.device, progress=False, extra_tags=task.tags, nested=True,
                  precisions=base.precisions, resume_run_id=task.run_id)
    return prune_model(task.spec.prune_spec(base, run))


def execute_trial(task: TrialTask) -> TrialOutcome:
    """Run a trial with `task.threads` torch threads; an exception becomes a failed outcome (with its traceback)."""
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        run_id = run_prune_trial(task)
    except Exception as err:  # noqa: BLE001 - a failed trial is reported; the study goes on
        return TrialOutcome(task.index, False, task.run_id, first_line(err), traceback.format_exc(),
                            time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return TrialOutcome(task.index, True, run_id, seconds=time.perf_counter() - started)


def ray_trial(task: TrialTask) -> TrialOutcome:
    """The Ray task: set the tracking URI and credentials in this worker, then run the trial."""
    trial_runs.apply_client_environment(task.env)
    return execute_trial(task)


# ------------------------------------------------------------------------------------------ executors


class LocalExecutor:
    """Trials one after another in this process (nested under the study's active run)."""

    name = "local"
    capacity = 1

    def __init__(self) -> None:
        self._queue: deque[TrialTask] = deque()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.clear()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, task: TrialTask) -> None:
        self._queue.append(task)

    def next_outcome(self) -> TrialOutcome:
        return execute_trial(self._queue.popleft())


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("executor=ray needs the ray package: pip install 'prune-tracker[ray]' (or pip install ray)"
                         ) from None
    return ray


class RayExecutor:
    """Trials as Ray tasks of `cpus_per_trial` CPUs each: on the cluster at `address` (`auto`: the one this machine
    belongs to), else on a local `ray.init(num_cpus=num_cpus)` (default: every core) shut down at the end. A Ray
    already initialised in this process is used as it is and left running."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_trial: int = 1):
        self.address, self.num_cpus, self.cpus_per_trial = address or None, num_cpus, cpus_per_trial
        self._pending: dict[Any, TrialTask] = {}
        self._owned = False

    def _init_args(self) -> dict[str, Any]:
        if self.address:
            return {"address": self.address, "logging_level": logging.WARNING}
        # Workers import prune_tracker from the source this process runs (also when it is not installed).
        path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {"num_cpus": self.num_cpus or os.cpu_count() or 1, "include_dashboard": False,
                "logging_level": logging.WARNING, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}

    def __enter__(self) -> RayExecutor:
        self._ray = import_ray()
        if not self._ray.is_initialized():
            try:
                self._ray.init(**self._init_args())
            except ConnectionError as err:
                raise ValueError(f"ray_address={self.address!r}: {first_line(err)}; start a cluster (ray start "
                                 "--head) or leave ray_address empty for a local one") from None
            self._owned = True
        self._remote = self._ray.remote(num_cpus=self.cpus_per_trial, max_retries=0)(ray_trial)
        return self

    def __exit__(self, *exc: object) -> None:
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending.clear()
        if self._owned:
            self._ray.shutdown()

    @property
    def capacity(self) -> int:
        cpus = self._ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.cpus_per_trial))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, task: TrialTask) -> None:
        self._pending[self._remote.remote(task)] = task

    def next_outcome(self) -> TrialOutcome:
        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        task = self._pending.pop(ready[0])
        try:
            return self._ray.get(ready[0])
        except self._ray.exceptions.RayError as err:  # the worker died, the task was cancelled, ...
            return TrialOutcome(task.index, False, task.run_id, f"ray: {first_line(err)}", str(err))


def make_executor(name: str, ray_address: str | None = None, ray_num_cpus: int | None = None,
                  cpus_per_trial: int = 1) -> LocalExecutor | RayExecutor:
    check_executor(name, ray_address, cpus_per_trial)
    if name == "ray":
        return RayExecutor(ray_address, ray_num_cpus, cpus_per_trial)
    return LocalExecutor()


def check_executor(name: str, ray_address: str | None, cpus_per_trial: int) -> None:
    if name not in EXECUTORS:
        raise ValueError(f"executor={name!r} is not allowed; allowed: {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise ValueError(f"ray_address={ray_address!r} needs executor=ray")
    if cpus_per_trial < 1:
        raise ValueError(f"cpus_per_trial={cpus_per_trial} must be an integer >= 1")
    if name == "ray":
        import_ray()


# ------------------------------------------------------------------------------------------ trials of a study


@dataclass
class TrialResult:
    index: int
    spec: TrialSpec
    key: str
    run_id: str | None
    status: str  # FINISHED | FAILED
    reused: bool = False
    attempts: int = 0
    error: str | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"trial": self.index, **asdict(self.spec), "key": self.key, "run_id": self.run_id,
                "status": self.status, "reused": self.reused, "attempts": self.attempts, "error": self.error,
                "seconds": round(self.seconds, 2)}


class TrialRunner:
    """The trials of one study (`stage` sweep or search, run `study_run_id`) on an executor: reuse of FINISHED trials
    with the same key, a SCHEDULED run per new trial, one retry, FAILED after the second failure. A trial whose key
    another trial of this study is already running waits for that one and shares its result."""

    def __init__(self, base: PruneBase, executor: LocalExecutor | RayExecutor, experiment_id: str,
                 study_run_id: str, stage: str, threads: int = 1, log: Callable[[str], None] = print):
        self.base, self.executor, self.experiment_id = base, executor, experiment_id
        self.study_run_id, self.stage, self.threads, self.log = study_run_id, stage, threads, log
        self.model = trial_runs.model_identity(base.model_uri)
        self.env = trial_runs.client_environment()
        self.tasks: dict[int, TrialTask] = {}
        self.results: dict[int, TrialResult] = {}
        self.keys: dict[int, str] = {}
        self.running_keys: dict[str, int] = {}
        self.followers: dict[int, list[tuple[int, TrialSpec]]] = {}
        self.scheduled: list[str] = []
        self.total = 0

    def key(self, spec: TrialSpec) -> str:
        return reuse_key("prune", spec.identity(self.base, self.model))

    def add(self, index: int, spec: TrialSpec) -> TrialResult | None:
        """Reuse a FINISHED trial (returned), or schedule this one (None: its result comes from next_result)."""
        key = self.key(spec)
        self.keys[index] = key
        name = f"trial {index}/{self.total or '?'} {spec.label()}"
        if key in self.running_keys:
            self.followers.setdefault(self.running_keys[key], []).append((index, spec))
            self.log(f"[{self.stage}] {name}: same as trial {self.running_keys[key]}, waiting for it")
            return None
        previous = tracking.finished_run_with_tag(self.experiment_id, TRIAL_KEY_TAG, key)
        if previous is not None:
            self.log(f"[{self.stage}] {name}: reusing finished run {previous}")
            return self._record(TrialResult(index, spec, key, previous, FINISHED, reused=True))
        tags = {TRIAL_KEY_TAG: key, f"{self.stage}_run_id": self.study_run_id, TRIAL_INDEX_TAG: str(index),
                TRIAL_SEED_TAG: str(spec.seed)}
        run_id = trial_runs.schedule_run(self.experiment_id, self.study_run_id, name,
                                         {**tags, "stage": "prune", "method": spec.method})
        self.scheduled.append(run_id)
        task = TrialTask(index, spec, self.base, run_id, tags, self.threads, self.env)
        self.tasks[index] = task
        self.running_keys[key] = index
        self.log(f"[{self.stage}] {name}: scheduled as run {run_id}")
        self.executor.submit(task)
        return None

    @property
    def in_flight(self) -> int:
        return self.executor.in_flight

    def next_results(self) -> list[TrialResult]:
        """Wait for one trial to end; its result (and its followers'), or [] when it failed and was resubmitted."""
        outcome = self.executor.next_outcome()
        task = self.tasks[outcome.index]
        label = f"trial {task.index}/{self.total or '?'} {task.spec.label()}"
        if outcome.ok:
            self.log(f"[{self.stage}] {label}: FINISHED run {outcome.run_id} ({outcome.seconds:.1f} s)")
            result = TrialResult(task.index, task.spec, self.keys[task.index], outcome.run_id, FINISHED,
                                 attempts=task.attempt, seconds=outcome.seconds)
        elif task.attempt < MAX_ATTEMPTS:
            self.log(f"[{self.stage}] {label}: failed (attempt {task.attempt}/{MAX_ATTEMPTS}): {outcome.error}; "
                     "retrying")
            self.tasks[task.index] = replace(task, attempt=task.attempt + 1)
            self.executor.submit(self.tasks[task.index])
            return []
        else:
            self.log(f"[{self.stage}] {label}: FAILED after {task.attempt} attempts: {outcome.error}")
            if outcome.detail:
                self.log(outcome.detail.rstrip())
            trial_runs.mark_failed(task.run_id, outcome.error, {"attempts": str(task.attempt)})
            result = TrialResult(task.index, task.spec, self.keys[task.index], task.run_id, FAILED,
                                 attempts=task.attempt, error=outcome.error, seconds=outcome.seconds)
        self.running_keys.pop(result.key, None)
        results = [self._record(result)]
        for index, spec in self.followers.pop(task.index, []):
            results.append(self._record(replace(result, index=index, spec=spec, reused=True, attempts=0)))
        return results

    def _record(self, result: TrialResult) -> TrialResult:
        self.results[result.index] = result
        return result

    def drain(self) -> None:
        while self.in_flight:
            self.next_results()

    def close(self) -> None:
        """End KILLED the trial runs that never started (the study stopped early)."""
        killed = trial_runs.kill_scheduled(self.scheduled)
        if killed:
            self.log(f"[{self.stage}] {len(killed)} trial run(s) never started: marked KILLED")

    def ordered(self) -> list[TrialResult]:
        return [self.results[i] for i in sorted(self.results)]


def model_origin(model_uri: str) -> str:
    """A short name of the base model for run names: its run's short id, else the file's name."""
    run_id = model_uri[len("runs:/"):].split("/")[0] if model_uri.startswith("runs:/") else None
    return tracking.short_id(run_id) if run_id else Path(model_uri).name


def collect_orphans(experiment_name: str, log: Callable[[str], None] = print) -> None:
    """Before fanning out: mark the experiment's orphan runs KILLED (RUNNING, but their process is gone), so the
    study starts from an honest picture (tracking/gc.py)."""
    from prune_tracker.tracking.gc import mark_orphans_killed

    for orphan in mark_orphans_killed([experiment_name]):
        log(f"[gc] run {orphan.run_id} ({orphan.run_name}) marked KILLED: {orphan.reason}")


def run_baselines(results: Sequence[TrialResult], base: PruneBase, experiment_id: str, footprint: str,
                  log: Callable[[str], None] = print) -> list[str]:
    """`baselines=true`: for each FINISHED trial a dense-small model (the base's arch at the largest width whose
    dense bytes are at most the trial's, in compare's footprint metric) trained from scratch with the base run's
    own recipe for the trial's total budget (base epochs + fine-tuning epochs + the method's own retraining);
    trials that land on the same (arch, width, epochs) share one. Each is a `stage=train` run tagged
    `baseline=dense-small`, nested under the sweep's run; one that already FINISHED for the same base, width and
    budget is reused. Returns the baselines' run ids."""
    from prune_tracker.studies.baselines import dense_small_baseline, size_for_pruned_run
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
    run = RunSpec(base.experiment_name, base.device, progress=False, nested=True, precisions=base.precisions)
    baselines = []
    for (arch_name, width, epochs), sized in planned.items():
        tags = {k: v for k, v in sized.tags(epochs, base_run).items() if k != "baseline_target_bytes"}
        reused = trial_runs.finished_run_with_tags(experiment_id, tags)
        if reused:
            log(f"[sweep] dense-small {arch_name} w{width:g} {epochs:g} epochs: reused run {reused}")
            baselines.append(reused)
            continue
        run_id, _ = dense_small_baseline(sized.target_bytes, epochs, data, recipe, run, num_classes=num_classes,
                                         base_run_id=base_run, sized=sized)
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
        trial_runs.model_identity(self.base.model_uri)  # an unknown model fails now
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
