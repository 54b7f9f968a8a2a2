"""compare: Pareto front (property test), budget/floor edges, querying a local SQLite store and a real server,
missing metrics, bad filters, and idempotent registration of the front."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow_server import mlflow_server as _server_fixture  # noqa: E402, F401 (fixture 'mlflow_server')
from torch import nn  # noqa: E402

from prune_tracker import compare  # noqa: E402
from prune_tracker.tracking import registry  # noqa: E402
from prune_tracker.compare import RunPoint  # noqa: E402

# ----------------------------------------------------------------------------------------- helpers


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def footprint_doc(scale: float) -> dict:
    rows = []
    for name, shape, numel in (("conv.weight", [4, 3, 3, 3], 108), ("fc.weight", [10, 4], 40)):
        nz = max(1, int(numel * (1 - scale)))
        sizes = {
            "fp32": numel * 4,
            "fp16": numel * 2,
            "csr_fp16": nz * 4 + 20,
            "bitmask_fp16": nz * 2 + numel // 8,
        }
        best = min(sizes, key=sizes.get)
        rows.append({"name": name, "shape": shape, "numel": numel, "nonzeros": nz,
                     "bytes": sizes | {"best": sizes[best]}, "format": best})  # fmt: skip
    return {"tensors": rows, "activations": {"peak_fp32_bytes": 4096, "peak_fp16_bytes": 2048}}


def log_fake_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    stage: str,
    method: str = "none",
    ratio: float | None = None,
    parent: str | None = None,
    accuracy: float | None = 0.9,
    footprint: float | None = 1000.0,
    dataset: str = "cifar10",
    arch: str = "tiny",
    status: str = "FINISHED",
    with_model: bool = False,
) -> str:
    """A run shaped like the prune/train entry points' runs (tags, params, metrics, artifacts)."""
    tags = {"stage": stage, "method": method, "dataset": dataset, "arch": arch}
    if parent:
        tags["parent_run_id"] = parent
    run_id = client.create_run(experiment_id, tags=tags, run_name=f"{stage}-{method}-{ratio}").info.run_id
    params = {"dataset": dataset, "arch": arch, "method": method} | ({"ratio": str(ratio)} if ratio else {})
    metrics = {"val_accuracy": (accuracy or 0) - 0.01, "params_total": 148.0, "flops_dense": 1e4,
               "activation_peak_fp32_bytes": 4096.0, "activation_peak_fp16_bytes": 2048.0}  # fmt: skip
    if accuracy is not None:
        metrics["test_accuracy"] = accuracy
    if footprint is not None:
        metrics |= {"footprint_best_bytes": footprint, "footprint_fp32_bytes": 4 * footprint,
                    "footprint_fp16_bytes": 2 * footprint, "footprint_csr_fp16_bytes": 1.5 * footprint,
                    "total_fp16_best_bytes": footprint + 2048.0}  # fmt: skip
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag("mlflow.runName", f"{stage}-{method}")],
    )
    scale = ratio or 0.0
    client.log_dict(run_id, {"conv": scale * 0.8, "fc": scale * 1.1 if scale < 0.9 else 1.0}, "sparsity.json")
    client.log_dict(run_id, footprint_doc(scale), "footprint.json")
    if with_model:
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(TinyNet(), name="model", serialization_format="pickle",
                                     pip_requirements=["torch"])  # fmt: skip
    client.set_terminated(run_id, status)
    return run_id


def build_lab(client: MlflowClient, experiment_id: str, with_model: bool = False) -> dict[str, str]:
    """train -> prune (l1 x2, random) -> finetune; a run lacking footprint, a FAILED and a compare run."""
    log = partial(log_fake_run, client, experiment_id)
    ids = {"train": log(stage="train", accuracy=0.92, footprint=8000, with_model=with_model)}
    for key, method, ratio, acc, fp in (("l1_50", "l1", 0.5, 0.90, 4000), ("l1_90", "l1", 0.9, 0.80, 800),
                                        ("random_50", "random", 0.5, 0.85, 4000)):  # fmt: skip
        ids[key] = log(stage="prune", method=method, ratio=ratio, accuracy=acc, footprint=fp,
                       parent=ids["train"], with_model=with_model)  # fmt: skip
    ids["ft_90"] = log(stage="finetune", method="l1", ratio=0.9, accuracy=0.88, footprint=800,
                       parent=ids["l1_90"], with_model=with_model)  # fmt: skip
    ids["no_fp"] = log(stage="prune", method="l1", ratio=0.7, footprint=None, parent=ids["train"])
    ids["failed"] = log(stage="prune", method="l1", ratio=0.3, status="FAILED", parent=ids["train"])
    ids["cmp"] = log(stage="compare", method="compare", accuracy=None)
    return ids


@pytest.fixture(scope="module")
def local_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowClient, dict[str, str]]]:
    """A fresh SQLite store in a tmp dir (never the repo's mlflow.db) holding one experiment 'lab'."""
    root = tmp_path_factory.mktemp("store")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    exp_id = client.create_experiment("lab", artifact_location=(root / "artifacts").as_uri())
    yield client, build_lab(client, exp_id, with_model=True)
    mlflow.set_tracking_uri(previous)


def point(
    run_id: str, footprint: float, accuracy: float, method: str = "m", stage: str = "prune"
) -> RunPoint:
    return RunPoint(run_id, "e", method, 0.5, stage, "cifar10", "tiny", accuracy, footprint)


# ------------------------------------------------------------------------------------ pure functions


def brute_force_front(points: list[RunPoint]) -> set[str]:
    def dominates(q: RunPoint, p: RunPoint) -> bool:
        return (q.footprint <= p.footprint and q.accuracy >= p.accuracy
                and (q.footprint < p.footprint or q.accuracy > p.accuracy))  # fmt: skip

    return {p.run_id for p in points if not any(dominates(q, p) for q in points)}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 8)), max_size=40))
def test_pareto_front_matches_brute_force(pairs: list[tuple[int, int]]) -> None:
    points = [point(f"r{i:03d}", float(f), a / 8) for i, (f, a) in enumerate(pairs)]
    front = compare.pareto_front(points)
    assert {p.run_id for p in front} == brute_force_front(points)
    assert [p.footprint for p in front] == sorted(p.footprint for p in front)
    accs = [p.accuracy for p in front]  # along the front accuracy never decreases with footprint
    assert accs == sorted(accs)


def test_pareto_front_ties_keep_exact_duplicates_only() -> None:
    pts = [point("a", 100, 0.9), point("b", 100, 0.9), point("c", 200, 0.9), point("d", 100, 0.8)]
    assert [p.run_id for p in compare.pareto_front(pts)] == ["a", "b"]
    assert compare.pareto_front([]) == []


def test_budget_and_floor_edges() -> None:
    pts = [point("b", 100, 0.8), point("a", 100, 0.8), point("c", 50, 0.8), point("d", 300, 0.95)]
    assert compare.best_under_budget(pts, 49) is None
    assert compare.best_under_budget(pts, 50).run_id == "c"  # budget is inclusive
    assert compare.best_under_budget(pts, 299).run_id == "c"  # accuracy tie -> smaller footprint
    assert compare.best_under_budget(pts, 300).run_id == "d"
    assert compare.best_under_budget([point("b", 100, 0.8), point("a", 100, 0.8)], 100).run_id == "a"
    assert compare.smallest_above_floor(pts, 0.96) is None
    assert compare.smallest_above_floor(pts, 0.95).run_id == "d"  # floor is inclusive
    assert compare.smallest_above_floor(pts, 0.5).run_id == "c"
    tie = [point("z", 10, 0.7), point("y", 10, 0.9), point("x", 10, 0.9)]
    assert compare.smallest_above_floor(tie, 0.6).run_id == "x"  # footprint tie -> accuracy, then run id
    assert compare.best_under_budget([], 1e9) is None


def test_budget_parsing_uses_footprint_units() -> None:
    try:
        from prune_tracker.footprint import parse_bytes
    except ImportError:  # until footprint/__init__.py re-exports it
        from prune_tracker.footprint.units import parse_bytes
    assert compare.parse_bytes is parse_bytes
    for text in ("1.5MB", "300 KiB", "2MiB", "1GB", "512"):
        assert compare.parse_budget(text) == pytest.approx(float(parse_bytes(text)))
    assert compare.parse_budget("2KiB") == 2048
    assert compare.parse_budget(1234) == 1234.0
    assert compare.parse_budget(None) is None
    with pytest.raises(ValueError):
        compare.parse_budget("a lot")


def test_table_csv_json_and_figure() -> None:
    pts = [
        point("a", 1000, 0.9, "l1"),
        point("b", 500, 0.8, "random"),
        point("t", 4000, 0.91, "none", "train"),
    ]
    front = compare.pareto_front(pts)
    text = compare.format_table(pts, "footprint_best_bytes", front)
    assert text.splitlines()[0].split()[:3] == ["method", "ratio", "accuracy"] and "b" in text
    rows = compare.table_rows(pts, "footprint_best_bytes", front)
    assert [r["run_id"] for r in rows] == ["b", "a", "t"] and all(r["front"] for r in rows)
    assert compare.rows_to_csv(rows).splitlines()[0].startswith("front,method,stage,ratio,accuracy")
    assert json.loads(compare.rows_to_json(rows))[0]["footprint_bytes"] == 500
    fig = compare.compare_figure(pts, front, "footprint_best_bytes")
    assert fig.axes[0].get_xscale() == "log"


# ------------------------------------------------------------------------------------- local store


def test_query_runs_reports_missing_and_roots(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    _, ids = local_lab
    points, missing = compare.query_runs(["lab"])
    by_id = {p.run_id: p for p in points}
    assert set(by_id) == {ids[k] for k in ("train", "l1_50", "l1_90", "random_50", "ft_90")}
    assert missing == [(ids["no_fp"], "missing metric footprint_best_bytes")]
    assert by_id[ids["ft_90"]].root_run_id == ids["train"]  # finetune -> prune -> train
    assert by_id[ids["ft_90"]].compression == pytest.approx(10.0)
    assert by_id[ids["train"]].compression == pytest.approx(1.0)
    assert by_id[ids["l1_50"]].ratio == 0.5 and by_id[ids["l1_50"]].method == "l1"
    front = compare.pareto_front(points)
    assert [p.run_id for p in front] == [ids["ft_90"], ids["l1_50"], ids["train"]]


def test_query_runs_filters_and_pages(local_lab: tuple[MlflowClient, dict[str, str]], monkeypatch) -> None:
    _, ids = local_lab
    points, _ = compare.query_runs(
        ["lab"], method="l1", stage="prune", filter_string="metrics.test_accuracy > 0.85"
    )
    assert [p.run_id for p in points] == [ids["l1_50"]]
    assert points[0].root_footprint == 8000  # parent fetched although filtered out of the candidates
    monkeypatch.setattr(compare, "PAGE_SIZE", 2)
    paged, missing = compare.query_runs(["lab"], metric="val_accuracy")
    assert len(paged) == 5 and len(missing) == 1 and all(p.accuracy < 0.92 for p in paged)


def test_query_runs_errors(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    with pytest.raises(ValueError, match=r"unknown experiment\(s\) nope; known: .*lab"):
        compare.query_runs(["nope"])
    with pytest.raises(ValueError, match="unknown footprint metric 'bytes'; allowed: footprint_fp32_bytes"):
        compare.query_runs(["lab"], footprint="bytes")
    for bad in ("metrics.test_accuracy >>> 1", "tags.stage = prune", "nonsense"):
        with pytest.raises(ValueError, match="invalid MLflow filter") as info:
            compare.query_runs(["lab"], filter_string=bad)
        assert "\n" not in str(info.value) and bad in str(info.value)


def test_run_compare_logs_compare_run(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, ids = local_lab
    result = compare.run_compare(["lab"], budget="1KiB", min_accuracy=0.9)
    assert result.best_under_budget.run_id == ids["ft_90"]
    assert result.smallest_above_floor.run_id == ids["l1_50"]
    run = client.get_run(result.run_id)
    assert run.data.tags["stage"] == "compare"
    assert run.data.metrics == {"n_runs": 5.0, "n_front": 3.0, "n_missing": 1.0,
                                "budget_winner_accuracy": 0.88, "budget_winner_footprint": 800.0,
                                "floor_winner_accuracy": 0.9, "floor_winner_footprint": 4000.0}  # fmt: skip
    files = {a.path for a in client.list_artifacts(result.run_id, "compare")}
    assert {"compare/table.csv", "compare/table.json", "compare/front.png"} <= files
    again, _ = compare.query_runs(["lab"])  # the compare run is not a candidate and not "missing"
    assert len(again) == 5


# ------------------------------------------------------------------------------------------ registry


def _versions(client: MlflowClient, name: str) -> list[tuple[str, str]]:
    return sorted((v.version, v.run_id) for v in client.search_model_versions(f"name='{name}'"))


def test_register_front_idempotent(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, ids = local_lab
    front = compare.pareto_front(compare.query_runs(["lab"])[0])
    first = registry.register_front(front, champion_run_id=ids["l1_50"])
    name = "prune-tracker-cifar10-tiny"
    assert first.champions == {name: first.versions[ids["l1_50"]][1]} and len(first.created) == 3
    second = registry.register_front(front, champion_run_id=ids["l1_50"])
    assert second.versions == first.versions and second.created == []
    assert len(_versions(client, name)) == 3
    champion = client.get_model_version_by_alias(name, "champion")
    assert (
        champion.run_id == ids["l1_50"]
        and champion.tags["method"] == "l1"
        and champion.tags["ratio"] == "0.5"
    )
    assert isinstance(mlflow.pytorch.load_model(f"models:/{name}@champion"), TinyNet)
    third = registry.register_front(front)  # no budget winner -> the most accurate front model
    assert client.get_model_version_by_alias(name, "champion").run_id == ids["train"] and not third.created


def test_register_front_leaves_no_orphans(
    local_lab: tuple[MlflowClient, dict[str, str]], monkeypatch
) -> None:
    client, ids = local_lab
    points = {p.run_id: p for p in compare.query_runs(["lab"])[0]}
    no_model = point(ids["no_fp"], 10, 0.1)
    with pytest.raises(ValueError, match="has no model"):
        registry.register_front([points[ids["l1_90"]], no_model], registered_name="orphans-a")
    assert client.search_registered_models("name='orphans-a'") == []
    real = mlflow.register_model
    calls = []

    def flaky(uri: str, name: str, **kwargs):
        calls.append(uri)
        if len(calls) == 2:
            raise RuntimeError("registry hiccup")
        return real(uri, name, **kwargs)

    monkeypatch.setattr(registry.mlflow, "register_model", flaky)
    with pytest.raises(RuntimeError, match="hiccup"):
        registry.register_front([points[ids["l1_90"]], points[ids["l1_50"]]], registered_name="orphans-b")
    assert client.search_registered_models("name='orphans-b'") == []
    assert client.search_model_versions("name='orphans-b'") == []


# ------------------------------------------------------------------------------------ real server


def test_compare_through_real_server(mlflow_server: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        client = MlflowClient()
        exp_id = client.create_experiment("http-lab")
        ids = build_lab(client, exp_id, with_model=True)
        result = compare.run_compare(["http-lab"], budget=1000, register=True)
        assert {p.run_id for p in result.front} == {ids["ft_90"], ids["l1_50"], ids["train"]}
        assert result.missing == [(ids["no_fp"], "missing metric footprint_best_bytes")]
        name = "prune-tracker-cifar10-tiny"
        assert {r for _, r in _versions(client, name)} == {p.run_id for p in result.front}
        assert client.get_model_version_by_alias(name, "champion").run_id == ids["ft_90"]
        compare.run_compare(["http-lab"], budget=1000, register=True)  # idempotent over HTTP too
        assert len(_versions(client, name)) == 3
        model = mlflow.pytorch.load_model(f"models:/{name}@champion", dst_path=str(tmp_path))
        assert isinstance(model, TinyNet)
        with pytest.raises(ValueError, match="invalid MLflow filter 'metrics.x >>> 1'"):
            compare.query_runs(["http-lab"], filter_string="metrics.x >>> 1")
        csv_text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/compare/table.csv")
        assert csv_text.count("\n") == 6
    finally:
        mlflow.set_tracking_uri(previous)


def test_runs_of_two_datasets_need_a_dataset_filter(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, _ = local_lab
    exp_id = client.create_experiment("two-datasets")
    log_fake_run(client, exp_id, stage="train", dataset="cifar10", accuracy=0.92)
    log_fake_run(client, exp_id, stage="train", dataset="cifar100", accuracy=0.68)
    with pytest.raises(ValueError, match=r"2 datasets \(cifar10, cifar100\).*dataset=<name>"):
        compare.run_compare(["two-datasets"])
    assert not client.search_runs([exp_id], "tags.stage = 'compare'"), "nothing logged for a refused query"
    result = compare.run_compare(["two-datasets"], dataset="cifar100", log_run=False)
    assert [p.accuracy for p in result.front] == [0.68]
