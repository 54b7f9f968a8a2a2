"""The identity of the code that produced a result, so a rerun never reuses a step computed by other code."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def source_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's .py files (relative path + content), in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def code_identity() -> str:
    """`git:<commit>` in a clean git checkout; `git:<commit>+src:<hash>` when the package has uncommitted
    changes; `src:<hash>` outside git (an installed package)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return f"src:{source_hash()}"
    dirty = _git("status", "--porcelain", "--", str(PACKAGE_DIR))
    return f"git:{commit}" if not dirty else f"git:{commit}+src:{source_hash()}"


def reuse_key(stage: str, params: dict, code: str | None = None) -> str:
    """The key a finished result is reused by: the stage, every parameter and the code's identity, hashed."""
    import json

    blob = json.dumps({"stage": stage, "code": code or code_identity(), **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]
