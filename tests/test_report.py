"""report: a self-contained HTML file from synthetic points, and run_report through a local SQLite store.

``python tests/test_report.py OUT_DIR`` writes a sample report (used for the headless-Chromium screenshot).
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from prune_tracker.analysis import report  # noqa: E402
from prune_tracker.core.frontier import RunPoint, grouped_front  # noqa: E402

LAYERS = [
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer3.0.conv1",
    "fc",
]


def _metrics(fp: float, test_accuracy: float) -> dict[str, float]:
    return {
        "test_accuracy": test_accuracy,
        "footprint_fp32_bytes": fp * 2.2,
        "footprint_fp16_bytes": fp * 1.1,
        "footprint_csr_fp32_bytes": fp * 1.6,
        "footprint_csr_fp16_bytes": fp * 1.2,
        "footprint_best_bytes": fp,
        "activation_peak_fp32_bytes": 262144.0,
        "activation_peak_fp16_bytes": 131072.0,
    }


def sample_points() -> list[RunPoint]:
    """Two datasets x three methods x five ratios (prune + finetune) and an unpruned parent each."""
    points = []
    for d, (dataset, base) in enumerate((("cifar10", 0.92), ("cifar100", 0.68))):
        root_fp = 1_100_000.0
        root = f"{d}train{'0' * 26}"
        points.append(
            RunPoint(
                root,
                "lab",
                "none",
                None,
                "train",
                dataset,
                "resnet20",
                base,
                root_fp,
                None,
                root,
                root_fp,
                metrics=_metrics(root_fp, base - 0.01),
            )
        )
        for m, (method, loss) in enumerate((("l1", 0.05), ("random", 0.15), ("taylor", 0.04))):
            for r, ratio in enumerate((0.3, 0.5, 0.7, 0.8, 0.9)):
                fp = root_fp * (1 - ratio) * (1.0 + 0.05 * m)
                for s, stage in enumerate(("prune", "finetune")):
                    acc = base - loss * ratio**2 * (3 if stage == "prune" else 1) - 0.002 * m
                    rid = f"{d}{m}{r}{s}{'ab' * 14}"
                    points.append(
                        RunPoint(
                            rid,
                            "lab",
                            method,
                            ratio,
                            stage,
                            dataset,
                            "resnet20",
                            acc,
                            fp,
                            root,
                            root,
                            root_fp,
                            metrics=_metrics(fp, acc - 0.01),
                        )
                    )
    return points


def sample_details(points: list[RunPoint]) -> dict[str, dict]:
    details = {}
    for p in points:
        ratio = p.ratio or 0.0
        sparsity = {name: min(1.0, ratio * (0.6 + 0.1 * i)) for i, name in enumerate(LAYERS)}
        rows = [
            {
                "name": f"{n}.weight",
                "shape": [16, 16, 3, 3],
                "numel": 2304,
                "nonzeros": int(2304 * (1 - s)),
                "bytes": {
                    "fp32": 9216,
                    "fp16": 4608,
                    "csr_fp16": int(2304 * (1 - s)) * 4 + 68,
                    "bitmask_fp16": int(2304 * (1 - s)) * 2 + 288,
                    "best": 4608,
                },
                "format": "fp16",
            }
            for n, s in sparsity.items()
        ]
        details[p.run_id] = {"sparsity": sparsity, "footprint": {"tensors": rows, "activations": {}}}
    return details


def write_sample(out_dir: Path) -> Path:
    points = sample_points()
    front = grouped_front(points)
    view = report.ReportView(points, front, sample_details(front), title="Pruning report: sample lab",
                             budget_bytes=300_000, min_accuracy=0.9,
                             missing=[("f" * 32, "missing metric footprint_best_bytes")])
    return report.build_report(view, out_dir)


def test_build_report_is_self_contained(tmp_path: Path) -> None:
    path = write_sample(tmp_path)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text) and "@import" not in text
    assert "url(" not in text
    assert text.count('src="data:image/png;base64,') == 2 + 2 + 12 + 1  # fronts, ratio curves, sparsity, bars
    for heading in (
        "Methods",
        "Pareto front",
        "pruning ratio",
        "sparsity",
        "Footprint breakdown",
        "All runs",
        "missing metrics",
    ):
        assert heading in text
    assert text.count("Best accuracy within 300 KB") == 2  # one answer per (dataset, arch)
    assert text.count("no run fits") == 1  # cifar100 never reaches 0.9
    assert text.count('<tr class="front">') == 18  # 9 per dataset, see test_grouped_front_of_the_sample
    assert "<th class=\"\">val_accuracy</th><th class=\"\">test_accuracy</th>" in text


def test_grouped_front_of_the_sample() -> None:
    # Accuracy loss vs the unpruned run, finetuned (prune runs lose 3x as much, so never make the front):
    # l1 0.05 r^2, random 0.15 r^2 + 0.002, taylor 0.04 r^2 + 0.004 at footprints 1.1 MB x (1 - r) x 1.00 /
    # 1.05 / 1.10. Sweeping by footprint: l1 at r = 0.9 (110 KB, -0.0405), taylor 0.9 (121 KB, -0.0364),
    # l1 0.8 (220 KB, -0.032), taylor 0.8 (242 KB, -0.0296), l1 0.7 (330 KB, -0.0245), taylor 0.7 (363 KB,
    # -0.0236), l1 0.5 (550 KB, -0.0125), l1 0.3 (770 KB, -0.0045), the unpruned run (1.1 MB, 0): 9 per dataset.
    front = grouped_front(sample_points())
    expected = [110_000, 121_000, 220_000, 242_000, 330_000, 363_000, 550_000, 770_000, 1_100_000]
    for dataset in ("cifar10", "cifar100"):
        mine = [p for p in front if p.dataset == dataset]
        assert [p.footprint for p in mine] == pytest.approx(expected)
        assert [(p.method, p.stage) for p in mine[:2]] == [("l1", "finetune"), ("taylor", "finetune")]
    assert [p.dataset for p in front] == ["cifar10"] * 9 + ["cifar100"] * 9


def test_breakdown_bars_follow_the_format_registry() -> None:
    fig = report.breakdown_figure(grouped_front(sample_points()))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # the sample logs no bitmask metric, so that format has no bar
    assert labels == ["params fp32", "params fp16", "params CSR fp32", "params CSR fp16", "params best fp16",
                      "activations fp32", "activations fp16"]  # fmt: skip


def test_build_report_without_runs_or_details(tmp_path: Path) -> None:
    text = report.build_report(report.ReportView([], [], budget_bytes=1.0), tmp_path).read_text()
    assert "no run fits" in text and "No runs." in text


@pytest.fixture
def lab_store(tmp_path: Path) -> Iterator[tuple[MlflowClient, str]]:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    yield client, client.create_experiment("rep", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(previous)


def test_run_report_logs_html_artifact(lab_store: tuple[MlflowClient, str], tmp_path: Path) -> None:
    from test_compare import log_fake_run

    client, exp_id = lab_store
    root = log_fake_run(client, exp_id, stage="train", accuracy=0.92, footprint=8000)
    for ratio, acc, fp in ((0.5, 0.9, 4000), (0.9, 0.8, 800)):
        log_fake_run(
            client, exp_id, stage="prune", method="l1", ratio=ratio, accuracy=acc, footprint=fp, parent=root
        )
    log_fake_run(client, exp_id, stage="prune", method="l1", ratio=0.7, footprint=None, parent=root)
    result = report.run_report(["rep"], tmp_path / "out", budget="1KB")
    assert len(result.points) == 3 and len(result.front) == 3 and len(result.missing) == 1  # all 3 on the front
    run = client.get_run(result.run_id)
    assert run.data.tags["stage"] == "report" and run.data.metrics["n_front"] == 3
    assert [a.path for a in client.list_artifacts(result.run_id, "report")] == ["report/report.html"]
    html_text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/report/report.html")
    assert html_text.count('src="data:image/png;base64,') == 1 + 1 + 3 + 1  # sparsity from sparsity.json x3
    assert "conv.weight" in html_text  # per-tensor rows from footprint.json
    # ranked on val_accuracy (0.8 for the 800 B run), its test accuracy (0.79) beside it
    answer = "Best accuracy within 1 KB (cifar10 / tiny):</b> l1 ratio 0.9 (prune, fp16), accuracy 0.8000 (test 0.7900)"
    assert answer in html_text


if __name__ == "__main__":
    print(write_sample(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/sample-report")))
