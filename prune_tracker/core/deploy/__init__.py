"""Deployment in a real runtime (no tracking here): the model exported to ONNX (`export`), quantised statically to
int8 by ONNX Runtime and calibrated on training images (`ort_int8`), run by ONNX Runtime (`runtime`), its files'
bytes and one-thread latencies beside ONNX Runtime fp32 and eager PyTorch (`latency`), all measured by
`measure.measure_ort_int8`. int4 has no ONNX Runtime convolution kernel: it stays a storage format (`core.quant`).

Only the precision names are imported here: onnx and onnxruntime take ~2 s to import, so the modules that need them
are imported where a run measures ort_int8.
"""

from .precisions import (
    DEPLOY_PRECISIONS,
    ORT_ARTIFACT,
    ORT_INT8,
    RUN_PRECISIONS,
    validate_run_precisions,
    weight_precisions,
)

__all__ = ["DEPLOY_PRECISIONS", "ORT_ARTIFACT", "ORT_INT8", "RUN_PRECISIONS", "validate_run_precisions",
           "weight_precisions"]
