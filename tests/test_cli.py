"""The `prune-tracker` CLI in-process: one-line errors for bad input (exit 2, no run left RUNNING), resume
after an interrupted training run, and the `main` pipeline (reuse on rerun, registry champion)."""

from __future__ import annotations

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from prune_tracker import jobs, tracking
from prune_tracker.cli import cli
from prune_tracker.models import build_model
from prune_tracker.training import Trainer

QUICK = ["--dataset", "synthetic", "--train-subset", "1000", "--val-size", "200", "--device", "cpu",
         "--no-progress"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def running_runs() -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "attributes.status = 'RUNNING'") if ids else []


@pytest.fixture(scope="module")
def trained_uri():
    result = invoke("train", *QUICK, "--epochs", "3", "--batch-size", "64", "--lr", "0.1", "--ema-decay", "0.9",
                    "--experiment-name", "cli")
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().split()[-2]
    return f"runs:/{run_id}/model"


@pytest.mark.parametrize("args,message", [
    (["train", "--arch", "resnet21"], "unknown arch 'resnet21'; known: resnet20"),
    (["train", "--dataset", "imagenet"], "'imagenet' is not one of 'cifar10', 'cifar100', 'synthetic'"),
    (["train", "--lr", "nan"], "'nan' is not allowed"),
    (["train", "--epochs", "-1"], "'-1' is not allowed"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"],
     "data_dir '/nonexistent/cifar' does not exist"),
    (["prune", "--model-uri", "runs:/0123456789abcdef0123456789abcdef/model", "--method", "global_l1"],
     "not found"),
    (["prune", "--model-uri", "x", "--method", "nope"], "unknown method 'nope'; known:"),
    (["prune", "--model-uri", "x", "--method", "global_l1", "--ratio", "1.5"], "'1.5' is not allowed"),
    (["prune", "--model-uri", "x", "--method", "global_l1", "--ratio", "nan"], "'nan' is not allowed"),
    (["prune", "--model-uri", "x", "--method", "han", "--rounds", "many"], "rounds"),
    (["prune", "--model-uri", "x", "--method", "han", "--bogus", "1"], "unknown option(s) bogus"),
    (["evaluate", "--model-uri", "models:/no-such-model@champion"], "not found"),
    (["compare", "--experiment-names", "no-such-experiment"], "no-such-experiment"),
    (["compare", "--budget", "12 parsecs"], "12 parsecs"),
    (["train", "--arch", "vgg11_bn", "--zero-init-residual"], "zero_init_residual applies to ResNets"),
    (["main", "--arch", "vgg11_bn", "--zero-init-residual", "true"], "zero_init_residual applies to ResNets"),
    (["main", "--arch", "resnet21"], "unknown arch 'resnet21'; known: resnet20"),
    (["train", "--bn-weight-decay", "maybe"], "'maybe' is not a valid boolean"),
])
def test_bad_input_is_one_line_exit_2_and_no_running_run(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not running_runs()


def test_state_dict_of_another_architecture(tmp_path):
    path = tmp_path / "resnet32.pt"
    torch.save(build_model("resnet32").state_dict(), path)
    result = CliRunner().invoke(cli, ["evaluate", "--model-uri", str(path), "--arch", "resnet20", *QUICK])
    assert result.exit_code == 2
    assert "does not fit architecture 'resnet20'" in result.output


def test_local_state_dict_file_evaluates(tmp_path, trained_uri):
    loaded = tracking.load_model(trained_uri)
    path = tmp_path / "plain.pt"
    torch.save(loaded.model.state_dict(), path)
    result = invoke("evaluate", "--model-uri", str(path), "--arch", "resnet20", *QUICK, "--experiment-name", "cli")
    assert result.exit_code == 0, result.output


def test_footprint_command_prints_a_table_and_json(trained_uri):
    table = invoke("footprint", trained_uri)
    assert table.exit_code == 0 and "Activation peak (batch 1)" in table.output and "MicroNet" in table.output
    as_json = invoke("footprint", trained_uri, "--json")
    assert '"footprint_fp32_bytes"' in as_json.output


def test_methods_and_archs_listings():
    assert "thinet" in invoke("methods").output and "resnet56" in invoke("archs").output


def test_resume_after_interruption_reaches_the_same_weights(monkeypatch):
    data = jobs.DataOptions("synthetic", None, 1000, 200, 0)
    config = jobs.TrainConfig(epochs=2, batch_size=64, lr=0.1, ema_decay=0.9)
    run = jobs.RunOptions("resume", "cpu", progress=False)
    straight = jobs.train("resnet20", data, config, run)

    original = Trainer.train_epoch
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        jobs.train("resnet20", data, config, run)
    killed = MlflowClient().search_runs([mlflow.get_experiment_by_name("resume").experiment_id],
                                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert killed.info.status == "KILLED"
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = jobs.train("resnet20", data, config, run, resume_run_id=killed.info.run_id)
    assert resumed == killed.info.run_id and MlflowClient().get_run(resumed).info.status == "FINISHED"
    a = tracking.load_model(f"runs:/{straight}/model").model.state_dict()
    b = tracking.load_model(f"runs:/{resumed}/model").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_main_pipeline_end_to_end_reuses_finished_steps():
    args = ["main", *QUICK, "--epochs", "3", "--batch-size", "64", "--lr", "0.1", "--methods", "global_l1,li_filters",
            "--ratios", "0.5,0.8", "--finetune-epochs", "0.3", "--experiment-name", "pipeline",
            "--registered-name", "pipeline-test"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "champion: models:/pipeline-test@champion" in first.output
    client = MlflowClient()
    experiment = client.get_experiment_by_name("pipeline").experiment_id
    stages = [r.data.tags.get("stage") for r in client.search_runs([experiment])]
    assert stages.count("prune") == 4 and stages.count("train") == 1 and "compare" in stages and "report" in stages
    versions = client.search_model_versions("name='pipeline-test'")
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "(6 reused)" in second.output  # train, evaluate-base and the 4 prune steps
    assert len(client.search_model_versions("name='pipeline-test'")) == len(versions)
    runs_after = client.search_runs([experiment], "tags.stage = 'prune'")
    assert len(runs_after) == 4, "prune steps were reused, not rerun"
    model = mlflow.pytorch.load_model("models:/pipeline-test@champion")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    evaluated = invoke("evaluate", "--model-uri", "models:/pipeline-test@champion", *QUICK,
                       "--experiment-name", "pipeline")
    assert evaluated.exit_code == 0, evaluated.output
