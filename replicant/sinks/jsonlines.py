"""JSON Lines (or any one-line form) into a file or standard output: the first sink."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import IO

from replicant.changes import Event, Relation
from replicant.formatting import format_json, json_line
from replicant.lsn import LSN

__all__ = ["JsonLinesSink"]

logger = logging.getLogger("replicant")

# Lines pending in memory are handed to the file object at the end of each
# batch the consumer delivered, or once they reach this size.
_PENDING_BYTES = 1 << 20
# The file's own buffer: large writes, few system calls.
_FILE_BUFFER = 1 << 20


class JsonLinesSink:
    """One line per event, appended to the file at ``path`` or written to standard output.

    Each line is ``formatter(event)``: :func:`~replicant.formatting.format_json`
    (each event's ``to_dict()``, the default, also for ``None``) or, for people,
    :func:`~replicant.formatting.format_text`. Relation events (table
    descriptions) are left out unless ``relations`` is true; their LSN
    still counts as written.

    Lines are buffered and handed to the operating system by
    :meth:`batch_end` (after each batch of events the consumer delivered,
    a snapshot table's end among them, or at every transaction end), once
    1 MiB is pending, and on :meth:`flush`: one write for many lines. The default
    JSON form is written with :func:`~replicant.formatting.json_line` (the
    same bytes as ``format_json``, faster). ``flush()`` vouches for everything written: with
    ``fsync`` (files only; the default) once it is fsynced, otherwise once
    it is handed to the operating system, as
    ``pg_recvlogical --fsync-interval 0`` does. Use it through a
    :class:`~replicant.sinks.SinkWriter`, whose ``flush_interval`` is then
    how often the file is fsynced.

    The file is opened (created if missing) when the sink is made, so an
    unwritable path raises :class:`OSError` at once. Standard output is
    never closed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = True,
        formatter: Callable[[Event], str] | None = None,
        relations: bool = False,
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.fsync = fsync and self.path is not None
        self._format = formatter or format_json
        # The default form as bytes directly; another formatter's str is encoded.
        self._line: Callable[[Event], bytes] = (
            json_line if self._format is format_json else self._encoded
        )
        self._relations = relations
        self.lines = 0  # the lines written: every event but the relations left out
        self._file: IO[bytes] = self._open() if self.path is not None else sys.stdout.buffer
        self._pending: list[bytes] = []  # lines not yet given to the file object
        self._pending_size = 0
        self._dirty = False  # lines in our buffer, not yet handed to the operating system
        self._last = LSN(0)  # the highest LSN written
        self._reopen = False

    def __repr__(self) -> str:
        return f"<JsonLinesSink {self.path or '<stdout>'}{' fsync' if self.fsync else ''}>"

    def _open(self) -> IO[bytes]:
        assert self.path is not None
        # kept open until close() or a reopen
        return open(self.path, "ab", buffering=_FILE_BUFFER)

    def _encoded(self, event: Event) -> bytes:
        return (self._format(event) + "\n").encode("utf-8")

    def write(self, event: Event) -> None:
        """Buffer the event's line (handed out by :meth:`batch_end`, at 1 MiB, or by a flush)."""
        kind = type(event)
        if kind is not Relation or self._relations:
            line = self._line(event)
            self.lines += 1
            self._pending.append(line)
            self._pending_size += len(line)
            self._dirty = True
            if self._pending_size >= _PENDING_BYTES:
                self._write_pending()
        lsn = event.lsn
        if lsn > self._last:
            self._last = lsn

    def batch_end(self) -> None:
        """Hand every line to the operating system (not fsynced): the stream caught up.

        The :class:`~replicant.sinks.SinkWriter` calls it after each batch the
        consumer delivered (or at each transaction end, for a consumer made
        without ``on_batch_end``), so a reader of the file sees lines at once.
        """
        if self._dirty:
            self._hand_out()

    def _write_pending(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            self._pending_size = 0
            self._file.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _hand_out(self) -> None:
        # Everything written so far, to the operating system.
        self._write_pending()
        self._file.flush()
        self._dirty = False

    def flush(self) -> LSN | None:
        """Hand every line to the operating system, fsync (with ``fsync``), reopen if asked.

        Returns the highest LSN written: all of it is now durable in the
        sense above.
        """
        if self._dirty:
            self._hand_out()
        if self.fsync:
            os.fsync(self._file.fileno())
        if self._reopen:
            self._reopen = False
            self._swap_file()
        return self._last or None

    def reopen(self) -> None:
        """Start a new file at the same path at the next flush (after log rotation moved it).

        Safe from any thread or a signal handler: it only asks. Call
        :meth:`SinkWriter.flush` afterwards for it to happen now. The old
        file is fsynced (with ``fsync``) and closed; lines after it go to the
        new one. Nothing to do on standard output.
        """
        self._reopen = self.path is not None

    def _swap_file(self) -> None:
        # Called from flush(), after everything so far reached the old file.
        try:
            new = self._open()
        except OSError as error:
            logger.error("cannot reopen %s: %s; still writing the old file", self.path, error)
            return
        old, self._file = self._file, new
        old.close()
        logger.info("reopened %s", self.path)

    def close(self) -> None:
        """Close the file; standard output stays open (and is not flushed: it may be broken).

        Lines not yet flushed are written to the file first (not to standard
        output).
        """
        if self.path is not None:
            try:
                self._write_pending()
            finally:
                self._file.close()
