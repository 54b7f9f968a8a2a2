"""What a trial of a study (sweep or search) is, and how a study runs its trials: :class:`TrialSpec` (method, size,
seed, options, recipe overrides over a :class:`PruneBase`), the prune job of one trial in its pre-created run
(:func:`execute_trial`), and :class:`TrialRunner`: reuse of a FINISHED trial with the same `reuse_key`, a SCHEDULED
run per new trial, one retry (an attempt lost with its Ray worker or node ends KILLED first, and the retry reopens
the run), FAILED after the second failure."""

from __future__ import annotations

import math
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prune_tracker import tracking
from prune_tracker.core.deploy import validate_run_precisions
from prune_tracker.core.footprint import human_bytes
from prune_tracker.core.pruning import get_method, validate_ratio
from prune_tracker.core.quant import PRECISIONS, validate_qat
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import DataSpec, PruneSpec, Recovery, RunSpec, prune_model
from prune_tracker.tracking import trials as trial_runs
from prune_tracker.tracking.errors import first_line
from prune_tracker.tracking.identity import REUSE_KEY_TAG, code_identity, finished_run_with_key, reuse_key

if TYPE_CHECKING:
    from prune_tracker.studies.executors import LocalExecutor, RayExecutor

MAX_ATTEMPTS = 2  # a failed trial is retried once
TRIAL_INDEX_TAG = "trial_index"
TRIAL_SEED_TAG = "trial_seed"
FINISHED, FAILED = "FINISHED", "FAILED"

# The recipe options of `prune` (names as the CLI and MLproject spell them): the recovery recipe, the fine-tuning
# config and four of prune's own. Recovery's names win where TrainConfig has the same field (distill_alpha, ...).
RECOVERY_FIELDS = tuple(f.name for f in fields(Recovery))
RECIPE_TOP = ("finetune_epochs", "target_metric", "qat", "arch")
_PRUNE_TRAIN_FIELDS = ("batch_size", "lr", "weight_decay", "momentum", "schedule", "warmup_fraction", "label_smoothing",
                       "ema_decay", "tta_flip", "resize_schedule", "bn_weight_decay")
RECIPE_OPTIONS = (*RECIPE_TOP, *_PRUNE_TRAIN_FIELDS, *RECOVERY_FIELDS)
UNSPLIT_OPTIONS = frozenset({"resize_schedule"})  # recipe values that are comma lists themselves: never a grid axis


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

    def check_model(self, specs: Sequence[TrialSpec], baselines: bool = False) -> None:
        """The base model against what the trials will do with it, before any run exists (ValueError, one line):
        it loads (a foreign model only with the pickle opt-in) and is an fp32 model, every `scope=stage` trial
        finds option-A stages in it, every teacher loads, and with `baselines` it has a run and a width
        multiplier to size dense-small models by."""
        from prune_tracker.core.pruning.stages import check_scope
        from prune_tracker.jobs.lineage import check_trainable
        from prune_tracker.studies.baselines import check_baseline_base

        recipes = [spec.recipe(self) for spec in specs]
        for arch in dict.fromkeys([self.recipe.arch, *(r.arch for r in recipes)]):
            loaded = tracking.load_model(self.model_uri, arch)
            check_trainable(loaded)
            staged = {s.method for s, r in zip(specs, recipes, strict=True) if r.arch == arch
                      and get_method(s.method).resolve_options(s.options).get("scope") == "stage"}
            for method in sorted(staged):
                check_scope(loaded.model, "stage", method)
        for teacher_uri in dict.fromkeys(r.recovery.teacher_uri for r in recipes if r.recovery.teacher_uri):
            tracking.load_model(teacher_uri)
        if baselines:
            check_baseline_base(self.model_uri, loaded.source_run_id)


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

    def identity(self, base: PruneBase) -> dict[str, Any]:
        """Everything that decides the trial's result: its key (`reuse_key`) hashes this (the base model and any
        teacher by content) and the code's identity."""
        return {"model_uri": base.model_uri, "data": base.data.logged(), "precisions": list(base.precisions),
                "recipe": self.recipe(base).identity(), "method": self.method, "ratio": self.ratio,
                "target_bytes": self.target_bytes, "seed": self.seed,
                "options": get_method(self.method).resolve_options(self.options)}



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
    code: str = ""  # the study's code identity: a worker running other code refuses the trial


@dataclass
class TrialOutcome:
    index: int
    ok: bool
    run_id: str
    error: str = ""
    detail: str = ""
    seconds: float = 0.0
    lost: bool = False  # the worker running it was lost (Ray: worker or node died) before it reported


def run_prune_trial(task: TrialTask) -> str:
    """The prune job of one trial, in its pre-created run; returns the run id."""
    base = task.base
    run = RunSpec(base.experiment_name, base.device, progress=False, extra_tags=task.tags, nested=True,
                  precisions=base.precisions, resume_run_id=task.run_id)
    return prune_model(task.spec.prune_spec(base, run))


def check_same_code(study_code: str) -> None:
    """A trial computed by other code than the study's would be filed under the study's reuse key: refused."""
    here = code_identity()
    if study_code and study_code != here:
        raise ValueError(f"this worker ({socket.gethostname()}) runs other prune-tracker code ({here}) than the "
                         f"study ({study_code}); install the same version on every node")


def execute_trial(task: TrialTask) -> TrialOutcome:
    """Run a trial with `task.threads` torch threads; an exception becomes a failed outcome (with its traceback)."""
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        check_same_code(task.code)
        run_id = run_prune_trial(task)
    except Exception as err:  # noqa: BLE001 - a failed trial is reported; the study goes on
        return TrialOutcome(task.index, False, task.run_id, first_line(err), traceback.format_exc(),
                            time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return TrialOutcome(task.index, True, run_id, seconds=time.perf_counter() - started)


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
        self.env = trial_runs.client_environment()
        self.code = code_identity()
        self.tasks: dict[int, TrialTask] = {}
        self.results: dict[int, TrialResult] = {}
        self.keys: dict[int, str] = {}
        self.running_keys: dict[str, int] = {}
        self.followers: dict[int, list[tuple[int, TrialSpec]]] = {}
        self.scheduled: list[str] = []
        self.total = 0

    def key(self, spec: TrialSpec) -> str:
        return reuse_key("prune", spec.identity(self.base))

    def add(self, index: int, spec: TrialSpec) -> TrialResult | None:
        """Reuse a FINISHED trial (returned), or schedule this one (None: its result comes from next_result)."""
        key = self.key(spec)
        self.keys[index] = key
        name = f"trial {index}/{self.total or '?'} {spec.label()}"
        if key in self.running_keys:
            self.followers.setdefault(self.running_keys[key], []).append((index, spec))
            self.log(f"[{self.stage}] {name}: same as trial {self.running_keys[key]}, waiting for it")
            return None
        previous = finished_run_with_key(self.experiment_id, key)
        if previous is not None:
            self.log(f"[{self.stage}] {name}: reusing finished run {previous}")
            return self._record(TrialResult(index, spec, key, previous, FINISHED, reused=True))
        tags = {REUSE_KEY_TAG: key, f"{self.stage}_run_id": self.study_run_id, TRIAL_INDEX_TAG: str(index),
                TRIAL_SEED_TAG: str(spec.seed)}
        run_id = trial_runs.schedule_run(self.experiment_id, self.study_run_id, name,
                                         {**tags, "stage": "prune", "method": spec.method})
        self.scheduled.append(run_id)
        task = TrialTask(index, spec, self.base, run_id, tags, self.threads, self.env, code=self.code)
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
        if outcome.lost:
            outcome = self._end_lost_attempt(task, outcome, label)
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

    def _end_lost_attempt(self, task: TrialTask, outcome: TrialOutcome, label: str) -> TrialOutcome:
        """An attempt whose worker was lost: its run, still RUNNING with a heartbeat that looks fresh (and owned by
        a process on another node, which this process cannot see die), is ended KILLED here, so the retry may
        reopen it. An attempt that had finished before its worker went counts as finished."""
        status = trial_runs.end_lost_attempt(task.run_id, task.attempt, outcome.error)
        if status == FINISHED:
            self.log(f"[{self.stage}] {label}: its worker was lost after the run finished ({outcome.error})")
            return replace(outcome, ok=True, lost=False)
        self.log(f"[{self.stage}] {label}: attempt {task.attempt} lost with its worker ({outcome.error}); "
                 f"run {task.run_id} marked KILLED")
        return outcome

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
    from prune_tracker.tracking.gc import default_stale_after, mark_orphans_killed

    for orphan in mark_orphans_killed([experiment_name], default_stale_after()):
        log(f"[gc] run {orphan.run_id} ({orphan.run_name}) marked KILLED: {orphan.reason}")


