"""The precisions a run can be asked to measure (`precisions=`): the fake-quantised weight precisions of `core.quant`
(fp16, int8, int4; int8 adds w8a8) and the deployment precision `ort_int8`, run by ONNX Runtime (`measure`)."""

from __future__ import annotations

from collections.abc import Iterable

from ..quant import PRECISIONS as WEIGHT_PRECISIONS

ORT_INT8 = "ort_int8"
ORT_ARTIFACT = f"model_{ORT_INT8}"  # the run's logged model (an MLflow ONNX model) of the ONNX Runtime int8 model
DEPLOY_PRECISIONS = (ORT_INT8,)
RUN_PRECISIONS = (*WEIGHT_PRECISIONS, *DEPLOY_PRECISIONS)
# A name a user may try that has no runtime: ONNX Runtime's int4 kernels (MatMulNBits) cover MatMul / Gather only
NO_RUNTIME = {"ort_int4": "ONNX Runtime has no int4 convolution kernel: int4 is a storage format (precision int4)"}


def validate_run_precisions(precisions: Iterable[str]) -> tuple[str, ...]:
    """The distinct precisions in RUN_PRECISIONS order; ValueError (one line) naming the first unknown one and the
    allowed ones."""
    chosen = [str(p).strip() for p in precisions if str(p).strip()]
    for name in chosen:
        if name not in RUN_PRECISIONS:
            why = f" ({NO_RUNTIME[name]})" if name in NO_RUNTIME else ""
            raise ValueError(f"unknown precision {name!r}; allowed: {', '.join(RUN_PRECISIONS)}{why}")
    return tuple(p for p in RUN_PRECISIONS if p in chosen)


def weight_precisions(precisions: Iterable[str]) -> tuple[str, ...]:
    """Those of `precisions` that `core.quant` measures (fake-quantised weights)."""
    return tuple(p for p in precisions if p in WEIGHT_PRECISIONS)
