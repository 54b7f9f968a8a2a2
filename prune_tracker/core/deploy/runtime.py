"""ONNX Runtime on the CPU, one intra-op and one inter-op thread, wrapped as an nn.Module so that the PyTorch
evaluation (`core.training.predict_logits`, flip TTA included) runs an ONNX model unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .export import file_bytes


def session(model: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An InferenceSession of an ONNX file (or its bytes) on the CPU with `threads` intra- and inter-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """forward(x) = the ONNX model's first output for x (float32 NCHW) computed by ONNX Runtime, on x's device.
    `file_bytes`: the bytes of the file it was read from."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.session = session(Path(path))
        self.input_name = self.session.get_inputs()[0].name
        self.file_bytes = file_bytes(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().float().numpy())}
        return torch.from_numpy(self.session.run(None, feed)[0]).to(x.device)
