"""MLproject entry point `sweep`: a thin wrapper over `prune-tracker sweep`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_tracker.cli import run_entrypoint, sweep  # noqa: E402

if __name__ == "__main__":
    run_entrypoint(sweep)
