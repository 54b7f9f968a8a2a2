"""Models logged by another tool (an `mlflow.pytorch` model of any `nn.Module`), and the input shape a logged model
declares in its MLflow signature.

A foreign model can only be unpickled (`mlflow.pytorch.load_model`), which runs whatever code its pickle names: it
is loaded only with an explicit opt-in (`--trust-pickle`, `-P trust_pickle=true`, or PRUNE_TRACKER_TRUST_PICKLE=1 for
a whole team), checked here, at the one place that unpickles. Its downloaded copy is kept for the life of the
process, so the code MLflow logged with it (`code_paths`, put on `sys.path` by the load) stays importable and can be
logged again with the pruned model. A pruned foreign model is
logged the same way (pickle + its code) plus `model_spec/` (widths for the record, `foreign:` arch, the state_dict);
loading it unpickles the module and then loads that state_dict into it (weights_only).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from prune_tracker.core.models.foreign import foreign_arch
from prune_tracker.tracking.errors import ModelLoadError

TRUST_PICKLE_ENV = "PRUNE_TRACKER_TRUST_PICKLE"
TRUST_PICKLE_OPT_IN = f"--trust-pickle (MLproject: -P trust_pickle=true) or {TRUST_PICKLE_ENV}=1"
_TRUE = ("1", "true", "yes", "on")
_KEEP: list[Path] = []


class PickleRefused(ModelLoadError):
    """A model would have to be unpickled and nobody opted in."""


def pickle_trusted() -> bool:
    """Whether this process may unpickle models: PRUNE_TRACKER_TRUST_PICKLE is 1/true/yes/on."""
    return os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in _TRUE


@contextlib.contextmanager
def trusting_pickle(trust: bool) -> Iterator[None]:
    """With `trust`: PRUNE_TRACKER_TRUST_PICKLE=1 for the block (and the processes it starts: `mlflow run`
    children, Ray trials); without: the environment's own setting applies."""
    if not trust:
        yield
        return
    previous = os.environ.get(TRUST_PICKLE_ENV)
    os.environ[TRUST_PICKLE_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TRUST_PICKLE_ENV, None)
        else:
            os.environ[TRUST_PICKLE_ENV] = previous


def require_pickle_trust(model_uri: str, what: str) -> None:
    """PickleRefused (one line naming the opt-in) unless unpickling is trusted."""
    if not pickle_trusted():
        raise PickleRefused(f"{model_uri!r} {what}: loading it unpickles, which runs any code its author put in it; "
                            f"refused without an opt-in: {TRUST_PICKLE_OPT_IN}")


def _process_dir() -> Path:
    """A folder removed when the process exits (imported foreign code must outlive the load)."""
    if not _KEEP:
        _KEEP.append(Path(tempfile.mkdtemp(prefix="prune-tracker-foreign-")))
        atexit.register(shutil.rmtree, _KEEP[0], True)
    return Path(tempfile.mkdtemp(dir=_KEEP[0]))


def load_pickled(model_uri: str, what: str) -> tuple[nn.Module, list[str]]:
    """Unpickle an `mlflow.pytorch` model (`what` it is, for the refusal) when trusted; returns it (CPU, eval) and
    the code paths logged with it."""
    require_pickle_trust(model_uri, what)
    folder = _process_dir()
    try:
        model = mlflow.pytorch.load_model(model_uri, dst_path=str(folder), map_location="cpu")
    except (ImportError, AttributeError, pickle.UnpicklingError) as err:  # the pickle names code not importable here
        raise ValueError(f"{model_uri!r} cannot be unpickled here ({str(err).strip().splitlines()[0]}): the model's "
                         "class must be importable; log it with mlflow.pytorch.log_model(..., code_paths=[<its source "
                         "files>]) or install its package") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{model_uri!r} holds a {type(model).__name__}, not a torch nn.Module")
    code = [p for mlmodel in folder.rglob("MLmodel") for p in (mlmodel.parent / "code").glob("*")]
    return model.eval(), [str(p) for p in code]


def _tensor_shape(schema: Any) -> tuple[int, ...] | None:
    """The shape of a signature's only tensor input / output, None when it has none or several."""
    specs = getattr(schema, "inputs", None) or []
    if len(specs) != 1 or not hasattr(specs[0], "shape"):
        return None
    shape = tuple(int(d) for d in specs[0].shape)
    return shape if shape else None


def signature_shapes(model_uri: str) -> tuple[tuple[int, ...] | None, int | None]:
    """(input shape of one example without the batch dimension, number of outputs) from the model's MLflow
    signature; None for what it does not state (no signature, a column schema, a variable dimension)."""
    try:
        signature = mlflow.models.get_model_info(model_uri).signature
    except (MlflowException, OSError):
        return None, None
    if signature is None:
        return None, None
    shape_in, shape_out = _tensor_shape(signature.inputs), _tensor_shape(signature.outputs)
    image = shape_in[1:] if shape_in and len(shape_in) >= 2 and all(d > 0 for d in shape_in[1:]) else None
    classes = shape_out[-1] if shape_out and len(shape_out) == 2 and shape_out[-1] > 0 else None
    return image, classes


def num_classes_of(model: nn.Module, declared: int | None, input_shape: tuple[int, ...] | None) -> int:
    """Outputs of a foreign model: its signature's, else a forward pass on zeros of its input shape (the
    dataset's default 3x32x32 when unknown), else the rows of its last 2-D weight."""
    if declared:
        return declared
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *(input_shape or (3, 32, 32))))
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            return int(out.shape[1])
    except Exception:  # noqa: BLE001, S110 - foreign code; fall back to its weights
        pass
    weights = [t for t in model.state_dict().values() if t.dim() == 2]
    if not weights:
        raise ValueError(f"cannot tell how many classes {type(model).__name__} predicts: no signature, no 2-D output "
                         "on a 3x32x32 input, no Linear layer; log it with a signature")
    return int(weights[-1].shape[0])


def foreign_spec(model: nn.Module, num_classes: int, input_shape: tuple[int, ...] | None) -> dict[str, Any]:
    """The spec of a foreign model: its `foreign:` arch, widths for the record, the input shape it declares."""
    from prune_tracker.core.models import architecture_spec

    spec = architecture_spec(model, foreign_arch(model), num_classes)
    spec["input_shape"] = list(input_shape) if input_shape else None
    return spec
