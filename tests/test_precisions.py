"""compare / report / registry over deployment precisions: one point per (run, precision), the x and y metric
of each precision, runs logged before precisions existed, the precisions filter, and registration of the
winning variant (its own logged model, tag precision, no duplicate version, no MLflow "instead" warning).

Every expected front and winner below is worked out by hand from the metrics logged in :func:`mixed_lab`."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import logging  # noqa: E402
import re  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from test_compare import TinyNet, log_fake_run  # noqa: E402

from prune_tracker import tracking  # noqa: E402
from prune_tracker.analysis import compare, report  # noqa: E402
from prune_tracker.core import frontier  # noqa: E402
from prune_tracker.core.frontier import RunPoint  # noqa: E402
from prune_tracker.tracking import registry  # noqa: E402
from prune_tracker.tracking.queries import RunQuery, query_runs  # noqa: E402

# Per run: fp32 val accuracy and footprint_best_bytes (log_fake_run also logs total_fp16_best_bytes =
# footprint + 2048), then per precision (val accuracy, test accuracy, bytes); w8a8 bytes are total_w8a8_bytes.
TRAIN = {"fp16": (0.919, 0.915, None), "int8": (0.915, 0.910, 4300.0), "int4": (0.85, 0.84, 2400.0),
         "w8a8": (0.905, 0.90, 5324.0)}  # fmt: skip
PRUNED = {"fp16": (0.90, 0.895, None), "int8": (0.89, 0.885, 2200.0), "int4": (0.80, 0.79, 1300.0),
          "w8a8": (0.88, 0.875, 3224.0)}  # fmt: skip


def precision_metrics(values: dict[str, tuple[float, float, float | None]]) -> dict[str, float]:
    metrics = {}
    for p, (val, test, size) in values.items():
        metrics |= {f"val_accuracy_{p}": val, f"test_accuracy_{p}": test}
        if p in ("int8", "int4"):
            metrics[f"footprint_best_{p}_bytes"] = size
        elif p == "w8a8":
            metrics |= {"total_w8a8_bytes": size, "activation_peak_int8_bytes": 1024.0}
    return metrics


def log_variant(run_id: str, name: str) -> str:
    """Log a TinyNet as the logged model ``name`` of the (finished) run; returns its models:/ URI."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(TinyNet(), name=name, serialization_format="pickle",
                                        pip_requirements=["torch"])  # fmt: skip
    return f"models:/{info.model_id}"


def mixed_lab(client: MlflowClient, exp_id: str, with_models: bool = False, partial: bool = True) -> dict[str, str]:
    """train T (all precisions) -> prune P (all precisions); O: an fp16-only run as logged before precisions;
    X (``partial``): a run that logged int8 accuracy but no int8 bytes."""
    ids = {"T": log_fake_run(client, exp_id, stage="train", accuracy=0.92, footprint=8000,
                             extra_metrics=precision_metrics(TRAIN), with_model=with_models)}  # fmt: skip
    ids["P"] = log_fake_run(client, exp_id, stage="prune", method="l1", ratio=0.5, accuracy=0.91,
                            footprint=4000, parent=ids["T"], extra_metrics=precision_metrics(PRUNED),
                            with_model=with_models)  # fmt: skip
    ids["O"] = log_fake_run(client, exp_id, stage="prune", method="l1", ratio=0.9, accuracy=0.86, footprint=800,
                            parent=ids["T"], with_model=with_models)  # fmt: skip
    if partial:
        ids["X"] = log_fake_run(client, exp_id, stage="prune", method="random", ratio=0.7, accuracy=0.5,
                                footprint=5000, parent=ids["T"], extra_metrics={"val_accuracy_int8": 0.6})  # fmt: skip
    if with_models:
        for key in ("T", "P"):
            log_variant(ids[key], "model_int8")
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowClient, Path]]:
    root = tmp_path_factory.mktemp("precision-store")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    yield MlflowClient(), root
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def lab(store: tuple[MlflowClient, Path]) -> tuple[MlflowClient, dict[str, str]]:
    client, root = store
    exp_id = client.create_experiment("mixed", artifact_location=(root / "mixed").as_uri())
    return client, mixed_lab(client, exp_id)


def keys(points: list[RunPoint], ids: dict[str, str]) -> list[tuple[str, str]]:
    """Points as (run letter, precision), in their order."""
    letter = {v: k for k, v in ids.items()}
    return [(letter[p.run_id], p.precision) for p in points]


# ------------------------------------------------------------------------------------------ naming


def test_precision_metric_names() -> None:
    pf = frontier.precision_footprint
    assert [pf("footprint_best_bytes", p) for p in ("fp16", "int8", "int4", "w8a8")] == [
        "footprint_best_bytes", "footprint_best_int8_bytes", "footprint_best_int4_bytes", "footprint_best_int8_bytes"]
    assert [pf("best", p) for p in ("fp16", "int8")] == ["footprint_best_bytes", "footprint_best_int8_bytes"]
    assert [pf("total", p) for p in ("fp16", "int8", "int4", "w8a8")] == [
        "total_fp16_best_bytes", None, None, "total_w8a8_bytes"]  # fmt: skip
    assert pf("footprint_csr_fp16_bytes", "int4") == "footprint_csr_int4_bytes"
    assert (pf("flops_dense", "fp16"), pf("flops_dense", "int8")) == ("flops_dense", None)  # fp16 only
    assert frontier.footprint_precisions("total") == ("fp16", "w8a8")
    assert frontier.accuracy_metric("val_accuracy", "int8") == "val_accuracy_int8"
    assert frontier.accuracy_metric("val_accuracy", "fp16", {"val_accuracy_fp16": 0.9}) == "val_accuracy_fp16"
    assert frontier.accuracy_metric("val_accuracy", "fp16", {"val_accuracy": 0.9}) == "val_accuracy"
    assert frontier.parse_precisions(" int4,fp16 ,int4") == ("fp16", "int4")
    assert frontier.parse_precisions(["W8A8", "int8"]) == ("int8", "w8a8")
    assert frontier.parse_precisions(None) is None and frontier.parse_precisions("") is None
    with pytest.raises(ValueError, match=r"^unknown precision 'int3'; allowed: fp16, int8, int4, w8a8$"):
        frontier.parse_precisions("fp16,int3")


def test_run_point_keeps_its_old_shape() -> None:
    old = RunPoint("r", "e", "l1", 0.5, "prune", "cifar10", "tiny", 0.9, 100.0, metrics={"test_accuracy": 0.8})
    assert old.precision == "fp16" and old.key == ("r", "fp16") and old.test_accuracy == 0.8
    int8 = RunPoint("r", "e", "l1", 0.5, "prune", "cifar10", "tiny", 0.85, 50.0, precision="int8",
                    metrics={"test_accuracy": 0.8, "test_accuracy_int8": 0.84})  # fmt: skip
    assert int8.key == ("r", "int8") and int8.test_accuracy == 0.84 and int8 != old
    assert frontier.point_summary(int8)["precision"] == "int8"


# ------------------------------------------------------------------------------------------ compare


def test_mixed_precision_front_and_answers(lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, ids = lab
    result = compare.run_compare(["mixed"], budget=3000, min_accuracy=0.91)
    # best footprints: O fp16 800 .86 | P int4 1300 .80 | P int8 2200 .89, P w8a8 2200 .88 | T int4 2400 .85 |
    # P fp16 4000 .90 | T int8 4300 .915, T w8a8 4300 .905 | X fp16 5000 .50 | T fp16 8000 .919
    assert keys(result.front, ids) == [("O", "fp16"), ("P", "int8"), ("P", "fp16"), ("T", "int8"), ("T", "fp16")]
    assert len(result.candidates) == 4 + 4 + 1 + 1  # T, P at every precision; O and X as fp16
    assert result.missing == [(ids["X"], "int8: missing metric footprint_best_int8_bytes")]
    assert result.precisions == ("fp16", "int8", "int4", "w8a8")
    by_key = {p.key: p for p in result.candidates}
    p_int8, t_fp16, o = by_key[(ids["P"], "int8")], by_key[(ids["T"], "fp16")], by_key[(ids["O"], "fp16")]
    assert (p_int8.accuracy, p_int8.footprint, p_int8.test_accuracy) == (0.89, 2200.0, 0.885)
    assert p_int8.compression == pytest.approx(4 * 8000 / 2200)  # against the root's dense fp32 weights
    assert (t_fp16.accuracy, t_fp16.test_accuracy) == (0.919, 0.915)  # val_accuracy_fp16, not fp32's 0.92
    assert (o.accuracy, o.test_accuracy, o.footprint) == (0.86, 0.85, 800.0)  # old run: val/test_accuracy
    assert keys([result.best_under_budget], ids) == [("P", "int8")]  # .89 beats O .86, P w8a8 .88 within 3000
    assert keys([result.smallest_above_floor], ids) == [("T", "int8")]  # 4300 B, 0.915
    rows = {(r["run_id"], r["precision"]): r for r in compare.table_rows(result.candidates, result.footprint,
                                                                          result.front)}  # fmt: skip
    assert {k: rows[(ids["P"], "int8")][k] for k in ("front", "accuracy", "test_accuracy", "accuracy_metric",
                                                      "footprint_metric")} == {
        "front": True, "accuracy": 0.89, "test_accuracy": 0.885, "accuracy_metric": "val_accuracy_int8",
        "footprint_metric": "footprint_best_int8_bytes"}  # fmt: skip
    assert (rows[(ids["O"], "fp16")]["accuracy_metric"], rows[(ids["P"], "w8a8")]["front"]) == ("val_accuracy", False)
    run = client.get_run(result.run_id)
    assert run.data.params["precisions"] == "fp16,int8,int4,w8a8"
    assert (run.data.tags["budget_winner_run_id"], run.data.tags["budget_winner_precision"]) == (ids["P"], "int8")
    assert run.data.tags["floor_winner_precision"] == "int8"
    csv_text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/compare/table.csv")
    assert csv_text.splitlines()[0].startswith("front,method,stage,precision,")
    assert sum(line.split(",")[3] == "int4" for line in csv_text.splitlines()[1:]) == 2
    summary = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/compare/summary.json")
    assert summary["best_under_budget"]["precision"] == "int8"
    assert summary["front_points"][1] == {"run_id": ids["P"], "precision": "int8"}


def test_total_footprint_points(lab: tuple[MlflowClient, dict[str, str]]) -> None:
    _, ids = lab
    result = compare.run_compare(["mixed"], footprint="total", budget=3500, log_run=False)
    # totals: O fp16 2848 .86 | P w8a8 3224 .88 | T w8a8 5324 .905 | P fp16 6048 .90 | X 7048 .5 | T fp16 10048
    assert keys(result.front, ids) == [("O", "fp16"), ("P", "w8a8"), ("T", "w8a8"), ("T", "fp16")]
    assert {p.precision for p in result.candidates} == {"fp16", "w8a8"}  # int8 / int4 have no total point
    assert result.footprint == "total_fp16_best_bytes" and result.missing == []
    assert keys([result.best_under_budget], ids) == [("P", "w8a8")]
    assert [p.footprint for p in result.front] == [2848.0, 3224.0, 5324.0, 10048.0]


def test_precisions_filter(lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, ids = lab
    only = compare.run_compare(["mixed"], precisions="int8, int4")
    # int4 1300 .80 (P) | int8 2200 .89 (P) | int4 2400 .85 (T) | int8 4300 .915 (T)
    assert keys(only.front, ids) == [("P", "int4"), ("P", "int8"), ("T", "int8")]
    assert len(only.candidates) == 4 and only.precisions == ("int8", "int4")
    assert client.get_run(only.run_id).data.params["precisions"] == "int8,int4"
    fp16 = compare.run_compare(["mixed"], precisions=["fp16"], log_run=False)
    assert keys(fp16.front, ids) == [("O", "fp16"), ("P", "fp16"), ("T", "fp16")]
    assert {p.run_id for p in fp16.candidates} == {ids[k] for k in "TPOX"} and fp16.missing == []


def test_old_runs_compare_as_fp16(store: tuple[MlflowClient, Path]) -> None:
    client, root = store
    exp_id = client.create_experiment("old-only", artifact_location=(root / "old").as_uri())
    a = log_fake_run(client, exp_id, stage="train", accuracy=0.9, footprint=2000)
    b = log_fake_run(client, exp_id, stage="prune", method="l1", ratio=0.5, accuracy=0.88, footprint=1000, parent=a)
    result = compare.run_compare(["old-only"], log_run=False)
    assert [(p.run_id, p.precision, p.accuracy) for p in result.front] == [(b, "fp16", 0.88), (a, "fp16", 0.9)]
    assert result.precisions == ("fp16",) and result.missing == []
    with pytest.raises(ValueError, match="no int8 point"):  # asked for a precision the footprint lacks
        compare.run_compare(["old-only"], precisions="int8", footprint="total", log_run=False)
    assert compare.run_compare(["old-only"], precisions="int8", log_run=False).candidates == []


def test_bad_precision_fails_before_anything(lab: tuple[MlflowClient, dict[str, str]]) -> None:
    client, _ = lab
    exp_id = client.get_experiment_by_name("mixed").experiment_id
    before = len(client.search_runs([exp_id], "tags.stage = 'compare'"))
    for call in (compare.run_compare, report.run_report):
        with pytest.raises(ValueError) as info:
            call(["mixed"], precisions="fp16,int3")
        assert str(info.value) == "unknown precision 'int3'; allowed: fp16, int8, int4, w8a8"
    with pytest.raises(ValueError, match=r"footprint=total_fp16_best_bytes has no int8 point \(it has: fp16, w8a8\)"):
        compare.run_compare(["mixed"], precisions="int8", footprint="total")
    assert len(client.search_runs([exp_id], "tags.stage = 'compare'")) == before


def test_run_report_with_precisions(lab: tuple[MlflowClient, dict[str, str]], tmp_path: Path) -> None:
    client, ids = lab
    result = report.run_report(["mixed"], tmp_path, precisions="int8,w8a8", footprint="best")
    assert {p.precision for p in result.points} == {"int8", "w8a8"} and result.precisions == ("int8", "w8a8")
    # best: P int8 2200 .89, P w8a8 2200 .88, T int8 4300 .915, T w8a8 4300 .905
    assert keys(result.front, ids) == [("P", "int8"), ("T", "int8")]
    assert client.get_run(result.run_id).data.params["precisions"] == "int8,w8a8"
    text = result.path.read_text()
    assert "Sparsity x precision" in text and "<th class=\"\">w8a8</th>" in text


# ------------------------------------------------------------------------------------------ registry


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def mlflow_log() -> Iterator[Captured]:
    handler, logger = Captured(), logging.getLogger("mlflow")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_register_int8_winner_and_rerun(store: tuple[MlflowClient, Path], mlflow_log: Captured, capfd) -> None:
    client, root = store
    exp_id = client.create_experiment("mixed-reg", artifact_location=(root / "reg").as_uri())
    ids = mixed_lab(client, exp_id, with_models=True, partial=False)
    capfd.readouterr()
    result = compare.run_compare(["mixed-reg"], budget=3000, register=True, registered_name="mixed-model",
                                 log_run=False)  # fmt: skip
    name = "mixed-model"
    expected = {(ids["O"], "fp16"), (ids["P"], "int8"), (ids["P"], "fp16"), (ids["T"], "int8"), (ids["T"], "fp16")}
    assert set(result.registration.versions) == expected and len(result.registration.created) == 5
    champion = client.get_model_version_by_alias(name, "champion")
    int8_uri = tracking.logged_model_uri(ids["P"], "model_int8")
    assert int8_uri.startswith("models:/m-") and int8_uri != tracking.logged_model_uri(ids["P"], "model")
    assert (champion.run_id, champion.source) == (ids["P"], int8_uri)
    assert {k: champion.tags[k] for k in ("precision", "accuracy", "bytes", "test_accuracy", "method")} == {
        "precision": "int8", "accuracy": "0.89", "bytes": "2200", "test_accuracy": "0.885", "method": "l1"}
    p_fp16 = client.get_model_version(name, result.registration.versions[(ids["P"], "fp16")][1])
    assert p_fp16.source == tracking.logged_model_uri(ids["P"], "model") and p_fp16.tags["precision"] == "fp16"
    assert isinstance(mlflow.pytorch.load_model(f"models:/{name}@champion"), TinyNet)
    # no fp16 (nor int8) registration made MLflow fall back from runs:/ to the logged model
    assert not [m for m in mlflow_log.messages if "instead" in m]
    assert "instead" not in capfd.readouterr().err
    again = compare.run_compare(["mixed-reg"], budget=3000, register=True, registered_name=name, log_run=False)
    assert again.registration.created == [] and again.registration.versions == result.registration.versions
    assert len(client.search_model_versions(f"name='{name}'")) == 5
    assert client.get_model_version_by_alias(name, "champion").version == champion.version
    # the capture does see the warning: registering runs:/<id>/model (what registration used to do) logs it
    mlflow.register_model(f"runs:/{ids['O']}/model", "control-model")
    assert [m for m in mlflow_log.messages if "instead" in m]


def test_missing_variant_is_refused_before_anything(store: tuple[MlflowClient, Path]) -> None:
    client, root = store
    exp_id = client.create_experiment("no-variant", artifact_location=(root / "nv").as_uri())
    run = log_fake_run(client, exp_id, stage="train", accuracy=0.9, footprint=1000, with_model=True,
                       extra_metrics={"val_accuracy_int8": 0.95, "footprint_best_int8_bytes": 500.0})  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(f"run {run} has no int8 model 'model_int8' to register")):
        compare.run_compare(["no-variant"], register=True, registered_name="refused-int8", log_run=False)
    assert client.search_registered_models("name='refused-int8'") == []
    # its fp16 variant alone registers, from the logged model
    points = [p for p in query_runs(RunQuery(["no-variant"]))[0] if p.precision == "fp16"]
    done = registry.register_front(points, registered_name="refused-int8")
    version = client.get_model_version("refused-int8", done.versions[(run, "fp16")][1])
    assert version.source == tracking.logged_model_uri(run, "model")


def test_a_version_registered_before_precisions_counts_as_fp16(store: tuple[MlflowClient, Path]) -> None:
    client, root = store
    exp_id = client.create_experiment("legacy-version", artifact_location=(root / "lv").as_uri())
    run = log_fake_run(client, exp_id, stage="train", accuracy=0.9, footprint=1000, with_model=True,
                       extra_metrics={"val_accuracy_int8": 0.9, "footprint_best_int8_bytes": 500.0})  # fmt: skip
    log_variant(run, "model_int8")
    client.create_registered_model("legacy")
    old = client.create_model_version("legacy", f"runs:/{run}/model", run_id=run)  # no precision tag
    points = query_runs(RunQuery(["legacy-version"]))[0]
    assert sorted(p.precision for p in points) == ["fp16", "int8"]
    done = registry.register_front(points, registered_name="legacy", champion_run_id=run,
                                   champion_precision="int8")  # fmt: skip
    assert done.versions[(run, "fp16")] == ("legacy", old.version)  # reused, not duplicated
    assert done.created == [("legacy", done.versions[(run, "int8")][1])]
    assert client.get_model_version("legacy", old.version).tags["precision"] == "fp16"
    assert done.champions == {"legacy": done.versions[(run, "int8")][1]}


# ------------------------------------------------------------------------------------------ report


def rp(run_id: str, precision: str, accuracy: float, footprint: float, stage: str = "prune",
       ratio: float | None = 0.5, **metrics: float) -> RunPoint:  # fmt: skip
    method = "none" if stage == "train" else "l1"
    return RunPoint(run_id, "lab", method, ratio, stage, "cifar10", "tiny", accuracy, footprint,
                    metrics=dict(metrics), precision=precision)  # fmt: skip


def report_points() -> list[RunPoint]:
    return [
        rp("t", "fp16", 0.92, 8000, "train", None),
        rp("t", "int8", 0.915, 4300, "train", None),
        rp("a", "fp16", 0.90, 4000, sparsity_global=0.48),
        rp("a", "int8", 0.89, 2200, sparsity_global=0.48),
        rp("b", "fp16", 0.905, 3900, "finetune", sparsity_global=0.52),
        rp("b", "int8", 0.88, 2100, "finetune", sparsity_global=0.52),
        rp("c", "fp16", 0.80, 900, ratio=0.9, params_total=1000.0, params_nonzero=120.0),  # sparsity 0.88
        rp("c", "int4", 0.70, 300, ratio=0.9, params_total=1000.0, params_nonzero=120.0),
    ]


def test_sparsity_precision_cells() -> None:
    cells = report.sparsity_precision_cells(report_points())
    picked = {key: (p.run_id, p.accuracy) for key, p in cells.items()}
    assert picked == {
        (0.0, "fp16"): ("t", 0.92), (0.0, "int8"): ("t", 0.915),  # unpruned: sparsity 0
        (0.5, "fp16"): ("b", 0.905), (0.5, "int8"): ("a", 0.89),  # 0.48 and 0.52 share the 0.5 row
        (0.9, "fp16"): ("c", 0.80), (0.9, "int4"): ("c", 0.70),  # 1 - 120 / 1000 = 0.88
    }  # fmt: skip


def test_report_marks_precisions(tmp_path: Path) -> None:
    points = report_points()
    front = frontier.grouped_front(points)
    # 300 .70 c int4 | 900 .80 c fp16 | 2100 .88 b int8 | 2200 .89 a int8 | 3900 .905 b fp16 | 4000 .90 a fp16
    # (dominated by b fp16) | 4300 .915 t int8 | 8000 .92 t fp16
    assert [p.key for p in front] == [("c", "int4"), ("c", "fp16"), ("b", "int8"), ("a", "int8"), ("b", "fp16"),
                                      ("t", "int8"), ("t", "fp16")]  # fmt: skip
    text = report.build_report(report.ReportView(points, front), tmp_path).read_text()
    assert text.count('<tr class="front">') == 7
    assert text.count('src="data:image/png;base64,') == 1 + 3  # one front; ratio curves for fp16, int8, int4
    section = text[text.index("<h2>Sparsity x precision</h2>"):]
    section = section[: section.index("</section>")]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", section) == ["sparsity", "fp16", "int8", "int4"]
    cells = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", section)]
    assert cells == [
        ["0.0"], ["0.9200", "8", "KB"], ["0.9150", "4.3", "KB"], ["-"],
        ["0.5"], ["0.9050", "3.9", "KB"], ["0.8900", "2.2", "KB"], ["-"],
        ["0.9"], ["0.8000", "900", "B"], ["-"], ["0.7000", "300", "B"],
    ]  # fmt: skip
    fig = compare.compare_figure(points, front, "footprint_best_bytes")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["l1", "unpruned (train)", "fp16", "int8", "int4", "Pareto front"]
    markers = {c.get_label(): c.get_paths()[0].vertices.shape for c in fig.axes[0].collections if c.get_label()}
    assert len({markers[p] for p in ("fp16", "int8", "int4")}) == 3  # a distinct marker per precision
    fp16_only = compare.compare_figure(points[:1] + points[2:3], [], "footprint_best_bytes")
    assert [t.get_text() for t in fp16_only.axes[0].get_legend().get_texts()] == ["l1", "unpruned (train)"]
