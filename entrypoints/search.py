"""MLproject entry point `search`: a thin wrapper over `prune-tracker search`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_tracker.cli import run_entrypoint, search  # noqa: E402

if __name__ == "__main__":
    run_entrypoint(search)
