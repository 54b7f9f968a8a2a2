"""SIGTERM ends a test session the way Ctrl-C does: as a KeyboardInterrupt, so pytest tears the fixtures down and
the servers, PostgreSQL clusters and child process groups they started are stopped (a CI timeout or `kill` sends
SIGTERM; without this handler Python would exit at once and leave them running). tests/conftest.py installs it;
tests/test_interrupts.py loads it as a plugin (`-p interrupts`) in the pytest run it interrupts."""

from __future__ import annotations

import signal


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install() -> None:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def pytest_configure(config) -> None:
    install()
