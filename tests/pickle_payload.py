"""A model whose unpickling runs code: loading it writes a marker file (the stand-in for whatever a hostile author
would run). Logged with `code_paths=[this file]`, so an `mlflow run` subprocess can import it too; it imports
nothing from the test set-up."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def touch_and_build(marker: str) -> nn.Module:
    """What unpickling the payload calls: writes `marker`, returns a small working CIFAR classifier."""
    Path(marker).write_text("code ran while the model was unpickled\n")
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))


class Payload(nn.Sequential):
    """Pickles as a call of :func:`touch_and_build`."""

    def __init__(self, marker: str):
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))
        self.marker = marker

    def __reduce__(self):
        return touch_and_build, (self.marker,)
