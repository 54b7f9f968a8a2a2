"""`prune-tracker sweep`: the grid, the retry policy, a local sweep on synthetic data (3 FINISHED + 1 FAILED after its
retry, compare over the 3, reuse on a rerun), the same sweep on Ray (2 CPUs), one-line errors for bad input, and
`mlflow run . -e sweep` once.

The failing trial is real input: gmp with `initial_sparsity=0.6` at ratio 0.5 (gmp needs initial_sparsity <= ratio),
while the same option is valid at ratio 0.8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import PROJECT_ROOT, require
from mlflow.tracking import MlflowClient

from prune_tracker import tracking
from prune_tracker.cli import cli
from prune_tracker.core.models import architecture_spec, build_model
from prune_tracker.jobs import DataSpec
from prune_tracker.studies import sweep
from prune_tracker.studies.sweep import (
    FAILED,
    FINISHED,
    PruneBase,
    SweepConfig,
    SweepError,
    TrialOutcome,
    TrialRunner,
    TrialSpec,
    expand_grid,
    run_sweep,
)
from prune_tracker.tracking import owner
from prune_tracker.tracking.identity import reuse_key

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--dataset", "synthetic", "--train-subset", "600", "--val-size", "100", "--device", "cpu", "--no-progress"]
FAST = {"tta_flip": [False]}  # every trial evaluates without the mirrored pass: half the evaluation time
GMP = {"initial_sparsity": "0.6", "epochs": "0.1"}  # valid at ratio 0.8, invalid at 0.5 (initial_sparsity > ratio)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def base_uri() -> str:
    result = invoke("train", *QUICK, "--arch", "resnet8", "--epochs", "0.5", "--batch-size", "64", "--lr", "0.1",
                    "--precisions", "", "--experiment-name", "sweep-base")
    assert result.exit_code == 0, result.output
    run_id = next(line.split()[2] for line in result.output.splitlines() if line.startswith("train run "))
    return f"runs:/{run_id}/model"


def four_trials(base_uri: str, experiment: str, executor: str = "local") -> SweepConfig:
    base = PruneBase(base_uri, DataSpec.inherited(), precisions=(), device="cpu",
                     experiment_name=experiment)
    return SweepConfig(base, ["global_l1", "gmp"], [0.5, 0.8], recipe_axes=FAST, option_axes=GMP, executor=executor)


def runs_of(experiment: str, stage: str) -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([exp], f"tags.stage = '{stage}'", order_by=["attributes.start_time ASC"])


def running_runs() -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "attributes.status = 'RUNNING'") if ids else []


def check_three_finished_one_failed(result, experiment: str) -> None:
    """3 FINISHED + 1 FAILED (after 2 attempts, one run), nested under the FAILED sweep run; compare lists the 3."""
    assert [(t.spec.method, t.spec.ratio, t.status) for t in result.trials] == [
        ("global_l1", 0.5, FINISHED), ("global_l1", 0.8, FINISHED), ("gmp", 0.5, FAILED), ("gmp", 0.8, FINISHED)]
    failed = result.failed[0]
    assert failed.attempts == 2 and "initial_sparsity <= ratio" in failed.error
    client = MlflowClient()
    sweep_run = client.get_run(result.run_id)
    assert sweep_run.info.status == "FAILED" and sweep_run.data.tags["stage"] == "sweep"
    assert sweep_run.data.tags["failed_trials"] == "3"
    trials = [r for r in runs_of(experiment, "prune") if r.data.tags.get("sweep_run_id") == result.run_id]
    assert sorted(r.info.status for r in trials) == [FAILED, FINISHED, FINISHED, FINISHED], "one run per trial"
    assert all(r.data.tags["mlflow.parentRunId"] == result.run_id for r in trials)
    failed_run = client.get_run(failed.run_id)
    assert failed_run.info.status == FAILED and "initial_sparsity" in failed_run.data.tags["error"]
    assert failed_run.data.tags["attempts"] == "2"
    compare = result.compare
    assert sorted(p.run_id for p in compare.candidates) == sorted(t.run_id for t in result.finished)
    compare_run = client.get_run(compare.run_id)
    assert compare_run.data.tags["mlflow.parentRunId"] == result.run_id and compare_run.info.status == FINISHED
    assert compare_run.data.metrics["n_runs"] == 3
    assert not running_runs()


# ------------------------------------------------------------------------------------------ the grid


def test_the_grid_is_methods_x_sizes_x_seeds_x_recipe_x_each_methods_own_options():
    specs = expand_grid(["global_l1", "li_filters"], [0.5, 0.7], [], [0, 1], {"distill_alpha": [0.0, 0.5]},
                        {"per_layer": "uniform,sensitivity", "keep_first": "false"})
    global_l1 = [s for s in specs if s.method == "global_l1"]
    li_filters = [s for s in specs if s.method == "li_filters"]
    assert len(global_l1) == 2 * 2 * 2 and all(s.options == {"keep_first": "false"} for s in global_l1)
    assert len(li_filters) == 2 * 2 * 2 * 2 and {s.options["per_layer"] for s in li_filters} == {"uniform",
                                                                                                   "sensitivity"}
    assert {(s.ratio, s.seed, s.overrides["distill_alpha"]) for s in global_l1} == {
        (r, seed, a) for r in (0.5, 0.7) for seed in (0, 1) for a in (0.0, 0.5)}


def test_target_bytes_replace_the_ratios_and_list_options_are_not_split():
    specs = expand_grid(["li_filters"], [0.5], [100_000, 200_000], [0], {},
                        {"sensitivity_ratios": "0.2,0.5,0.8", "per_layer": "sensitivity"})
    assert [(s.ratio, s.target_bytes) for s in specs] == [(None, 100_000), (None, 200_000)]
    assert specs[0].options["sensitivity_ratios"] == "0.2,0.5,0.8"


def test_duplicates_are_dropped():
    assert len(expand_grid(["lamp", "lamp"], [0.5, 0.5], [], [0, 0])) == 1


@pytest.mark.parametrize("call,message", [
    (lambda: expand_grid(["lamp"], [0.5], [], [0], {}, {"per_layer": "uniform"}),
     "'per_layer' is neither a recipe option of prune nor an option of methods lamp"),
    (lambda: expand_grid(["li_filters"], [0.5], [], [0], {}, {"per_layer": "uniform,diagonal"}),
     "per_layer='diagonal' must be one of uniform, sensitivity"),
    (lambda: expand_grid(["nope"], [0.5], [], [0]), "unknown method 'nope'"),
    (lambda: expand_grid([], [0.5], [], [0]), "methods is empty"),
    (lambda: sweep.parse_ratios("0.5,1.5"), "1.5"),
    (lambda: sweep.parse_ratios("half"), "ratios='half' must be comma-separated numbers"),
    (lambda: sweep.parse_seed_list("0,x"), "'x' is not an integer"),
    (lambda: sweep.parse_target_bytes("100KB,12 parsecs"), "12 parsecs"),
    (lambda: sweep.check_executor("dask", None, 1), "executor='dask' is not allowed; allowed: local, ray"),
    (lambda: sweep.check_executor("local", "auto", 1), "ray_address='auto' needs executor=ray"),
    (lambda: sweep.Recipe().with_overrides({"momentum": 0.5, "warp": 9}), "unknown recipe option(s) warp"),
])
def test_bad_grids_are_one_line_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_grid_value_changes_the_trial_key_and_nothing_else_does():
    base = PruneBase("runs:/x/model", DataSpec.inherited(), precisions=())

    def key(spec: TrialSpec, on: PruneBase = base) -> str:
        return reuse_key("prune", spec.identity(on), code="fixed", resolve=lambda uri: f"content of {uri}")

    one = TrialSpec("lamp", 0.5)
    assert key(one) == key(TrialSpec("lamp", 0.5, seed=0, options={"keep_first": "true"}))  # the default, resolved
    variants = [TrialSpec("lamp", 0.5, seed=1), TrialSpec("lamp", 0.6), TrialSpec("global_l1", 0.5),
                TrialSpec("lamp", None, 100_000), TrialSpec("lamp", 0.5, options={"keep_first": "false"}),
                TrialSpec("lamp", 0.5, overrides={"schedule": "constant"}),
                TrialSpec("lamp", 0.5, overrides={"finetune_schedule": "constant"}),
                TrialSpec("lamp", 0.5, overrides={"lr": 0.02})]
    keys = [key(v) for v in variants] + [key(one, PruneBase("runs:/x/model", DataSpec.inherited(split_seed=3)))]
    assert len(set(keys)) == len(keys) and key(one) not in keys
    # the model and any teacher count by what they resolve to (content), not by their URI text; the code counts too
    identity = one.identity(base)
    assert reuse_key("prune", identity, code="fixed", resolve=lambda uri: "weights v2") != key(one)
    with_teacher = TrialSpec("lamp", 0.5, overrides={"teacher_uri": "models:/teacher@champion", "distill_alpha": 0.5})
    teacher_keys = {reuse_key("prune", with_teacher.identity(base), code="fixed",
                              resolve=lambda uri, v=v: f"{uri} {v if 'teacher' in uri else ''}") for v in (1, 2)}
    assert len(teacher_keys) == 2, "a teacher alias moved to other weights changes the key"
    assert reuse_key("prune", identity, code="edited", resolve=lambda uri: f"content of {uri}") != key(one)


def test_recipe_overrides_reach_the_prune_job_config():
    recipe = sweep.Recipe().with_overrides({"lr": 0.05, "distill_alpha": 0.5, "finetune_schedule": "",
                                            "teacher_uri": "", "finetune_epochs": 2.0, "arch": ""})
    assert (recipe.train.lr, recipe.recovery.distill_alpha, recipe.recovery.finetune_schedule) == (0.05, 0.5, "cosine")
    assert recipe.recovery.teacher_uri is None and recipe.arch is None and recipe.finetune_epochs == 2.0


# ------------------------------------------------------------------------------------------ the retry policy


class ScriptedExecutor(sweep.LocalExecutor):
    """Runs no prune job: each submitted attempt ends with the next scripted outcome for its trial."""

    def __init__(self, script: dict[int, list[bool]]):
        super().__init__()
        self.script, self.attempts = script, []

    def next_outcome(self) -> TrialOutcome:
        task = self._queue.popleft()
        self.attempts.append((task.index, task.attempt))
        ok = self.script[task.index].pop(0)
        return TrialOutcome(task.index, ok, task.run_id, "" if ok else f"boom {task.attempt}")


def test_a_failed_trial_is_retried_once_then_failed_while_the_others_go_on(base_uri):
    mlflow.set_experiment("retry-policy")
    executor = ScriptedExecutor({1: [False, True], 2: [False, False], 3: [True]})
    with mlflow.start_run() as parent:
        runner = TrialRunner(PruneBase(base_uri, precisions=()), executor, parent.info.experiment_id,
                             parent.info.run_id, "sweep", log=lambda _line: None)
        for index, ratio in enumerate((0.1, 0.2, 0.3), 1):
            runner.add(index, TrialSpec("lamp", ratio))
        runner.drain()
        runner.close()
    results = runner.ordered()
    assert [(r.status, r.attempts) for r in results] == [(FINISHED, 2), (FAILED, 2), (FINISHED, 1)]
    assert sorted(executor.attempts) == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)], "each failure retried once"
    failed = MlflowClient().get_run(results[1].run_id)
    assert failed.info.status == FAILED and failed.data.tags["error"] == "boom 2", "never started: marked FAILED"


class LostOnAnotherNode(sweep.LocalExecutor):
    """Attempt 1 starts its run on 'another node' (owner tags of another host, a fresh heartbeat) and its worker is
    lost there; attempt 2 reopens the run here, as the retried trial does, and finishes it."""

    def next_outcome(self) -> TrialOutcome:
        task = self._queue.popleft()
        client = MlflowClient()
        if task.attempt == 1:
            client.update_run(task.run_id, status="RUNNING")
            for key, value in {owner.OWNER_HOST: "node-b.example", owner.OWNER_PID: "4242",
                               owner.HEARTBEAT: owner.now_iso()}.items():
                client.set_tag(task.run_id, key, value)
            return TrialOutcome(task.index, False, task.run_id, "ray: NodeDiedError: node-b died", lost=True)
        with tracking.tracked_run("prune", None, nested=True, resume_run_id=task.run_id):
            pass
        return TrialOutcome(task.index, True, task.run_id)


def test_an_attempt_lost_with_its_node_is_ended_killed_and_the_retry_reopens_its_run(base_uri):
    mlflow.set_experiment("lost-attempt")
    with mlflow.start_run() as parent:
        runner = TrialRunner(PruneBase(base_uri, precisions=()), LostOnAnotherNode(), parent.info.experiment_id,
                             parent.info.run_id, "sweep", log=lambda _line: None)
        runner.add(1, TrialSpec("lamp", 0.5))
        runner.drain()
    (result,) = runner.ordered()
    assert (result.status, result.attempts) == (FINISHED, 2), result.error
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == FINISHED and run.data.tags["lost_attempt_1"].startswith("ray: NodeDiedError")
    assert run.data.tags[owner.OWNER_PID] == str(os.getpid()), "the retry owns the run now"


def test_runs_that_never_started_are_killed_when_the_study_stops(base_uri):
    mlflow.set_experiment("stopped-study")
    with mlflow.start_run() as parent:
        runner = TrialRunner(PruneBase(base_uri, precisions=()), sweep.LocalExecutor(), parent.info.experiment_id,
                             parent.info.run_id, "sweep", log=lambda _line: None)
        runner.add(1, TrialSpec("lamp", 0.5))
        runner.close()
    assert MlflowClient().get_run(runner.scheduled[0]).info.status == "KILLED"


# ------------------------------------------------------------------------------------------ end to end


def test_local_sweep_three_finished_one_failed_then_reuse(base_uri):
    with pytest.raises(SweepError, match=r"1 of 4 trial\(s\) failed: trial 3 \(gmp ratio=0.5") as info:
        run_sweep(four_trials(base_uri, "sweep-local"))
    result = info.value.result
    check_three_finished_one_failed(result, "sweep-local")
    finished = {t.run_id for t in result.finished}
    trial_run = MlflowClient().get_run(result.trials[0].run_id)
    params = trial_run.data.params
    assert params["finetune_tta_flip"] == "False" and params["seed"] == trial_run.data.tags["seed"] == "0"
    assert trial_run.data.tags["parent_run_id"] == base_uri.split("/")[1], "lineage: the base model's run"
    summary = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="sweep.json"))
                         .read_text())
    assert [t["status"] for t in summary["trials"]] == [FINISHED, FINISHED, FAILED, FINISHED]

    with pytest.raises(SweepError) as again:  # a rerun reuses the 3 finished trials and retries the failed one
        run_sweep(four_trials(base_uri, "sweep-local"))
    rerun = again.value.result
    assert [t.reused for t in rerun.trials] == [True, True, False, True]
    assert {t.run_id for t in rerun.finished} == finished and rerun.trials[2].attempts == 2
    assert len(runs_of("sweep-local", "prune")) == 5, "no new run for a reused trial"


def test_sweep_baselines_train_one_dense_small_per_size_with_the_total_budget(base_uri):
    base = PruneBase(base_uri, DataSpec.inherited(), precisions=(), device="cpu",
                     experiment_name="sweep-baselines")
    config = SweepConfig(base, ["global_l1"], [0.5, 0.8], recipe_axes={**FAST, "finetune_epochs": [0.5]},
                         baselines=True)
    result = run_sweep(config)
    baselines = runs_of("sweep-baselines", "train")
    assert len(baselines) == 2, "one per distinct size"
    base_params = MlflowClient().get_run(base_uri.split("/")[1]).data.params
    for trial, run in zip(result.trials, baselines, strict=True):
        assert run.data.tags["baseline"] == "dense-small" and run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.data.params["arch"] == "resnet8" and float(run.data.params["width"]) < 1
        assert float(run.data.params["epochs"]) == float(base_params["epochs"]) + 0.5, "equal total budget"
        assert run.data.params["lr"] == base_params["lr"], "the base run's own recipe"
        pruned_bytes = MlflowClient().get_run(trial.run_id).data.metrics["footprint_best_bytes"]
        assert run.data.metrics["footprint_best_bytes"] <= pruned_bytes
    assert {r.info.run_id for r in baselines} <= {p.run_id for p in result.compare.candidates}
    again = run_sweep(config)
    assert len(runs_of("sweep-baselines", "train")) == 2, "finished baselines are reused"
    assert all(t.reused for t in again.trials)


def test_ray_sweep_on_two_cpus(base_uri):
    ray = require("ray", "ray")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        with pytest.raises(SweepError, match="1 of 4") as info:
            run_sweep(four_trials(base_uri, "sweep-ray", executor="ray"))
    finally:
        ray.shutdown()
    check_three_finished_one_failed(info.value.result, "sweep-ray")
    pids = {MlflowClient().get_run(t.run_id).data.tags.get("owner_pid") for t in info.value.result.finished}
    assert str(os.getpid()) not in pids, "the trials ran in Ray workers, not in this process"
    print(f"ray sweep: {time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("args,message", [
    (["--methods", "lamp,nope"], "unknown method 'nope'"),
    (["--ratios", "0.5,1.5"], "1.5"),
    (["--seeds", "0,one"], "'one' is not an integer"),
    (["--executor", "dask"], "'dask' is not one of 'local', 'ray'"),
    (["--ray-address", "auto"], "ray_address='auto' needs executor=ray"),
    (["--lr", "fast"], "'fast' is not a number"),
    (["--distill-alpha", "0,2"], "'2' is not allowed"),
    (["--bogus", "1"], "'bogus' is neither a recipe option of prune nor an option of methods lamp, global_l1"),
    (["--target-bytes", "12 parsecs"], "12 parsecs"),
])
def test_bad_sweep_input_is_one_line_and_leaves_no_run(args, message):
    result = CliRunner().invoke(cli, ["sweep", "--model-uri", "runs:/0123456789abcdef0123456789abcdef/model", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert not running_runs()


def test_an_unknown_base_model_is_one_line():
    result = CliRunner().invoke(cli, ["sweep", "--model-uri", "runs:/0123456789abcdef0123456789abcdef/model"])
    assert result.exit_code == 2 and "not found" in result.output and "Traceback" not in result.output


def _model_file(path: Path, arch: str) -> str:
    model = build_model(arch, 10)
    torch.save({"spec": architecture_spec(model, arch, 10), "state_dict": model.state_dict()}, path)
    return str(path)


def test_the_base_model_is_checked_against_methods_and_baselines_before_any_run(tmp_path):
    """What only the base model can tell fails before the sweep's run exists, in one line that says what to do."""
    arch = "torchvision:mobilenet_v3_small"
    with tracking.tracked_run("train", "sweep-refusals", "a base without a width multiplier") as run:
        tracking.log_params({"arch": arch})
        tracking.log_model(build_model(arch, 10), arch, 10)
    cases = [
        (["sweep", "--model-uri", _model_file(tmp_path / "vgg.pt", "vgg11_bn"), "--methods", "li_filters",
          "--option", "scope=stage"], "li_filters: scope=stage needs an option-A CIFAR ResNet"),
        (["sweep", "--model-uri", _model_file(tmp_path / "resnet8.pt", "resnet8"), "--baselines", "true"],
         "baselines=true trains dense-small models with the base run's recipe and split, and model_uri="),
        (["sweep", "--model-uri", f"runs:/{run.info.run_id}/model", "--baselines", "true"],
         "baselines=true needs a base whose arch takes a width multiplier (resnet20, "),
        (["main", "--arch", arch, "--baselines", "true"], "baselines=true needs an arch that takes a width multiplier"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, [*args, "--experiment-name", "sweep-refusals", "--device", "cpu"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output[-2000:]
    assert [r.data.tags["stage"] for r in MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("sweep-refusals").experiment_id])] == ["train"], "a study run started"
    assert not running_runs()


@pytest.mark.e2e
def test_mlflow_run_sweep_entry_point(base_uri):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(PROJECT_ROOT), "-e", "sweep", "--env-manager",
           "local", "--experiment-name", "sweep-mlproject", "-P", f"model_uri={base_uri}", "-P", "methods=global_l1",
           "-P", "ratios=0.6", "-P", "device=cpu", "-P", "precisions=", "-P", "finetune_epochs=0.05",
           "-P", "tta_flip=false", "-P", "keep_first=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [sweep_run] = runs_of("sweep-mlproject", "sweep")
    assert sweep_run.info.status == FINISHED and sweep_run.data.params["executor"] == "local"
    [trial] = runs_of("sweep-mlproject", "prune")
    assert trial.info.status == FINISHED and trial.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
    params = trial.data.params
    assert (params["finetune_epochs"], params["option.keep_first"], params["ratio"]) == ("0.05", "False", "0.6")
    [compare] = runs_of("sweep-mlproject", "compare")
    assert compare.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
