"""A look at the cluster every few seconds, from a thread of its own, with a last look at the end."""

from __future__ import annotations

import threading
from collections.abc import Callable

# How long `stop` waits for a look in progress. A look at a scheduler that is gone waits for the
# client's connection timeout (the user's --timeout, ten minutes by default): such a look is left
# to end in its (daemon) thread rather than hold up the program after the search has ended.
STOP_WAIT_SECONDS = 5.0


class Poller:
    """Calls `look` every `interval` seconds until stopped; `stop` waits for the thread (up to
    STOP_WAIT_SECONDS) and, if asked and it ended, looks once more (what happened since the last look)."""

    def __init__(self, look: Callable[[], object], interval: float, name: str) -> None:
        self._look, self._interval = look, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._look()

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self, *, last_look: bool = True) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join(STOP_WAIT_SECONDS)
        if last_look and not self._thread.is_alive():
            self._look()
