"""Kafka: every change as a message keyed by its row's key, at least once, idempotent producer.

:class:`KafkaSink` publishes row changes (and truncates, logical decoding
messages, snapshot reads) with ``confluent-kafka`` (librdkafka), the
``kafka`` extra: ``pip install 'replicant[kafka]'``.

The guarantee rests on delivery reports: ``flush()`` waits until the broker
has confirmed every message produced so far (``acks=all``, idempotent
producer) and only then vouches for the LSN of the last event written, so
the :class:`~replicant.sinks.SinkWriter` acknowledges to the server only
what the brokers hold. A failed delivery (the producer retries transient
errors itself, until ``message.timeout.ms``) ends the stream with a
:class:`KafkaSinkError`; a restart sends again everything after the last
acknowledged position: at least once, duplicates only of what was
produced after the last acknowledgement.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

from replicant import changes
from replicant.changes import (
    Begin,
    BeginPrepare,
    Commit,
    Delete,
    Event,
    Insert,
    Message,
    RawChange,
    Relation,
    Row,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
    json_value,
)
from replicant.envelopes import DebeziumEnvelope, Envelope, make_envelope
from replicant.errors import ConfigurationError, ReplicantError
from replicant.lsn import LSN

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka import Message as KafkaMessage

__all__ = ["KafkaSink", "KafkaSinkError"]

logger = logging.getLogger("replicant")

_READ: Final[type[Any] | None] = getattr(changes, "Read", None)
_ROW_EVENTS: Final = (Insert, Update, Delete) if _READ is None else (Insert, Update, Delete, _READ)

# What the guarantee needs: a user's producer options may not change these.
_FIXED: Final = {
    "enable.idempotence": ("true", "True", True, "1", 1),
    "acks": ("all", "-1", -1),
}
_OURS: Final = frozenset({"delivery.report.only.error", "on_delivery", "error_cb", "logger"})

# Characters Kafka allows in a topic name; the rest of a table's name becomes '_'.
_TOPIC_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9._-]")
_MAX_TOPIC: Final = 249

_Headers = list[tuple[str, "str | bytes | None"]]

# How many messages between polls of the producer (to serve its callbacks).
_POLL_EVERY: Final = 1024


class KafkaSinkError(ReplicantError):
    """Kafka refused or lost a message, or cannot be reached: the stream ends.

    Nothing after the last message the brokers confirmed is acknowledged,
    so a restart sends it again.
    """


class KafkaSink:
    """Publishes each change to Kafka, keyed by the row's key; acknowledged once delivered.

    Topics: ``topic_prefix.schema.table`` per table (characters Kafka does
    not allow in a topic name become ``_``), or every message to ``topic``
    when given. Logical decoding messages go to ``topic_prefix.message``
    (keyed by their prefix) unless ``messages`` is false; raw payloads of
    plugins replicant does not decode to ``topic_prefix.raw``.

    Keys: the row's replica-identity columns as a JSON object
    (``{"id":42}``; from the old row for deletes, the new row otherwise), so
    one row's changes stay in order in one partition. ``keys`` maps
    ``"schema.table"`` to the key columns to use instead (for REPLICA
    IDENTITY FULL, where every column is part of the identity; or a table
    without one, whose messages otherwise have no key). Truncates have no key.

    Values: the ``envelope``: ``"replicant"`` (each event's ``to_dict()``
    as JSON) or ``"debezium"`` (Debezium's change-event value; ``name`` and
    ``database`` fill its ``source.name`` and ``source.db``), or an
    :class:`~replicant.envelopes.Envelope`. With ``tombstones``, a delete is
    followed by a message with the same key and no value (for compacted topics).

    Headers, on every message: ``replicant.lsn`` (the change's LSN),
    ``replicant.xid``, ``replicant.commit_lsn`` (where the transaction's
    commit record is), ``replicant.commit_time`` (ISO 8601),
    ``replicant.tx.seq`` (1 for the first message of the transaction, 2
    for the next...) and, on its last message, ``replicant.tx.last: 1``.
    A streamed transaction (pgoutput's ``streaming``) is held in memory
    until it commits and published then, so aborted changes are never
    published; two-phase transactions are refused.

    The producer: ``enable.idempotence=true`` and ``acks=all`` always,
    ``partitioner=murmur2_random`` (the Java client's choice of partition
    for a key) unless ``producer_options`` (any librdkafka setting) says
    otherwise. ``flush()`` waits up to ``flush_timeout`` seconds for the
    outstanding deliveries and vouches for nothing new when some remain.
    The brokers are asked for their metadata when the sink is made: a
    cluster unreachable for ``connect_timeout`` seconds raises
    :class:`KafkaSinkError` at once, before anything is streamed.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic_prefix: str = "replicant",
        *,
        topic: str | None = None,
        envelope: str | Envelope = "replicant",
        name: str | None = None,
        database: str | None = None,
        keys: Mapping[str, Sequence[str]] | None = None,
        tombstones: bool = False,
        messages: bool = True,
        producer_options: Mapping[str, Any] | None = None,
        flush_timeout: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            import confluent_kafka
        except ImportError:
            raise ConfigurationError(
                "the Kafka sink needs confluent-kafka: pip install 'replicant[kafka]'"
            ) from None
        if not bootstrap_servers:
            raise ConfigurationError("the Kafka sink needs bootstrap servers (host:port)")
        if not flush_timeout > 0 or not connect_timeout > 0:
            raise ConfigurationError("flush_timeout and connect_timeout must be more than 0")
        if topic is not None and not topic:
            raise ConfigurationError("topic must not be empty")
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.topic = topic
        self.flush_timeout = float(flush_timeout)
        self.tombstones = tombstones
        self.messages = messages
        if isinstance(envelope, str):
            options: dict[str, Any] = {}
            if envelope == "debezium":
                options = {"name": name or topic_prefix or "replicant", "database": database}
            self.envelope: Envelope = make_envelope(envelope, **options)
        elif isinstance(envelope, Envelope):
            self.envelope = envelope
        else:
            raise ConfigurationError(f"{envelope!r} is not an envelope")
        self._keys = {
            table: (columns,) if isinstance(columns, str) else tuple(columns)
            for table, columns in (keys or {}).items()
        }

        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
        for option, value in (producer_options or {}).items():
            if option in _OURS:
                raise ConfigurationError(f"the producer option {option} is the Kafka sink's own")
            allowed = _FIXED.get(option)
            if allowed is not None and value not in allowed:
                raise ConfigurationError(
                    f"{option}={value!r}: the Kafka sink's guarantee needs "
                    "enable.idempotence=true and acks=all"
                )
            config[option] = value
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                # Successful deliveries are counted by flush() itself: only
                # failures need a callback, which keeps the per-message cost low.
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
                "error_cb": self._on_error,
                "logger": logging.getLogger("replicant.kafka"),
            }
        )
        self._failure: KafkaSinkError | None = None
        try:
            self._producer: Producer = confluent_kafka.Producer(config)
        except confluent_kafka.KafkaException as error:
            raise ConfigurationError(f"the Kafka producer refused its settings: {error}") from None
        try:
            self._producer.list_topics(timeout=connect_timeout)
        except confluent_kafka.KafkaException as error:
            self._producer.close()
            raise KafkaSinkError(
                f"cannot reach the Kafka brokers at {bootstrap_servers} within "
                f"{connect_timeout:g} s: {_describe(error)}"
            ) from None
        self._exception = confluent_kafka.KafkaException

        self._last = LSN(0)  # the highest LSN written
        self._vouched = LSN(0)  # the highest LSN a flush vouched for
        self._produced = 0
        # The current transaction: its headers, how many messages so far, and
        # the last message, held back until the next one or the commit shows
        # whether it is the transaction's last.
        self._tx_headers: _Headers = []
        self._tx_seq = 0
        self._in_tx = False  # between a Begin (or a streamed commit) and its end
        self._held: tuple[str, bytes | None, bytes | None, _Headers, LSN] | None = None
        # Streamed transactions not committed yet: xid -> their data events.
        self._streams: dict[int, list[Event]] = {}
        self._stream_xid: int | None = None  # inside a streamed block of this transaction
        self._topics: dict[tuple[str, str], str] = {}
        self._key_columns: dict[int, tuple[Relation, tuple[str, ...] | None, str | None]] = {}
        self._closed = False

    def __repr__(self) -> str:
        where = self.topic if self.topic is not None else f"{self.topic_prefix}.*"
        return f"<KafkaSink {self.bootstrap_servers} {where} {self.envelope.name}>"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaSink:
        """A sink for ``kafka://host:port[,host:port...]/prefix?option=value&...``.

        The path is the topic prefix (``replicant`` when there is none).
        Query options: ``topic``, ``envelope``, ``name``, ``database``,
        ``tombstones``, ``messages`` (``true``/``false``),
        ``flush_timeout``, ``connect_timeout``; any other is a producer
        option (``compression.type=lz4``). Keyword ``options`` are the
        constructor's and win over the URL's.
        """
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise ConfigurationError(f"not a Kafka URL (kafka://host:port/prefix): {url!r}")
        servers = unquote(parts.netloc)
        prefix = unquote(parts.path.lstrip("/"))
        args: dict[str, Any] = {}
        producer: dict[str, Any] = dict(options.pop("producer_options", None) or {})
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if key in ("topic", "envelope", "name", "database"):
                args[key] = value
            elif key in ("tombstones", "messages"):
                args[key] = _boolean(key, value)
            elif key in ("flush_timeout", "connect_timeout"):
                try:
                    args[key] = float(value)
                except ValueError:
                    raise ConfigurationError(f"{key} must be a number of seconds") from None
            else:
                producer.setdefault(key, value)
        args.update(options)
        return cls(servers, prefix or "replicant", producer_options=producer, **args)

    # -- the producer's callbacks (from poll() and flush(), in our calls)

    def _on_delivery(self, error: KafkaError | None, message: KafkaMessage) -> None:
        if error is None or self._failure is not None:
            return
        try:
            where = f" for topic {message.topic()}"
        except Exception:  # a message the producer failed as a whole has no topic to give
            where = ""
        self._failure = KafkaSinkError(
            f"Kafka did not take a message{where}: {_describe(error)}; "
            "nothing after the last delivered change is acknowledged"
        )

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            if self._failure is None:
                self._failure = KafkaSinkError(
                    f"the Kafka producer failed: {_describe(error)}; nothing after the last "
                    "delivered change is acknowledged"
                )
        else:
            # Transport trouble (a broker down): the producer retries on its own.
            logger.debug("Kafka: %s", error.str())

    def _fail(self, error: BaseException) -> NoReturn:
        if self._failure is None:
            self._failure = KafkaSinkError(
                f"the Kafka producer failed: {_describe(error)}; nothing after the last "
                "delivered change is acknowledged"
            )
        raise self._failure from None

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- the Sink protocol

    def write(self, event: Event) -> None:
        """Publish a data event (or hold it for its transaction's end); note framing events."""
        lsn = event.lsn
        if lsn > self._last:
            self._last = lsn
        cls = type(event)
        if cls in _ROW_EVENTS or cls is Truncate:
            if self._stream_xid is not None:
                self._streams.setdefault(self._stream_xid, []).append(event)
                return
            self._publish(event)
        elif cls is Begin:
            assert isinstance(event, Begin)
            self._begin(event.xid, event.final_lsn, event.commit_time)
            self.envelope.value(event)
        elif cls is Commit:
            assert isinstance(event, Commit)
            self._end()
            self.envelope.value(event)
        elif cls is Message:
            assert isinstance(event, Message)
            if not self.messages:
                return
            if event.transactional and self._stream_xid is not None:
                self._streams.setdefault(self._stream_xid, []).append(event)
                return
            self._publish(event)
        elif cls is StreamStart:
            assert isinstance(event, StreamStart)
            self._stream_xid = _xid(event)
            if event.first_segment:
                # The transaction from its start: after a reconnect the server
                # streams it again, so what was held of it goes.
                self._streams.pop(self._stream_xid, None)
        elif cls is StreamStop:
            self._stream_xid = None
        elif cls is StreamAbort:
            assert isinstance(event, StreamAbort)
            self._abort(event)
        elif cls is StreamCommit:
            assert isinstance(event, StreamCommit)
            self._stream_commit(event)
        elif cls is BeginPrepare:
            raise ConfigurationError(
                "the Kafka sink does not take two-phase transactions (a prepared transaction "
                "may still roll back); stream without two_phase"
            )
        elif cls is RawChange:
            self._publish(event)
        else:
            self.envelope.value(event)  # relations, origins: context only
        self._check()

    def flush(self) -> LSN | None:
        """Wait for every outstanding delivery; vouch for what the brokers confirmed.

        Returns the highest LSN written when every message produced so far
        was delivered, less the transaction still open (its last message is
        held back, and a streamed transaction is held until it commits); the
        previous LSN when some deliveries are still outstanding after
        ``flush_timeout``. Raises :class:`KafkaSinkError` when one failed.
        """
        self._check()
        try:
            remaining = self._producer.flush(self.flush_timeout)
        except (SystemError, self._exception) as error:
            # After a fatal error the client's flush may fail itself (its
            # callbacks have recorded why, usually).
            self._fail(error)
        self._check()
        if remaining:
            logger.info(
                "Kafka: %d messages not yet confirmed after %g s; acknowledging nothing new",
                remaining,
                self.flush_timeout,
            )
            return self._vouched or None
        candidate = self._last
        held = self._held
        if held is not None:
            candidate = min(candidate, LSN(max(0, int(held[4]) - 1)))
        for buffered in self._streams.values():
            if buffered:
                candidate = min(candidate, LSN(max(0, int(buffered[0].lsn) - 1)))
        if candidate > self._vouched:
            self._vouched = candidate
        return self._vouched or None

    def close(self) -> None:
        """Drop what was not delivered (it is not acknowledged) and close the producer."""
        if self._closed:
            return
        self._closed = True
        # A producer that failed fatally raises from each call: it is being
        # thrown away, and what it failed to deliver was not acknowledged.
        with contextlib.suppress(SystemError, self._exception):
            self._producer.purge()
        with contextlib.suppress(SystemError, self._exception):
            self._producer.poll(0)
        with contextlib.suppress(SystemError, self._exception):
            self._producer.close()

    # -- transactions

    def _begin(self, xid: int | None, commit_lsn: LSN | None, commit_time: Any) -> None:
        # A message still held belongs to a transaction whose commit never
        # came (the connection was lost and the server sends it again from
        # its start): it is dropped, and it was never vouched for.
        self._held = None
        self._in_tx = True
        headers: _Headers = []
        if xid is not None:
            headers.append(("replicant.xid", str(xid)))
        if commit_lsn is not None:
            headers.append(("replicant.commit_lsn", str(commit_lsn)))
        if commit_time is not None:
            headers.append(("replicant.commit_time", commit_time.isoformat()))
        self._tx_headers = headers
        self._tx_seq = 0

    def _end(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            topic, key, value, headers, _ = held
            headers.append(("replicant.tx.last", "1"))
            self._produce(topic, key, value, headers)
        self._tx_headers = []
        self._tx_seq = 0
        self._in_tx = False

    def _abort(self, event: StreamAbort) -> None:
        xid = _xid(event)
        buffered = self._streams.get(xid)
        if buffered is None:
            return
        if event.subxid == event.xid:
            del self._streams[xid]
        else:
            self._streams[xid] = [e for e in buffered if e.xid != event.subxid]

    def _stream_commit(self, event: StreamCommit) -> None:
        buffered = self._streams.pop(_xid(event), [])
        self._begin(event.xid, event.commit_lsn, event.commit_time)
        if isinstance(self.envelope, DebeziumEnvelope):
            self.envelope.begin_transaction(event.xid, event.commit_time)
        for data in buffered:
            self._publish(data)
        self._end()
        self.envelope.value(event)

    # -- messages

    def _publish(self, event: Event) -> None:
        cls = type(event)
        if cls is Truncate:
            assert isinstance(event, Truncate)
            for truncated in event.relations:
                record = self.envelope.truncate_value(event, truncated)
                topic = self._topic_for(truncated.schema, truncated.table)
                self._emit(topic, None, record, event.lsn)
            return
        value = self.envelope.value(event)
        if value is None:
            return
        if cls is Message:
            assert isinstance(event, Message)
            prefix_key = _encode_key({"prefix": event.prefix})
            topic = self.topic or self._named("message")
            if not event.transactional:
                self._produce(topic, prefix_key, value, [("replicant.lsn", str(event.lsn))])
                return
            self._emit(topic, prefix_key, value, event.lsn)
            return
        if cls is RawChange:
            self._produce(
                self.topic or self._named("raw"), None, value, [("replicant.lsn", str(event.lsn))]
            )
            return
        row_event: Any = event
        relation: Relation = row_event.relation
        row: Row = row_event.old if cls is Delete else row_event.new
        key = self._key(relation, row)
        topic = self._topic_for(relation.schema, relation.table)
        self._emit(topic, key, value, event.lsn)
        if cls is Delete and self.tombstones and key is not None:
            self._emit(topic, key, None, event.lsn)

    def _emit(self, topic: str, key: bytes | None, value: bytes | None, lsn: LSN) -> None:
        if not self._in_tx:  # a snapshot read: no transaction to frame
            self._produce(topic, key, value, [("replicant.lsn", str(lsn))])
            return
        # Within a transaction: produce the held message, hold this one.
        self._tx_seq += 1
        headers: _Headers = [("replicant.lsn", str(lsn)), ("replicant.tx.seq", str(self._tx_seq))]
        headers += self._tx_headers
        held = self._held
        self._held = (topic, key, value, headers, lsn)
        if held is not None:
            self._produce(held[0], held[1], held[2], held[3])

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: _Headers
    ) -> None:
        producer = self._producer
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                # The producer's queue is full: wait for deliveries to make room.
                self._poll(0.1)
                self._check()
            except self._exception as error:
                self._failure = KafkaSinkError(
                    f"Kafka refused a message for topic {topic}: {_describe(error)}; "
                    "nothing after the last delivered change is acknowledged"
                )
                raise self._failure from None
        self._produced += 1
        if not self._produced % _POLL_EVERY:
            self._poll(0)

    def _poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except (SystemError, self._exception) as error:
            self._fail(error)

    # -- topics and keys

    def _named(self, suffix: str) -> str:
        return _topic_name(f"{self.topic_prefix}.{suffix}" if self.topic_prefix else suffix)

    def _topic_for(self, schema: str, table: str) -> str:
        if self.topic is not None:
            return self.topic
        topic = self._topics.get((schema, table))
        if topic is None:
            name = f"{schema}.{table}"
            if self.topic_prefix:
                name = f"{self.topic_prefix}.{name}"
            topic = self._topics[(schema, table)] = _topic_name(name)
        return topic

    def _key(self, relation: Relation, row: Row) -> bytes | None:
        entry = self._key_columns.get(id(relation))
        if entry is None or entry[0] is not relation:
            columns = self._columns_for(relation)
            # One integer column (the usual primary key): its JSON is written
            # directly, skipping the encoder.
            single = None
            if columns is not None and len(columns) == 1:
                single = "{" + _encode_json(columns[0]) + ":"
            entry = (relation, columns, single)
            self._key_columns[id(relation)] = entry
        _, columns, single = entry
        if columns is None:
            return None
        try:
            if single is not None:
                value = row[columns[0]]
                if type(value) is int:
                    return (single + str(value) + "}").encode()
            return _encode_key({name: json_value(row[name]) for name in columns})
        except KeyError as missing:
            raise ConfigurationError(
                f"the key column {missing} is not in this change of "
                f"{relation.schema}.{relation.table} (keys= names columns the row lacks)"
            ) from None

    def _columns_for(self, relation: Relation) -> tuple[str, ...] | None:
        chosen = self._keys.get(f"{relation.schema}.{relation.table}")
        if chosen is not None:
            return chosen or None
        columns = relation.key_columns
        if relation.replica_identity == "full" and columns:
            logger.warning(
                "%s.%s has REPLICA IDENTITY FULL: its Kafka key is every column; pass "
                "keys={'%s.%s': (...)} to key it by its primary key",
                relation.schema,
                relation.table,
                relation.schema,
                relation.table,
            )
        return columns or None


# A JSON encoder made once (json.dumps with options builds one per call).
_encode_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


def _encode_key(key: dict[str, Any]) -> bytes:
    return _encode_json(key).encode()


def _xid(event: Event) -> int:
    # Streamed transactions always carry their xid; -1 stands for a missing one.
    return -1 if event.xid is None else event.xid


def _topic_name(name: str) -> str:
    safe = _TOPIC_UNSAFE.sub("_", name)
    if len(safe) > _MAX_TOPIC or safe in (".", ".."):
        raise ConfigurationError(f"{name!r} cannot be a Kafka topic name (249 characters at most)")
    return safe


def _describe(error: BaseException | KafkaError) -> str:
    # A KafkaException carries a KafkaError: its text, without the repr noise.
    inner = error.args[0] if isinstance(error, BaseException) and error.args else error
    text = getattr(inner, "str", None)
    return str(text()) if callable(text) else str(inner)


def _boolean(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")
