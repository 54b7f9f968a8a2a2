"""Seeds, dense-small baselines and "is pruning worth it?": the width multiplier (width=1 is today's zoo exactly),
resnet8/14, spec round trip with a width, dense-small sizing (measured, the largest width that fits), aggregation
over seeds (means, standard deviations and n against a hand computation, CSV columns, a front of means), bad input
(one line, exit 2, nothing RUNNING) and `main` with two seeds and baselines end to end on synthetic data."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from prune_tracker import tracking
from prune_tracker.analysis import compare
from prune_tracker.analysis.report import run_report
from prune_tracker.cli import cli
from prune_tracker.core.dense_small import WIDTH_GRID, size_dense_small
from prune_tracker.core.footprint import measure_footprint
from prune_tracker.core.frontier import DENSE_SMALL
from prune_tracker.core.models import architecture_spec, build_from_spec, build_model, count_params, width_archs
from prune_tracker.core.seeds import parse_seeds, recipe_identity, validate_aggregate
from prune_tracker.tracking.registry import _version_tags

pytestmark = pytest.mark.usefixtures("one_thread")

# Today's zoo (the models before `width` existed, commit 3dbc1a7): parameter count and a digest of the state_dict's
# (key, shape) list, computed from that commit's model files.
TODAY = {
    "resnet20": (269722, "25e2762df0032b0f"), "resnet32": (464154, "04f74eaaa083cef8"),
    "resnet56": (853018, "81677ef550ff6d0f"), "resnet110": (1727962, "13fb71e468b357bd"),
    "vgg11_bn": (9492042, "4bce1a8007515a06"), "vgg16_bn": (14987722, "810d8a0b8cbbfc0b"),
    "vgg19_bn": (20298698, "a9d6aa596ed6b0fe"), "resnet18": (11173962, "55eb8b276062d7e1"),
}
ERROR_LINE = re.compile(r"^Error: ")


def state_digest(model: torch.nn.Module) -> str:
    signature = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(signature.encode()).hexdigest()[:16]


def cifar_resnet_params(depth: int, width: float = 1.0, num_classes: int = 10) -> int:
    """Parameters of a 6n+2 CIFAR ResNet with option-A shortcuts, counted from the architecture: a 3x3 conv + BN
    stem, n basic blocks per stage (two 3x3 convs + two BNs each), no shortcut parameters, and the classifier."""
    def c(base: int) -> int:
        return max(1, math.floor(width * base + 0.5))

    n = (depth - 2) // 6
    total = 3 * c(16) * 9 + 2 * c(16)
    previous = c(16)
    for base in (16, 32, 64):
        for _ in range(n):
            total += previous * c(base) * 9 + c(base) * c(base) * 9 + 4 * c(base)
            previous = c(base)
    return total + previous * num_classes + num_classes


# ------------------------------------------------------------------------------------------ models / width


@pytest.mark.parametrize("arch", sorted(TODAY))
def test_width_one_is_exactly_todays_model(arch):
    params, digest = TODAY[arch]
    for model in (build_model(arch), build_model(arch, width=1.0)):
        assert count_params(model) == params
        assert state_digest(model) == digest


def test_resnet8_and_resnet14_counted_from_the_architecture():
    for depth in (8, 14, 20):
        assert count_params(build_model(f"resnet{depth}")) == cifar_resnet_params(depth)
    assert count_params(build_model("resnet8")) == 75290
    assert count_params(build_model("resnet14")) == 172506
    assert count_params(build_model("resnet8", num_classes=100)) == cifar_resnet_params(8, num_classes=100)
    assert build_model("resnet14").eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_rounds_each_channel_count_and_drops_the_bytes():
    narrow = build_model("resnet20", width=0.3)  # 16, 32, 64 -> round(4.8) = 5, round(9.6) = 10, round(19.2) = 19
    assert [narrow.conv1.out_channels, narrow.layer2[0].conv1.out_channels, narrow.fc.in_features] == [5, 10, 19]
    assert count_params(narrow) == cifar_resnet_params(20, 0.3)
    assert narrow(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    full = measure_footprint(build_model("resnet20")).metrics["footprint_fp32_bytes"]
    half = measure_footprint(build_model("resnet20", width=0.5)).metrics["footprint_fp32_bytes"]
    assert 0.2 < half / full < 0.3  # parameters scale ~ width^2 (BN and the classifier ~ width)
    vgg = build_model("vgg11_bn", width=0.25)
    assert vgg.features[0].out_channels == 16 and vgg.classifier[0].out_features == 128
    assert vgg.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("resnet18", width=0.125).linear.in_features == 64
    assert build_model("resnet8", width=0.01).conv1.out_channels == 1  # at least one channel


def test_spec_records_the_width_and_rebuilds_the_model():
    torch.manual_seed(0)
    model = build_model("resnet14", width=0.5).eval()
    spec = architecture_spec(model, "resnet14", 10)
    assert spec["width"] == 0.5
    clone = build_from_spec(spec)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clone.eval()(x), model(x))
    assert architecture_spec(clone, "resnet14", 10) == spec
    old_spec = {k: v for k, v in architecture_spec(build_model("resnet20"), "resnet20", 10).items() if k != "width"}
    assert count_params(build_from_spec(old_spec)) == TODAY["resnet20"][0]  # a spec logged before width existed


@pytest.mark.parametrize("width", [0, -1, float("nan"), "x"])
def test_a_bad_width_is_a_one_line_error(width):
    with pytest.raises(ValueError, match="is not allowed; expected a finite number > 0"):
        build_model("resnet20", width=width)


def test_width_archs_are_the_zoo_families():
    assert {"resnet8", "resnet14", "resnet20", "resnet110", "vgg16_bn", "resnet18"} <= set(width_archs())


# ------------------------------------------------------------------------------------------ dense-small sizing


def test_dense_small_is_the_largest_width_that_fits():
    target = 0.25 * measure_footprint(build_model("resnet20")).metrics["footprint_fp32_bytes"]
    sized = size_dense_small(target, "footprint_fp32_bytes", ["resnet20"])
    measured = measure_footprint(build_model("resnet20", width=sized.width)).metrics["footprint_fp32_bytes"]
    assert measured == sized.bytes <= target
    wider = build_model("resnet20", width=sized.width + 1 / WIDTH_GRID)
    assert measure_footprint(wider).metrics["footprint_fp32_bytes"] > target  # the next width step does not fit
    assert 0.4 < sized.width < 0.55
    both = size_dense_small(target, "footprint_fp32_bytes", ["resnet8", "resnet20"])
    assert both.bytes >= sized.bytes and both.bytes <= target  # the candidate closest to the target wins
    int8 = size_dense_small(target / 4, "footprint_best_int8_bytes", ["resnet20"])
    assert int8.bytes <= target / 4 and int8.target_metric == "footprint_best_int8_bytes"


def test_dense_small_refuses_what_cannot_fit():
    with pytest.raises(ValueError, match="no dense model fits target 10 bytes"):
        size_dense_small(10, "footprint_fp32_bytes", ["resnet8"])
    with pytest.raises(ValueError, match="target_metric='nope' is not a footprint metric"):
        size_dense_small(1e5, "nope", ["resnet8"])


# ------------------------------------------------------------------------------------------ seeds


def test_parse_seeds_and_aggregate_values():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3, 1 ,3") == [3, 1]
    assert parse_seeds("") == [] and parse_seeds(None) == []
    for bad in ("a,b", "-1", "1.5"):
        with pytest.raises(ValueError, match=r"seeds=.* is not allowed: .* expected comma-separated integers >= 0"):
            parse_seeds(bad)
    assert validate_aggregate(None) == "none" and validate_aggregate("SEED") == "seed"
    with pytest.raises(ValueError, match="aggregate='color' is not allowed; allowed: none, seed"):
        validate_aggregate("color")


def test_recipe_identity_ignores_seeds_and_spelling_not_the_recipe():
    train = {"arch": "resnet20", "epochs": "1", "lr": "0.10", "seed": "0", "device": "cpu", "nesterov": "True"}
    same = {"arch": "resnet20", "epochs": "1.0", "lr": "0.1", "seed": "7", "device": "cuda", "nesterov": "true"}
    tags = {"stage": "train", "method": "none"}
    assert recipe_identity(train, tags) == recipe_identity(same, tags)
    assert recipe_identity(train, tags) != recipe_identity({**train, "lr": "0.2"}, tags)
    assert recipe_identity(train, tags) != recipe_identity(train, {**tags, "baseline": DENSE_SMALL})
    pruned = {"method": "lamp", "ratio": "0.81", "target_bytes": "5000", "seed": "0", "model_uri": "runs:/a/model"}
    other_seed = {**pruned, "ratio": "0.79", "seed": "1", "model_uri": "runs:/b/model"}
    prune_tags = {"stage": "prune", "method": "lamp"}
    assert recipe_identity(pruned, prune_tags, "base") == recipe_identity(other_seed, prune_tags, "base")
    assert recipe_identity(pruned, prune_tags, "base") != recipe_identity(pruned, prune_tags, "other base")
    assert recipe_identity({**pruned, "target_bytes": ""}, prune_tags, "base") != recipe_identity(
        {**other_seed, "target_bytes": ""}, prune_tags, "base")  # without a target the ratio is the recipe


def test_torchvision_archs_take_no_width():
    with pytest.raises(ValueError, match="width=0.5 is not allowed for arch 'torchvision:resnet18'"):
        build_model("torchvision:resnet18", width=0.5)


def _log(client: MlflowClient, exp: str, tags: dict[str, str], params: dict[str, str],
         metrics: dict[str, float]) -> str:
    run_id = client.create_run(exp, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _sizes(footprint: float) -> dict[str, float]:
    return {"footprint_best_bytes": footprint, "footprint_fp32_bytes": 2 * footprint}


@pytest.fixture(scope="module")
def seeded_lab(tmp_path_factory):
    """Three seeds of one study in a fresh store: per seed a base, two lamp recipes (A: ratio 0.75, B: ratio 0.5 at
    the same bytes) and a dense-small baseline; plus a base of another recipe (lr 0.2, one seed) with one pruned
    run, and a single-seed recipe (ratio 0.9). Accuracies are chosen so that the best single run (A, seed 0)
    is not the best mean."""
    root = tmp_path_factory.mktemp("seeds-store")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.create_experiment("seeds", artifact_location=(root / "artifacts").as_uri())
    common = {"dataset": "cifar10", "arch": "resnet20"}
    ids: dict[str, list[str]] = {"base": [], "A": [], "B": [], "dense": []}
    accuracy = {"A": [0.95, 0.70, 0.70], "B": [0.80, 0.80, 0.83], "dense": [0.75, 0.77, 0.79],
                "base": [0.90, 0.91, 0.92]}
    for seed in (0, 1, 2):
        train = {**common, "epochs": "3", "lr": "0.1", "seed": seed, "width": "1.0", "device": f"cuda:{seed}"}
        base = _log(client, exp, {"stage": "train", "method": "none", **common}, train,
                    {"val_accuracy": accuracy["base"][seed], "test_accuracy": 0.9, **_sizes(1000)})
        ids["base"].append(base)
        for key, ratio in (("A", 0.75), ("B", 0.5)):
            ids[key].append(_log(
                client, exp, {"stage": "prune", "method": "lamp", "parent_run_id": base, **common},
                {**common, "method": "lamp", "ratio": ratio, "seed": seed, "finetune_epochs": "1",
                 "finetune_seed": seed, "model_uri": f"runs:/{base}/model"},
                {"val_accuracy": accuracy[key][seed], "test_accuracy": accuracy[key][seed] - 0.01,
                 "method_finetune_epochs": 0.5, **_sizes(300 + seed)}))
        ids["dense"].append(_log(
            client, exp, {"stage": "train", "method": "none", "baseline": DENSE_SMALL, "baseline_base_run_id": base,
                          "width": "0.5", **common},
            {**common, "epochs": "4.5", "lr": "0.1", "seed": seed, "width": "0.5"},
            {"val_accuracy": accuracy["dense"][seed], "test_accuracy": 0.7, **_sizes(290)}))
    other = _log(client, exp, {"stage": "train", "method": "none", **common},
                 {**common, "epochs": "3", "lr": "0.2", "seed": 0}, {"val_accuracy": 0.5, **_sizes(1000)})
    ids["other_prune"] = [_log(client, exp, {"stage": "prune", "method": "lamp", "parent_run_id": other, **common},
                               {**common, "method": "lamp", "ratio": 0.75, "seed": 0, "finetune_epochs": "1"},
                               {"val_accuracy": 0.4, **_sizes(300)})]
    ids["single"] = [_log(client, exp, {"stage": "prune", "method": "lamp", "parent_run_id": ids["base"][0], **common},
                          {**common, "method": "lamp", "ratio": 0.9, "seed": 0, "finetune_epochs": "1"},
                          {"val_accuracy": 0.6, "test_accuracy": 0.59, **_sizes(100)})]
    yield client, ids, accuracy
    mlflow.set_tracking_uri(previous)


def test_n_counts_distinct_seeds_and_reruns_collapse_first(seeded_lab):
    """Two runs of seed 0 and one of seed 1 are two samples, not three: the seed-0 reruns become their mean, then
    mean and std are over seeds (n=2), and the point says one run was a rerun."""
    client, _ids, _accuracy = seeded_lab
    exp = client.create_experiment("reruns")
    common = {"dataset": "cifar10", "arch": "resnet20"}
    bases = [_log(client, exp, {"stage": "train", "method": "none", "seed": str(seed), **common},
                  {**common, "epochs": "3", "lr": "0.1", "seed": seed, "split_seed": 0},
                  {"val_accuracy": 0.9, **_sizes(1000)}) for seed in (0, 1)]
    pruned = []
    for base, seed, accuracy in ((bases[0], 0, 0.60), (bases[0], 0, 0.70), (bases[1], 1, 0.80)):
        pruned.append(_log(client, exp, {"stage": "prune", "method": "lamp", "parent_run_id": base, "seed": str(seed),
                                         **common},
                           {**common, "method": "lamp", "ratio": 0.6, "seed": seed, "split_seed": "",
                            "model_uri": f"runs:/{base}/model"},
                           {"val_accuracy": accuracy, **_sizes(300)}))
    result = compare.run_compare(["reruns"], aggregate="seed", precisions="fp16", stage="prune", log_run=False)
    (point,) = result.candidates
    assert (point.n, point.reruns) == (2, 1) and sorted(point.members) == sorted(pruned)
    assert point.accuracy == pytest.approx((0.65 + 0.80) / 2)  # not (0.60 + 0.70 + 0.80) / 3
    assert point.accuracy_std == pytest.approx(math.sqrt(2 * 0.075 ** 2))  # stdev of 0.65 and 0.80
    assert "(n=2, 1 rerun)" in result.table


def _by_member(points, run_id):
    return next(p for p in points if run_id in (p.members or (p.run_id,)))


def test_aggregation_means_stds_and_n_by_hand(seeded_lab):
    _client, ids, accuracy = seeded_lab
    result = compare.run_compare(["seeds"], aggregate="seed", precisions="fp16", log_run=False)
    a = _by_member(result.candidates, ids["A"][0])
    # A: 0.95, 0.70, 0.70 -> mean 0.7833..., sample std sqrt(((1/6)^2 + 2 (1/12)^2) / 2) = sqrt(1/48) = 0.144338
    assert a.n == 3 and sorted(a.members) == sorted(ids["A"])
    assert a.accuracy == pytest.approx(2.35 / 3) and a.accuracy_std == pytest.approx(math.sqrt(1 / 48))
    assert a.footprint == pytest.approx(301.0)  # 300, 301, 302
    assert a.test_accuracy == pytest.approx(2.35 / 3 - 0.01) and a.test_accuracy_std == pytest.approx(math.sqrt(1 / 48))
    assert a.budget_epochs == pytest.approx(4.5)  # base 3 + fine-tuning 1 + the method's own 0.5
    assert a.run_id in ids["A"][1:]  # the member closest to the mean (0.70 runs; ties: smaller run id)
    assert a.run_id == min(ids["A"][1:])
    b = _by_member(result.candidates, ids["B"][0])  # 0.80, 0.80, 0.83 -> 0.81, std 0.017320
    assert b.n == 3 and b.accuracy == pytest.approx(0.81) and b.accuracy_std == pytest.approx(math.sqrt(0.0003))
    base = _by_member(result.candidates, ids["base"][0])
    assert base.n == 3 and base.accuracy == pytest.approx(0.91) and base.accuracy_std == pytest.approx(0.01)
    dense = _by_member(result.candidates, ids["dense"][0])
    assert dense.is_baseline and dense.n == 3 and dense.accuracy == pytest.approx(0.77)
    assert dense.compression == pytest.approx(2000 / 290)  # against the dense fp32 weights of the base it stands for
    assert dense.budget_epochs == pytest.approx(4.5)
    other = _by_member(result.candidates, ids["other_prune"][0])  # another parent recipe (lr 0.2): alone
    assert other.n == 1 and other.accuracy_std is None and other.members == (ids["other_prune"][0],)
    single = _by_member(result.candidates, ids["single"][0])
    assert single.n == 1 and single.accuracy == pytest.approx(0.6)
    assert len(result.candidates) == 7  # base(3), A(3), B(3), dense(3), other base, other prune, single
    tags = _version_tags(b)  # what `register` writes on the version of an averaged point
    assert tags["seeds_n"] == "3" and tags["seed_members"] == " ".join(sorted(ids["B"])) and tags["accuracy"] == "0.81"
    assert "seeds_n" not in _version_tags(single)


def test_front_and_budget_use_the_means(seeded_lab):
    _client, ids, _ = seeded_lab
    plain = compare.run_compare(["seeds"], precisions="fp16", budget=310, log_run=False)
    assert plain.best_under_budget.run_id == ids["A"][0]  # one lucky seed wins without aggregation
    mean = compare.run_compare(["seeds"], precisions="fp16", budget=310, aggregate="seed", log_run=False)
    assert mean.best_under_budget.run_id in ids["B"] and mean.best_under_budget.n == 3  # B's mean 0.81 > A's 0.78
    front_runs = {p.run_id for p in mean.front}
    assert not front_runs & set(ids["A"])
    assert "0.8100 ± 0.0173 (n=3)" in mean.table and "(n=1)" in mean.table
    assert f"{DENSE_SMALL} resnet20 w0.5" in mean.table


def test_aggregated_csv_columns_and_the_report(seeded_lab, tmp_path):
    _client, ids, _ = seeded_lab
    result = compare.run_compare(["seeds"], precisions="fp16", aggregate="seed")
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{result.run_id}/compare/table.csv"))))
    assert {"n", "val_accuracy_std", "test_accuracy_std", "baseline", "budget_epochs", "members"} <= set(rows[0])
    single = next(r for r in rows if r["run_id"] == ids["single"][0])
    assert single["n"] == "1" and single["val_accuracy_std"] == ""  # one sample: no standard deviation
    dense = next(r for r in rows if r["baseline"] == DENSE_SMALL)
    assert dense["n"] == "3" and float(dense["val_accuracy_std"]) == pytest.approx(0.02)
    assert MlflowClient().get_run(result.run_id).data.params["aggregate"] == "seed"
    plain = compare.table_rows(result.candidates, "footprint_best_bytes")
    assert "n" not in plain[0] and "baseline" in plain[0]
    report = run_report(["seeds"], tmp_path, precisions="fp16", aggregate="seed", log_run=False)
    page = report.path.read_text()
    assert "Is pruning worth it?" in page
    assert "0.8100 ± 0.0173 (n=3)" in page and "0.7700 ± 0.0200 (n=3)" in page
    assert "+4.00" in page and "pruning ahead (beyond 2 SE)" in page  # B (0.81) vs dense-small (0.77)
    assert "within noise" in page  # A (0.78 ± 0.14) vs dense-small


# ------------------------------------------------------------------------------------------ bad input


def _running_runs() -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "attributes.status = 'RUNNING'") if ids else []


@pytest.mark.parametrize("args,message", [
    (["train", "--width", "0"], "width='0' is not allowed; expected a finite number > 0"),
    (["train", "--arch", "resnet8", "--width", "nan"], "width='nan' is not allowed"),
    (["compare", "--aggregate", "color"], "'color' is not one of 'none', 'seed'"),
    (["report", "--aggregate", "color"], "'color' is not one of 'none', 'seed'"),
    (["main", "--seeds", "a,b"], "seeds='a,b' is not allowed: 'a' is not an integer; expected comma-separated"),
])
def test_bad_input_is_one_line_exit_2_nothing_running(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]) and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not _running_runs()


# ------------------------------------------------------------------------------------------ main end to end


def test_main_with_two_seeds_and_baselines_end_to_end(tmp_path):
    args = ["main", "--dataset", "synthetic", "--train-subset", "300", "--val-size", "60", "--device", "cpu",
            "--no-progress", "--arch", "resnet8", "--epochs", "1", "--batch-size", "64", "--lr", "0.1",
            "--resize-schedule", "", "--methods", "lamp", "--ratios", "0.75", "--finetune-epochs", "0.5",
            "--precisions", "", "--register", "false", "--seeds", "0,1", "--baselines", "true",
            "--experiment-name", "seeds-main"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("seeds-main").experiment_id
    runs = {r.data.tags.get("pipeline_step"): r for r in client.search_runs([exp])}
    for seed in (0, 1):
        base, pruned = runs[f"train-seed{seed}"], runs[f"prune-lamp-0.75-seed{seed}"]
        assert base.data.params["seed"] == str(seed) and pruned.data.params["seed"] == str(seed)
        [baseline] = [r for name, r in runs.items() if name and name.startswith("baseline-")
                      and name.endswith(f"-seed{seed}")]
        tags, params, metrics = baseline.data.tags, baseline.data.params, baseline.data.metrics
        assert baseline.info.status == "FINISHED" and tags["stage"] == "train" and tags["baseline"] == DENSE_SMALL
        assert tags["baseline_base_run_id"] == base.info.run_id and params["seed"] == str(seed)
        assert float(params["epochs"]) == pytest.approx(1.5) == float(tags["budget_epochs"])  # 1 + 0.5: equal budget
        assert metrics["footprint_best_bytes"] <= pruned.data.metrics["footprint_best_bytes"]
        width = float(params["width"])
        assert 0 < width < 1 and tags["width"] == f"{width:g}"
        loaded = tracking.load_model(f"runs:/{baseline.info.run_id}/model")
        assert loaded.spec["width"] == width and loaded.spec["arch"] == "resnet8"
        assert count_params(loaded.model) == cifar_resnet_params(8, width)
    compare_run = next(r for r in runs.values() if r.data.tags.get("stage") == "compare")
    assert compare_run.data.params["aggregate"] == "seed"
    table = mlflow.artifacts.load_text(f"runs:/{compare_run.info.run_id}/compare/table.csv")
    rows = list(csv.DictReader(io.StringIO(table)))
    assert {r["n"] for r in rows} == {"2"}  # base, pruned and baseline: each the mean of both seeds
    assert any(r["baseline"] == DENSE_SMALL for r in rows)
    report_run = next(r for r in runs.values() if r.data.tags.get("stage") == "report")
    html = Path(mlflow.artifacts.download_artifacts(run_id=report_run.info.run_id, artifact_path="report",
                                                    dst_path=str(tmp_path))) / "report.html"
    page = html.read_text()
    assert "Is pruning worth it?" in page and "(n=2)" in page
    pipeline = next(r for r in runs.values() if r.data.tags.get("stage") == "pipeline")
    assert pipeline.info.status == "FINISHED" and pipeline.data.params["seeds"] == "0,1"
