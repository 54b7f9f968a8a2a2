"""What `evaluate` measures, without MLflow: top-1 / top-5 / loss, per-class accuracy, the confusion matrix
(scikit-learn) and CPU latency per image."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, top_k_accuracy_score
from torch import nn

from .training import accuracy_and_loss

MAX_LABELLED_CLASSES = 20  # above this, per-class metrics and matrix labels would drown the UI


@dataclass
class Evaluation:
    metrics: dict[str, float]
    matrix: np.ndarray
    per_class: np.ndarray
    classes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"classes": self.classes, "per_class_accuracy": self.per_class.tolist(),
                "confusion_matrix": self.matrix.tolist()}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Evaluation:
    """Test metrics from logits: top-1, loss, top-5 (top-(n-1) for fewer than 6 classes), per-class accuracy."""
    n = len(classes)
    accuracy, loss = accuracy_and_loss(logits, labels)
    probs = torch.softmax(logits.float(), 1).numpy()
    matrix = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), labels=list(range(n)))
    per_class = matrix.diagonal() / np.maximum(matrix.sum(1), 1)
    metrics = {
        "test_accuracy": accuracy,
        "test_loss": loss,
        "test_top5_accuracy": float(top_k_accuracy_score(labels.numpy(), probs, k=min(5, n - 1),
                                                         labels=list(range(n)))),
    }
    if n <= MAX_LABELLED_CLASSES:
        metrics.update({f"class_accuracy.{i}": float(a) for i, a in enumerate(per_class)})
    return Evaluation(metrics, matrix, per_class, list(classes))


def confusion_figure(evaluation: Evaluation) -> Figure:
    labelled = len(evaluation.classes) <= MAX_LABELLED_CLASSES
    fig = Figure(figsize=(8, 7))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(evaluation.matrix, display_labels=evaluation.classes if labelled else None).plot(
        ax=ax, include_values=labelled, xticks_rotation=45, colorbar=False)
    return fig


def latency_ms(model: nn.Module, batch_size: int, input_shape: tuple[int, ...] = (3, 32, 32),
               repeats: int = 5) -> float:
    """Median CPU wall time per image over `repeats` forward passes of one batch (after one warm-up pass)."""
    model = model.cpu().eval()
    x = torch.randn(batch_size, *input_shape)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times)) / batch_size


def sparsity_figure(sparsity: dict[str, float], title: str = "per-layer sparsity") -> Figure:
    """Zero fraction per layer, one bar each, in model order."""
    fig = Figure(figsize=(max(6, 0.35 * len(sparsity)), 4))
    ax = fig.add_subplot()
    ax.bar(range(len(sparsity)), list(sparsity.values()), color="tab:blue")
    ax.set_xticks(range(len(sparsity)), list(sparsity), rotation=90, fontsize=7)
    ax.set_ylabel("zero fraction")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    return fig
