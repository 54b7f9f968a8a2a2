"""End to end through `mlflow run . -e <entry point> --env-manager local` on synthetic data, read back with
MlflowClient: runs FINISHED, metrics sane, models reload and reproduce the logged accuracy, lineage tags,
bad input ends with one line, a non-zero exit and no run left RUNNING."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import PROJECT_ROOT, QUICK_TRAIN, SYNTHETIC_DATA
from mlflow.tracking import MlflowClient

from prune_tracker import tracking
from prune_tracker.cli import cli
from prune_tracker.core.data import load_splits
from prune_tracker.core.pruning import get_method, known_methods
from prune_tracker.core.training import evaluate

pytestmark = pytest.mark.e2e
EXPERIMENT = "e2e"
BIN = Path(sys.executable).parent
FOOTPRINT_KEYS = ("footprint_fp32_bytes", "footprint_fp16_bytes", "footprint_csr_fp16_bytes", "footprint_best_bytes",
                  "activation_peak_fp16_bytes", "total_fp16_best_bytes", "flops_dense", "micronet_score")


def mlflow_run(entry: str, params: dict[str, str], experiment: str = EXPERIMENT,
               tracking_uri: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    cmd = [str(BIN / "mlflow"), "run", str(PROJECT_ROOT), "-e", entry, "--env-manager", "local",
           "--experiment-name", experiment]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def submit_runs(jobs: list[tuple[str, dict[str, str]]], experiment: str = EXPERIMENT, parallel: int = 2) -> list:
    """Run entry points through MLflow's projects API (what `mlflow run` calls), two at a time: each
    child spends much of its life importing torch and MLflow, so two overlap well on two cores.
    Returns the finished (or failed) runs in order."""
    client, runs, pending = MlflowClient(), [], list(jobs)
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        submitted = [mlflow.projects.run(str(PROJECT_ROOT), entry, parameters=params, env_manager="local",
                                         experiment_name=experiment, synchronous=False) for entry, params in batch]
        for handle in submitted:
            handle.wait()
            runs.append(client.get_run(handle.run_id))
    return runs


def last_run(experiment: str = EXPERIMENT, client: MlflowClient | None = None):
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def no_running_runs(experiment: str = EXPERIMENT) -> bool:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return exp is None or not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def reproduce_accuracy(run) -> float:
    loaded = tracking.load_model(f"runs:/{run.info.run_id}/model")
    splits = load_splits("synthetic", train_subset=1000, val_size=200)
    return evaluate(loaded.model, splits.test, splits, torch.device("cpu"), tta_flip=True)[0]


@pytest.fixture(scope="module")
def base_run():
    proc = mlflow_run("train", QUICK_TRAIN)
    assert_ok(proc)
    return last_run()


# Through `mlflow run` (MLproject, entry-point script, subprocess); every other method runs the same `prune`
# command in-process, which checks the same logging without paying ~15 s of imports per method.
VIA_MLFLOW_RUN = ("global_l1", "li_filters", "thinet")


@pytest.fixture(scope="module")
def prune_runs(base_run):
    params = {**SYNTHETIC_DATA, "model_uri": f"runs:/{base_run.info.run_id}/model", "ratio": "0.5",
              "finetune_epochs": "0.3", "device": "cpu", "batch_size": "64"}
    runs = dict(zip(VIA_MLFLOW_RUN, submit_runs([("prune", {**params, "method": m}) for m in VIA_MLFLOW_RUN]),
                    strict=True))
    for method in set(known_methods()) - set(VIA_MLFLOW_RUN):
        # precisions are measured by the runs through `mlflow run` above; here only the method's own logging
        args = [f"--{key}={value}" for key, value in {**params, "method": method, "precisions": ""}.items()]
        result = CliRunner().invoke(cli, ["prune", *args, "--experiment-name", EXPERIMENT, "--no-progress"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[method] = MlflowClient().get_run(re.search(r"prune run (\w+) finished", result.output).group(1))
    return runs


def test_train_run_is_finished_sane_and_reloads(base_run):
    metrics, tags = base_run.data.metrics, base_run.data.tags
    assert base_run.info.status == "FINISHED"
    assert tags["stage"] == "train" and tags["dataset"] == "synthetic" and "parent_run_id" not in tags
    assert metrics["test_accuracy"] > 0.5 and metrics["val_accuracy"] > 0.5  # chance is 0.1
    assert {"test_loss", "train_loss", "lr", *FOOTPRINT_KEYS} <= set(metrics)
    assert base_run.inputs.dataset_inputs, "dataset logged as an MLflow input"
    module = mlflow.pytorch.load_model(f"runs:/{base_run.info.run_id}/model")
    module.train()  # a trainable nn.Module, not a pt2 GraphModule
    assert reproduce_accuracy(base_run) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(base_run.info.run_id, "epoch_val_accuracy")] == [1, 2, 3]
    final = client.get_metric_history(base_run.info.run_id, "val_accuracy")  # run + logged model: the final value
    assert {m.step for m in final} == {0} and len({m.value for m in final}) == 1


def test_evaluate_entry_point(base_run):
    proc = mlflow_run("evaluate", {**SYNTHETIC_DATA, "model_uri": f"runs:/{base_run.info.run_id}/model",
                                   "device": "cpu"})
    assert_ok(proc)
    run = last_run()
    assert run.data.tags["stage"] == "evaluate" and run.data.tags["parent_run_id"] == base_run.info.run_id
    assert run.data.metrics["test_accuracy"] == pytest.approx(base_run.data.metrics["test_accuracy"], abs=1e-6)
    assert run.data.metrics["test_top5_accuracy"] >= run.data.metrics["test_accuracy"]
    assert run.data.metrics["latency_ms_per_image_batch1"] > 0
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "evaluation.json", "footprint.json"} <= artifacts


@pytest.mark.parametrize("method", known_methods())
def test_prune_entry_point_every_method(prune_runs, base_run, method):
    run = prune_runs[method]
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["stage"] == "prune" and tags["method"] == method
    assert tags["parent_run_id"] == base_run.info.run_id
    assert {"test_accuracy_pruned", "val_accuracy_pruned", "test_accuracy", "val_accuracy", "sparsity_global",
            "params_total", "params_nonzero", "params_reduction", "prune_seconds", *FOOTPRINT_KEYS} <= set(metrics)
    assert any(key.startswith("sparsity.") for key in metrics)
    assert metrics["params_reduction"] > 0.2
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"sparsity.json", "sparsity.png", "footprint.json", "model_spec"} <= artifacts
    assert reproduce_accuracy(run) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    if get_method(method).ratio_kind == "weights":
        assert metrics["sparsity_global"] == pytest.approx(0.5, abs=0.01)
    if method in VIA_MLFLOW_RUN:  # the default precisions: every one measured, the int8 file reloads
        assert {"test_accuracy_int8", "test_accuracy_int4", "test_accuracy_w8a8", "total_w8a8_bytes"} <= set(metrics)
        int8 = tracking.load_model(f"runs:/{run.info.run_id}/model_int8")
        splits = load_splits("synthetic", train_subset=1000, val_size=200)
        accuracy = evaluate(int8.model, splits.test, splits, torch.device("cpu"), tta_flip=True)[0]
        assert accuracy == pytest.approx(metrics["test_accuracy_int8"], abs=1e-3)


def test_evaluate_quantised_variants_of_a_pruned_run_on_the_inherited_split(prune_runs):
    """The README's command: `evaluate` of a pruned run's model_int8 / model_int4 with only dataset=synthetic given:
    the split (train_subset, val_size, split_seed) comes from the lineage, as numbers, and the accuracy is the one
    the prune run logged for that precision."""
    pruned = prune_runs["global_l1"]
    proc = mlflow_run("evaluate", {"model_uri": f"runs:/{pruned.info.run_id}/model_int8", "dataset": "synthetic",
                                   "device": "cpu", "precisions": ""})
    assert_ok(proc)
    run = last_run()
    assert run.info.status == "FINISHED" and run.data.tags["split_seed"] == "0"
    assert run.data.metrics["test_accuracy"] == pytest.approx(pruned.data.metrics["test_accuracy_int8"], abs=1e-6)
    result = CliRunner().invoke(cli, ["evaluate", "--model-uri", f"runs:/{pruned.info.run_id}/model_int4",
                                      "--dataset", "synthetic", "--device", "cpu", "--precisions", "",
                                      "--no-progress", "--experiment-name", EXPERIMENT], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    int4 = last_run()
    assert int4.data.metrics["test_accuracy"] == pytest.approx(pruned.data.metrics["test_accuracy_int4"], abs=1e-6)
    assert int4.data.params["val_size"] == "200" and int4.data.params["train_subset"] == "1000"


def test_prune_with_distillation_rewind_and_rounds(base_run):
    params = {**SYNTHETIC_DATA, "model_uri": f"runs:/{base_run.info.run_id}/model", "method": "lamp", "ratio": "0.6",
              "finetune_epochs": "0.3", "device": "cpu", "batch_size": "64", "precisions": "",
              "distill_alpha": "0.5", "distill_temperature": "4", "finetune_schedule": "rewind", "rounds": "2",
              "round_epochs": "0.2"}
    assert_ok(mlflow_run("prune", params, experiment="e2e-recipes"))
    run = last_run("e2e-recipes")
    assert run.info.status == "FINISHED" and run.data.params["finetune_schedule"] == "rewind"
    assert run.data.params["distill_alpha"] == "0.5" and run.data.params["rounds"] == "2"
    client = MlflowClient()
    rounds = client.get_metric_history(run.info.run_id, "round_sparsity")
    assert [m.step for m in rounds] == [1, 2]
    assert rounds[0].value == pytest.approx(1 - 0.4 ** 0.5, abs=0.01)  # 1 - (1 - r)^(k/R)
    assert rounds[1].value == pytest.approx(0.6, abs=0.01)
    assert len(client.get_metric_history(run.info.run_id, "round_val_accuracy")) == 2
    assert run.data.metrics["sparsity_global"] == pytest.approx(0.6, abs=0.01)
    assert reproduce_accuracy(run) == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)


@pytest.fixture(scope="module")
def finetune_runs(prune_runs):
    parents = {"unstructured": prune_runs["global_l1"], "structured": prune_runs["li_filters"]}
    jobs = [("finetune", {**SYNTHETIC_DATA, "model_uri": f"runs:/{parent.info.run_id}/model", "epochs": "1",
                          "device": "cpu", "batch_size": "64"}) for parent in parents.values()]
    return {kind: (parents[kind], run) for kind, run in zip(parents, submit_runs(jobs), strict=True)}


def test_finetune_keeps_unstructured_zeros(finetune_runs):
    parent, run = finetune_runs["unstructured"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "finetune" and run.data.tags["parent_run_id"] == parent.info.run_id
    assert run.data.tags["method"] == "global_l1"
    before = tracking.load_model(f"runs:/{parent.info.run_id}/model").model.state_dict()
    after = tracking.load_model(f"runs:/{run.info.run_id}/model").model.state_dict()
    for key, weight in before.items():
        if key.endswith("weight") and weight.dim() > 1:
            assert torch.all(after[key][weight == 0] == 0), key
    assert run.data.metrics["sparsity_global"] == pytest.approx(parent.data.metrics["sparsity_global"], abs=1e-6)


def test_finetune_keeps_structured_architecture(finetune_runs):
    parent, run = finetune_runs["structured"]
    assert run.info.status == "FINISHED"
    before = tracking.load_model(f"runs:/{parent.info.run_id}/model")
    after = tracking.load_model(f"runs:/{run.info.run_id}/model")
    assert after.spec["layers"] == before.spec["layers"]
    assert run.data.metrics["params_total"] == parent.data.metrics["params_total"]


@pytest.mark.parametrize("entry,params,message", [
    ("prune", {"method": "nope"}, "unknown method 'nope'"),
    ("train", {"lr": "abc"}, "'abc' is not a number"),
])
def test_bad_input_through_mlflow_run(base_run, entry, params, message):
    full = {**SYNTHETIC_DATA, "model_uri": f"runs:/{base_run.info.run_id}/model", **params} if entry == "prune" \
        else {**QUICK_TRAIN, **params}
    proc = mlflow_run(entry, full, experiment="e2e-bad")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert no_running_runs("e2e-bad")
