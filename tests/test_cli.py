"""The `prune-tracker` CLI in-process: one-line errors for bad input (exit 2, no traceback, no run left RUNNING),
hints that name what the command accepts, resume after an interrupted training run, and the `main` pipeline
(reuse on rerun, rerun after a change or a failure, registry champion chosen on validation)."""

from __future__ import annotations

import re
from dataclasses import replace

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from prune_tracker import jobs, tracking
from prune_tracker.cli import cli
from prune_tracker.core import flows
from prune_tracker.core.models import build_model
from prune_tracker.core.pruning import get_method
from prune_tracker.core.training import TrainConfig, Trainer
from prune_tracker.jobs import DataSpec, RunSpec, TrainSpec

QUICK = ["--dataset", "synthetic", "--train-subset", "1000", "--val-size", "200", "--device", "cpu",
         "--no-progress"]
NO_PRECISIONS = ["--precisions", ""]  # each precision costs evaluations; the precision tests measure them
MLFLOW_LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) mlflow")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_id_of(output: str, stage: str) -> str:
    return re.search(rf"{stage} run ([0-9a-f]{{32}}) finished", output).group(1)


def assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not MLFLOW_LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert message in lines[0]


def running_runs() -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "attributes.status = 'RUNNING'") if ids else []


@pytest.fixture(scope="module")
def trained_uri():
    result = invoke("train", *QUICK, "--epochs", "3", "--batch-size", "64", "--lr", "0.1", "--ema-decay", "0.9",
                    *NO_PRECISIONS, "--experiment-name", "cli")
    assert result.exit_code == 0, result.output
    assert "#/experiments/" in result.output, "each command prints the link to its runs page"
    return f"runs:/{run_id_of(result.output, 'train')}/model"


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
    (["train", "--val-size", "lots"], "'lots' is not allowed; expected 'auto' or an integer >= 0"),
    (["train", "--no-such-option"], "No such option '--no-such-option'"),
    (["evaluate"], "Missing option '--model-uri'"),
    (["prune", "--model-uri", "x", "--method", "global_l1", "--epochs", "3"], "unknown option(s) epochs"),
    (["main", "--budget", "3/2"], "budget='3/2': a fraction of the base must be in (0, 1]"),
])
def test_bad_input_is_one_line_exit_2_and_no_running_run(args, message):
    assert_one_line_error(CliRunner().invoke(cli, args), message)
    assert not running_runs()


def test_a_uri_loads_what_it_names(trained_uri):
    run_id = trained_uri.split("/")[1]
    result = CliRunner().invoke(cli, ["evaluate", "--model-uri", f"runs:/{run_id}/no_such_thing", *QUICK])
    assert_one_line_error(result, f"run {run_id} has no loadable model 'no_such_thing'; loadable: model")


def test_a_conflicting_arch_names_both(trained_uri):
    result = CliRunner().invoke(cli, ["evaluate", "--model-uri", trained_uri, "--arch", "vgg16_bn", *QUICK])
    assert_one_line_error(result, "arch='vgg16_bn' conflicts with")
    assert "logged as arch='resnet20'" in result.output


def test_each_hint_names_something_the_command_accepts(tmp_path, trained_uri):
    """Follow every hint an error gives, literally, and the command must then succeed."""
    state = tmp_path / "plain.pt"
    torch.save(tracking.load_model(trained_uri).model.state_dict(), state)
    extras = {"prune": ["--method", "global_l1"], "finetune": ["--epochs", "0.1"], "evaluate": []}
    for command, extra in extras.items():
        args = [command, "--model-uri", str(state), *extra, *QUICK, *NO_PRECISIONS, "--experiment-name", "hints"]
        refused = CliRunner().invoke(cli, args)
        assert_one_line_error(refused, "pass arch=<name>")
        assert invoke(*args, "--arch", "resnet20").exit_code == 0
    split = ["prune", "--model-uri", trained_uri, "--method", "global_l1", "--split-seed", "7", "--device", "cpu",
             "--no-progress", *NO_PRECISIONS, "--experiment-name", "hints"]
    refused = CliRunner().invoke(cli, split)
    assert_one_line_error(refused, "split_seed=7 differs from the parent run's split_seed=0")
    assert "pass new_split=true" in refused.output
    assert invoke(*split, "--new-split", "true").exit_code == 0


def test_state_dict_of_another_architecture(tmp_path):
    path = tmp_path / "resnet32.pt"
    torch.save(build_model("resnet32").state_dict(), path)
    result = CliRunner().invoke(cli, ["evaluate", "--model-uri", str(path), "--arch", "resnet20", *QUICK])
    assert_one_line_error(result, "does not fit architecture 'resnet20'")


def test_local_state_dict_file_evaluates(tmp_path, trained_uri):
    loaded = tracking.load_model(trained_uri)
    path = tmp_path / "plain.pt"
    torch.save(loaded.model.state_dict(), path)
    result = invoke("evaluate", "--model-uri", str(path), "--arch", "resnet20", *QUICK, "--experiment-name", "cli")
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(run_id_of(result.output, "evaluate"))
    trained = MlflowClient().get_run(tracking.resolve_run_id(trained_uri))
    # the file's weights, on the same split and TTA: the trained run's own test accuracy, to the last image
    assert run.data.metrics["test_accuracy"] == pytest.approx(trained.data.metrics["test_accuracy"], abs=1e-6)
    assert run.data.tags["stage"] == "evaluate"


def test_footprint_command_prints_a_table_and_json(trained_uri):
    table = invoke("footprint", trained_uri)
    assert table.exit_code == 0 and "Activation peak (batch 1)" in table.output and "MicroNet" in table.output
    as_json = invoke("footprint", trained_uri, "--json")
    assert '"footprint_fp32_bytes"' in as_json.output


def test_methods_and_archs_listings():
    assert "thinet" in invoke("methods").output and "resnet56" in invoke("archs").output


def _epoch_history(run_id: str, key: str = "epoch_val_accuracy") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def test_resume_after_interruption_reaches_the_same_weights(monkeypatch):
    """Resuming continues from the checkpoint: the remaining epoch only (a resume that ignored the checkpoint
    would train both epochs again from the same seed and could reach the same weights), one metric history."""
    spec = TrainSpec("resnet20", DataSpec("synthetic", None, 1000, 200, 0),
                     TrainConfig(epochs=2, batch_size=64, lr=0.1, ema_decay=0.9), RunSpec("resume", "cpu", False))
    straight = jobs.train(spec)

    original = Trainer.train_epoch
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        jobs.train(spec)
    killed = MlflowClient().search_runs([mlflow.get_experiment_by_name("resume").experiment_id],
                                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert killed.info.status == "KILLED"
    assert [step for step, _ in _epoch_history(killed.info.run_id)] == [1]
    epochs_run = []

    def counted(self):
        epochs_run.append(self.epochs_done)
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", counted)
    resumed = jobs.train(replace(spec, resume_run_id=killed.info.run_id))
    assert resumed == killed.info.run_id and MlflowClient().get_run(resumed).info.status == "FINISHED"
    assert epochs_run == [1.0]  # started after the checkpointed epoch
    assert _epoch_history(resumed) == _epoch_history(straight)
    a = tracking.load_model(f"runs:/{straight}/model").model.state_dict()
    b = tracking.load_model(f"runs:/{resumed}/model").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _step_statuses(experiment: str) -> list[tuple[str, str]]:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment).experiment_id
    return sorted((r.data.tags.get("pipeline_step", ""), r.info.status)
                  for r in client.search_runs([exp], "tags.stage = 'prune'"))


def test_main_pipeline_failure_reuse_and_change(monkeypatch):
    args = ["main", *QUICK, "--arch", "resnet8", "--epochs", "2", "--batch-size", "64", "--lr", "0.1",
            "--methods", "global_l1,li_filters", "--ratios", "0.5,0.8", "--finetune-epochs", "0.3", "--precisions",
            "int8", "--experiment-name", "pipeline", "--registered-name", "pipeline-test"]
    li_filters = type(get_method("li_filters"))
    original = li_filters._prune

    def fails_at_08(self, model, ratio, ctx, **opts):
        if ratio == 0.8:
            raise RuntimeError("injected failure")
        return original(self, model, ratio, ctx, **opts)

    monkeypatch.setattr(li_filters, "_prune", fails_at_08)
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 2 and "prune-li_filters-0.8: injected failure" in first.output, first.output
    assert _step_statuses("pipeline") == [("prune-global_l1-0.5", "FINISHED"), ("prune-global_l1-0.8", "FINISHED"),
                                          ("prune-li_filters-0.5", "FINISHED"), ("prune-li_filters-0.8", "FAILED")]
    monkeypatch.setattr(li_filters, "_prune", original)

    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "(5 reused)" in second.output  # train, evaluate-base and the 3 finished prune steps; the failed one reran
    assert [s for s in _step_statuses("pipeline") if s[1] == "FINISHED"][-1] == ("prune-li_filters-0.8", "FINISHED")
    assert "champion: models:/pipeline-test@champion" in second.output
    client = MlflowClient()
    compare_runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id],
                                      "tags.stage = 'compare'", order_by=["attributes.start_time DESC"])
    assert compare_runs[0].data.params["metric"] == "val_accuracy", "the champion is chosen on validation"
    versions = client.search_model_versions("name='pipeline-test'")

    third = invoke(*args)
    assert "(6 reused)" in third.output and len(client.search_model_versions("name='pipeline-test'")) == len(versions)

    changed = invoke(*args, "--finetune-lr", "0.02")
    assert changed.exit_code == 0, changed.output
    assert "(2 reused)" in changed.output  # a changed prune parameter reruns the prune steps only
    assert len(client.search_runs([compare_runs[0].info.experiment_id], "tags.stage = 'prune'")) == 9

    champion = client.get_model_version_by_alias("pipeline-test", "champion")
    assert champion.tags["precision"] in ("fp16", "int8", "w8a8")
    model = tracking.load_model("models:/pipeline-test@champion").model  # an int8 champion: no unpickling
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    evaluated = invoke("evaluate", "--model-uri", "models:/pipeline-test@champion", "--device", "cpu",
                       "--no-progress", *NO_PRECISIONS, "--experiment-name", "pipeline")
    assert evaluated.exit_code == 0, evaluated.output


# ------------------------------------------------------------------------------------------ precisions


def test_precisions_qat_and_the_int8_artifact(trained_uri, monkeypatch):
    """prune with QAT measures every precision; the deployable int8 file reloads (no unpickling) and reproduces
    test_accuracy_int8; w8a8 calibration reads training images, never validation or test ones."""
    calibrated_on = []
    original_measure = flows.measure_precisions

    def recording_measure(model, precisions, evaluate, calibration_batches=None, activation_peak_fp32_bytes=None):
        calibrated_on.append(torch.cat([y for _, y in calibration_batches()]))
        return original_measure(model, precisions, evaluate, calibration_batches, activation_peak_fp32_bytes)

    monkeypatch.setattr(flows, "measure_precisions", recording_measure)
    result = invoke("prune", "--model-uri", trained_uri, "--method", "lamp", "--ratio", "0.8", "--finetune-epochs",
                    "0.3", "--qat", "int8", "--device", "cpu", "--no-progress", "--experiment-name", "precisions")
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(run_id_of(result.output, "prune"))
    metrics = run.data.metrics
    assert run.data.params["qat"] == "int8"
    for p in ("fp16", "int8", "int4"):  # fp16 bytes are footprint_best_bytes itself (no second name any more)
        bytes_name = "footprint_best_bytes" if p == "fp16" else f"footprint_best_{p}_bytes"
        assert {f"test_accuracy_{p}", f"val_accuracy_{p}", bytes_name, f"micronet_score_{p}"} <= set(metrics)
    assert "footprint_best_fp16_bytes" not in metrics
    assert metrics["footprint_best_int4_bytes"] < metrics["footprint_best_int8_bytes"] < metrics["footprint_best_bytes"]
    assert metrics["total_w8a8_bytes"] == metrics["footprint_best_int8_bytes"] + metrics["activation_peak_int8_bytes"]
    for p in ("int8", "int4"):
        assert abs(metrics[f"file_best_{p}_bytes"] / metrics[f"footprint_best_{p}_bytes"] - 1) < 0.05

    splits = DataSpec("synthetic", None, 1000, 200, 0).load()
    assert len(calibrated_on) == 1 and torch.equal(calibrated_on[0], splits.train.labels[:flows.CALIBRATION_IMAGES])
    assert len(splits.train) > flows.CALIBRATION_IMAGES  # a limit, then, and not the validation split's size

    evaluated = invoke("evaluate", "--model-uri", f"runs:/{run.info.run_id}/model_int8", "--device", "cpu",
                       "--no-progress", "--precisions", "", "--experiment-name", "precisions")
    assert evaluated.exit_code == 0, evaluated.output
    reproduced = MlflowClient().get_run(run_id_of(evaluated.output, "evaluate")).data.metrics["test_accuracy"]
    assert reproduced == pytest.approx(metrics["test_accuracy_int8"], abs=0.001)
    refused = CliRunner().invoke(cli, ["prune", "--model-uri", f"runs:/{run.info.run_id}/model_int8", *QUICK])
    assert_one_line_error(refused, f"is a deployable int8 file (BatchNorm folded, weights quantised): prune or "
                                   f"fine-tune runs:/{run.info.run_id}/model instead")


@pytest.mark.parametrize("args,message", [
    (["train", "--precisions", "int3"], "unknown precision 'int3'; allowed: fp16, int8, int4"),
    (["prune", "--model-uri", "x", "--qat", "fp8"], "'fp8' is not one of 'none', 'int8', 'int4'"),
    (["finetune", "--model-uri", "x", "--qat", "fp8"], "'fp8' is not one of 'none', 'int8', 'int4'"),
])
def test_bad_precision_input(args, message):
    assert_one_line_error(CliRunner().invoke(cli, args), message)
    assert not running_runs()


def test_exceptions_mid_prune_and_mid_registration_end_their_runs_failed(trained_uri, monkeypatch):
    pruned = invoke("prune", "--model-uri", trained_uri, "--method", "lamp", "--ratio", "0.7", "--device", "cpu",
                    "--no-progress", "--precisions", "int8", "--experiment-name", "mid-failures")
    assert pruned.exit_code == 0, pruned.output  # with the base in `cli`: a front of several points to register
    lamp = type(get_method("lamp"))

    def broken(self, model, ratio, ctx, **opts):
        raise RuntimeError("out of memory mid-prune")

    monkeypatch.setattr(lamp, "_prune", broken)
    result = CliRunner().invoke(cli, ["prune", "--model-uri", trained_uri, "--method", "lamp", "--device", "cpu",
                                      "--no-progress", *NO_PRECISIONS, "--experiment-name", "mid-failures"])
    assert isinstance(result.exception, RuntimeError)
    monkeypatch.undo()

    from prune_tracker.tracking import registry

    original_register, calls = registry.mlflow.register_model, []

    def fails_second(*args, **kwargs):  # the first version is created, then the registry goes away
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("registry unreachable")
        return original_register(*args, **kwargs)

    monkeypatch.setattr(registry.mlflow, "register_model", fails_second)
    result = CliRunner().invoke(cli, ["compare", "--experiment-names", "mid-failures,cli", "--register", "true",
                                      "--registered-name", "mid-failure-model", "--metric", "test_accuracy"])
    assert isinstance(result.exception, RuntimeError) and len(calls) == 2
    client = MlflowClient()
    ids = [client.get_experiment_by_name(name).experiment_id for name in ("mid-failures", "cli")]
    statuses = {(r.data.tags.get("stage"), r.info.status) for r in client.search_runs(ids)}
    assert ("prune", "FAILED") in statuses and ("compare", "FAILED") in statuses
    assert not running_runs()
    assert not client.search_model_versions("name='mid-failure-model'"), "no orphan registry version"


@pytest.mark.parametrize("extra,message", [
    (["--distill-alpha", "2"], "'2' is not allowed"),
    (["--finetune-schedule", "nope"], "'nope' is not one of 'cosine', 'rewind', 'constant'"),
    (["--rewind-fraction", "1.5"], "'1.5' is not allowed"),
    (["--rounds", "0"], "0 is not in the range x>=1"),
    (["--rounds", "2", "--method", "li_filters", "--scope", "stage"], "rounds=2 with scope=stage is not supported"),
])
def test_bad_recovery_options(extra, message):
    assert_one_line_error(CliRunner().invoke(cli, ["prune", "--model-uri", "x", *extra]), message)


def test_rewind_without_a_train_run_and_stage_scope_without_stages(tmp_path, trained_uri):
    state = tmp_path / "plain.pt"
    torch.save(tracking.load_model(trained_uri).model.state_dict(), state)
    rewind = CliRunner().invoke(cli, ["prune", "--model-uri", str(state), "--arch", "resnet20", "--finetune-schedule",
                                      "rewind", *QUICK, "--experiment-name", "recipes"])
    assert_one_line_error(rewind, "finetune_schedule=rewind needs the train run of")
    vgg = tmp_path / "vgg.pt"
    torch.save(build_model("vgg11_bn").state_dict(), vgg)
    stage = CliRunner().invoke(cli, ["prune", "--model-uri", str(vgg), "--arch", "vgg11_bn", "--method", "li_filters",
                                     "--scope", "stage", "--precisions", "", *QUICK, "--experiment-name", "recipes"])
    assert_one_line_error(stage, "use scope=block")
    assert not running_runs()


def test_every_command_has_one_line_of_help():
    from prune_tracker.cli import SHORT_HELP

    assert set(SHORT_HELP) == set(cli.commands), "a command without its line in `prune-tracker --help`"
    listing = CliRunner().invoke(cli, ["--help"]).output
    assert all(line in listing for line in SHORT_HELP.values()) and "..." not in listing.split("Commands:")[1]
