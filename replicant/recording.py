"""Record a slot's raw stream to a file; replay it offline through the same decoders.

A recording keeps what the server sent, frame by frame (each XLogData
frame's positions, the server's send time and the plugin's payload bytes),
with the plugin, its options and the server version. :func:`replay` (and
``replicant replay``) decodes it later with no server, through the decoders
``replicant stream`` uses, so a recording is a bug report anyone can run
and a golden test that needs no PostgreSQL.

:class:`Recorder` (``replicant record``) writes one. It acknowledges to the
server only what the file holds and has fsynced, and only at points where
the server, restarted there, sends exactly what comes next (after a
transaction, never inside one): so a recorder that is stopped, killed or
disconnected and started again on the same file continues it with nothing
missing and nothing twice.

The file format, version 1. All integers are big-endian. The file starts
with 10 bytes::

    magic    8 bytes   89 52 50 4C 0D 0A 1A 0A   ("\\x89RPL\\r\\n\\x1a\\n")
    version  u16       1

then a sequence of records, each::

    kind     u8        what the record is (below)
    length   u32       the size of body
    check    u16       the low 16 bits of CRC-32 over kind and length
    body     length bytes
    crc      u32       CRC-32 (zlib's) over kind, length, check and body

``check`` guards the length on its own, so a damaged length is never taken
for a record cut short. The kinds::

    H  the header, always the first record: a UTF-8 JSON object with
       slot, plugin, publication (a list, or null), options (the extra
       plugin options asked for), decoder_options (the decoder's keywords,
       such as streaming), start_options (every START_REPLICATION option
       sent), server_version (server_version_num), start (the LSN the
       stream started from), replicant (its version) and created (ISO
       8601, UTC). Readers keep keys they do not know.
    X  one XLogData frame: data_start u64, wal_end u64, send_time i64 (the
       server's clock, microseconds since 2000-01-01 UTC; -2**63 when
       unknown), then the payload bytes.
    x  the same when wal_end equals data_start (logical walsenders send
       them equal): data_start u64, send_time i64, payload.
    S  a later connection (a reconnect, or a later run continuing the
       file): JSON with server_version, start, start_options, replicant
       and started. Decoders start over here, as on a live reconnect.
    P  a position, u64: the server had sent everything for this slot up
       to it (from its keepalives) while no transaction was open.
    E  the recorder stopped cleanly: JSON with acknowledged (the position
       confirmed to the server) and stopped.

A reader skips records of kinds it does not know, so later versions can add
records older readers may ignore; a change they must not ignore raises the
version. After a crash the last record may be cut short or half written:
a record at the end of the file that is incomplete, or whose checksum
fails with nothing but zero bytes after it, is reported
(:attr:`Recording.truncated`) and ignored, never decoded. A damaged record
anywhere else is a :class:`~replicant.errors.RecordingError`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Final, NamedTuple

from replicant import __version__
from replicant.changes import (
    Event,
    Message,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
)
from replicant.connection import ReplicationConnection
from replicant.decoders import Decoder, make_decoder, needs_publication
from replicant.errors import (
    ConfigurationError,
    DecodeError,
    RecordingError,
    ReplicantError,
    ServerError,
    SlotError,
)
from replicant.lsn import LSN
from replicant.protocol import PrimaryKeepalive, XLogData, pg_timestamp_to_datetime
from replicant.runtime import Consumer, check_slot_state

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Position",
    "RecordedFrame",
    "Recorder",
    "Recording",
    "RecordingHeader",
    "ReplaySummary",
    "Session",
    "Stop",
    "Tail",
    "open_recording",
    "read",
    "record",
    "replay",
]

logger = logging.getLogger("replicant")

MAGIC: Final = b"\x89RPL\r\n\x1a\n"
FORMAT_VERSION: Final = 1

_PREAMBLE = struct.Struct(">8sH")
_HEAD = struct.Struct(">BIH")  # kind, length, check
_CRC = struct.Struct(">I")
_FRAME = struct.Struct(">QQq")  # X: data_start, wal_end, send_time
_SHORT_FRAME = struct.Struct(">Qq")  # x: data_start, send_time
_POSITION = struct.Struct(">Q")
_KIND_LENGTH = struct.Struct(">BI")  # what a record's check covers

_HEADER, _FRAME_KIND, _SHORT_KIND = b"H"[0], b"X"[0], b"x"[0]
_SESSION, _POSITION_KIND, _STOP = b"S"[0], b"P"[0], b"E"[0]

UNKNOWN_TIME: Final = -(2**63)
"""The ``send_time`` of a frame whose server time was not known."""

# A replication message is at most 1 GB (the server's MaxAllocSize); a length
# beyond that (plus the frame fields) is damage, not a record to wait for.
_MAX_BODY = (1 << 30) + 64

# Pending bytes the reader hands to the operating system without waiting for
# the next timed flush, so a huge transaction does not sit in memory.
_SPILL = 4 << 20

_READ_CHUNK = 1 << 20


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _encode(kind: int, body: bytes | bytearray) -> bytes:
    """One record: head, body, checksum."""
    length = len(body)
    check = zlib.crc32(_KIND_LENGTH.pack(kind, length)) & 0xFFFF
    head = _HEAD.pack(kind, length, check)
    return b"".join((head, body, _CRC.pack(zlib.crc32(body, zlib.crc32(head)))))


def _json_body(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _frame_record(data: bytes, data_start: int, wal_end: int, send_time: int) -> bytes:
    """A frame's record (``_encode`` without copying the payload twice: once per frame)."""
    if wal_end == data_start:
        kind, fields = _SHORT_KIND, _SHORT_FRAME.pack(data_start, send_time)
    else:
        kind, fields = _FRAME_KIND, _FRAME.pack(data_start, wal_end, send_time)
    length = len(fields) + len(data)
    head = _HEAD.pack(kind, length, zlib.crc32(_KIND_LENGTH.pack(kind, length)) & 0xFFFF)
    crc = zlib.crc32(data, zlib.crc32(fields, zlib.crc32(head)))
    return b"".join((head, fields, data, _CRC.pack(crc)))


# --- what a recording holds --------------------------------------------------------------


@dataclass(frozen=True)
class RecordingHeader:
    """What a recording was made from: its first record."""

    slot: str
    plugin: str
    publication: tuple[str, ...] | None
    options: Mapping[str, str]
    decoder_options: Mapping[str, Any]
    start_options: Mapping[str, str]
    server_version: int
    start: LSN
    replicant_version: str
    created: str
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Header keys this version of replicant does not know."""

    def to_dict(self) -> dict[str, Any]:
        """The header as stored (JSON-serialisable)."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            slot=self.slot,
            plugin=self.plugin,
            publication=None if self.publication is None else list(self.publication),
            options=dict(self.options),
            decoder_options=dict(self.decoder_options),
            start_options=dict(self.start_options),
            server_version=self.server_version,
            start=str(self.start),
            replicant=self.replicant_version,
            created=self.created,
        )
        return data

    def decoder(self, *, decode_values: bool = True) -> Decoder:
        """A fresh decoder configured as the recorder's was (from the decoder registry)."""
        publication: list[str] | None = None if self.publication is None else list(self.publication)
        if publication is None and needs_publication(self.plugin):
            # Recorded with a decoder of its own: decoding never uses the
            # publication (only START_REPLICATION does), so any name serves.
            publication = ["-"]
        try:
            return make_decoder(
                self.plugin,
                publication=publication,
                options=dict(self.options),
                decode_values=decode_values,
                **dict(self.decoder_options),
            )
        except ConfigurationError as error:
            raise ConfigurationError(
                f"cannot make a decoder for this recording ({self.plugin}): {error}"
            ) from None


class RecordedFrame(NamedTuple):
    """One XLogData frame as the server sent it, and where it lies in the file."""

    data_start: LSN
    wal_end: LSN
    send_time: int | None
    """The server's clock in PostgreSQL-epoch microseconds, ``None`` when unknown."""
    data: bytes
    offset: int

    @property
    def sent_at(self) -> _dt.datetime | None:
        """``send_time`` as an aware UTC ``datetime`` (``None`` when unknown)."""
        if self.send_time is None:
            return None
        try:
            return pg_timestamp_to_datetime(self.send_time)
        except ReplicantError:
            return None


@dataclass(frozen=True, slots=True)
class Session:
    """A connection's stream starts: the header's for the first, an ``S`` record after."""

    server_version: int
    start: LSN
    start_options: Mapping[str, str]
    replicant_version: str
    started: str
    offset: int


@dataclass(frozen=True, slots=True)
class Position:
    """The server had sent everything up to ``lsn`` while no transaction was open."""

    lsn: LSN
    offset: int


@dataclass(frozen=True, slots=True)
class Stop:
    """The recorder stopped cleanly, having confirmed ``acknowledged`` to the server."""

    acknowledged: LSN
    stopped: str
    offset: int


@dataclass(frozen=True, slots=True)
class Tail:
    """The incomplete or half-written last record of a file that was cut (a crash)."""

    offset: int
    size: int
    reason: str

    def __str__(self) -> str:
        return f"{self.size} bytes at byte {self.offset} ({self.reason})"


Entry = Session | RecordedFrame | Position | Stop


class _NoHeader(RecordingError):
    """The file ends before its header is complete: nothing was ever recorded in it."""


def _text(body: bytes, kind: str, offset: int) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RecordingError(
            f"the {kind} record is not valid JSON: {error}", position=offset
        ) from None
    if not isinstance(data, dict):
        raise RecordingError(f"the {kind} record is not a JSON object", position=offset)
    return data


def _get(
    data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, offset: int
) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RecordingError(f"the {what} record lacks a valid {key!r}", position=offset)
    return value


def _lsn_field(data: Mapping[str, Any], key: str, what: str, offset: int) -> LSN:
    text = _get(data, key, str, what, offset)
    try:
        return LSN.parse(text)
    except ConfigurationError:
        raise RecordingError(
            f"the {what} record's {key!r} is not an LSN: {text!r}", position=offset
        ) from None


def _str_map(value: Any, key: str, what: str, offset: int) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RecordingError(
            f"the {what} record's {key!r} is not a map of strings", position=offset
        )
    return dict(value)


_HEADER_KEYS = frozenset(
    {
        "slot",
        "plugin",
        "publication",
        "options",
        "decoder_options",
        "start_options",
        "server_version",
        "start",
        "replicant",
        "created",
    }
)


def _parse_header(body: bytes, offset: int, version: int) -> RecordingHeader:
    data = _text(body, "header", offset)
    publication = data.get("publication")
    if publication is not None and (
        not isinstance(publication, list) or not all(isinstance(p, str) for p in publication)
    ):
        raise RecordingError("the header's 'publication' is not a list of names", position=offset)
    decoder_options = data.get("decoder_options", {})
    if not isinstance(decoder_options, dict):
        raise RecordingError("the header's 'decoder_options' is not a map", position=offset)
    return RecordingHeader(
        slot=_get(data, "slot", str, "header", offset),
        plugin=_get(data, "plugin", str, "header", offset),
        publication=None if publication is None else tuple(publication),
        options=_str_map(data.get("options", {}), "options", "header", offset),
        decoder_options=decoder_options,
        start_options=_str_map(data.get("start_options", {}), "start_options", "header", offset),
        server_version=_get(data, "server_version", int, "header", offset),
        start=_lsn_field(data, "start", "header", offset),
        replicant_version=str(data.get("replicant", "")),
        created=str(data.get("created", "")),
        format_version=version,
        extra={k: v for k, v in data.items() if k not in _HEADER_KEYS},
    )


def _parse_session(body: bytes, offset: int) -> Session:
    data = _text(body, "session", offset)
    return Session(
        server_version=_get(data, "server_version", int, "session", offset),
        start=_lsn_field(data, "start", "session", offset),
        start_options=_str_map(data.get("start_options", {}), "start_options", "session", offset),
        replicant_version=str(data.get("replicant", "")),
        started=str(data.get("started", "")),
        offset=offset,
    )


# --- reading -----------------------------------------------------------------------------


class Recording:
    """An open recording file, read front to back.

    Opening reads the preamble and the header (:attr:`header`); a file that
    is not a recording, of a format version this replicant does not know,
    or without a complete header is a :class:`RecordingError` (its
    ``position`` is the byte offset). :meth:`entries` yields what follows,
    :meth:`events` decodes it. A cut last record (a crash) ends the
    entries and is described by :attr:`truncated`; a damaged record
    elsewhere raises :class:`RecordingError`. Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self.header, self.header_end = self._read_start()
        except BaseException:
            self._file.close()
            raise
        self.truncated: Tail | None = None
        """The cut last record, once :meth:`entries` reached the end (``None`` if none)."""
        self.end: int = self.header_end
        """Where the last complete record ends, once :meth:`entries` reached the end."""
        self.record_end: int = self.header_end
        """Where the record of the entry :meth:`entries` yielded last ends."""

    def __repr__(self) -> str:
        return f"<Recording {self.path!r} slot={self.header.slot!r} plugin={self.header.plugin!r}>"

    def _error(self, message: str, position: int) -> RecordingError:
        return RecordingError(f"{self.path}: {message}", position=position)

    def _read_start(self) -> tuple[RecordingHeader, int]:
        preamble = self._file.read(_PREAMBLE.size)
        if len(preamble) < _PREAMBLE.size or not preamble.startswith(MAGIC):
            if MAGIC.startswith(preamble[: len(MAGIC)]) and len(preamble) < _PREAMBLE.size:
                raise _NoHeader(
                    f"{self.path}: the recording was cut before its header was written "
                    "(empty recording)",
                    position=len(preamble),
                )
            raise self._error("not a replicant recording (no recording magic number)", 0)
        _, version = _PREAMBLE.unpack(preamble)
        if version != FORMAT_VERSION:
            raise self._error(
                f"recording format version {version}; this replicant ({__version__}) reads "
                f"version {FORMAT_VERSION}",
                len(MAGIC),
            )
        record = next(self._records(_PREAMBLE.size), None)
        if record is None:
            raise _NoHeader(
                f"{self.path}: the recording was cut before its header was written "
                "(empty recording)",
                position=_PREAMBLE.size,
            )
        kind, body, offset, end = record
        if kind != _HEADER:
            raise self._error(f"the first record is {bytes([kind])!r}, not the header", offset)
        return _parse_header(body, offset, version), end

    def _records(self, offset: int) -> Iterator[tuple[int, bytes, int, int]]:
        """(kind, body, offset, end) of each complete record from ``offset``; sets the tail."""
        read = self._file.read
        self._file.seek(offset)
        head_size, crc_size = _HEAD.size, _CRC.size
        unpack_head, unpack_crc, crc32 = _HEAD.unpack_from, _CRC.unpack_from, zlib.crc32
        # The file is read in large chunks and parsed in place: two reads and
        # two copies per record cost more than the checks.
        buf = read(_READ_CHUNK)
        pos = 0  # where ``offset`` lies in buf
        while True:
            if len(buf) - pos < head_size:
                buf = buf[pos:] + read(_READ_CHUNK)
                pos = 0
                if not buf:
                    self.end = offset
                    return
                if len(buf) < head_size:
                    self._cut(offset, "its head is incomplete")
                    return
            kind, length, check = unpack_head(buf, pos)
            if check != crc32(buf[pos : pos + 5]) & 0xFFFF or length > _MAX_BODY:
                self._damaged(offset, offset + head_size, "its head is damaged")
                return
            size = head_size + length + crc_size
            if len(buf) - pos < size:
                buf = buf[pos:] + read(max(_READ_CHUNK, size))
                pos = 0
                if len(buf) < size:
                    self._cut(offset, f"{size - len(buf)} bytes missing")
                    return
            body_at = pos + head_size
            body = buf[body_at : body_at + length]
            if unpack_crc(buf, body_at + length)[0] != crc32(body, crc32(buf[pos:body_at])):
                self._damaged(offset, offset + size, "its checksum does not match")
                return
            end = offset + size
            self.record_end = end
            yield kind, body, offset, end
            offset = end
            pos += size

    def _cut(self, offset: int, reason: str) -> None:
        self.end = offset
        self.truncated = Tail(offset, self.size - offset, f"cut short: {reason}")
        logger.warning("%s: the last record is incomplete, %s: ignored", self.path, self.truncated)

    def _damaged(self, offset: int, end: int, reason: str) -> None:
        """A record that fails its checks: a half-written tail, or damage (raised)."""
        if end >= self.size or self._only_zeros(end) or self._only_zeros(offset):
            self.end = offset
            self.truncated = Tail(offset, self.size - offset, f"half written: {reason}")
            logger.warning(
                "%s: the last record is half written, %s: ignored", self.path, self.truncated
            )
            return
        raise self._error(
            f"the record at byte {offset} is damaged ({reason}) and more follows: the file "
            "was changed after it was written",
            offset,
        )

    def _only_zeros(self, offset: int) -> bool:
        self._file.seek(offset)
        while chunk := self._file.read(_READ_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
        return True

    def entries(self) -> Iterator[Entry]:
        """Everything the recording holds, in order: a :class:`Session` first (the header's),
        then frames, sessions, positions and stops.

        Raises :class:`RecordingError` for a damaged or malformed record; a
        cut last record ends the entries and sets :attr:`truncated`.
        """
        header = self.header
        self.record_end = self.header_end
        yield Session(
            server_version=header.server_version,
            start=header.start,
            start_options=header.start_options,
            replicant_version=header.replicant_version,
            started=header.created,
            offset=_PREAMBLE.size,
        )
        self.truncated = None
        new_lsn = int.__new__
        new_tuple = tuple.__new__
        for kind, body, offset, _ in self._records(self.header_end):
            if kind in (_SHORT_KIND, _FRAME_KIND):
                fields = _SHORT_FRAME if kind == _SHORT_KIND else _FRAME
                if len(body) < fields.size:
                    raise self._error(f"frame record too short ({len(body)} bytes)", offset)
                if kind == _SHORT_KIND:
                    start, sent = _SHORT_FRAME.unpack_from(body)
                    end = start
                else:
                    start, end, sent = _FRAME.unpack_from(body)
                yield new_tuple(
                    RecordedFrame,
                    (
                        new_lsn(LSN, start),
                        new_lsn(LSN, end),
                        None if sent == UNKNOWN_TIME else sent,
                        body[fields.size :],
                        offset,
                    ),
                )
            elif kind == _SESSION:
                yield _parse_session(body, offset)
            elif kind == _POSITION_KIND:
                if len(body) != _POSITION.size:
                    raise self._error(f"position record of {len(body)} bytes", offset)
                yield Position(LSN.from_int(_POSITION.unpack(body)[0]), offset)
            elif kind == _STOP:
                data = _text(body, "stop", offset)
                yield Stop(
                    _lsn_field(data, "acknowledged", "stop", offset),
                    str(data.get("stopped", "")),
                    offset,
                )
            elif kind == _HEADER:
                raise self._error("a second header record", offset)
            # any other kind: a later version's optional record, skipped

    def frames(self) -> Iterator[RecordedFrame]:
        """The recorded XLogData frames, in order."""
        for entry in self.entries():
            if type(entry) is RecordedFrame:
                yield entry

    def events(
        self, *, decoder: Decoder | None = None, decode_values: bool = True
    ) -> Iterator[Event]:
        """The events the recorded frames decode to, as the live stream gave them.

        ``decoder`` is the header's plugin's decoder from the registry by
        default (see :meth:`RecordingHeader.decoder`); pass one for a plugin
        registered elsewhere. It is reset at every later session, as a live
        reconnect resets it. A payload it cannot decode raises
        :class:`~replicant.errors.DecodeError`, as it would have live.
        """
        if decoder is None:
            decoder = self.header.decoder(decode_values=decode_values)
        first = True
        for entry in self.entries():
            if type(entry) is RecordedFrame:
                yield from decoder.decode(entry.data, entry.data_start, entry.wal_end)
            elif type(entry) is Session:
                if not first:
                    decoder.reset()
                first = False

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_recording(path: str | os.PathLike[str]) -> Recording:
    """Open the recording at ``path`` (see :class:`Recording`)."""
    return Recording(path)


def read(
    path: str | os.PathLike[str], *, decoder: Decoder | None = None, decode_values: bool = True
) -> Iterator[Event]:
    """The events of the recording at ``path``, decoded as :meth:`Recording.events` does."""
    with Recording(path) as recording:
        yield from recording.events(decoder=decoder, decode_values=decode_values)


@dataclass(frozen=True)
class ReplaySummary:
    """What :func:`replay` went through."""

    header: RecordingHeader
    events: int
    frames: int
    sessions: int
    position: LSN
    """The furthest position the recording covers (a frame, a position or a stop)."""
    truncated: Tail | None
    stopped_cleanly: bool
    """True when the last record is the recorder's clean stop."""


def replay(
    path: str | os.PathLike[str],
    callback: Callable[[Event], object],
    *,
    decoder: Decoder | None = None,
    decode_values: bool = True,
) -> ReplaySummary:
    """Decode the recording at ``path`` and call ``callback`` with each event, in order.

    The offline twin of :func:`replicant.run`: the same decoders, the same
    events, no server. The callback's return value is ignored (there is
    nothing to acknowledge). ``decoder`` and ``decode_values`` as in
    :meth:`Recording.events`. Returns a :class:`ReplaySummary`. Raises
    :class:`~replicant.errors.RecordingError` for a file that is not a
    recording or is damaged (a cut last record is reported in the summary
    and ignored), :class:`~replicant.errors.DecodeError` for a payload the
    decoder cannot read; the callback's exception comes out as raised.
    """
    with Recording(path) as recording:
        if decoder is None:
            decoder = recording.header.decoder(decode_values=decode_values)
        events = frames = sessions = 0
        position = recording.header.start
        last: Entry | None = None
        for entry in recording.entries():
            last = entry
            if type(entry) is RecordedFrame:
                frames += 1
                if entry.wal_end > position:
                    position = entry.wal_end
                for event in decoder.decode(entry.data, entry.data_start, entry.wal_end):
                    events += 1
                    callback(event)
            elif type(entry) is Session:
                if sessions:
                    decoder.reset()
                sessions += 1
            elif type(entry) is Position:
                position = max(position, entry.lsn)
            elif type(entry) is Stop:
                position = max(position, entry.acknowledged)
        return ReplaySummary(
            header=recording.header,
            events=events,
            frames=frames,
            sessions=sessions,
            position=position,
            truncated=recording.truncated,
            stopped_cleanly=type(last) is Stop and recording.truncated is None,
        )


# --- where a recording can be resumed ----------------------------------------------------


class _ResumePoints:
    """The last point of a recording from which a restarted stream continues it exactly.

    ``(lsn, offset)``: a stream started at ``lsn`` sends exactly what the
    file held after ``offset``. Such points lie between transactions
    (pgoutput, wal2json) with no streamed transaction open: a transaction
    cut in the middle comes again from its start, so the file is cut back
    to before it. The recorder updates this as it writes; a later run
    replays the file through it to find where to continue.
    """

    def __init__(self, lsn: LSN, offset: int) -> None:
        self.lsn = lsn
        self.offset = offset
        self.between = True  # the last frame ended outside any transaction
        self._streams: set[int | None] = set()  # streamed transactions not yet ended

    def restart(self, lsn: LSN, offset: int) -> None:
        """A new connection starts at ``(lsn, offset)``: no transaction is open."""
        self.lsn, self.offset = lsn, offset
        self.between = True
        self._streams.clear()

    def frame(self) -> None:
        """A frame was written: until it decodes, the stream may be inside a transaction."""
        self.between = False

    def decoded(self, events: Sequence[Event], in_transaction: bool, start: int, end: int) -> bool:
        """The frame from ``start`` to ``end`` gave ``events``; True if the point moved."""
        streams = self._streams
        for event in events:
            kind = type(event)
            if kind is StreamStart:
                streams.add(event.xid)
            elif kind is StreamCommit or kind is StreamPrepare:
                streams.discard(event.xid)
            elif isinstance(event, StreamAbort) and event.subxid == event.xid:
                streams.discard(event.xid)  # the whole transaction, not a subtransaction
        self.between = not in_transaction and not streams
        if not self.between or not events:
            return False
        last = events[-1]
        if type(last) is Message and not last.transactional and last.lsn >= self.lsn:
            # A stream started at a message's own position sends it again:
            # the point is its position, before it.
            self.lsn, self.offset = last.lsn, start
        else:
            # Positions only grow (a raw plugin's frames carry change positions).
            self.lsn, self.offset = max(self.lsn, last.lsn), end
        return True

    def position(self, lsn: LSN, end: int) -> None:
        """A position record ending at ``end``: the server had sent everything before ``lsn``."""
        if self.between and lsn > self.lsn:
            self.lsn, self.offset = lsn, end

    def marker(self, start: int, end: int) -> None:
        """A session or stop record: part of the point when it directly follows it."""
        if self.offset == start:
            self.offset = end


def _scan(recording: Recording, decoder: Decoder) -> tuple[LSN, int, str | None]:
    """Where to continue ``recording``: (lsn, offset, why the rest is dropped or None)."""
    points = _ResumePoints(recording.header.start, recording.header_end)
    first = True
    problem: str | None = None
    for entry in recording.entries():
        kind = type(entry)
        end = recording.record_end
        if kind is RecordedFrame:
            assert isinstance(entry, RecordedFrame)
            points.frame()
            try:
                events = decoder.decode(entry.data, entry.data_start, entry.wal_end)
            except DecodeError as error:
                problem = f"the frame at byte {entry.offset} cannot be decoded ({error})"
                break
            points.decoded(events, decoder.in_transaction, entry.offset, end)
        elif kind is Session:
            if not first:
                decoder.reset()
                points.restart(points.lsn, points.offset)
                points.marker(entry.offset, end)
            first = False
        elif kind is Position:
            assert isinstance(entry, Position)
            points.position(entry.lsn, end)
        elif kind is Stop:
            points.marker(entry.offset, end)
    if problem is None and recording.truncated is not None:
        problem = f"the last record is incomplete: {recording.truncated}"
    return points.lsn, points.offset, problem


# --- recording ---------------------------------------------------------------------------


class _Tap:
    """The decoder the recorder's consumer runs: decodes each frame and records it.

    Decoding is what tells transaction boundaries apart, so the recorder
    knows where it may acknowledge. ``observe_frames`` gives it each batch
    as it came from the server (send times, keepalives).
    """

    def __init__(self, inner: Decoder, writer: _Writer) -> None:
        self.plugin = inner.plugin
        self._inner = inner
        self._writer = writer

    def start_options(self, server_version: int) -> dict[str, str]:
        options = self._inner.start_options(server_version)
        self._writer.server(server_version, options)
        return options

    def reset(self) -> None:
        self._inner.reset()
        self._writer.restart()

    @property
    def in_transaction(self) -> bool:
        return self._inner.in_transaction

    def observe_frames(self, frames: Sequence[XLogData | PrimaryKeepalive]) -> None:
        self._writer.batch(frames)

    def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
        inner = self._inner
        try:
            events = inner.decode(data, wal_start, wal_end)
        except BaseException:
            # The frame the decoder failed on goes to the file all the same:
            # it is what a bug report needs.
            self._writer.frame(data, wal_start, wal_end, None, True)
            raise
        self._writer.frame(data, wal_start, wal_end, events, inner.in_transaction)
        return events


class _Writer:
    """The recording file, its buffer, and what may be acknowledged.

    The reader thread appends records to an in-memory buffer; a flush (the
    timer, the final one, or the reader when the buffer grows large) hands
    it to the file, fsyncs, and acknowledges the last resume point the file
    now holds. A reconnect cuts the file back to the last acknowledged
    point: the server sends everything after it again.
    """

    def __init__(
        self,
        path: str,
        file: IO[bytes],
        *,
        header: dict[str, Any] | None,
        resume: tuple[LSN, int] | None,
        fsync: bool,
        created: bool,
    ) -> None:
        self.path = path
        self._file = file
        self._fsync = fsync
        self._created = created
        self._header = header  # to write at the first session (a new file), else None
        self._base = os.fstat(file.fileno()).st_size  # bytes in the file
        self._pending = bytearray()
        lsn, offset = resume if resume is not None else (LSN(0), 0)
        self._points = _ResumePoints(lsn, offset)
        self._acked: tuple[LSN, int] = (lsn, offset)
        self._idle: LSN | None = None  # a keepalive's position, not yet written
        self._buffer_lock = threading.Lock()  # the buffer and the resume points
        self._flush_lock = threading.Lock()  # file writes, acknowledgements, restarts
        self._batch: Sequence[XLogData | PrimaryKeepalive] = ()
        self._batch_pos = 0
        self._session_due = True
        self._server_version = 0
        self._start_options: dict[str, str] = {}
        self.consumer: Consumer | None = None
        self.failure: BaseException | None = None
        self._failure_reported = False  # the consumer has the failure already
        self.frames = 0
        self.sessions = 0

    # -- the reader thread

    def server(self, server_version: int, options: Mapping[str, str]) -> None:
        self._server_version = server_version
        self._start_options = dict(options)

    def batch(self, frames: Sequence[XLogData | PrimaryKeepalive]) -> None:
        if self._session_due:
            self._begin_session()
        self._batch, self._batch_pos = frames, 0
        self._keepalives()

    def _keepalives(self) -> None:
        # The keepalives up to the batch's next frame: every frame before them
        # was decoded, so their position holds.
        batch, pos = self._batch, self._batch_pos
        while pos < len(batch) and type(batch[pos]) is PrimaryKeepalive:
            self._keepalive(batch[pos].wal_end)
            pos += 1
        self._batch_pos = pos
        if not self._fsync and self._idle is not None:
            # No timer writes it out: a position the slot may move to, now.
            self._flush(fsync=False, acknowledge=True)

    def _keepalive(self, wal_end: LSN) -> None:
        with self._buffer_lock:
            points = self._points
            if (
                points.between
                and wal_end > points.lsn
                and (self._idle is None or wal_end > self._idle)
            ):
                self._idle = wal_end

    def frame(
        self,
        data: bytes,
        wal_start: int,
        wal_end: int,
        events: Sequence[Event] | None,
        in_transaction: bool,
    ) -> None:
        """Buffer one frame's record, decoded to ``events`` (None: it failed to decode)."""
        if self.failure is not None:
            self._failure_reported = True
            raise self.failure
        if self._session_due:
            self._begin_session()
        # The frame's server time: the batch's next frame is this one.
        batch, pos = self._batch, self._batch_pos
        item = batch[pos] if pos < len(batch) else None
        if type(item) is XLogData and item.data is data:
            self._batch_pos = pos + 1
            send_time = item.send_time
        else:  # a decode call from elsewhere, not the frame we were shown
            self._batch, self._batch_pos = (), 0
            send_time = UNKNOWN_TIME
        record = _frame_record(data, wal_start, wal_end, send_time)
        points = self._points
        with self._buffer_lock:
            if self._idle is not None:
                self._write_idle()
            start = self._base + len(self._pending)
            self._pending += record
            self.frames += 1
            points.frame()
            moved = events is not None and points.decoded(
                events, in_transaction, start, start + len(record)
            )
            big = len(self._pending) > _SPILL
        pos = self._batch_pos
        if pos < len(batch) and type(batch[pos]) is PrimaryKeepalive:
            self._keepalives()
        if moved and not self._fsync:
            self._flush(fsync=False, acknowledge=True)
        elif big:
            self._flush(fsync=False, acknowledge=False)

    def _write_idle(self) -> None:
        # Under the buffer lock: a position noted since the last frame goes in now.
        idle, self._idle = self._idle, None
        if idle is not None and self._points.between and idle > self._points.lsn:
            self._pending += _encode(_POSITION_KIND, _POSITION.pack(idle))
            self._points.position(idle, self._base + len(self._pending))

    def _begin_session(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        start = consumer.progress.flushed  # where this connection's stream starts
        with self._buffer_lock:
            self._session_due = False
            self.sessions += 1
            points = self._points
            if self._header is not None:
                header = dict(self._header)
                header.update(
                    server_version=self._server_version,
                    start=str(start),
                    start_options=self._start_options,
                    created=_now(),
                )
                self._header = None
                self._pending += _PREAMBLE.pack(MAGIC, FORMAT_VERSION)
                self._pending += _encode(_HEADER, _json_body(header))
                end = self._base + len(self._pending)
                points.restart(start, end)
                self._acked = (start, end)
                return
            if start > points.lsn:
                self.failure = SlotError(
                    f'replication slot "{consumer.slot}" starts at {start}, beyond the end of '
                    f"the recording {self.path} ({points.lsn}): the changes in between are not "
                    "in the file (the slot was advanced, or dropped and created again). "
                    "Record to a new file.",
                )
                self._failure_reported = True
                raise self.failure
            offset = self._base + len(self._pending)
            self._pending += _encode(
                _SESSION,
                _json_body(
                    {
                        "server_version": self._server_version,
                        "start": str(points.lsn),
                        "start_options": self._start_options,
                        "replicant": __version__,
                        "started": _now(),
                    }
                ),
            )
            points.marker(offset, self._base + len(self._pending))

    def restart(self) -> None:
        """A new connection: cut back to the last acknowledged point (the rest comes again)."""
        with self._flush_lock, self._buffer_lock:
            self._batch, self._batch_pos = (), 0
            self._idle = None
            self._session_due = True
            lsn, offset = self._acked
            end = self._base + len(self._pending)
            if offset < end:
                if offset >= self._base:
                    del self._pending[offset - self._base :]
                else:
                    self._pending.clear()
                    self._file.truncate(offset)
                    self._file.seek(offset)
                    self._base = offset
                logger.info(
                    "%s: %d bytes after %s dropped: the server sends them again",
                    self.path,
                    end - offset,
                    lsn,
                )
            self._points.restart(lsn, offset)

    # -- flushing (any thread)

    def _flush(self, *, fsync: bool, acknowledge: bool) -> LSN:
        """Hand the buffer to the file, fsync, acknowledge the point it holds; returns it."""
        with self._flush_lock:
            if self.failure is not None:
                raise self.failure
            with self._buffer_lock:
                self._write_idle()
                data = bytes(self._pending)
                self._pending.clear()
                lsn, offset = self._points.lsn, self._points.offset
            try:
                view = memoryview(data)
                while view:
                    written = self._file.write(view)
                    view = view[written or 0 :]
                self._base += len(data)
                if fsync:
                    os.fsync(self._file.fileno())
            except BaseException as error:
                self.failure = error
                raise
            consumer = self.consumer
            if acknowledge and offset <= self._base and (lsn, offset) > self._acked:
                if consumer is not None and lsn:
                    confirmed = consumer.acknowledge(lsn)
                    if confirmed == lsn:
                        self._acked = (lsn, offset)
                else:
                    self._acked = (lsn, offset)
            return self._acked[0]

    def flush(self) -> LSN:
        """Write, fsync and acknowledge what the buffer holds; returns the acknowledged LSN."""
        return self._flush(fsync=self._fsync, acknowledge=True)

    def stopped(self) -> LSN:
        """The consumer is stopping: everything out, a stop record, fsynced."""
        if self.failure is not None:
            if self._failure_reported:
                return self._acked[0]  # the stream has it already
            self._failure_reported = True
            raise self.failure
        if self._session_due and self._header is not None and self.consumer is not None:
            self._begin_session()  # an empty recording still has its header
        acked = self.flush()
        with self._buffer_lock:
            offset = self._base + len(self._pending)
            self._pending += _encode(
                _STOP, _json_body({"acknowledged": str(acked), "stopped": _now()})
            )
            self._points.marker(offset, self._base + len(self._pending))
        return self._flush(fsync=True, acknowledge=True)

    @property
    def size(self) -> int:
        """Bytes recorded (in the file and still buffered)."""
        return self._base + len(self._pending)

    @property
    def acknowledged(self) -> LSN:
        """The last position acknowledged to the server: the file holds all before it."""
        return self._acked[0]

    def close(self) -> None:
        """Write out what is left (a transaction cut short included), fsync, close."""
        try:
            if self.failure is None:
                self._flush(fsync=True, acknowledge=False)
        finally:
            empty = self._base == 0
            self._file.close()
            if empty and self._created:
                # Nothing was ever recorded (no connection): leave no empty file behind.
                with contextlib.suppress(OSError):
                    os.unlink(self.path)


def _lock(file: IO[bytes], path: str) -> None:
    """Hold an exclusive lock on the recording while this process writes it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigurationError(f"{path} is being recorded by another process") from None


def _fsync_directory(path: str) -> None:
    # A new file's name is durable only once its directory is fsynced.
    directory = os.path.dirname(os.path.abspath(path))
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Recorder:
    """Records a replication slot's stream into the file at ``path``.

    Every XLogData frame goes to the file as it came (see the module's
    format). The recorder acknowledges to the server only what the file
    holds and has fsynced (every ``fsync_interval`` seconds; 0 writes at
    every transaction end without fsync), and only at a point where the
    server, restarted there, sends exactly what follows in the file: after a
    transaction (with no streamed transaction open), or at a keepalive's
    position while nothing was open, which it writes as a position record.

    An existing recording is continued: its header must name the same slot,
    plugin, publication and options (else :class:`ConfigurationError`); a
    transaction cut short at its end (a crash) and a cut last record are
    dropped, since the server sends them again, and the stream starts where
    the file ends. A slot that has moved beyond the end of the file (or is
    gone) would leave a gap: that is a :class:`SlotError`, and nothing is
    written. A damaged file is a :class:`RecordingError`. A reconnect within
    one run does the same: the file is cut back to what was acknowledged.
    For a plugin replicant has no decoder for (raw payloads) every frame
    counts as a boundary, so a restart may repeat the transaction it cut.

    Arguments as :class:`~replicant.runtime.Consumer` takes them (``dsn``,
    ``slot``, ``plugin``, ``publication``, ``options``, ``create_slot``,
    ``start_lsn`` for a new file only, ``end_lsn``, ``status_interval``,
    ``reconnect``, ``max_retries``, ``receive_timeout``, connection
    keywords), plus ``decoder_options`` (the decoder's keywords:
    ``streaming``, ``messages``, ``two_phase``, ``proto_version``,
    ``format_version``...) or ``decoder`` (a decoder object of one's own,
    configured by its maker; ``publication``, if given with it, is written
    in the header and checked at start; replay uses the registry's decoder
    for the plugin unless given ``decoder=``).
    ``callback``, if given, receives every decoded event as it is recorded
    (its return value is ignored: the file decides what is acknowledged).

    ``start()``/``stop()``/``join()`` or ``run()`` (which handles Ctrl-C
    and SIGTERM in the main thread), then ``close()``; as a context manager
    it starts, and on exit stops, joins and closes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dsn: str | None = None,
        *,
        slot: str,
        plugin: str | None = None,
        publication: str | Sequence[str] | None = None,
        options: Mapping[str, str] | None = None,
        decoder_options: Mapping[str, Any] | None = None,
        decoder: Decoder | None = None,
        create_slot: bool = False,
        start_lsn: LSN | int | str | None = None,
        end_lsn: LSN | int | str | None = None,
        fsync_interval: float = 10.0,
        status_interval: float = 10.0,
        reconnect: bool = True,
        max_retries: int | None = None,
        receive_timeout: float | None = 60.0,
        callback: Callable[[Event], object] | None = None,
        **connect_params: Any,
    ) -> None:
        if not fsync_interval >= 0:
            raise ConfigurationError(f"fsync_interval must be 0 or more, not {fsync_interval!r}")
        if callback is not None and not callable(callback):
            raise ConfigurationError("callback must be callable")
        self.path = os.fspath(path)
        self.fsync_interval = float(fsync_interval)
        self._callback = callback
        self._dsn = dsn
        self._connect_params = connect_params
        publications = (
            None
            if publication is None
            else [publication]
            if isinstance(publication, str)
            else list(publication)
        )
        self._publications = publications or []
        inner = self._make_decoder(
            plugin, decoder, publications, dict(options or {}), dict(decoder_options or {})
        )
        config: dict[str, Any] = {
            "slot": slot,
            "plugin": inner.plugin,
            "publication": publications,
            "options": dict(options or {}),
            "decoder_options": dict(decoder_options or {}),
            "replicant": __version__,
        }
        try:
            json.dumps(config)
        except (TypeError, ValueError):
            raise ConfigurationError(
                "options and decoder_options must be JSON values (text, numbers, booleans)"
            ) from None
        file, header, resume, created = self._open(config, start_lsn, inner)
        self._writer = _Writer(
            self.path,
            file,
            header=header,
            resume=resume,
            fsync=self.fsync_interval > 0,
            created=created,
        )
        self._appending = header is None
        try:
            self.consumer = Consumer(
                dsn,
                slot=slot,
                callback=self._deliver,
                decoder=_Tap(inner, self._writer),
                create_slot=create_slot,
                start_lsn=resume[0] if resume is not None else start_lsn,
                end_lsn=end_lsn,
                status_interval=status_interval,
                idle_advance=False,  # the recorder advances at keepalives itself, in the file
                reconnect=reconnect,
                max_retries=max_retries,
                receive_timeout=receive_timeout,
                on_stop=self._writer.stopped,
                **connect_params,
            )
        except BaseException:
            self._writer.close()
            raise
        self._writer.consumer = self.consumer
        self.slot = self.consumer.slot
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Recorder {self.path!r} slot={self.slot!r} plugin={self.consumer.plugin!r}>"

    # -- setting up

    def _make_decoder(
        self,
        plugin: str | None,
        decoder: Decoder | None,
        publications: list[str] | None,
        options: dict[str, str],
        decoder_options: dict[str, Any],
    ) -> Decoder:
        if decoder is None:
            return make_decoder(
                "pgoutput" if plugin is None else plugin,
                publication=publications,
                options=options,
                decode_values=self._callback is not None,
                **decoder_options,
            )
        if not isinstance(decoder, Decoder):
            raise ConfigurationError(f"decoder must have the Decoder shape, not {decoder!r}")
        if plugin is not None and plugin != decoder.plugin:
            raise ConfigurationError(
                f"plugin={plugin!r} conflicts with the decoder's plugin {decoder.plugin!r}"
            )
        if options or decoder_options:
            raise ConfigurationError(
                "options and decoder_options configure the built-in decoders; "
                "with decoder=..., configure that decoder itself"
            )
        # A publication given with it is only recorded and checked at start.
        return decoder

    def _open(
        self, config: dict[str, Any], start_lsn: LSN | int | str | None, decoder: Decoder
    ) -> tuple[IO[bytes], dict[str, Any] | None, tuple[LSN, int] | None, bool]:
        """The file, locked: (file, header to write or None, resume point, created)."""
        path = self.path
        created = not os.path.exists(path)
        file: IO[bytes] = open(path, "a+b" if created else "r+b")  # noqa: SIM115
        try:
            _lock(file, path)
            if created:
                _fsync_directory(path)
            size = os.fstat(file.fileno()).st_size
            resume = None if size == 0 else self._resume(config, start_lsn, decoder)
            if resume is None:
                if size:
                    file.truncate(0)
            else:
                lsn, offset, problem = resume
                if offset < size:
                    logger.warning(
                        "%s: %d bytes after %s dropped (%s); the server sends them again",
                        path,
                        size - offset,
                        lsn,
                        problem or "a transaction cut short",
                    )
                    file.truncate(offset)
            file.seek(0, os.SEEK_END)
        except BaseException:
            file.close()
            raise
        if resume is None:
            return file, dict(config), None, created
        return file, None, (resume[0], resume[1]), created

    def _resume(
        self, config: dict[str, Any], start_lsn: LSN | int | str | None, decoder: Decoder
    ) -> tuple[LSN, int, str | None] | None:
        """Where the existing file continues; None to start it afresh (it has no header)."""
        try:
            recording = Recording(self.path)
        except _NoHeader:
            logger.warning(
                "%s: no complete header (cut at its start): starting it afresh", self.path
            )
            return None
        with recording:
            header = recording.header
            theirs = {
                "slot": header.slot,
                "plugin": header.plugin,
                "publication": None if header.publication is None else list(header.publication),
                "options": dict(header.options),
                "decoder_options": dict(header.decoder_options),
            }
            ours = {key: config[key] for key in theirs}
            if theirs != ours:
                differ = ", ".join(
                    f"{key} {theirs[key]!r} (not {ours[key]!r})"
                    for key in theirs
                    if theirs[key] != ours[key]
                )
                raise ConfigurationError(
                    f"{self.path} is a recording of another stream: {differ}; "
                    "record to another file"
                )
            if start_lsn is not None:
                raise ConfigurationError(
                    f"start_lsn applies to a new recording; {self.path} continues where it ends"
                )
            decoder.reset()
            try:
                return _scan(recording, decoder)
            finally:
                decoder.reset()

    def _check_server(self) -> None:
        """Before streaming: the publications exist, and the slot can continue the file."""
        connection = ReplicationConnection.connect(self._dsn, **self._connect_params)
        try:
            missing = (
                connection.missing_publications(self._publications) if self._publications else []
            )
            if missing:
                names = ", ".join(f'"{name}"' for name in missing)
                raise ServerError(
                    f"publication {names} does not exist",
                    sqlstate="42704",
                    hint="create it (CREATE PUBLICATION ... FOR TABLE ...) in this "
                    "database, or fix the name",
                )
            if not self._appending:
                return
            resume = self._writer.acknowledged
            state = connection.read_slot(self.slot)
            if state is None:
                raise SlotError(
                    f'replication slot "{self.slot}" does not exist, but {self.path} was recorded '
                    f"from it up to {resume}: a new slot would start later and leave a gap. "
                    "Record to a new file.",
                    sqlstate="42704",
                )
            check_slot_state(state, plugin=self.consumer.plugin)
            confirmed = state.confirmed_flush_lsn
            if confirmed is not None and confirmed > resume:
                raise SlotError(
                    f'replication slot "{self.slot}" confirms {confirmed}, beyond the end of '
                    f"{self.path} ({resume}): the changes in between are not in the file (the "
                    "slot was used by something else). Record to a new file.",
                )
        finally:
            connection.close()

    # -- running

    def _deliver(self, event: Event) -> None:
        if self._callback is not None:
            self._callback(event)

    def _prepare(self) -> None:
        if self._closed:
            raise ConfigurationError("this recorder is closed")
        self._check_server()
        if self.fsync_interval > 0 and self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"replicant-record[{self.slot}]", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        # Until close(): after a lost connection the consumer may end without
        # on_stop, and what it received still goes to the file.
        consumer = self.consumer
        while not self._flusher_stop.wait(self.fsync_interval):
            try:
                self._writer.flush()
            except BaseException as error:
                logger.debug("flushing %s failed: %s; stopping", self.path, error)
                consumer.stop(timeout=0)  # on_stop raises it, so join() does
                return

    def start(self) -> Recorder:
        """Check the server, then record in the background. Returns ``self``."""
        self._prepare()
        self.consumer.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: the file gets everything received, fsynced, and a stop record."""
        self.consumer.stop(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the end; re-raise the failure that ended it (see ``Consumer.join``)."""
        self.consumer.join(timeout)

    def run(self) -> None:
        """Record until ``end_lsn``, ``stop()``, a signal or a failure; then close the file."""
        try:
            self._prepare()
            self.consumer.run()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the flush timer, write out what is left, fsync and close the file."""
        if self._closed:
            return
        self._closed = True
        self._flusher_stop.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join()
        self._writer.close()

    def __enter__(self) -> Recorder:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
            if exc_type is None:
                self.join()
        finally:
            self.close()

    # -- what it did

    @property
    def frames(self) -> int:
        """Frames recorded in this run."""
        return self._writer.frames

    @property
    def size(self) -> int:
        """The size of the recording in bytes (written or buffered)."""
        return self._writer.size

    @property
    def acknowledged(self) -> LSN:
        """The last position acknowledged to the server; the file holds everything before it."""
        return self._writer.acknowledged


def record(path: str | os.PathLike[str], dsn: str | None = None, **kwargs: Any) -> None:
    """Record a slot's stream into ``path`` until ``end_lsn``, a signal or a failure.

    Blocks; takes :class:`Recorder`'s arguments. Ctrl-C and SIGTERM (in the
    main thread) stop it gracefully.
    """
    Recorder(path, dsn, **kwargs).run()
