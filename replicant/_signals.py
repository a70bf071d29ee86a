"""Signals that stop a stream gracefully: the one handler ``Consumer.run()`` and
``replicant stream`` both install."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """While installed, SIGINT and SIGTERM ask for a graceful stop.

    Each calls ``on_stop(signum)`` and is remembered in :attr:`stop_signal`.
    A SIGINT once a stop was asked for (by a signal, or whatever ``stopping``
    says) raises :class:`KeyboardInterrupt`: a second Ctrl-C gives up
    waiting. ``others`` maps further signals to their own functions (SIGHUP,
    say). Python runs handlers in the main thread only: install from there.
    :meth:`restore` puts back the handlers that were there before.
    """

    def __init__(
        self,
        on_stop: Callable[[int], None],
        *,
        stopping: Callable[[], bool] | None = None,
        others: Mapping[int, Callable[[int], None]] | None = None,
    ) -> None:
        self.stop_signal: int | None = None
        self._on_stop = on_stop
        self._stopping = stopping
        self._others = dict(others or {})
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the signals from now on."""
        for signum in (signal.SIGINT, signal.SIGTERM, *self._others):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced. Idempotent."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        other = self._others.get(signum)
        if other is not None:
            other(signum)
            return
        asked = self._stopping() if self._stopping is not None else self.stop_signal is not None
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum
        self._on_stop(signum)
