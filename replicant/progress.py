"""Progress through a backlog: how much of it is done, how fast, how long is left.

:class:`BacklogProgress` watches a consumer's :class:`~replicant.health.Health`
snapshots. When the stream starts behind the server by more than a
threshold (a backlog), it reports the bytes of the backlog done out of the
backlog at start, the rate and the estimated time left: on a terminal as a
single line updated in place, otherwise as a log line every ``interval``
seconds; then one line when the backlog is done. ``replicant stream``
uses it on standard error (``--quiet`` turns it off).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from replicant.formatting import human_bytes
from replicant.health import Health
from replicant.lsn import LSN

__all__ = ["BacklogProgress", "format_duration"]

# A backlog smaller than this is not worth a progress line.
DEFAULT_THRESHOLD = 1024 * 1024

# The span the rate is measured over.
_RATE_WINDOW = 10.0


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class BacklogProgress:
    """Reports progress through the backlog a stream started with, on ``out``.

    Call :meth:`update` with a fresh :meth:`Consumer.health` snapshot as
    often as convenient (the terminal line is redrawn at most every
    ``refresh`` seconds, log lines come every ``interval`` seconds), and
    :meth:`close` at the end. The backlog is the one the consumer started
    with (``Health.backlog_start_lsn`` to ``backlog_end_lsn``: where its
    first stream started, and the server's WAL end then), however late the
    first update comes: one after the stream ended still reports it done.
    ``tty`` defaults to whether ``out`` is a terminal.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        prefix: str = "",
        tty: bool | None = None,
        interval: float = 10.0,
        refresh: float = 0.5,
        threshold: int = DEFAULT_THRESHOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.prefix = prefix
        if tty is None:
            isatty = getattr(out, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.interval = interval
        self.refresh = refresh
        self.threshold = threshold
        self._clock = clock
        self.start: LSN | None = None  # where the backlog starts
        self.target: LSN | None = None  # the server's WAL end when the stream started
        self.active = False  # a backlog is being reported
        self.finished = False  # nothing more to report (done, or no backlog)
        self._started_at = 0.0
        self._events_at_start = 0
        self._samples: deque[tuple[float, int, int]] = deque()
        self._next_output = 0.0
        self._line_shown = False

    @property
    def total(self) -> int:
        """The backlog's size in bytes (0 before it is known)."""
        if self.start is None or self.target is None:
            return 0
        return max(0, self.target - self.start)

    def update(self, health: Health) -> None:
        """Take a new snapshot into account; print what is due."""
        if self.finished:
            return
        now = self._clock()
        if self.start is None:
            if health.backlog_start_lsn is not None and health.backlog_end_lsn is not None:
                # Measured as the stream started, however much is done by now.
                self.start = health.backlog_start_lsn
                self.target = max(health.backlog_end_lsn, self.start)
            elif health.streaming and health.slot_read_age is not None and health.server_lsn:
                # A consumer that does not say: from here to the server's WAL end.
                self.start = health.acknowledged_lsn
                self.target = max(health.server_lsn, self.start)
            else:
                return  # not streaming yet
            if self.total < self.threshold:
                self.finished = True
                return
            self.active = True
            self._started_at = now
            self._events_at_start = health.events
            self._next_output = now  # the first report at once
        done = self._done(health)
        self._samples.append((now, done, health.events))
        while len(self._samples) > 2 and self._samples[1][0] <= now - _RATE_WINDOW:
            self._samples.popleft()
        if done >= self.total:
            self._finish(health, now)
            return
        if now < self._next_output:
            return
        self._next_output = now + (self.refresh if self.tty else self.interval)
        self._show(self._line(done, now))

    def _done(self, health: Health) -> int:
        assert self.start is not None and self.target is not None
        position = min(max(health.received_lsn, health.acknowledged_lsn), self.target)
        return max(0, position - self.start)

    def _rates(self, now: float) -> tuple[float, float]:
        """Bytes and events per second over the last few seconds."""
        first = self._samples[0]
        last = self._samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return 0.0, 0.0
        return (last[1] - first[1]) / elapsed, (last[2] - first[2]) / elapsed

    def _line(self, done: int, now: float) -> str:
        total = self.total
        byte_rate, event_rate = self._rates(now)
        left = (
            f"{format_duration((total - done) / byte_rate)} left"
            if byte_rate > 0
            else "time left unknown"
        )
        return (
            f"backlog {100.0 * done / total:5.1f}%  {human_bytes(done)} of "
            f"{human_bytes(total)}  {human_bytes(int(byte_rate))}/s  "
            f"{event_rate:,.0f} events/s  {left}"
        )

    def _finish(self, health: Health, now: float) -> None:
        elapsed = now - self._started_at
        events = health.events - self._events_at_start
        rate = self.total / elapsed if elapsed > 0 else 0.0
        self._show(
            f"backlog done: {human_bytes(self.total)} ({events:,} events) in "
            f"{format_duration(elapsed)}, {human_bytes(int(rate))}/s; streaming live",
            final=True,
        )
        self.active = False
        self.finished = True

    def _show(self, text: str, *, final: bool = False) -> None:
        if self.tty:
            end = "\n" if final else ""
            self.out.write(f"\r\x1b[K{self.prefix}{text}{end}")
            self._line_shown = not final
        else:
            self.out.write(f"{self.prefix}{text}\n")
        self.out.flush()

    def clear(self) -> None:
        """Take the terminal line away (before other output); the next update redraws it."""
        if self.tty and self._line_shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._line_shown = False
            self._next_output = 0.0

    def close(self) -> None:
        """End the terminal line, if one is shown (the stream stopped before the end)."""
        if self.tty and self._line_shown:
            self.out.write("\n")
            self.out.flush()
            self._line_shown = False
        self.finished = True
