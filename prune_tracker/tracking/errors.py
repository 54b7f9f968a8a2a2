"""Artifact writes that fail (a destination that cannot be written, a server whose artifact store fails) raised as
one clear error naming the artifact, the run and the destination, instead of an OSError or an HTTP retry trace.
`tracked_run` then ends the run FAILED and the CLI prints the message as its one error line."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import mlflow
from mlflow.exceptions import MlflowException


def first_line(err: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message (MLflow's `.message` where it has one), at most `limit` characters;
    the exception's type name when the message is empty."""
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


class ArtifactWriteError(MlflowException):
    """An artifact of the active run could not be written to its artifact store."""


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return f"{err.strerror}: {err.filename!r}" if err.strerror and err.filename else str(err)
    message = getattr(err, "message", str(err)).strip()
    if "Max retries exceeded" in message:
        caused = re.search(r"\(Caused by (.*)\)$", message)
        cause = caused.group(1) if caused else "no answer"
        cause = "HTTP 500 answers" if "too many 500 error responses" in cause else cause
        return (f"the tracking server did not take the upload within MLflow's HTTP retries ({cause}); its artifact "
                "store may be failing: see the server's log (e.g. an --artifacts-destination it cannot write)")
    first = message.splitlines()[0] if message else type(err).__name__
    return first[:300]


@contextlib.contextmanager
def artifact_writes(what: str) -> Iterator[None]:
    """Convert an OSError / MlflowException raised while writing artifact `what` of the active run into an
    ArtifactWriteError with one clear line."""
    try:
        yield
    except ArtifactWriteError:
        raise
    except (OSError, MlflowException) as err:
        run = mlflow.active_run()
        where = f"run {run.info.run_id} to {run.info.artifact_uri}" if run else "the active run"
        raise ArtifactWriteError(f"cannot write artifact {what!r} of {where}: {_reason(err)}") from err


class ModelLoadError(ValueError):
    """A model URI or file could not be resolved or does not fit its architecture."""
