"""Precision ort_int8 through the CLI (in-process): a train run logs the ONNX Runtime int8 model `model_ort_int8`
(mlflow.onnx, the file measured), `evaluate` of it reproduces its logged accuracy, compare ranks it by storage or
runtime bytes and the registry registers it; bad input (`ort_int4`, a model ONNX cannot export) is one line, exit 2,
nothing RUNNING."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from torch import nn

from prune_tracker import tracking
from prune_tracker.analysis import compare
from prune_tracker.cli import cli
from prune_tracker.core.deploy import latency as deploy_latency

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread

EXPERIMENT = "deploy"
QUICK = ["--dataset", "synthetic", "--train-subset", "1000", "--val-size", "200", "--device", "cpu",
         "--no-progress", "--experiment-name", EXPERIMENT]
MLFLOW_LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) mlflow")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_id_of(output: str, stage: str) -> str:
    return re.search(rf"{stage} run ([0-9a-f]{{32}}) finished", output).group(1)


def assert_one_line_error(result, *messages: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not MLFLOW_LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for message in messages:
        assert message in lines[0], lines[0]


def running_runs() -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "attributes.status = 'RUNNING'") if ids else []


@pytest.fixture(scope="module")
def trained() -> str:
    """A ResNet-8 train run measured at int8 and ort_int8 (latency timed briefly: no test times anything)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deploy_latency, "MIN_RUN_TIME", 0.02)
        result = invoke("train", "--arch", "resnet8", *QUICK, "--epochs", "3", "--batch-size", "64", "--lr", "0.1",
                        "--precisions", "int8,ort_int8")
    assert result.exit_code == 0, result.output
    return run_id_of(result.output, "train")


def test_train_logs_the_ort_int8_model_it_measured(trained, tmp_path):
    metrics = MlflowClient().get_run(trained).data.metrics
    for name in ("val_accuracy_ort_int8", "test_accuracy_ort_int8", "file_ort_int8_bytes", "latency_ms_ort_int8",
                 "latency_ms_ort_int8_batch128", "latency_ms_ort_fp32", "latency_ms_torch_fp32_batch128_iqr"):
        assert name in metrics, name
    assert abs(metrics["test_accuracy_ort_int8"] - metrics["test_accuracy"]) <= 0.05
    uri = tracking.logged_model_uri(trained, "model_ort_int8")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".data"))
    assert files == ["model.onnx"]  # one file, no external data
    assert (folder / "model.onnx").stat().st_size == metrics["file_ort_int8_bytes"]
    logged = mlflow.get_logged_model(uri.removeprefix("models:/"))
    assert logged.tags["precision"] == "ort_int8"
    assert logged.metrics and {m.key for m in logged.metrics} >= {"test_accuracy_ort_int8", "file_ort_int8_bytes"}


def test_evaluate_model_ort_int8_reproduces_its_accuracy(trained, monkeypatch):
    monkeypatch.setattr(deploy_latency, "MIN_RUN_TIME", 0.02)
    result = invoke("evaluate", "--model-uri", f"runs:/{trained}/model_ort_int8", "--precisions", "",
                    "--device", "cpu", "--no-progress", "--experiment-name", EXPERIMENT)
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(run_id_of(result.output, "evaluate"))
    logged = MlflowClient().get_run(trained).data.metrics
    assert run.data.metrics["test_accuracy"] == run.data.metrics["test_accuracy_ort_int8"] == \
        logged["test_accuracy_ort_int8"]
    assert run.data.metrics["file_ort_int8_bytes"] == logged["file_ort_int8_bytes"]
    assert "latency_ms_ort_int8_batch128" in run.data.metrics
    assert run.data.tags["arch"] == "resnet8" and run.data.tags["parent_run_id"] == trained


def test_an_ort_model_is_not_trainable(trained):
    result = invoke("prune", "--model-uri", f"runs:/{trained}/model_ort_int8", "--method", "global_l1",
                    "--ratio", "0.5", "--precisions", "", "--device", "cpu", "--no-progress",
                    "--experiment-name", EXPERIMENT)
    assert_one_line_error(result, "model_ort_int8", "ort_int8")
    assert running_runs() == []


def test_compare_ranks_ort_int8_by_storage_or_runtime_bytes_and_registers_it(trained):
    metrics = MlflowClient().get_run(trained).data.metrics
    storage = compare.run_compare([EXPERIMENT], precisions="ort_int8", log_run=False, filter_string=
                                  f"attributes.run_id = '{trained}'")
    runtime = compare.run_compare([EXPERIMENT], precisions="int8,ort_int8", footprint="runtime", log_run=False,
                                  filter_string=f"attributes.run_id = '{trained}'")
    (point,) = storage.candidates
    assert (point.precision, point.accuracy) == ("ort_int8", metrics["val_accuracy_ort_int8"])
    assert point.footprint == metrics["footprint_best_int8_bytes"]  # storage: the int8 weights, best format
    by_precision = {p.precision: p for p in runtime.candidates}
    assert by_precision["ort_int8"].footprint == metrics["file_ort_int8_bytes"]  # runtime: the .onnx it loads
    assert by_precision["int8"].footprint == metrics["footprint_int8_bytes"]  # runtime: dense int8 weights
    registered = compare.run_compare([EXPERIMENT], precisions="ort_int8", log_run=False, register=True,
                                     registered_name="deploy-ort", filter_string=f"attributes.run_id = '{trained}'")
    version = MlflowClient().get_model_version("deploy-ort", registered.registration.versions[(trained, "ort_int8")][1])
    assert version.source == tracking.logged_model_uri(trained, "model_ort_int8")
    assert version.tags["precision"] == "ort_int8"


def test_runs_without_ort_int8_are_not_missing_it(trained):
    """A run measured at int8 only logs int8's bytes (ort_int8's storage x): it is no ort_int8 candidate."""
    result = invoke("train", "--arch", "resnet8", *QUICK, "--epochs", "0.2", "--batch-size", "64",
                    "--precisions", "int8")
    other = run_id_of(result.output, "train")
    chosen = compare.run_compare([EXPERIMENT], precisions="ort_int8", log_run=False,
                                 filter_string=f"attributes.run_id IN ('{trained}', '{other}')")
    assert [p.run_id for p in chosen.candidates] == [trained] and chosen.missing == []


@pytest.mark.parametrize("command", [
    ["train", "--arch", "resnet8", *QUICK],
    ["evaluate", "--model-uri", "runs:/{run}/model", "--device", "cpu", "--no-progress"],
    ["prune", "--model-uri", "runs:/{run}/model", "--method", "global_l1", "--ratio", "0.5", "--device", "cpu"],
    ["finetune", "--model-uri", "runs:/{run}/model", "--epochs", "0.1", "--device", "cpu"],
    ["main", "--arch", "resnet8", "--methods", "global_l1", "--ratios", "0.5", *QUICK],
])
def test_ort_int4_is_one_line_naming_it(trained, command):
    args = [a.replace("{run}", trained) for a in command]
    result = invoke(*args, "--precisions", "int8,ort_int4")
    assert_one_line_error(result, "unknown precision 'ort_int4'; allowed: fp16, int8, int4, ort_int8",
                          "no int4 convolution kernel")
    assert running_runs() == []


class BranchingCNN(nn.Module):
    """A user's network whose forward branches on a tensor's value: torch.export cannot capture it."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(pooled) if pooled.sum() > 0 else self.head(-pooled)


@pytest.mark.parametrize("command", [
    ["evaluate"], ["prune", "--method", "global_l1", "--ratio", "0.5"], ["finetune", "--epochs", "0.1"]])
def test_a_model_onnx_cannot_export_is_one_line_naming_it(command):
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="branching") as run:
        mlflow.pytorch.log_model(BranchingCNN().eval(), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"])
    uri = f"runs:/{run.info.run_id}/model"
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    before = len(client.search_runs([experiment]))
    result = invoke(*command, "--model-uri", uri, "--precisions", "ort_int8", "--dataset", "synthetic",
                    "--device", "cpu", "--no-progress", "--experiment-name", EXPERIMENT, "--trust-pickle")
    assert_one_line_error(result, f"model_uri={uri!r} cannot be exported to ONNX", "data-dependent",
                          "leave ort_int8 out")
    assert running_runs() == [] and len(client.search_runs([experiment])) == before  # no run started
