"""A self-contained HTML report of a pruning lab (inline CSS, base64 PNG figures, no external URL): `build.py`
assembles the page from the sections (`sections.py`, `breakdown.py`, `worth_it.py`) drawn with `html.py`'s
pieces, and `run_report` logs it as a `stage=report` run."""

from prune_tracker.analysis.report.breakdown import breakdown_figure
from prune_tracker.analysis.report.build import ReportResult, ReportView, build_report, fetch_run_details, run_report
from prune_tracker.analysis.report.sections import sparsity_precision_cells

__all__ = ["ReportResult", "ReportView", "breakdown_figure", "build_report", "fetch_run_details", "run_report",
           "sparsity_precision_cells"]
