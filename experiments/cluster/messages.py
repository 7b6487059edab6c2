"""How the connection library talks to the user: one-line errors, and lines on stderr."""

from __future__ import annotations

import sys


class ClusterError(Exception):
    """A problem the user can fix; the message is one line that says how."""


def console(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
