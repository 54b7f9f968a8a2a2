"""Any CNN a user brings: torchvision builders by name (`arch=torchvision:<builder>`), and models logged by
another tool (`mlflow.pytorch`, any nn.Module) pruned as they are, through `mlflow run . -e prune`.

Loading such a model unpickles it: this module runs with the team-wide opt-in PRUNE_TRACKER_TRUST_PICKLE=1
(tests/test_loading_safety.py checks the refusal without it and the `--trust-pickle` / `-P trust_pickle=true` forms).

The foreign network is defined here and logged with `code_paths=[this file]`, as a user's training script should:
the `mlflow run` subprocess imports it from the model's code. So this module imports nothing from conftest or the
other test modules at import time (that would run conftest's session set-up inside the subprocess).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from torch import nn

from prune_tracker import tracking
from prune_tracker.cli import cli
from prune_tracker.core.data import BatchLoader, Order, load_splits
from prune_tracker.core.models import architecture_spec, build_from_spec, build_model
from prune_tracker.core.pruning import PruneContext, RoundPlan, get_method, iterative_prune
from prune_tracker.core.pruning.channels import n_remove
from prune_tracker.core.training import evaluate

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]
EXPERIMENT = "any-cnn"
SPLIT = {"dataset": "synthetic", "train_subset": "1000", "val_size": "200", "split_seed": "0"}
CLI_SPLIT = ["--dataset", "synthetic", "--train-subset", "1000", "--val-size", "200", "--split-seed", "0"]
QUIET = ["--device", "cpu", "--no-progress", "--experiment-name", EXPERIMENT]
METHODS = ("global_l1", "lamp", "li_filters")


class SmallCNN(nn.Module):
    """Another tool's network: a stem, a residual block, a depthwise-separable downsampling, a squeeze-excitation
    gate (Linear layers, a multiply) and a Linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.gate = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32), nn.Sigmoid())
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = self.down(x)
        pooled = x.mean((2, 3))
        return self.head(pooled * self.gate(pooled))


class FlatCNN(nn.Module):
    """A network made for 64x64 images: its Linear reads a flattened 16x64x64 map."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16 * 64 * 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).flatten(1))


class PadShortcutNet(nn.Module):
    """The silent mis-prune trap: a zero-padding shortcut (option A) the dependency graph does not see."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)))
        shortcut = F.pad(a[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        return self.fc(F.relu(self.bn2(self.conv2(a)) + shortcut).mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ResearchCNN(nn.Module):
    """A research CNN of another tool: two concatenated branches (one a grouped conv), a ShuffleNet-style unit
    (grouped 1x1, channel shuffle, depthwise, grouped 1x1) and a squeeze-excitation gate."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(48, 48, 1, groups=4, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(48, 48, 3, 2, 1, groups=48, bias=False), nn.BatchNorm2d(48))
        self.project = nn.Sequential(nn.Conv2d(48, 64, 1, groups=4, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.gate = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 64), nn.Sigmoid())
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.fuse(torch.cat([self.branch_a(x), self.branch_b(x)], 1))
        x = self.project(self.depthwise(channel_shuffle(self.expand(x), 4)))
        pooled = x.mean((2, 3))
        return self.head(pooled * self.gate(pooled))


# ResearchCNN's groups cut at ratio 0.5: name -> (channels before, blocks of its grouped convs); `expand.0` (through
# the shuffle) stays whole.
RESEARCH_GROUPS = {"stem.0": (32, 4), "branch_a.0": (16, 1), "branch_b.0": (16, 4), "fuse.0": (48, 4),
                   "project.0": (64, 4), "gate.0": (16, 1)}


def _e2e():
    """The `mlflow run` helpers of test_entrypoints (imported late: see the module docstring)."""
    import test_entrypoints

    return test_entrypoints


def _splits():
    return load_splits("synthetic", train_subset=1000, val_size=200)


def plain_training(model: nn.Module, steps: int = 60, lr: float = 0.05) -> nn.Module:
    """What a user's own script does: a few SGD steps on the synthetic images, nothing of prune-tracker's."""
    splits = _splits()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    done = 0
    while done < steps:
        for x, y in BatchLoader(splits.train, 64, splits.mean, splits.std, order=Order(shuffle=True, seed=done),
                                channels_last=False):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def log_foreign(model: nn.Module, run_name: str, signature_shape: tuple[int, ...] | None = None,
                code_paths: list[str] | None = None) -> str:
    """Log `model` the way another tool does (`mlflow.pytorch.log_model`, pickle); returns runs:/<id>/model."""
    mlflow.set_experiment(EXPERIMENT)
    kwargs = {}
    if signature_shape:
        example = np.zeros((1, *signature_shape), dtype=np.float32)
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        kwargs = {"signature": mlflow.models.infer_signature(example, output), "input_example": example}
    with mlflow.start_run(run_name=run_name) as run:
        # pip_requirements named: MLflow would otherwise infer them by loading the model in a subprocess (~10 s)
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", code_paths=code_paths,
                                 pip_requirements=["torch", "torchvision"], **kwargs)
    return f"runs:/{run.info.run_id}/model"


def reloaded_metrics(run_id: str) -> tuple[float, float]:
    """(test accuracy, test loss) of the model a run logged, reloaded the way prune-tracker loads it."""
    loaded = tracking.load_model(f"runs:/{run_id}/model")
    splits = _splits()
    return evaluate(loaded.model, splits.test, splits, torch.device("cpu"), tta_flip=True)


def context(shape: tuple[int, ...] = (3, 32, 32)) -> PruneContext:
    return PruneContext(example_input=torch.zeros(1, *shape), calibration_batches=lambda: [],
                        evaluate=lambda m: 0.0, finetune=lambda *a, **k: None)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_of(output: str, stage: str):
    return MlflowClient().get_run(re.search(rf"{stage} run ([0-9a-f]{{32}}) finished", output).group(1))


def one_line_error(result, message: str) -> None:
    lines = [line for line in result.output.strip().splitlines() if not re.match(r"^\d{4}/\d\d/\d\d ", line)]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0], lines[0]


# ---------------------------------------------------------------- torchvision builders, graph cuts (in-process)


def test_torchvision_builders_by_name():
    model = build_model("torchvision:mobilenet_v3_small", num_classes=100).eval()
    assert type(model) is torchvision.models.MobileNetV3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)  # the dataset's 32x32 images, not resized
    spec = architecture_spec(model, "torchvision:mobilenet_v3_small", 100)
    assert spec["builder"] == "mobilenet_v3_small" and spec["kwargs"] == {"weights": None, "num_classes": 100}
    assert spec["layers"]["features.1.block.0.0"]["groups"] == 16  # depthwise: groups are recorded
    googlenet = build_model("torchvision:googlenet").train()
    assert isinstance(googlenet(torch.randn(2, 3, 32, 32)), torch.Tensor)  # aux_logits=False: plain logits
    with pytest.raises(ValueError, match=r"unknown torchvision builder 'nope'.*`prune-tracker archs` lists them"):
        build_model("torchvision:nope")


@pytest.mark.parametrize("arch", ["torchvision:mobilenet_v3_small", "torchvision:resnet18"])
def test_graph_channel_cut_is_as_asked_and_rebuilds_from_spec(arch):
    model = build_model(arch).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    result = get_method("li_filters").prune(model, 0.5, context())
    pruned = result.model.eval()
    layers = result.details["layers"]
    assert result.details["scope"] == "graph" and len(layers) > 10
    assert all(row["channels_after"] == row["channels_before"] - n_remove(row["channels_before"], 0.5)
               for row in layers.values())
    classifier = result.details["classifier"]
    assert pruned.get_submodule(classifier).out_features == 10  # the classifier's outputs are never cut
    rebuilt = build_from_spec(json.loads(json.dumps(architecture_spec(pruned, arch, 10))))  # JSON, no pickle
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), pruned(x))
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * sum(p.numel() for p in model.parameters())


def test_graph_cut_refuses_a_silent_mis_prune_naming_the_layer():
    with pytest.raises(ValueError, match=r"^li_filters: mis-prune at conv1: the pruned model does not compute"):
        get_method("li_filters").prune(PadShortcutNet().eval(), 0.5, context())


@pytest.mark.parametrize("method", ["thinet", "fm_norm", "hybrid"])
def test_methods_without_a_graph_scope_say_so_naming_the_layer(method):
    with pytest.raises(ValueError, match=rf"^{method}: cannot prune stem.0 of SmallCNN: .*li_filters"):
        get_method(method).prune(SmallCNN().eval(), 0.5, context())


def test_random_channels_on_a_foreign_graph():
    result = get_method("random_channels").prune(SmallCNN().eval(), 0.5, context())
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert result.details["layers"]["stem.0"] == {"channels_before": 16, "channels_after": 8, "ratio": 0.5,
                                                  "coupled": result.details["layers"]["stem.0"]["coupled"]}
    assert {"block.3", "down.0", "down.1"} <= set(result.details["layers"]["stem.0"]["coupled"])  # add, depthwise


def test_rounds_on_a_foreign_graph_land_on_the_one_shot_widths():
    ctx = context()
    one_shot = get_method("li_filters").prune(SmallCNN().eval(), 0.5, ctx).details["layers"]
    rounds = iterative_prune(get_method("li_filters"), SmallCNN().eval(), 0.5, ctx, RoundPlan(2, 0.0), {}).details[
        "layers"]
    assert {n: r["channels_after"] for n, r in rounds.items()} == {n: r["channels_after"] for n, r in one_shot.items()}


@pytest.fixture(scope="module", autouse=True)
def _trust_pickle_for_this_module():
    """Every model here was logged by 'another tool': unpickling is opted into for the module (and the `mlflow run`
    processes it starts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(tracking.TRUST_PICKLE_ENV, "1")
        yield


# ---------------------------------------------------------------- through `mlflow run . -e prune`


@pytest.fixture(scope="module")
def foreign_models():
    """Two models logged by 'another tool': SmallCNN trained by a plain loop (no signature, its code logged with
    it), and a torchvision MobileNetV3-small (signature 3x32x32). Plus FlatCNN, made for 64x64 images."""
    torch.manual_seed(0)
    small = log_foreign(plain_training(SmallCNN()), "plain script SmallCNN", code_paths=[__file__])
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=10)
    mobilenet = log_foreign(plain_training(mobilenet, steps=5), "plain script MobileNetV3", (3, 32, 32))
    flat = log_foreign(FlatCNN(), "plain script FlatCNN", (3, 64, 64), code_paths=[__file__])
    return {"small": small, "mobilenet": mobilenet, "flat": flat}


PRUNE_CASES = [(model, method) for model in ("small", "mobilenet") for method in METHODS]


@pytest.fixture(scope="module")
def prune_runs(foreign_models):
    jobs = []
    for model, method in PRUNE_CASES:
        params = {**SPLIT, "model_uri": foreign_models[model], "method": method, "ratio": "0.5", "device": "cpu",
                  "precisions": "int8" if (model, method) == ("small", "li_filters") else ""}
        jobs.append(("prune", params))  # int8 measured on a foreign model, but no deployable file (needs a spec)
    return dict(zip(PRUNE_CASES, _e2e().submit_runs(jobs, experiment=EXPERIMENT), strict=True))


@pytest.mark.parametrize("case", PRUNE_CASES, ids=["-".join(c) for c in PRUNE_CASES])
def test_prune_any_cnn_through_mlflow_run(prune_runs, case):
    model, method = case
    run = prune_runs[case]
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED", run.info.run_id
    expected_arch = {"small": "foreign:test_any_cnn.SmallCNN",
                     "mobilenet": "foreign:torchvision.models.mobilenetv3.MobileNetV3"}[model]
    assert tags["arch"] == expected_arch and tags["method"] == method and tags["stage"] == "prune"
    if method == "li_filters":
        details = tracking.load_dict(run.info.run_id, "pruning_details.json")
        assert details["scope"] == "graph"
        assert all(row["channels_after"] == row["channels_before"] - n_remove(row["channels_before"], 0.5)
                   for row in details["layers"].values())
        assert metrics["params_reduction"] > 0.5
    else:
        assert metrics["sparsity_global"] == pytest.approx(0.5, abs=0.01)
    accuracy, loss = reloaded_metrics(run.info.run_id)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert loss == pytest.approx(metrics["test_loss"], rel=1e-5)
    footprint = tracking.load_dict(run.info.run_id, "footprint.json")
    assert footprint["activations"]["input_shape"] == [3, 32, 32] and metrics["flops_dense"] > 0
    assert tracking.logged_model_uri(run.info.run_id, "model_int8") is None  # a foreign model: no deployable file
    if case == ("small", "li_filters"):
        assert "test_accuracy_int8" in metrics
        with tempfile.TemporaryDirectory() as tmp:  # the user's code travels with the pruned model
            folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=tmp))
            assert (folder / "code" / "test_any_cnn.py").exists()


def check_research_cut(run) -> None:
    """The pruned ResearchCNN: each group lost half of each of its blocks, the shuffled group stayed whole, the
    model reloads (from the user's logged code) with the logged accuracy."""
    assert run.info.status == "FINISHED", run.info.run_id
    assert run.data.tags["arch"] == "foreign:test_any_cnn.ResearchCNN"
    details = tracking.load_dict(run.info.run_id, "pruning_details.json")
    assert {name: (row["channels_before"], row.get("channel_groups", 1)) for name, row in details["layers"].items()} \
        == RESEARCH_GROUPS
    assert all(row["channels_after"] == row["channels_before"] // 2 for row in details["layers"].values())
    assert list(details["kept_whole"]) == ["expand.0"] and "channel shuffle" in details["kept_whole"]["expand.0"]
    model = tracking.load_model(f"runs:/{run.info.run_id}/model").model
    assert (model.branch_b[0].in_channels, model.branch_b[0].groups, model.expand[0].out_channels) == (16, 4, 48)
    assert model.depthwise[0].groups == 48 and model.project[0].in_channels == 48
    accuracy, loss = reloaded_metrics(run.info.run_id)
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
    assert loss == pytest.approx(run.data.metrics["test_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def research_model() -> str:
    """ResearchCNN trained by a plain loop and logged with its code (`code_paths`), as another tool would."""
    torch.manual_seed(0)
    return log_foreign(plain_training(ResearchCNN()), "plain script ResearchCNN", code_paths=[__file__])


def test_research_cnn_pruned_with_li_filters_through_mlflow_run(research_model):
    params = {**SPLIT, "model_uri": research_model, "method": "li_filters", "ratio": "0.5", "device": "cpu",
              "precisions": ""}
    check_research_cut(_e2e().submit_runs([("prune", params)], experiment=EXPERIMENT)[0])


def test_research_cnn_pruned_with_taylor(research_model):
    run = run_of(invoke("prune", "--model-uri", research_model, "--method", "taylor", "--batches", "2",
                        "--precisions", "", *CLI_SPLIT, *QUIET).output, "prune")
    check_research_cut(run)
    details = tracking.load_dict(run.info.run_id, "pruning_details.json")
    assert details["criterion"] == "taylor" and run.data.params["option.batches"] == "2"


@pytest.mark.parametrize("model,extra,message", [
    ("research", ["--method", "taylor", "--iterative_steps", "0"], "taylor: option iterative_steps=0 must be >= 1"),
    ("no_bn", ["--method", "bn_scale"],
     "bn_scale: Sequential has no BatchNorm with a scale: bn_scale scores a channel by its BatchNorm scale"),
])
def test_bad_criterion_input_is_one_line_and_starts_no_run(research_model, model, extra, message):
    experiment = "any-cnn-bad-criterion"
    if model == "no_bn":
        uri = log_foreign(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Linear(8, 10)), "no BatchNorm")
    else:
        uri = research_model
    result = CliRunner().invoke(cli, ["prune", "--model-uri", uri, *extra, "--precisions", "",
                                      *CLI_SPLIT, "--device", "cpu", "--no-progress", "--experiment-name", experiment])
    one_line_error(result, message)
    client = MlflowClient()
    assert client.get_experiment_by_name(experiment) is None or not client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id])  # refused before any run started


def test_a_foreign_torchvision_model_pruned_as_its_builder(foreign_models):
    """`arch=torchvision:<builder>` on a model another tool logged: rebuilt as that builder, so the pruned model
    has a spec (reloads without unpickling) and deployable int8 files."""
    run = run_of(invoke("prune", "--model-uri", foreign_models["mobilenet"], "--arch", "torchvision:mobilenet_v3_small",
                        "--method", "li_filters", "--precisions", "int8", *CLI_SPLIT, *QUIET).output, "prune")
    assert run.data.tags["arch"] == "torchvision:mobilenet_v3_small"
    spec = tracking.load_dict(run.info.run_id, "model_spec/architecture.json")
    assert spec["builder"] == "mobilenet_v3_small" and spec["kwargs"]["num_classes"] == 10
    accuracy, loss = reloaded_metrics(run.info.run_id)
    assert (accuracy, loss) == pytest.approx((run.data.metrics["test_accuracy"], run.data.metrics["test_loss"]))
    splits = _splits()
    quantised = tracking.load_model(f"runs:/{run.info.run_id}/model_int8").model
    accuracy = evaluate(quantised, splits.test, splits, torch.device("cpu"), tta_flip=True)[0]
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy_int8"], abs=1e-3)


def test_small_cnn_trained_by_its_script_is_better_than_chance(prune_runs):
    run = prune_runs[("small", "global_l1")]
    assert run.data.metrics["test_accuracy_pruned"] > 0.3  # chance is 0.1: the reproduction above means something


def test_finetune_and_evaluate_a_pruned_foreign_model(prune_runs):
    parent = prune_runs[("small", "li_filters")]
    uri = f"runs:/{parent.info.run_id}/model"
    tuned = run_of(invoke("finetune", "--model-uri", uri, "--epochs", "0.5", "--batch-size", "64",
                          "--precisions", "", *QUIET).output, "finetune")
    assert tuned.info.status == "FINISHED" and tuned.data.tags["parent_run_id"] == parent.info.run_id
    assert tuned.data.metrics["params_total"] == parent.data.metrics["params_total"]  # architecture kept
    accuracy, _ = reloaded_metrics(tuned.info.run_id)
    assert accuracy == pytest.approx(tuned.data.metrics["test_accuracy"], abs=1e-6)
    evaluated = run_of(invoke("evaluate", "--model-uri", uri, "--precisions", "", *QUIET).output, "evaluate")
    assert evaluated.data.metrics["test_accuracy"] == pytest.approx(parent.data.metrics["test_accuracy"], abs=1e-6)


def test_train_and_prune_a_torchvision_builder():
    trained = run_of(invoke("train", "--arch", "torchvision:mobilenet_v3_small", "--epochs", "1", "--batch-size",
                            "64", "--train-subset", "300", "--val-size", "60", "--dataset", "synthetic",
                            "--precisions", "", *QUIET).output, "train")
    assert trained.data.tags["arch"] == "torchvision:mobilenet_v3_small"
    pruned = run_of(invoke("prune", "--model-uri", f"runs:/{trained.info.run_id}/model", "--method", "lamp",
                           "--ratio", "0.7", "--precisions", "", *QUIET).output, "prune")
    assert pruned.data.metrics["sparsity_global"] == pytest.approx(0.7, abs=0.01)
    accuracy, loss = reloaded_metrics(pruned.info.run_id)
    assert accuracy == pytest.approx(pruned.data.metrics["test_accuracy"], abs=1e-6)
    assert loss == pytest.approx(pruned.data.metrics["test_loss"], rel=1e-5)


def test_input_shape_from_signature_or_option(foreign_models):
    pooled = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    declared = log_foreign(pooled, "pooled 48px", (3, 48, 48))
    common = ["--method", "global_l1", "--precisions", "", *CLI_SPLIT, *QUIET]
    run = run_of(invoke("prune", "--model-uri", declared, *common).output, "prune")
    assert tracking.load_dict(run.info.run_id, "footprint.json")["activations"]["input_shape"] == [3, 48, 48]
    one_line_error(CliRunner().invoke(cli, ["prune", "--model-uri", declared, "--input-shape", "3,40,40", *common]),
                   "input_shape=3x40x40 conflicts with")
    undeclared = log_foreign(pooled, "pooled, no signature")
    run = run_of(invoke("prune", "--model-uri", undeclared, "--input-shape", "3x40x40", *common).output, "prune")
    assert tracking.load_dict(run.info.run_id, "footprint.json")["activations"]["input_shape"] == [3, 40, 40]
    assert tracking.load_model(f"runs:/{run.info.run_id}/model").input_shape == (3, 40, 40)


def test_a_foreign_class_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "vanishing_net.py").write_text(
        "from torch import nn\n\nclass VanishingNet(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_net

    uri = log_foreign(vanishing_net.VanishingNet(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10)), "vanishing")
    monkeypatch.delitem(__import__("sys").modules, "vanishing_net")
    (tmp_path / "vanishing_net.py").unlink()
    result = CliRunner().invoke(cli, ["evaluate", "--model-uri", uri, "--precisions", "", *CLI_SPLIT, *QUIET])
    one_line_error(result, "cannot be unpickled here (No module named 'vanishing_net'): the model's class must be "
                           "importable; log it with mlflow.pytorch.log_model(..., code_paths=")


@pytest.mark.parametrize("entry,case,message", [
    ("train", "torchvision:nope", "unknown torchvision builder 'nope' (arch='torchvision:nope'); `prune-tracker "
                                  "archs` lists them"),
    ("prune", "flat", "forward fails on the dataset's images of shape 3x32x32 (the model expects 3x64x64)"),
])
def test_bad_input_any_cnn(foreign_models, entry, case, message):
    e2e = _e2e()
    params = {**SPLIT, "device": "cpu"}
    params.update({"arch": case, "epochs": "1"} if entry == "train" else {"model_uri": foreign_models[case]})
    proc = e2e.mlflow_run(entry, params, experiment="any-cnn-bad")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert e2e.no_running_runs("any-cnn-bad")
    assert e2e.last_run("any-cnn-bad").info.status == "FAILED"
