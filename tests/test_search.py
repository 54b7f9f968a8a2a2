"""`prune-tracker search`: budget strings, the in-budget objective, bad budgets as one-line errors, and a 3-trial
Optuna search on synthetic data that registers the most accurate (validation) in-budget trial as `champion`."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import require
from mlflow.tracking import MlflowClient

from prune_tracker.cli import cli
from prune_tracker.jobs import DataSpec
from prune_tracker.studies.search import SearchConfig, in_budget, parse_budget_bytes, run_search
from prune_tracker.studies.sweep import PruneBase

require("optuna", "search")
pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--dataset", "synthetic", "--train-subset", "1000", "--val-size", "200", "--device", "cpu", "--no-progress"]
BUDGET = 60_000


@pytest.fixture(scope="module")
def base_uri() -> str:
    args = ["train", *QUICK, "--arch", "resnet8", "--epochs", "2", "--batch-size", "64", "--lr", "0.1",
            "--precisions", "", "--experiment-name", "search-base"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = next(line.split()[2] for line in result.output.splitlines() if line.startswith("train run "))
    return f"runs:/{run_id}/model"


@pytest.mark.parametrize("text,expected", [("100KB", 100_000), ("1.5MB", 1_500_000), ("120000", 120_000),
                                           ("100 KiB", 102_400), ("2mb", 2_000_000)])
def test_budget_strings(text, expected):
    assert parse_budget_bytes(text) == expected


@pytest.mark.parametrize("text,message", [
    ("12 parsecs", "budget='12 parsecs' is not allowed: cannot parse byte size"),
    ("-5KB", "budget='-5KB' is not allowed"),
    ("0", "budget='0' must be > 0 bytes"),
    ("", "budget is empty"),
    ("3/2", "a fraction of the base must be in (0, 1]"),
])
def test_bad_budget_strings(text, message):
    with pytest.raises(ValueError) as info:
        parse_budget_bytes(text, "runs:/0123456789abcdef0123456789abcdef/model")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_fraction_of_the_base(base_uri):
    fp32 = MlflowClient().get_run(base_uri.split("/")[1]).data.metrics["footprint_fp32_bytes"]
    assert parse_budget_bytes("1/8", base_uri) == int(fp32 / 8)


def test_the_objective_is_the_best_point_within_the_budget():
    # test accuracy disagrees with validation everywhere: the objective must follow validation
    metrics = {"val_accuracy": 0.9, "footprint_best_bytes": 300.0,  # fp16: over
               "val_accuracy_int8": 0.85, "footprint_best_int8_bytes": 150.0,
               "val_accuracy_int4": 0.70, "footprint_best_int4_bytes": 80.0, "val_accuracy_w8a8": 0.86,
               "test_accuracy": 0.5, "test_accuracy_int8": 0.95, "test_accuracy_int4": 0.99, "test_accuracy_w8a8": 0.1}
    assert in_budget(metrics, "footprint_best_bytes", 200) == (0.86, "w8a8", 150.0)
    assert in_budget(metrics, "footprint_best_bytes", 100) == (0.70, "int4", 80.0)
    assert in_budget(metrics, "footprint_best_bytes", 50) is None


@pytest.mark.parametrize("budget,message", [("12parsecs", "budget='12parsecs' is not allowed"),
                                            ("0", "budget='0' must be > 0 bytes"), ("", "budget is empty")])
def test_bad_budget_on_the_command_line_is_one_line(budget, message):
    result = CliRunner().invoke(cli, ["search", "--model-uri", "runs:/0123456789abcdef0123456789abcdef/model",
                                      "--budget", budget])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(ids, "attributes.status = 'RUNNING'")


def test_search_registers_the_most_accurate_in_budget_trial_as_champion(base_uri):
    base = PruneBase(base_uri, DataSpec.inherited(), precisions=(), device="cpu",
                     experiment_name="search")
    space = {"finetune_epochs": [0.1], "finetune_schedule": ["cosine"], "distill_alpha": [0.0], "tta_flip": [False],
             "lr": [0.01, 0.05]}
    config = SearchConfig(base, "60KB", trials=3, methods=["global_l1", "lamp"], recipe_space=space,
                          registered_name="search-test", log=lambda _line: None)
    result = run_search(config)

    client = MlflowClient()
    search_run = client.get_run(result.run_id)
    assert search_run.info.status == "FINISHED" and search_run.data.tags["stage"] == "search"
    exp = search_run.info.experiment_id
    trials = client.search_runs([exp], f"tags.stage = 'prune' and tags.search_run_id = '{result.run_id}'")
    assert trials and all(t.info.status == "FINISHED" for t in trials)
    assert all(t.data.tags["mlflow.parentRunId"] == result.run_id for t in trials)
    for t in trials:  # every trial was pruned to the budget (precisions=(): the fp16 footprint)
        assert t.data.metrics["footprint_best_bytes"] <= BUDGET and t.data.metrics["target_met"] == 1.0
        assert t.data.params["target_bytes"] == str(BUDGET) and t.data.params["finetune_lr"] in ("0.01", "0.05")
    best = max(t.data.metrics["val_accuracy"] for t in trials)
    champion = client.get_model_version_by_alias("search-test", "champion")
    assert champion.run_id == result.champion_run_id
    assert client.get_run(champion.run_id).data.metrics["val_accuracy"] == best == result.val_accuracy
    assert len(client.search_model_versions("name='search-test'")) == 1, "the winner only"
    assert champion.tags["test_accuracy"] and search_run.data.metrics["champion_test_accuracy"] == pytest.approx(
        client.get_run(champion.run_id).data.metrics["test_accuracy"]), "test accuracy reported beside it"
    doc = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="search.json"))
                     .read_text())
    assert len(doc["trials"]) == 3 and {row["params"]["method"] for row in doc["trials"]} <= {"global_l1", "lamp"}
    assert all(row["state"] == "COMPLETE" and row["ratio"] > 0 for row in doc["trials"])
    [compare] = client.search_runs([exp], f"tags.stage = 'compare' and tags.search_run_id = '{result.run_id}'")
    assert compare.data.params["budget_bytes"] == str(BUDGET)  # core.budget: whole bytes
