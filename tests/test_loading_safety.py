"""Which loads unpickle: only a model logged by another tool (no `model_spec/`), and only with an opt-in.

The payload (tests/pickle_payload.py) writes a marker file when it is unpickled, as a hostile model would run its
code: every entry point that loads models refuses it in one line naming the opt-in, and the file is not created;
with `--trust-pickle`, `-P trust_pickle=true` or PRUNE_TRACKER_TRUST_PICKLE=1 it loads (and the file appears). A
prune-tracker model whose `model_spec/` cannot be listed or downloaded is an error saying so, never unpickled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pickle_payload import Payload
from test_entrypoints import mlflow_run

from prune_tracker import tracking
from prune_tracker.cli import cli
from prune_tracker.core.models import build_model
from prune_tracker.tracking import loading, trials

pytestmark = pytest.mark.usefixtures("one_thread")
EXPERIMENT = "pickle-safety"
PAYLOAD_FILE = Path(__file__).with_name("pickle_payload.py")
DATA = ["--dataset", "synthetic", "--train-subset", "300", "--val-size", "50", "--device", "cpu", "--no-progress",
        "--precisions", ""]
OPT_IN = ("--trust-pickle", "-P trust_pickle=true", "PRUNE_TRACKER_TRUST_PICKLE=1")


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("payload") / "unpickled.txt"


@pytest.fixture(scope="module")
def payload_uri(marker: Path) -> str:
    """`runs:/<id>/model` of the payload, logged the way another tool logs a model (pickle, its code with it)."""
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="payload") as run:
        mlflow.pytorch.log_model(Payload(str(marker)), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"], code_paths=[str(PAYLOAD_FILE)])
    assert not marker.exists(), "logging must not run the payload"
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture(autouse=True)
def _no_marker_no_opt_in(marker: Path, monkeypatch) -> Iterator[None]:
    marker.unlink(missing_ok=True)
    monkeypatch.delenv(tracking.TRUST_PICKLE_ENV, raising=False)
    yield
    marker.unlink(missing_ok=True)


def _refused(result, marker: Path) -> None:
    """Exit 2, one line naming the opt-in, the payload never ran, no run of the experiment left RUNNING."""
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output[-3000:]
    assert lines[0].startswith("Error: ") and "unpickles" in lines[0], lines[0]
    assert all(form in lines[0] for form in OPT_IN), lines[0]
    assert not marker.exists(), "the payload ran"
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
    assert not MlflowClient().search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def test_the_library_refuses_the_payload_and_loads_it_with_the_opt_in(payload_uri, marker):
    with pytest.raises(tracking.PickleRefused) as refused:
        tracking.load_model(payload_uri)
    assert "was not logged by prune-tracker" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()
    with tracking.trusting_pickle(True):
        loaded = tracking.load_model(payload_uri)
    assert marker.exists() and loaded.spec["arch"].startswith("foreign:")
    assert not tracking.pickle_trusted(), "the opt-in ends with its block"


@pytest.mark.parametrize("command", [
    ["evaluate", "--model-uri", "{uri}", *DATA],
    ["prune", "--model-uri", "{uri}", "--method", "global_l1", "--ratio", "0.5", *DATA],
    ["finetune", "--model-uri", "{uri}", "--epochs", "0.1", *DATA],
    ["footprint", "{uri}"],
    ["sweep", "--model-uri", "{uri}", "--methods", "global_l1", "--ratios", "0.5", *DATA],
    ["search", "--model-uri", "{uri}", "--budget", "100KB", "--trials", "1", *DATA],
    ["main", "--teacher-uri", "{uri}", "--distill-alpha", "0.5", "--epochs", "0.1", *DATA],
], ids=lambda command: command[0])
def test_every_loading_command_refuses_the_payload_in_one_line(payload_uri, marker, command):
    args = [arg.replace("{uri}", payload_uri) for arg in command]
    if args[0] != "footprint":
        args += ["--experiment-name", EXPERIMENT]
    _refused(CliRunner().invoke(cli, args), marker)


def test_the_cli_opt_in_and_the_team_variable_load_it(payload_uri, marker, monkeypatch):
    result = CliRunner().invoke(cli, ["footprint", payload_uri, "--trust-pickle"])
    assert result.exit_code == 0 and marker.exists(), result.output[-2000:]
    assert not tracking.pickle_trusted(), "the flag must not outlive the command"
    marker.unlink()
    monkeypatch.setenv(tracking.TRUST_PICKLE_ENV, "1")
    evaluated = CliRunner().invoke(cli, ["evaluate", "--model-uri", payload_uri, *DATA, "--experiment-name",
                                         EXPERIMENT])
    assert evaluated.exit_code == 0 and marker.exists(), evaluated.output[-2000:]


@pytest.mark.e2e
def test_the_mlproject_parameter_is_the_opt_in(payload_uri, marker):
    params = {"model_uri": payload_uri, "dataset": "synthetic", "train_subset": "300", "val_size": "50",
              "device": "cpu", "precisions": ""}
    refused = mlflow_run("evaluate", params, experiment=EXPERIMENT)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
    assert refused.returncode != 0 and len(errors) == 1 and "-P trust_pickle=true" in errors[0], refused.stderr[-3000:]
    assert not marker.exists()
    allowed = mlflow_run("evaluate", {**params, "trust_pickle": "true"}, experiment=EXPERIMENT)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert marker.exists()
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    launched = MlflowClient().search_runs([experiment], "tags.`mlflow.project.entryPoint` = 'evaluate'")
    assert sorted(r.info.status for r in launched) == ["FAILED", "FINISHED"]  # the refused one is not left RUNNING


# ---------------------------------------------------------------- a prune-tracker model is never unpickled


@pytest.fixture(scope="module")
def project_uri() -> str:
    with tracking.tracked_run("train", EXPERIMENT, "a prune-tracker model") as run:
        tracking.log_model(build_model("resnet8", 10), "resnet8", 10)
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture
def unpickling(monkeypatch) -> list[str]:
    """Records every attempt to unpickle (and fails it)."""
    calls: list[str] = []

    def record(uri: str, what: str):
        calls.append(uri)
        raise AssertionError(f"{uri} was unpickled ({what})")

    monkeypatch.setattr(loading, "load_pickled", record)
    return calls


def test_a_project_model_whose_spec_cannot_be_listed_is_an_error_not_an_unpickle(project_uri, unpickling,
                                                                                  monkeypatch):
    monkeypatch.setenv(tracking.TRUST_PICKLE_ENV, "1")  # even a team that trusts pickles never gets this fallback

    def unreachable(*_args, **_kwargs):
        raise MlflowException("API request to the tracking server failed: connection refused")

    monkeypatch.setattr(MlflowClient, "list_artifacts", unreachable)
    with pytest.raises(tracking.ModelLoadError, match=r"cannot list model_spec/ of run \w+: API request .* refused"):
        tracking.load_model(project_uri)
    assert unpickling == []


def test_a_project_model_whose_spec_cannot_be_downloaded_is_an_error_not_an_unpickle(project_uri, unpickling,
                                                                                     monkeypatch):
    monkeypatch.setenv(tracking.TRUST_PICKLE_ENV, "1")

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", broken)
    with pytest.raises(tracking.ModelLoadError, match=r"model_spec/ of run \w+ cannot be downloaded: .*No space"):
        tracking.load_model(project_uri)
    assert unpickling == []
    monkeypatch.undo()
    assert tracking.load_model(project_uri).spec["arch"] == "resnet8"  # the same model loads once it is reachable


def test_a_trial_in_another_process_gets_the_studys_opt_in_and_nothing_stale(monkeypatch):
    monkeypatch.setenv(tracking.TRUST_PICKLE_ENV, "1")
    with_opt_in = trials.client_environment()
    monkeypatch.delenv(tracking.TRUST_PICKLE_ENV)
    without = trials.client_environment()
    assert with_opt_in[tracking.TRUST_PICKLE_ENV] == "1" and tracking.TRUST_PICKLE_ENV not in without
    trials.apply_client_environment(with_opt_in)  # a Ray worker running one study's trial ...
    assert tracking.pickle_trusted()
    trials.apply_client_environment(without)  # ... then another study's, in the same worker process
    assert not tracking.pickle_trusted()
