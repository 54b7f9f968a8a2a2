"""Against a real `mlflow server` on 127.0.0.1 (SQLite backend, artifacts served by the server): prune
entry points over HTTP, compare reading the runs back through the server, registry versions and alias."""

from __future__ import annotations

import mlflow
import pytest
import torch
from conftest import QUICK_TRAIN, SYNTHETIC_DATA
from mlflow.tracking import MlflowClient
from test_entrypoints import assert_ok, mlflow_run, submit_runs

from prune_tracker import tracking
from prune_tracker.analysis.compare import run_compare

pytestmark = pytest.mark.e2e


def test_prune_over_http_then_compare_and_register(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        assert_ok(mlflow_run("train", QUICK_TRAIN, experiment="server", tracking_uri=mlflow_server))
        client = MlflowClient(mlflow_server)
        experiment = client.get_experiment_by_name("server").experiment_id
        base = client.search_runs([experiment])[0]
        pruned = submit_runs([("prune", {**SYNTHETIC_DATA, "model_uri": f"runs:/{base.info.run_id}/model",
                                         "method": method, "ratio": "0.5", "device": "cpu"})
                              for method in ("global_l1", "li_filters")], experiment="server")
        assert [run.info.status for run in pruned] == ["FINISHED", "FINISHED"]
        artifact_uri = client.search_runs([experiment], "tags.stage = 'prune'")[0].info.artifact_uri
        assert artifact_uri.startswith("mlflow-artifacts:"), artifact_uri
        result = run_compare(["server"], dataset="synthetic", register=True, registered_name="server-model")
        assert {p.stage for p in result.candidates} == {"train", "prune"}
        assert len({p.run_id for p in result.candidates}) == 3  # each run once per precision it measured
        assert {p.precision for p in result.candidates} == {"fp16", "int8", "int4", "w8a8"}
        assert result.front and not result.missing
        versions = client.search_model_versions("name='server-model'")
        assert len(versions) == len(result.front)
        again = run_compare(["server"], dataset="synthetic", register=True, registered_name="server-model")
        assert len(client.search_model_versions("name='server-model'")) == len(versions)
        champion = client.get_model_version_by_alias("server-model", "champion")
        assert champion.run_id in {p.run_id for p in again.front}
        model = tracking.load_model("models:/server-model@champion").model  # any precision, over HTTP
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    finally:
        mlflow.set_tracking_uri(None)
