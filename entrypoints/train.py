"""MLproject entry point `train`: a thin wrapper over `prune-tracker train`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_tracker.cli import run_entrypoint, train  # noqa: E402

if __name__ == "__main__":
    run_entrypoint(train)
