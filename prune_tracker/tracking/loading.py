"""Loading a model from a URI or a local file. Which loads unpickle:

* A model prune-tracker logged carries `model_spec/` (architecture.json + state_dict.pt) and is rebuilt from it:
  the architecture from the project's own code, the weights with `torch.load(..., weights_only=True)`. This route
  never falls back to unpickling: a `model_spec/` that cannot be listed, downloaded or read is an error saying so.
* int8 / int4 deployable folders: a safetensors file and its spec, never a pickle.
* A local `.pt` file: `weights_only=True`, never a pickle.
* Only a model without `model_spec/` (logged by another tool) and a pruned one of those (spec arch `foreign:...`,
  whose own class only its pickle builds) are unpickled, and only with the opt-in `foreign_models.py` checks.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from prune_tracker.core.deploy import ORT_ARTIFACT
from prune_tracker.core.models import architecture_spec, build_from_spec, build_model
from prune_tracker.core.models.foreign import is_foreign_arch
from prune_tracker.tracking.errors import ModelLoadError, first_line
from prune_tracker.tracking.foreign_models import foreign_spec, load_pickled, num_classes_of, signature_shapes
from prune_tracker.tracking.models import (
    QUANTISED_ARTIFACTS,
    SPEC_DIR,
    SPEC_FILE,
    STATE_FILE,
    check_artifact_name,
    is_local_file,
    quantised_source,
    resolve_model_location,
)


@dataclass
class LoadedModel:
    model: nn.Module
    spec: dict[str, Any]
    source_run_id: str | None
    uri: str
    precision: str = "fp32"  # int8 / int4: a deployable file (BatchNorm folded, weights quantised)
    input_shape: tuple[int, ...] | None = None  # one image, as the model's spec or MLflow signature declares it
    code_paths: list[str] | None = None  # a foreign model's code logged with it (importable in this process)


ERROR_CHARACTERS = 300  # of a loading error's first line, quoted in a ModelLoadError


def _load_checked(spec: dict[str, Any], state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    try:
        model = build_from_spec(spec)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        reason = first_line(err, ERROR_CHARACTERS)
        raise ModelLoadError(f"{origin} does not fit architecture {spec.get('arch')!r}: {reason}") from None
    return model.eval()


# ---------------------------------------------------------------- local files


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    last_linear = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not last_linear:
        raise ModelLoadError("cannot infer num_classes from the state_dict: it has no Linear layer")
    return int(last_linear[-1].shape[0])


def load_model_file(path: Path, arch: str | None) -> LoadedModel:
    """A local `.pt` file: either {"spec": ..., "state_dict": ...} (what prune-tracker writes) or a plain
    state_dict, which needs `arch`. Loaded with weights_only=True: a file a user hands us is never
    unpickled."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise ModelLoadError(f"cannot read model file {str(path)!r}: {first_line(err, ERROR_CHARACTERS)}") from None
    if isinstance(blob, dict) and "spec" in blob and "state_dict" in blob:
        return LoadedModel(_load_checked(blob["spec"], blob["state_dict"], str(path)), blob["spec"], None, str(path))
    if not isinstance(blob, dict):
        raise ModelLoadError(f"model file {str(path)!r} holds no state_dict")
    if not arch:
        raise ModelLoadError(f"model file {str(path)!r} is a plain state_dict: pass arch=<name> with it")
    spec = architecture_spec(build_model(arch, _infer_num_classes(blob)), arch, _infer_num_classes(blob))
    spec["layers"] = _spec_from_state(blob, spec["layers"])
    return LoadedModel(_load_checked(spec, blob, str(path)), spec, None, str(path))


def _spec_from_state(state: dict[str, torch.Tensor], layers: dict[str, dict]) -> dict[str, dict]:
    """Read layer widths from a plain state_dict, so a channel-pruned state_dict loads too."""
    out = {}
    for name, layer in layers.items():
        weight = state.get(f"{name}.weight")
        if weight is None:
            out[name] = layer
        elif layer["type"] == "Conv2d":
            out[name] = {**layer, "out_channels": int(weight.shape[0]), "in_channels": int(weight.shape[1])}
        elif layer["type"] == "Linear":
            out[name] = {**layer, "out_features": int(weight.shape[0]), "in_features": int(weight.shape[1])}
        else:
            out[name] = {**layer, "num_features": int(weight.shape[0])}
    return out


# ---------------------------------------------------------------- tracking-store models


def load_model(model_uri: str, arch: str | None = None) -> LoadedModel:
    """Load a model from a tracking-server URI or a local file (the rules: this module's docstring).
    `arch`, when given, must agree with the architecture the model was logged with."""
    if is_local_file(model_uri):
        path = Path(model_uri).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model file {model_uri!r} does not exist")
        return _check_arch_agrees(load_model_file(path, arch), arch, model_uri)
    run_id, artifact = resolve_model_location(model_uri)
    check_artifact_name(model_uri, run_id, artifact)
    if artifact in QUANTISED_ARTIFACTS:
        return _check_arch_agrees(_load_quantised(model_uri, run_id, artifact), arch, model_uri)
    if artifact == ORT_ARTIFACT:  # the ONNX Runtime int8 model (tracking/onnx_models.py): an .onnx file, no pickle
        from prune_tracker.tracking.onnx_models import load_onnx_model

        loaded = load_onnx_model(quantised_source(model_uri, run_id, artifact), model_uri, run_id)
        return _check_arch_agrees(loaded, arch, model_uri)
    if not spec_files(model_uri, run_id):
        return _load_foreign(model_uri, run_id, arch)
    spec, state = read_spec(model_uri, run_id)
    if is_foreign_arch(spec.get("arch")):  # logged by us from a foreign model: only its pickle builds it
        return _check_arch_agrees(_load_foreign_logged(model_uri, run_id, spec, state), arch, model_uri)
    loaded = LoadedModel(_load_checked(spec, state, model_uri), spec, run_id, model_uri)
    loaded.input_shape = _declared_input_shape(spec, model_uri)
    return _check_arch_agrees(loaded, arch, model_uri)


def spec_files(model_uri: str, run_id: str) -> list[str]:
    """The file names in run `run_id`'s `model_spec/` ([] when it logged none: a foreign model). A listing that
    fails is an error: it must never make a prune-tracker model look foreign (and be unpickled)."""
    try:
        items = MlflowClient().list_artifacts(run_id, SPEC_DIR)
    except (MlflowException, OSError) as err:
        reason = first_line(err, ERROR_CHARACTERS)
        raise ModelLoadError(f"{model_uri!r}: cannot list {SPEC_DIR}/ of run {run_id}: {reason}") from None
    return [Path(item.path).name for item in items if not item.is_dir]


def read_spec(model_uri: str, run_id: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(architecture spec, state_dict) from run `run_id`'s `model_spec/`; ModelLoadError naming what failed."""
    where = f"{model_uri!r}: {SPEC_DIR}/ of run {run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPEC_DIR, dst_path=tmp))
        except (MlflowException, OSError) as err:
            raise ModelLoadError(f"{where} cannot be downloaded: {first_line(err, ERROR_CHARACTERS)}") from None
        missing = [name for name in (SPEC_FILE, STATE_FILE) if not (folder / name).is_file()]
        if missing:
            raise ModelLoadError(f"{where} lacks {', '.join(missing)}; the model cannot be rebuilt from it")
        try:
            spec = json.loads((folder / SPEC_FILE).read_text())
            state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a torn JSON or tensor file: several exception types
            raise ModelLoadError(f"{where} cannot be read: {first_line(err, ERROR_CHARACTERS)}") from None
    return spec, state


def _load_quantised(model_uri: str, run_id: str, name: str) -> LoadedModel:
    """A deployable int8 / int4 file: rebuilt from its architecture spec and packed tensors, never unpickled."""
    from prune_tracker.core.quant import QUANT_FILE_NAME, load_quantized

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=quantised_source(model_uri, run_id, name),
                                                          dst_path=tmp))
        model, spec = load_quantized(folder / QUANT_FILE_NAME)
    return LoadedModel(model.eval(), spec, run_id, model_uri, precision=name.removeprefix("model_"))


def _declared_input_shape(spec: dict[str, Any], model_uri: str) -> tuple[int, ...] | None:
    """The input shape a logged model declares: its spec's (logged since any-CNN support), else its signature's."""
    shape = spec.get("input_shape")
    return tuple(int(d) for d in shape) if shape else signature_shapes(model_uri)[0]


def _load_foreign_logged(model_uri: str, run_id: str, spec: dict[str, Any], state: dict[str, torch.Tensor]
                         ) -> LoadedModel:
    """A foreign model prune-tracker logged (pruned, fine-tuned): unpickled, then its logged state_dict loaded."""
    model, code = load_pickled(model_uri, f"is a pruned {spec.get('arch')} model, whose class only its pickle builds")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"{model_uri!r}: its {SPEC_DIR}/{STATE_FILE} does not fit the pickled module: "
                             f"{first_line(err, ERROR_CHARACTERS)}") from None
    return LoadedModel(model.eval(), spec, run_id, model_uri, input_shape=_declared_input_shape(spec, model_uri),
                       code_paths=code)


def _load_foreign(model_uri: str, run_id: str, arch: str | None) -> LoadedModel:
    """An `mlflow.pytorch` model of any nn.Module (unpickled). With `arch` (a zoo name or torchvision:<builder>) it
    is rebuilt as that architecture from its state_dict, so it is logged and reloaded from a spec afterwards;
    without, it is pruned as it is (arch `foreign:<module>.<class>`)."""
    model, code = load_pickled(model_uri, f"was not logged by prune-tracker (run {run_id} has no {SPEC_DIR}/)")
    input_shape, classes = signature_shapes(model_uri)
    num_classes = num_classes_of(model, classes, input_shape)
    if arch:
        spec = architecture_spec(model, arch, num_classes)
        return LoadedModel(_load_checked(spec, model.state_dict(), model_uri), spec, run_id, model_uri,
                           input_shape=input_shape)
    return LoadedModel(model, foreign_spec(model, num_classes, input_shape), run_id, model_uri,
                       input_shape=input_shape, code_paths=code)


def _check_arch_agrees(loaded: LoadedModel, arch: str | None, origin: str) -> LoadedModel:
    logged = loaded.spec.get("arch")
    if arch and logged and arch != logged:
        raise ModelLoadError(f"arch={arch!r} conflicts with {origin!r}, which was logged as arch={logged!r}; "
                             "omit arch or pass the logged one")
    return loaded
