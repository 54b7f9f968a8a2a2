"""core.deploy: ONNX export, ONNX Runtime static int8 (calibrated on training images only), ORT evaluation with the
PyTorch evaluation's TTA, file bytes, one-thread latency figures, precision names; and that no module imports the
deprecated torch.ao.quantization."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prune_tracker.core import flows
from prune_tracker.core.data import BatchLoader, load_splits
from prune_tracker.core.deploy import RUN_PRECISIONS, validate_run_precisions, weight_precisions
from prune_tracker.core.deploy import latency as deploy_latency
from prune_tracker.core.deploy import measure as deploy_measure
from prune_tracker.core.deploy.export import ExportError, check_exportable, export_onnx, file_bytes
from prune_tracker.core.deploy.ort_int8 import quantize_int8
from prune_tracker.core.deploy.runtime import OrtModule
from prune_tracker.core.models import architecture_spec, build_model
from prune_tracker.core.quant import measure as quant_measure
from prune_tracker.core.training import TrainConfig, Trainer, evaluate, fit, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread

PACKAGE = Path(__file__).resolve().parents[1] / "prune_tracker"


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", train_subset=1000, val_size=200)


@pytest.fixture(scope="module")
def trained(splits) -> nn.Module:
    """A half-width ResNet-8 trained on the learnable synthetic task (well above chance)."""
    torch.manual_seed(0)
    model = build_model("resnet8", splits.num_classes, width=0.5)
    config = TrainConfig(epochs=5, batch_size=64, lr=0.1, seed=0)
    trainer = Trainer(model, splits, config, torch.device("cpu"), progress=False)
    fit(trainer)
    return trainer.eval_model.eval()


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    """The trained model as ONNX fp32 and as ORT int8 calibrated on 128 training images."""
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(trained, (3, 32, 32), folder / "fp32.onnx")
    return {"fp32": fp32, "int8": _quantised(fp32, folder / "int8.onnx")}


def _quantised(fp32: Path, int8: Path) -> Path:
    splits = load_splits("synthetic", train_subset=1000, val_size=200)
    calibration = (x.numpy() for x, _ in flows.training_batches(splits, torch.device("cpu"), 64, limit=128))
    assert quantize_int8(fp32, int8, calibration) == 128
    return int8


def test_ort_fp32_computes_pytorch_logits_and_accuracy_with_tta(trained, exported, splits):
    """Channels-last batches (as the evaluation loads them), flip TTA: the same logits and accuracy as PyTorch."""
    runtime = OrtModule(exported["fp32"])
    for images in (splits.val, splits.test):
        loader = BatchLoader(images, 128, splits.mean, splits.std)  # channels_last, as `evaluate` loads them
        ours, labels = predict_logits(runtime, loader, tta_flip=True)
        theirs, _ = predict_logits(trained, loader, tta_flip=True)
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
        assert torch.equal(ours.argmax(1), theirs.argmax(1))
        for tta in (True, False):
            device = torch.device("cpu")
            assert evaluate(runtime, images, splits, device, tta_flip=tta)[0] == \
                evaluate(trained, images, splits, device, tta_flip=tta)[0]
    assert evaluate(trained, splits.test, splits, torch.device("cpu"), tta_flip=True)[0] > 0.6  # learnt the task


def test_ort_int8_is_int8_and_close_to_fp32(trained, exported, splits):
    device = torch.device("cpu")
    fp32 = evaluate(trained, splits.test, splits, device, tta_flip=True)[0]
    int8 = evaluate(OrtModule(exported["int8"]), splits.test, splits, device, tta_flip=True)[0]
    assert abs(int8 - fp32) <= 0.02
    graph = onnx.load(str(exported["int8"])).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    initializers = {t.name: t for t in graph.initializer}
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "the convolution weights are stored as int8"
    for weight in weights:  # per-channel: one scale per output channel
        assert list(initializers[f"{weight.name.removesuffix('_quantized')}_scale"].dims) == [weight.dims[0]]
    fp32_weights = {t.name: t for t in onnx.load(str(exported["fp32"])).graph.initializer}
    for weight in weights:  # one byte per value (the fp32 file: four)
        assert len(weight.raw_data) == np.prod(weight.dims) == np.prod(fp32_weights[weight.name.removesuffix(
            "_quantized")].dims)
    assert file_bytes(exported["int8"]) < file_bytes(exported["fp32"])


def test_file_bytes_counts_external_data(exported, tmp_path):
    assert file_bytes(exported["fp32"]) == exported["fp32"].stat().st_size
    split = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(exported["fp32"])), str(split), save_as_external_data=True,
                    location="split.onnx.data", size_threshold=0)
    data = tmp_path / "split.onnx.data"
    assert data.stat().st_size > 0
    assert file_bytes(split) == split.stat().st_size + data.stat().st_size


def test_export_strips_debug_metadata_and_keeps_the_batch_dynamic(exported):
    model = onnx.load(str(exported["fp32"]))
    assert not any(node.metadata_props for node in model.graph.node)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    assert OrtModule(exported["fp32"])(torch.zeros(5, 3, 32, 32)).shape == (5, 10)


class _DataDependent(nn.Module):
    """A forward whose Python branches on a tensor's value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return self.fc(pooled) if pooled.sum() > 0 else -self.fc(pooled)


def test_a_model_onnx_cannot_export_is_one_line_naming_it(capfd):
    with pytest.raises(ExportError) as info:
        check_exportable(_DataDependent().eval(), (3, 32, 32), "model_uri='runs:/abc/model'")
    message = str(info.value)
    assert message.startswith("model_uri='runs:/abc/model' cannot be exported to ONNX (")
    assert "\n" not in message and "\x1b" not in message
    assert "data-dependent" in message  # the root cause, not torch.onnx's generic wrapper
    assert "GraphModule" not in capfd.readouterr().out  # torch.export's graph dumps stay out of the output


def test_quantize_needs_calibration_batches(exported, tmp_path):
    with pytest.raises(ValueError, match="at least one batch of training images"):
        quantize_int8(exported["fp32"], tmp_path / "int8.onnx", [])


def test_latency_metric_names_and_one_thread(monkeypatch, trained):
    seen_threads = []

    def call_recording_threads(batch):
        def call():
            seen_threads.append(torch.get_num_threads())
            return trained(batch)

        return call

    torch.set_num_threads(2)
    try:
        metrics = deploy_latency.latency_metrics("torch_fp32", call_recording_threads, (3, 32, 32), 0.01)
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(1)
    assert set(metrics) == {"latency_ms_torch_fp32", "latency_ms_torch_fp32_iqr", "latency_ms_torch_fp32_batch128",
                            "latency_ms_torch_fp32_batch128_iqr"}
    assert all(v >= 0 for v in metrics.values()) and metrics["latency_ms_torch_fp32"] > 0
    assert set(seen_threads) == {1}  # warm-up and timed calls run on one thread


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in np.ascontiguousarray(images.numpy(), dtype=np.float32)}


def test_calibration_reads_training_images_only(monkeypatch, trained, splits, tmp_path):
    """Both ORT int8 and w8a8 calibrate on training images: every image they are handed is a (normalised)
    training image and none is a validation or test one."""
    seen: dict[str, list[np.ndarray]] = {"ort_int8": [], "w8a8": []}
    real_quantize, real_calibrate = deploy_measure.quantize_int8, quant_measure.calibrate_w8a8

    def recording_quantize(fp32, int8, calibration):
        batches = [np.array(b) for b in calibration]
        seen["ort_int8"] += batches
        return real_quantize(fp32, int8, batches)

    def recording_calibrate(model, batches):
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
        seen["w8a8"] += [b.numpy() for b in batches]
        return real_calibrate(model, batches)

    monkeypatch.setattr(deploy_measure, "quantize_int8", recording_quantize)
    monkeypatch.setattr(quant_measure, "calibrate_w8a8", recording_calibrate)
    monkeypatch.setattr(deploy_latency, "MIN_RUN_TIME", 0.01)
    measurement = flows.Measurement(splits, torch.device("cpu"), True, ("int8", "ort_int8"))
    footprint = {"activation_peak_fp32_bytes": 4 * 16 * 32 * 32 * 3.0}
    weights = flows.precision_metrics(trained, measurement, footprint)
    deployment = flows.deployment_metrics(trained, measurement, tmp_path)

    def normalised(images):
        return next(iter(BatchLoader(images, len(images), splits.mean, splits.std, channels_last=False)))[0]

    train, held_out = _rows(normalised(splits.train)), _rows(normalised(splits.val)) | _rows(normalised(splits.test))
    for name, batches in seen.items():
        rows = _rows(torch.from_numpy(np.concatenate(batches)))
        assert len(rows) == min(flows.CALIBRATION_IMAGES, len(splits.train)), name
        assert rows <= train and not rows & held_out, name
    assert deployment.metrics["ort_int8_calibration_images"] == min(flows.CALIBRATION_IMAGES, len(splits.train))
    assert {"val_accuracy_w8a8", "val_accuracy_ort_int8", "test_accuracy_ort_int8"} <= set(weights) | set(
        deployment.metrics)


def test_measure_ort_int8_figures(monkeypatch, trained, splits, tmp_path):
    monkeypatch.setattr(deploy_latency, "MIN_RUN_TIME", 0.01)
    measurement = flows.Measurement(splits, torch.device("cpu"), True, ("ort_int8",))
    deployment = flows.deployment_metrics(trained, measurement, tmp_path)
    metrics = deployment.metrics
    runtimes = ("ort_int8", "ort_fp32", "torch_fp32")
    latency = {f"latency_ms_{r}{b}{s}" for r in runtimes for b in ("", "_batch128") for s in ("", "_iqr")}
    assert set(metrics) == latency | {"val_accuracy_ort_int8", "test_accuracy_ort_int8", "file_ort_int8_bytes",
                                      "file_ort_fp32_bytes", "ort_int8_calibration_images"}
    assert metrics["file_ort_int8_bytes"] == deployment.path.stat().st_size  # the file measured is the file kept
    device = torch.device("cpu")
    assert metrics["test_accuracy_ort_int8"] == evaluate(OrtModule(deployment.path), splits.test, splits, device,
                                                         tta_flip=True)[0]
    assert flows.deployment_metrics(trained, flows.Measurement(splits, device, True, ("int8",)), tmp_path) is None


def test_run_precisions():
    assert RUN_PRECISIONS == ("fp16", "int8", "int4", "ort_int8")
    assert validate_run_precisions(["ort_int8", "int8", "int8"]) == ("int8", "ort_int8")
    assert weight_precisions(("int8", "ort_int8")) == ("int8",)
    with pytest.raises(ValueError) as info:
        validate_run_precisions(["int8", "ort_int4"])
    assert str(info.value).startswith("unknown precision 'ort_int4'; allowed: fp16, int8, int4, ort_int8 (")
    assert "no int4 convolution kernel" in str(info.value) and "\n" not in str(info.value)


def _uses_torch_ao(source: str) -> bool:
    """An import of torch.ao (any form) or an attribute access torch.ao... in the code (docstrings may name it)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.ao") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (
                (node.module or "").startswith("torch.ao")
                or (node.module == "torch" and any(a.name == "ao" for a in node.names))):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "ao" and isinstance(node.value, ast.Name) \
                and node.value.id == "torch":
            return True
    return False


def test_no_module_uses_torch_ao():
    """torch.ao.quantization is deprecated (slated for deletion): the scales are a few lines of tensor math."""
    assert _uses_torch_ao("from torch.ao.quantization import FakeQuantize")  # the check can fail
    assert _uses_torch_ao("import torch\nx = torch.ao.quantization.MinMaxObserver")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _uses_torch_ao(p.read_text())]
    assert offenders == []


# ------------------------------------------------------------------ a saved model (benchmarks: state_dict + spec)


def _saved(model: nn.Module) -> dict:
    return {"spec": architecture_spec(model, "resnet8", 10), "state_dict": model.state_dict()}


@pytest.mark.parametrize("tta", [True, False])
def test_deploy_saved_model_measures_the_rebuilt_model_with_the_given_tta(monkeypatch, trained, splits, tmp_path,
                                                                          tta):
    """The saved model is rebuilt from its spec, calibrated on training images, evaluated by ONNX Runtime on val and
    test with exactly the TTA asked for; the file measured is the file written."""
    seen_tta = []
    real_evaluate = flows.evaluate

    def recording(model, images, splits_, device, tta_flip):
        seen_tta.append((type(model).__name__, tta_flip))
        return real_evaluate(model, images, splits_, device, tta_flip=tta_flip)

    monkeypatch.setattr(flows, "evaluate", recording)
    monkeypatch.setattr(deploy_latency, "MIN_RUN_TIME", 0.01)
    deployment = flows.deploy_saved_model(_saved(trained), splits, tmp_path, tta=tta)
    metrics = deployment.metrics
    assert seen_tta == [("OrtModule", tta), ("OrtModule", tta)]  # val and test, by ONNX Runtime
    assert metrics["file_ort_int8_bytes"] == deployment.path.stat().st_size
    assert metrics["ort_int8_calibration_images"] == min(flows.CALIBRATION_IMAGES, len(splits.train))
    device = torch.device("cpu")
    runtime = OrtModule(deployment.path)
    assert metrics["test_accuracy_ort_int8"] == real_evaluate(runtime, splits.test, splits, device, tta_flip=tta)[0]
    assert metrics["val_accuracy_ort_int8"] == real_evaluate(runtime, splits.val, splits, device, tta_flip=tta)[0]
    fake_int8 = real_evaluate(trained, splits.test, splits, device, tta_flip=tta)[0]
    assert abs(metrics["test_accuracy_ort_int8"] - fake_int8) <= 0.05  # the trained model, not a fresh one


def test_deploy_saved_model_bad_input_is_one_line(splits, tmp_path, trained):
    with pytest.raises(ValueError) as info:
        flows.deploy_saved_model({"state_dict": {}}, splits, tmp_path, label="rows/x.pt")
    assert str(info.value) == ("rows/x.pt is no saved model: it has no 'spec' (a saved model is a dict with 'spec', "
                               "'state_dict')")
    saved = _saved(trained)
    saved["spec"] = architecture_spec(build_model("resnet8", 10, width=0.25), "resnet8", 10)  # another width
    with pytest.raises(ValueError, match=r"^rows/x.pt: its state_dict does not fit its spec \(.*size mismatch") as info:
        flows.deploy_saved_model(saved, splits, tmp_path, label="rows/x.pt")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ benchmarks/frontier_study.py deploy


@pytest.fixture
def frontier_study(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import frontier_study

    return frontier_study


def _study_dir(tmp_path: Path, trained: nn.Module) -> Path:
    """A parent file and a rows folder with one row (its JSON and saved model) as `frontier_study rows` writes them
    (only the fields `deploy` and `table` read)."""
    torch.save({"spec": architecture_spec(trained, "resnet8", 10), "state_dict": trained.state_dict(),
                "run_id": "r", "train_params": {"dataset": "synthetic", "train_subset": "1000", "val_size": "200",
                                                "split_seed": "0"},
                "metrics": {"val_accuracy": 0.9, "test_accuracy": 0.9, "footprint_fp32_bytes": 1e5}},
               tmp_path / "parent.pt")
    rows = tmp_path / "rows"
    rows.mkdir()
    row = {"kind": "pruned", "target": "10x-int8", "recipe": "rewind", "seed": 0, "epochs": 1.0, "name": "pruned-x",
           "tta": False, "precision": "int8", "bytes": 1e4, "x_smaller": 10.0, "where": "here",
           "metrics": {"val_accuracy_int8": 0.5, "test_accuracy_int8": 0.5}}
    (rows / "pruned-x.json").write_text(json.dumps(row))
    torch.save(_saved(trained), rows / "pruned-x.pt")
    return tmp_path


def _study(frontier_study, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["frontier_study.py", *args])
    frontier_study.main()


def test_frontier_study_deploy_writes_each_rows_ort_figures(frontier_study, monkeypatch, trained, splits, tmp_path,
                                                            capsys):
    folder = _study_dir(tmp_path, trained)
    args = ("--parent", str(folder / "parent.pt"), "--out", str(folder / "rows"))
    asked = []
    real_deploy = frontier_study.deploy_saved_model

    def recording(saved, splits_, folder_, **options):
        asked.append((len(splits_.train), len(splits_.val), options["tta"], options["min_run_time"]))
        return real_deploy(saved, splits_, folder_, **options)

    monkeypatch.setattr(frontier_study, "deploy_saved_model", recording)
    _study(frontier_study, monkeypatch, "deploy", *args, "--latency-seconds", "0.01")
    assert asked == [(len(splits.train), len(splits.val), False, 0.01)]  # the parent's split, the row's TTA
    row = json.loads((folder / "rows" / "pruned-x.json").read_text())
    ort = row["ort"]
    onnx_file = folder / "rows" / "pruned-x.ort_int8.onnx"
    assert ort["onnx_file"] == onnx_file.name and ort["file_ort_int8_bytes"] == onnx_file.stat().st_size
    assert ort["tta"] is False and ort["calibration_images"] == flows.CALIBRATION_IMAGES
    device = torch.device("cpu")  # the parent's split is the fixture's: evaluated there with the row's TTA (off)
    assert ort["test_accuracy_ort_int8"] == evaluate(OrtModule(onnx_file), splits.test, splits, device,
                                                     tta_flip=False)[0]
    assert {"latency_ms_ort_int8", "latency_ms_ort_fp32", "latency_ms_torch_fp32_batch128"} <= set(ort)
    capsys.readouterr()
    _study(frontier_study, monkeypatch, "table", *args)
    printed = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in next(x for x in printed if x.startswith("| target")).split("|")]
    cells = dict(zip(header, (c.strip() for c in next(x for x in printed if x.startswith("| 10x-int8")).split("|")),
                     strict=True))
    assert cells["ORT int8 test"] == f"{100 * ort['test_accuracy_ort_int8']:.2f} (n=1)"
    assert cells[".onnx bytes"] == f"{ort['file_ort_int8_bytes']:,.0f}"
    _study(frontier_study, monkeypatch, "deploy", *args)  # measured rows are kept
    assert "already measured" in capsys.readouterr().out
    assert json.loads((folder / "rows" / "pruned-x.json").read_text())["ort"] == ort


@pytest.mark.parametrize(("damage", "message"), [
    (lambda rows: (rows / "pruned-x.pt").unlink(), "pruned-x.json: its saved model .*pruned-x.pt does not exist"),
    (lambda rows: (rows / "pruned-x.json").write_text("{"), r"pruned-x.json: not JSON \("),
    (lambda rows: (rows / "pruned-x.json").write_text("{}"), "pruned-x.json: not a row of this study"),
    (lambda rows: [p.unlink() for p in rows.iterdir()], "no row files"),
])
def test_frontier_study_deploy_bad_input_is_one_line(frontier_study, monkeypatch, trained, tmp_path, capsys, damage,
                                                     message):
    folder = _study_dir(tmp_path, trained)
    damage(folder / "rows")
    with pytest.raises(SystemExit) as info:
        _study(frontier_study, monkeypatch, "deploy", "--parent", str(folder / "parent.pt"), "--out",
               str(folder / "rows"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"frontier_study.py deploy: error: .*{message}", err[0]), err
