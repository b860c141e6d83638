"""Stopping a run on a signal: the current step finishes, a checkpoint is saved, the process exits."""

from __future__ import annotations

import signal


class StopOnSignal:
    """SIGTERM or SIGINT asks the run to finish its current step, save and exit; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
