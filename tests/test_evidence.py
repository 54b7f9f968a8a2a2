"""Evidence that holds: seeds that differ, selection on validation, "x smaller" with one meaning.

- `seed` seeds pruning and fine-tuning: two prune runs of one parent with seeds 0 and 1 end with different
  weights, the same seed twice with equal ones; a smaller `train_subset` than the parent's is not a new split.
- A dense fp16 model is 2.00x smaller than its fp32 weights, its int8 variant about 4x (compare's column).
- Where validation and test disagree, every winner follows validation (compare's budget answer as `main` and the
  sweep use it; the frontier study's recipe choice).
"""

from __future__ import annotations

import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from prune_tracker import jobs, tracking
from prune_tracker.analysis.compare import run_compare
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import DataSpec, PruneSpec, RunSpec, TrainSpec

pytestmark = pytest.mark.usefixtures("one_thread")
EXPERIMENT = "evidence"
RUN = RunSpec(EXPERIMENT, "cpu", progress=False, precisions=("fp16", "int8"))


@pytest.fixture(scope="module")
def parent() -> str:
    spec = TrainSpec("resnet8", DataSpec("synthetic", None, 400, 100, 0), TrainConfig(epochs=1, batch_size=64, lr=0.1),
                     RUN)
    return jobs.train(spec)


def _prune(parent: str, seed: int, **data) -> str:
    spec = PruneSpec(f"runs:/{parent}/model", "lamp", 0.5, finetune_epochs=0.5,
                     data=DataSpec.inherited(**data), train=TrainConfig(lr=0.01, schedule="cosine", seed=seed,
                                                                         batch_size=64),
                     run=RunSpec(EXPERIMENT, "cpu", progress=False, precisions=()))
    return jobs.prune_model(spec)


def _weights(run_id: str) -> dict[str, torch.Tensor]:
    return tracking.load_model(f"runs:/{run_id}/model").model.state_dict()


def test_prune_seeds_differ_and_repeat(parent):
    zero, one, zero_again = _prune(parent, 0), _prune(parent, 1), _prune(parent, 0)
    runs = {r: MlflowClient().get_run(r).data for r in (zero, one, zero_again)}
    assert [runs[r].params["seed"] for r in (zero, one, zero_again)] == ["0", "1", "0"]
    assert [runs[r].tags["seed"] for r in (zero, one, zero_again)] == ["0", "1", "0"]
    assert {runs[r].params["split_seed"] for r in runs} == {"0"}  # inherited from the parent
    a, b, c = _weights(zero), _weights(one), _weights(zero_again)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_a_smaller_training_subset_prunes_on_the_parents_split(parent):
    run = MlflowClient().get_run(_prune(parent, 0, train_subset=256)).data.params
    assert (run["train_subset"], run["val_size"], run["split_seed"]) == ("256", "100", "0")


def test_x_smaller_means_against_the_dense_fp32_weights(parent):
    result = run_compare([EXPERIMENT], stage="train", precisions="fp16,int8", log_run=False)
    by_precision = {p.precision: p for p in result.candidates if p.run_id == parent}
    metrics = MlflowClient().get_run(parent).data.metrics
    assert by_precision["fp16"].compression == pytest.approx(2.0, abs=1e-9)  # a dense fp16 copy: half the bytes
    assert by_precision["int8"].compression == pytest.approx(
        metrics["footprint_fp32_bytes"] / metrics["footprint_best_int8_bytes"])
    assert 3.5 < by_precision["int8"].compression < 4.0  # 1 byte per weight, plus fp16 scales and fp32 biases
    assert "2.00x" in result.table


def _crafted(client: MlflowClient, exp: str, name: str, val: float, test: float, size: float, parent: str) -> str:
    run = client.create_run(exp, tags={"stage": "prune", "method": name, "parent_run_id": parent,
                                       "dataset": "synthetic", "arch": "resnet8"}).info.run_id
    for key, value in {"val_accuracy": val, "test_accuracy": test, "footprint_best_bytes": size}.items():
        client.log_metric(run, key, value)
    client.log_param(run, "method", name)
    client.set_terminated(run, "FINISHED")
    return run


def test_winners_follow_validation_where_test_disagrees(parent):
    client = MlflowClient()
    exp = client.create_experiment("val-vs-test")
    val_best = _crafted(client, exp, "a", val=0.80, test=0.60, size=100, parent=parent)
    test_best = _crafted(client, exp, "b", val=0.70, test=0.90, size=100, parent=parent)
    # compare as `main` asks it (metric val_accuracy, the default) and as the sweep does: the budget winner and the
    # front follow validation
    result = run_compare(["val-vs-test"], budget=150, precisions="fp16", log_run=False)
    assert result.best_under_budget.run_id == val_best
    assert [p.run_id for p in result.front] == [val_best] and test_best not in result.table.split("*")[1]
    # the frontier study's recipe choice
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    from frontier_study import select_on_validation

    rows = {"chosen-on-val": [{"precision": "int8", "metrics": {"val_accuracy_int8": 0.8, "test_accuracy_int8": 0.6}}],
            "best-on-test": [{"precision": "int8", "metrics": {"val_accuracy_int8": 0.7, "test_accuracy_int8": 0.9}}]}
    assert select_on_validation(rows) == "chosen-on-val"
