"""compare: Pareto front (property test), budget/floor edges, querying a local SQLite store and a real server,
missing metrics, bad filters, the ratio a run reached, ranking on validation, and idempotent registration of
the front (with rollback)."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import replace  # noqa: E402
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

from prune_tracker.analysis import compare  # noqa: E402
from prune_tracker.core import frontier  # noqa: E402
from prune_tracker.core.budget import parse_budget  # noqa: E402
from prune_tracker.core.footprint import FORMATS, StorageFormat  # noqa: E402
from prune_tracker.core.footprint.formats import FP32  # noqa: E402
from prune_tracker.core.frontier import RunPoint  # noqa: E402
from prune_tracker.tracking import queries, registry  # noqa: E402
from prune_tracker.tracking.queries import RunQuery, query_runs  # noqa: E402

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
    test_accuracy: float | None = None,
    footprint: float | None = 1000.0,
    dataset: str = "cifar10",
    arch: str = "tiny",
    status: str = "FINISHED",
    with_model: bool = False,
    extra_metrics: dict[str, float] | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """A run shaped like the prune/train entry points' runs (tags, params, metrics, artifacts).

    ``accuracy`` is the validation accuracy (the default ranking metric); the test accuracy is
    ``test_accuracy``, or ``accuracy - 0.01`` when not given.
    """
    tags = {"stage": stage, "method": method, "dataset": dataset, "arch": arch} | (extra_tags or {})
    if parent:
        tags["parent_run_id"] = parent
    run_id = client.create_run(experiment_id, tags=tags, run_name=f"{stage}-{method}-{ratio}").info.run_id
    params = {"dataset": dataset, "arch": arch, "method": method} | ({"ratio": str(ratio)} if ratio else {})
    metrics = {"params_total": 148.0, "flops_dense": 1e4, "activation_peak_fp32_bytes": 4096.0,
               "activation_peak_fp16_bytes": 2048.0} | (extra_metrics or {})  # fmt: skip
    if accuracy is not None:
        metrics |= {"val_accuracy": accuracy, "test_accuracy": accuracy - 0.01 if test_accuracy is None
                    else test_accuracy}  # fmt: skip
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
    run_id: str,
    footprint: float,
    accuracy: float,
    method: str = "m",
    stage: str = "prune",
    test_accuracy: float | None = None,
) -> RunPoint:
    metrics = {} if test_accuracy is None else {"test_accuracy": test_accuracy}
    return RunPoint(run_id, "e", method, 0.5, stage, "cifar10", "tiny", accuracy, footprint, metrics=metrics)


def table_line(table: str, run_id: str) -> list[str]:
    """The cells of the table line of ``run_id`` (the front marker column dropped)."""
    line = next(x for x in table.splitlines() if x.endswith(run_id))
    return line.removeprefix("*").split()


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
    front = frontier.pareto_front(points)
    assert {p.run_id for p in front} == brute_force_front(points)
    assert [p.footprint for p in front] == sorted(p.footprint for p in front)
    accs = [p.accuracy for p in front]  # along the front accuracy never decreases with footprint
    assert accs == sorted(accs)


def test_pareto_front_ties_keep_exact_duplicates_only() -> None:
    pts = [point("a", 100, 0.9), point("b", 100, 0.9), point("c", 200, 0.9), point("d", 100, 0.8)]
    assert [p.run_id for p in frontier.pareto_front(pts)] == ["a", "b"]
    assert frontier.pareto_front([]) == []


def test_budget_and_floor_edges() -> None:
    pts = [point("b", 100, 0.8), point("a", 100, 0.8), point("c", 50, 0.8), point("d", 300, 0.95)]
    assert frontier.best_under_budget(pts, 49) is None
    assert frontier.best_under_budget(pts, 50).run_id == "c"  # budget is inclusive
    assert frontier.best_under_budget(pts, 299).run_id == "c"  # accuracy tie -> smaller footprint
    assert frontier.best_under_budget(pts, 300).run_id == "d"
    assert frontier.best_under_budget([point("b", 100, 0.8), point("a", 100, 0.8)], 100).run_id == "a"
    assert frontier.smallest_above_floor(pts, 0.96) is None
    assert frontier.smallest_above_floor(pts, 0.95).run_id == "d"  # floor is inclusive
    assert frontier.smallest_above_floor(pts, 0.5).run_id == "c"
    tie = [point("z", 10, 0.7), point("y", 10, 0.9), point("x", 10, 0.9)]
    assert frontier.smallest_above_floor(tie, 0.6).run_id == "x"  # footprint tie -> accuracy, then run id
    assert frontier.best_under_budget([], 1e9) is None


def test_answer_asks_only_the_questions_given() -> None:
    pts = [point("small", 50, 0.7), point("mid", 100, 0.85, test_accuracy=0.84), point("big", 300, 0.95)]
    floor_only = frontier.answer(pts, None, 0.8)
    assert floor_only.best_under_budget is None and floor_only.smallest_above_floor.run_id == "mid"
    assert floor_only.champion.run_id == "mid"
    both = frontier.answer(pts, 60.0, 0.8)
    assert (both.best_under_budget.run_id, both.champion.run_id) == ("small", "small")  # budget wins
    doc = floor_only.to_dict()
    assert doc["budget_bytes"] is None and doc["best_under_budget"] is None and doc["min_accuracy"] == 0.8
    assert doc["smallest_above_floor"] == {
        "run_id": "mid", "experiment": "e", "method": "m", "ratio": 0.5, "stage": "prune", "dataset": "cifar10",
        "arch": "tiny", "accuracy": 0.85, "footprint": 100, "parent_run_id": None, "root_run_id": None,
        "root_footprint": None, "precision": "fp16", "compression": None, "test_accuracy": 0.84,
    }  # fmt: skip
    assert frontier.answer(pts, None, None) == frontier.Answers()


def test_budget_parsing_uses_footprint_units() -> None:
    expected = {"1.5MB": 1_500_000, "300 KiB": 307_200, "2MiB": 2_097_152, "1GB": 1_000_000_000, "512": 512,
                "2KiB": 2048}  # fmt: skip
    for text, value in expected.items():
        assert parse_budget(text) == value
    assert parse_budget(1234) == 1234
    assert parse_budget(None) is None and parse_budget("") is None
    with pytest.raises(ValueError, match="'a lot'"):
        parse_budget("a lot")
    assert parse_budget("1/8", 8000) == 1000  # a fraction of the base where there is one
    with pytest.raises(ValueError, match="budget='1/8' is a fraction of a base model's dense fp32 weights"):
        parse_budget("1/8")


def test_one_dataset_check() -> None:
    frontier.check_one_dataset([point("a", 1, 0.5), point("b", 2, 0.6)])
    other = replace(point("c", 3, 0.7), dataset="cifar100")
    with pytest.raises(ValueError, match=r"2 datasets \(cifar10, cifar100\)"):
        frontier.check_one_dataset([point("a", 1, 0.5), other])


def test_table_csv_json_and_figure() -> None:
    pts = [
        point("a", 1000, 0.9, "l1", test_accuracy=0.89),
        point("b", 500, 0.8, "random", test_accuracy=0.79),
        point("t", 4000, 0.91, "none", "train"),
    ]
    front = frontier.pareto_front(pts)
    text = compare.format_table(pts, "footprint_best_bytes", front)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "ratio", "precision", "val_accuracy", "test_accuracy",
                                "footprint_best_bytes", "x", "smaller", "(vs", "fp32)", "run", "id"]  # fmt: skip
    assert [line[0] for line in lines[2:]] == ["*", "*", "*"]  # all three are on the front
    assert table_line(text, "b") == ["random", "0.5", "fp16", "0.8000", "0.7900", "500", "B", "-", "b"]
    assert table_line(text, "t") == ["none", "0.5", "fp16", "0.9100", "-", "4", "KB", "-", "t"]  # no test metric
    rows = compare.table_rows(pts, "footprint_best_bytes", front)
    assert [r["run_id"] for r in rows] == ["b", "a", "t"] and all(r["front"] for r in rows)
    assert [r["test_accuracy"] for r in rows] == [0.79, 0.89, None]
    header = compare.rows_to_csv(rows).splitlines()[0]
    assert header.startswith("front,method,stage,precision,ratio,accuracy,test_accuracy,footprint,")
    assert header.endswith(",accuracy_metric,footprint_metric")
    assert json.loads(compare.rows_to_json(rows))[0]["footprint_bytes"] == 500
    fig = compare.compare_figure(pts, front, "footprint_best_bytes")
    assert fig.axes[0].get_xscale() == "log"


def test_table_ranked_by_test_accuracy_has_no_second_test_column() -> None:
    pts = [point("a", 1000, 0.9, "l1", test_accuracy=0.7)]
    text = compare.format_table(pts, "footprint_best_bytes", metric="test_accuracy")
    assert text.splitlines()[0].split() == [
        "method", "ratio", "precision", "test_accuracy", "footprint_best_bytes", "x", "smaller", "(vs", "fp32)", "run",
        "id"]  # fmt: skip
    assert table_line(text, "a") == ["l1", "0.5", "fp16", "0.9000", "1", "KB", "-", "a"]
    assert "test_accuracy" not in compare.table_rows(pts, "footprint_best_bytes", metric="test_accuracy")[0]


def test_a_new_storage_format_is_a_comparable_metric(monkeypatch) -> None:
    with pytest.raises(ValueError, match="unknown footprint metric 'footprint_bitmask_fp32_bytes'"):
        queries.validate_metric_names("val_accuracy", "footprint_bitmask_fp32_bytes")
    monkeypatch.setitem(FORMATS, "bitmask_fp32", StorageFormat("bitmask_fp32", "bitmask fp32", FP32, ("bitmask",)))
    queries.validate_metric_names("val_accuracy", "footprint_bitmask_fp32_bytes")


# ------------------------------------------------------------------------------------- local store


def test_query_runs_reports_missing_and_roots(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    _, ids = local_lab
    points, missing = query_runs(RunQuery(["lab"]))
    by_id = {p.run_id: p for p in points}
    assert set(by_id) == {ids[k] for k in ("train", "l1_50", "l1_90", "random_50", "ft_90")}
    assert missing == [(ids["no_fp"], "missing metric footprint_best_bytes")]
    assert by_id[ids["ft_90"]].root_run_id == ids["train"]  # finetune -> prune -> train
    # x smaller against the root's dense fp32 weights (4x its best bytes in this store): one meaning everywhere
    assert by_id[ids["ft_90"]].compression == pytest.approx(40.0)
    assert by_id[ids["train"]].compression == pytest.approx(4.0)
    assert by_id[ids["l1_50"]].ratio == 0.5 and by_id[ids["l1_50"]].method == "l1"
    assert by_id[ids["l1_50"]].accuracy == 0.90  # val_accuracy: the default ranking metric
    front = frontier.pareto_front(points)
    assert [p.run_id for p in front] == [ids["ft_90"], ids["l1_50"], ids["train"]]


def test_query_runs_filters_and_pages(local_lab: tuple[MlflowClient, dict[str, str]], monkeypatch) -> None:
    _, ids = local_lab
    query = RunQuery(["lab"], method="l1", stage="prune", filter_string="metrics.test_accuracy > 0.85")
    points, _ = query_runs(query)
    assert [p.run_id for p in points] == [ids["l1_50"]]  # test accuracies: l1_50 0.89, l1_90 0.79
    assert points[0].root_footprint == 4 * 8000  # dense fp32 weights of the parent, fetched although filtered out
    monkeypatch.setattr(queries, "PAGE_SIZE", 2)
    paged, missing = query_runs(RunQuery(["lab"], metric="test_accuracy"))
    assert len(missing) == 1
    expected = {"train": 0.91, "l1_50": 0.89, "l1_90": 0.79, "random_50": 0.84, "ft_90": 0.87}
    assert {p.run_id: p.accuracy for p in paged} == pytest.approx({ids[k]: v for k, v in expected.items()})


def test_query_runs_errors(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    with pytest.raises(ValueError, match=r"unknown experiment\(s\) nope; known: .*lab"):
        query_runs(RunQuery(["nope"]))
    with pytest.raises(ValueError, match="unknown footprint metric 'bytes'; allowed: footprint_fp32_bytes"):
        query_runs(RunQuery(["lab"], footprint="bytes"))
    for bad in ("metrics.test_accuracy >>> 1", "tags.stage = prune", "nonsense"):
        with pytest.raises(ValueError, match="invalid MLflow filter") as info:
            query_runs(RunQuery(["lab"], filter_string=bad))
        assert "\n" not in str(info.value) and bad in str(info.value)


def test_ratio_is_the_metric_then_the_tag_then_the_param(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, _ = local_lab
    exp_id = client.create_experiment("ratios")
    log = partial(log_fake_run, client, exp_id, stage="prune", method="l1", ratio=0.5)  # param ratio "0.5"
    searched = log(footprint=100, extra_metrics={"ratio": 0.73}, extra_tags={"ratio": "0.6"})
    tagged = log(footprint=200, extra_tags={"ratio": "0.6"})
    plain = log(footprint=300)
    unpruned = log_fake_run(client, exp_id, stage="train", footprint=400)
    points, _ = query_runs(RunQuery(["ratios"]))
    assert {p.run_id: p.ratio for p in points} == {searched: 0.73, tagged: 0.6, plain: 0.5, unpruned: None}
    table = compare.run_compare(["ratios"], log_run=False).table
    assert table_line(table, searched)[:2] == ["l1", "0.73"]
    assert table_line(table, unpruned)[:2] == ["none", "-"]


def test_runs_are_ranked_on_validation_with_test_beside(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, _ = local_lab
    exp_id = client.create_experiment("val-vs-test")
    log = partial(log_fake_run, client, exp_id, stage="prune", method="l1", footprint=1000)
    val_best = log(ratio=0.5, accuracy=0.90, test_accuracy=0.80)
    test_best = log(ratio=0.6, accuracy=0.85, test_accuracy=0.88)
    result = compare.run_compare(["val-vs-test"], budget=1000, log_run=False)
    assert result.metric == "val_accuracy" and result.best_under_budget.run_id == val_best
    assert [p.run_id for p in result.front] == [val_best]
    assert table_line(result.table, val_best)[2:5] == ["fp16", "0.9000", "0.8000"]  # val_accuracy, test_accuracy
    assert table_line(result.table, test_best)[2:5] == ["fp16", "0.8500", "0.8800"]
    on_test = compare.run_compare(["val-vs-test"], budget=1000, metric="test_accuracy", log_run=False)
    assert on_test.best_under_budget.run_id == test_best


def test_run_compare_logs_compare_run(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, ids = local_lab
    result = compare.run_compare(["lab"], budget="1KiB", min_accuracy=0.9)
    assert result.best_under_budget.run_id == ids["ft_90"]
    assert result.smallest_above_floor.run_id == ids["l1_50"]
    run = client.get_run(result.run_id)
    assert run.data.tags["stage"] == "compare" and run.data.tags["budget_winner_run_id"] == ids["ft_90"]
    assert run.data.params["metric"] == "val_accuracy" and run.data.params["budget_bytes"] == "1024.0"
    assert run.data.metrics == {"n_runs": 5.0, "n_front": 3.0, "n_missing": 1.0,
                                "budget_winner_accuracy": 0.88, "budget_winner_footprint": 800.0,
                                "floor_winner_accuracy": 0.9, "floor_winner_footprint": 4000.0}  # fmt: skip
    files = {a.path for a in client.list_artifacts(result.run_id, "compare")}
    assert files == {"compare/table.csv", "compare/table.json", "compare/table.txt", "compare/summary.json",
                     "compare/front.png"}  # fmt: skip
    summary = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/compare/summary.json")
    assert summary["best_under_budget"]["test_accuracy"] == pytest.approx(0.87)
    again, _ = query_runs(RunQuery(["lab"]))  # the compare run is not a candidate and not "missing"
    assert len(again) == 5


# ------------------------------------------------------------------------------------------ registry


def _versions(client: MlflowClient, name: str) -> list[tuple[str, str]]:
    return sorted((str(v.version), v.run_id) for v in client.search_model_versions(f"name='{name}'"))


def test_register_front_idempotent(local_lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, ids = local_lab
    front = frontier.pareto_front(query_runs(RunQuery(["lab"]))[0])
    first = registry.register_front(front, champion_run_id=ids["l1_50"])
    name = "prune-tracker-cifar10-tiny"
    assert first.champions == {name: first.versions[(ids["l1_50"], "fp16")][1]} and len(first.created) == 3
    second = registry.register_front(front, champion_run_id=ids["l1_50"])
    assert second.versions == first.versions and second.created == []
    assert len(_versions(client, name)) == 3
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == ids["l1_50"]
    assert {k: champion.tags[k] for k in ("method", "ratio", "accuracy", "test_accuracy")} == {
        "method": "l1", "ratio": "0.5", "accuracy": "0.9", "test_accuracy": "0.89"}  # fmt: skip
    assert isinstance(mlflow.pytorch.load_model(f"models:/{name}@champion"), TinyNet)
    third = registry.register_front(front)  # no budget winner -> the most accurate front model
    assert client.get_model_version_by_alias(name, "champion").run_id == ids["train"] and not third.created


def _fail_on_call(monkeypatch, failing_call: int) -> None:
    """mlflow.register_model raises on its ``failing_call``-th call from now on."""
    real, calls = mlflow.register_model, []

    def flaky(uri: str, name: str, **kwargs):
        calls.append(uri)
        if len(calls) == failing_call:
            raise RuntimeError("registry hiccup")
        return real(uri, name, **kwargs)

    monkeypatch.setattr(registry.mlflow, "register_model", flaky)


def test_register_front_leaves_no_orphans(
    local_lab: tuple[MlflowClient, dict[str, str]], monkeypatch
) -> None:
    client, ids = local_lab
    points = {p.run_id: p for p in query_runs(RunQuery(["lab"]))[0]}
    no_model = point(ids["no_fp"], 10, 0.1)
    with pytest.raises(ValueError, match="has no fp16 model 'model'"):
        registry.register_front([points[ids["l1_90"]], no_model], registered_name="orphans-a")
    assert client.search_registered_models("name='orphans-a'") == []
    _fail_on_call(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="hiccup"):
        registry.register_front([points[ids["l1_90"]], points[ids["l1_50"]]], registered_name="orphans-b")
    assert client.search_registered_models("name='orphans-b'") == []
    assert client.search_model_versions("name='orphans-b'") == []


def test_register_front_rollback_keeps_earlier_versions_and_champion(
    local_lab: tuple[MlflowClient, dict[str, str]], monkeypatch
) -> None:
    client, ids = local_lab
    points = {p.run_id: p for p in query_runs(RunQuery(["lab"]))[0]}

    def on(key: str, dataset: str) -> RunPoint:  # one registered model per dataset: prune-tracker-<ds>-tiny
        return replace(points[ids[key]], dataset=dataset)

    registry.register_front([on("l1_50", "keep-a"), on("l1_90", "keep-b")])
    a, b = "prune-tracker-keep-a-tiny", "prune-tracker-keep-b-tiny"
    before = {a: [("1", ids["l1_50"])], b: [("1", ids["l1_90"])]}
    assert {n: _versions(client, n) for n in (a, b)} == before
    # keep-a gains version 2 and moves its champion to it; then registering into keep-b fails
    _fail_on_call(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="hiccup"):
        registry.register_front([on("ft_90", "keep-a"), on("train", "keep-b")])
    assert {n: _versions(client, n) for n in (a, b)} == before
    for name, key in ((a, "l1_50"), (b, "l1_90")):
        champion = client.get_model_version_by_alias(name, "champion")
        assert (str(champion.version), champion.run_id) == ("1", ids[key])


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
            query_runs(RunQuery(["http-lab"], filter_string="metrics.x >>> 1"))
        csv_text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/compare/table.csv")
        assert csv_text.count("\n") == 6  # header + the 5 candidates
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
