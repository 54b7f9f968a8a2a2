"""MLproject entry point `report`: a thin wrapper over `prune-tracker report`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_tracker.cli import report, run_entrypoint  # noqa: E402

if __name__ == "__main__":
    run_entrypoint(report)
