"""How the connection library talks to the user: one-line errors, and lines on stderr."""

from __future__ import annotations

import logging
import signal
import sys


class ClusterError(Exception):
    """A problem the user can fix; the message is one line that says how."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a closed terminal, `kill`): the program ends as on Ctrl-C, cancelling
    what it started and removing its temporary files (the client's key among them)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


SHOWN_CHARACTERS = 80  # of a value echoed in an error message


def shown(value: object) -> str:
    """A value as an error message echoes it: its repr, shortened if long."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else f"{text[: SHOWN_CHARACTERS - 16]}... ({len(text)} chars)"


def console(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class WithoutMessage(logging.Filter):
    """Leaves out of a logger the one message (by its start) that this project says otherwise."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)
