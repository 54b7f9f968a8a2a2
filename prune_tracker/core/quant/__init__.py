"""Quantised deployment formats (library layer; no tracking here): BatchNorm folding, fp16 / int8 / int4
weights (per-channel symmetric, fp16 scales), w8a8 calibration, QAT, exact bytes per storage format, a
deployable safetensors file and the per-precision measurement the job layer logs."""

from .activations import W8A8Model, calibrate_w8a8, int8_activation_bytes
from .container import FORMAT, QUANT_FILE_NAME, artifact_dir_name, load_quantized, save_quantized
from .fold import conv_bn_pairs, fold_batch_norm
from .formats import FORMATS, best_format, format_bytes, model_bytes, quantized_bytes, scale_bytes, value_bytes
from .measure import byte_metrics, measure_precisions, validate_precisions
from .qat import QAT_CHOICES, disable_qat, enable_qat, qat_finetune, validate_qat
from .weights import (
    BITS,
    PRECISIONS,
    QuantizedModel,
    QuantizedTensor,
    channel_scales,
    fake_quant_model,
    fake_quantize,
    quantize_tensor,
    quantize_weights,
    quantized_layers,
    validate_precision,
)

__all__ = [
    "BITS", "FORMAT", "FORMATS", "PRECISIONS", "QAT_CHOICES", "QUANT_FILE_NAME", "QuantizedModel",
    "QuantizedTensor", "W8A8Model", "artifact_dir_name", "best_format", "byte_metrics",
    "calibrate_w8a8", "channel_scales", "conv_bn_pairs", "disable_qat", "enable_qat", "fake_quant_model",
    "fake_quantize", "fold_batch_norm", "format_bytes", "int8_activation_bytes", "load_quantized",
    "measure_precisions", "model_bytes", "qat_finetune", "quantize_tensor", "quantize_weights",
    "quantized_bytes", "quantized_layers", "save_quantized", "scale_bytes", "validate_precision",
    "validate_precisions", "validate_qat", "value_bytes",
]
