"""Malformed and hostile streams from a fake server end with the right error, promptly.

The fake server (tests/fakeserver.py) speaks the protocol on a local socket
and sends a scripted stream. Each broken stream must end the consumer with
the right exception of the hierarchy within a couple of seconds, with no
thread of replicant (or of the fake) left behind, and without retrying what
a retry cannot fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import replicant
from replicant import ConnectionLost, DecodeError, ProtocolError, ServerError, SlotError
from replicant.changes import Begin, Commit, Event, Insert
from replicant.lsn import LSN
from replicant.runtime import Consumer

from .fakeserver import COLUMNS as T_COLUMNS
from .fakeserver import (
    RELID,
    Close,
    FakeServer,
    Pause,
    Session,
    begin,
    copy_data,
    error_response,
    insert,
    keepalive,
    message,
    ready_for_query,
    relation,
    transaction,
    xlogdata,
)
from .helpers import Recorder, assert_no_threads_left, running, wait_for

LSN0 = 0x1000000  # the fake slot's confirmed position, 0/1000000
PROMPT = 5.0  # seconds within which a broken stream must end the consumer


def assert_ended(server: FakeServer) -> None:
    """No thread of replicant left, and the fake closed with no thread or failure of its own."""
    assert_no_threads_left()
    server.assert_closed_cleanly()


def fake_consumer(
    server: FakeServer, callback: Callable[[Event], LSN | None], **kwargs: Any
) -> Consumer:
    """A consumer of ``server``'s slot (publication ``pub``, no slot creation, quick status)."""
    kwargs.setdefault("status_interval", 0.2)
    kwargs.setdefault("create_slot", False)
    return Consumer(server.dsn, slot=server.slot, publication="pub", callback=callback, **kwargs)


def consume(
    server: FakeServer, recorder: Recorder, **kwargs: object
) -> tuple[BaseException | None, float, Consumer]:
    """Run a consumer against ``server`` until it ends; return its failure and duration."""
    kwargs.setdefault("backoff_initial", 0.05)
    kwargs.setdefault("backoff_max", 0.2)
    consumer = fake_consumer(server, recorder, **kwargs)
    started = time.monotonic()
    consumer.start()
    try:
        consumer.join(timeout=45)
    except TimeoutError:
        consumer.stop(timeout=5)
        pytest.fail(f"the consumer hung; queries: {server.queries}")
    except BaseException as error:  # the failure under test
        return error, time.monotonic() - started, consumer
    return None, time.monotonic() - started, consumer


@pytest.fixture
def fake_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="replicant")
    yield caplog


def good_transaction() -> list[bytes]:
    return transaction(700, LSN0 + 0x100, [(1, "one"), (2, "two")])


# --- the fake itself works


def test_fake_server_streams_a_transaction() -> None:
    with FakeServer([Session(script=[*good_transaction(), keepalive(LSN0 + 0x200)])]) as server:
        recorder = Recorder()
        consumer = fake_consumer(server, recorder)
        with running(consumer, timeout=10):
            wait_for(lambda: any(isinstance(e, Commit) for e in recorder.events), 10, "commit")
        assert recorder.kinds() == ["Begin", "Relation", "Insert", "Insert", "Commit"]
        inserts = [e for e in recorder.events if isinstance(e, Insert)]
        assert [dict(e.new) for e in inserts] == [{"id": 1, "v": "one"}, {"id": 2, "v": "two"}]
        assert server.copy_done == 1, "a graceful stop ends with CopyDone"
        assert not server.unexpected, server.unexpected
        (command,) = server.start_commands()
        assert "0/1000000" in command and "fake" in command
        assert_ended(server)


# --- malformed data: ProtocolError / DecodeError, never retried


@pytest.mark.parametrize(
    ("name", "frames", "error", "words"),
    [
        (
            "xlogdata-header-truncated",
            [copy_data(b"w" + b"\0" * 5)],
            ProtocolError,
            "XLogData frame truncated",
        ),
        (
            "keepalive-wrong-size",
            [copy_data(b"k" + b"\0" * 3)],
            ProtocolError,
            "keepalive",
        ),
        (
            "unknown-frame-type",
            [copy_data(b"z" + b"\0" * 30)],
            ProtocolError,
            "unknown replication message type",
        ),
        (
            "unknown-pgoutput-message",
            [xlogdata(b"Z\0\0\0\0", LSN0 + 0x100)],
            DecodeError,
            "unknown pgoutput message type",
        ),
        (
            "pgoutput-insert-cut-short",
            [
                xlogdata(begin(LSN0 + 0x110, 9), LSN0 + 0x100),
                xlogdata(relation(RELID, "t", T_COLUMNS), 0),
                xlogdata(insert(RELID, ["1", "a long value"])[:-5], LSN0 + 0x101),
            ],
            DecodeError,
            "past the message's end",
        ),
        (
            "change-for-undescribed-relation",
            [
                xlogdata(begin(LSN0 + 0x110, 9), LSN0 + 0x100),
                xlogdata(insert(RELID + 1, ["1", "x"]), LSN0 + 0x101),
            ],
            DecodeError,
            "not described",
        ),
    ],
)
def test_malformed_stream_fails_promptly_without_retry(
    name: str,
    frames: list[bytes],
    error: type[Exception],
    words: str,
    fake_log: pytest.LogCaptureFixture,
) -> None:
    # Plenty of sessions: a retry would be served, and counted.
    # The pause lets the good transaction arrive in a read of its own.
    sessions = [Session(script=[*good_transaction(), Pause(0.3), *frames]) for _ in range(3)]
    with FakeServer(sessions) as server:
        recorder = Recorder()
        failure, elapsed, consumer = consume(server, recorder)
        assert isinstance(failure, error), f"{name}: {failure!r}"
        assert words in str(failure)
        assert elapsed < PROMPT, f"{name}: took {elapsed:.1f} s"
        assert server.connections == 1, "malformed data must not be retried"
        assert consumer.stats.reconnects == 0
        # The good transaction before the bad frame was delivered, whole.
        assert recorder.kinds()[:5] == ["Begin", "Relation", "Insert", "Insert", "Commit"]
        assert_ended(server)


# --- the connection breaks: ConnectionLost, retried


def test_frame_cut_short_is_connection_lost_and_retried_up_to_max_retries(
    fake_log: pytest.LogCaptureFixture,
) -> None:
    # A CopyData that announces 100 bytes, sends 20, and the server goes away.
    cut = b"d" + (104).to_bytes(4, "big") + b"w" + b"\0" * 19
    sessions = [Session(script=[*good_transaction(), cut, Close()])]
    with FakeServer(sessions) as server:
        failure, elapsed, _consumer = consume(server, Recorder(), max_retries=2)
        assert isinstance(failure, ConnectionLost), repr(failure)
        assert elapsed < PROMPT
        # The first connection, then two attempts that the server closes at once.
        assert server.connections == 3
        warnings = [r for r in fake_log.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, [r.getMessage() for r in warnings]
        assert_ended(server)


def test_frame_cut_short_without_reconnect(fake_log: pytest.LogCaptureFixture) -> None:
    cut = b"d" + (104).to_bytes(4, "big") + b"w" + b"\0" * 19
    sessions = [Session(script=[*good_transaction(), cut, Close(reset=True)]) for _ in range(2)]
    with FakeServer(sessions) as server:
        failure, elapsed, consumer = consume(server, Recorder(), reconnect=False)
        assert isinstance(failure, ConnectionLost), repr(failure)
        assert elapsed < PROMPT
        assert server.connections == 1
        assert consumer.stats.reconnects == 0
        assert_ended(server)


# --- ErrorResponse in the middle of the stream


def test_error_response_mid_stream_is_a_server_error(fake_log: pytest.LogCaptureFixture) -> None:
    failing = error_response("XX000", "simulated internal error", detail="in the fake")
    sessions = [
        Session(script=[*good_transaction(), Pause(0.3), failing + ready_for_query()])
        for _ in range(3)
    ]
    with FakeServer(sessions) as server:
        recorder = Recorder()
        failure, elapsed, _consumer = consume(server, recorder)
        assert isinstance(failure, ServerError) and not isinstance(failure, SlotError)
        assert failure.sqlstate == "XX000"
        assert "simulated internal error" in str(failure)
        assert failure.detail == "in the fake"
        assert elapsed < PROMPT
        assert server.connections == 1, "a server error must not be retried"
        assert recorder.kinds() == ["Begin", "Relation", "Insert", "Insert", "Commit"]
        assert_ended(server)


def test_admin_shutdown_mid_transaction_reconnects_and_resends_it(
    fake_log: pytest.LogCaptureFixture,
) -> None:
    # The first connection dies inside a transaction (FATAL 57P01, as when an
    # administrator terminates the walsender); the second sends it whole.
    whole = transaction(800, LSN0 + 0x100, [(1, "one"), (2, "two"), (3, "three")])
    half = whole[:3]  # Begin, Relation, first Insert
    shutdown = error_response(
        "57P01", "terminating connection due to administrator command", "FATAL"
    )
    sessions = [
        Session(script=[*half, Pause(0.3), shutdown, Close()]),
        Session(script=[*whole, keepalive(LSN0 + 0x200)]),
    ]
    with FakeServer(sessions) as server:
        recorder = Recorder(commits_only=True)
        consumer = fake_consumer(server, recorder, backoff_initial=0.05)
        with running(consumer, timeout=10):
            wait_for(lambda: any(isinstance(e, Commit) for e in recorder.events), 10, "commit")
            stats = consumer.stats
        assert server.connections == 2
        assert stats.reconnects == 1
        kinds = recorder.kinds()
        # The half before the cut (delivered, never committed), then the
        # whole transaction again from its Begin.
        assert kinds == [
            *["Begin", "Relation", "Insert"],
            *["Begin", "Relation", "Insert", "Insert", "Insert", "Commit"],
        ]
        begins = [e for e in recorder.events if isinstance(e, Begin)]
        assert begins[0].xid == begins[1].xid == 800
        # The second stream starts where the slot stood: before the cut transaction.
        _, second = server.start_commands()
        assert "0/1000000" in second, second
        (warning,) = [r for r in fake_log.records if r.levelno == logging.WARNING]
        assert warning.name == "replicant"
        assert_ended(server)


def test_reconnect_warning_gives_the_servers_reason(fake_log: pytest.LogCaptureFixture) -> None:
    # When the server says why it ends the connection (FATAL 57P01 and then
    # the socket closes), the reconnect warning carries that reason rather
    # than only "server closed the connection unexpectedly".
    shutdown = error_response(
        "57P01", "terminating connection due to administrator command", "FATAL"
    )
    sessions = [
        Session(script=[*good_transaction(), Pause(0.3), shutdown, Close()]),
        Session(script=[keepalive(LSN0 + 0x200)]),
    ]
    with FakeServer(sessions) as server:
        consumer = fake_consumer(server, Recorder(), backoff_initial=0.05)
        with running(consumer, timeout=10):
            wait_for(lambda: server.connections == 2, 10, "the reconnect")
        (warning,) = [r for r in fake_log.records if r.levelno == logging.WARNING]
        assert "administrator command" in warning.getMessage(), warning.getMessage()
        assert_ended(server)


def test_relation_cache_is_reset_on_reconnect(fake_log: pytest.LogCaptureFixture) -> None:
    # After a reconnect the decoder must forget the relations of the old
    # stream: a change for a relation the new stream has not described is
    # malformed, not decoded with a stale description.
    first = transaction(900, LSN0 + 0x100, [(1, "one")])
    lost = error_response("57P01", "terminating connection due to administrator command", "FATAL")
    undescribed = transaction(901, LSN0 + 0x200, [(2, "two")], with_relation=False)
    sessions = [
        Session(script=[*first, lost, Close()]),
        Session(script=undescribed),
        Session(script=undescribed),
    ]
    with FakeServer(sessions) as server:
        recorder = Recorder()
        failure, elapsed, _consumer = consume(server, recorder)
        assert isinstance(failure, DecodeError), repr(failure)
        assert "not described" in str(failure)
        assert server.connections == 2
        assert elapsed < PROMPT
        assert_ended(server)


# --- the watchdog


def test_silent_server_trips_receive_timeout(fake_log: pytest.LogCaptureFixture) -> None:
    # The server accepts the stream and then says nothing at all, not even
    # a keepalive, and does not answer a status update that asks for one.
    sessions = [Session(script=[*good_transaction()], silent=True) for _ in range(2)]
    with FakeServer(sessions) as server:
        failure, elapsed, _consumer = consume(
            server, Recorder(), reconnect=False, receive_timeout=1.0
        )
        assert isinstance(failure, ConnectionLost), repr(failure)
        assert "receive_timeout" in str(failure)
        assert 0.9 <= elapsed < 1.0 + PROMPT, elapsed
        assert server.connections == 1
        assert_ended(server)


def test_silent_server_is_left_for_a_new_connection(fake_log: pytest.LogCaptureFixture) -> None:
    sessions = [
        Session(script=[*good_transaction()], silent=True),
        Session(script=[*transaction(701, LSN0 + 0x300, [(3, "three")])]),
    ]
    with FakeServer(sessions) as server:
        recorder = Recorder()
        consumer = fake_consumer(server, recorder, backoff_initial=0.05, receive_timeout=1.0)
        with running(consumer, timeout=10):
            started = time.monotonic()
            wait_for(
                lambda: sum(isinstance(e, Commit) for e in recorder.events) == 2, 10, "2 commits"
            )
            elapsed = time.monotonic() - started
            assert consumer.stats.reconnects == 1
        assert server.connections == 2
        assert elapsed < 1.0 + PROMPT
        # The first transaction was acknowledged, so the second stream starts after it.
        second = server.start_commands()[1]
        assert str(LSN(LSN0 + 0x100 + 4)) in second, second
        assert_ended(server)


# --- "replication slot is active": retried, unless reconnect=False


def slot_active_error() -> bytes:
    return error_response("55006", 'replication slot "fake" is active for PID 4321', detail=None)


def test_slot_active_is_retried(fake_log: pytest.LogCaptureFixture) -> None:
    sessions = [
        Session(start_error=slot_active_error()),
        Session(start_error=slot_active_error()),
        Session(script=[*good_transaction()]),
    ]
    with FakeServer(sessions) as server:
        recorder = Recorder()
        consumer = fake_consumer(server, recorder, backoff_initial=0.05)
        with running(consumer, timeout=10):
            wait_for(lambda: any(isinstance(e, Commit) for e in recorder.events), 10, "commit")
        assert server.connections == 3
        assert consumer.stats.reconnects == 2
        messages = [r.getMessage() for r in fake_log.records if r.levelno == logging.WARNING]
        assert len(messages) == 2 and all("active for PID" in m for m in messages), messages
        assert_ended(server)


def test_slot_active_without_reconnect_is_a_slot_error(fake_log: pytest.LogCaptureFixture) -> None:
    sessions = [Session(start_error=slot_active_error()) for _ in range(2)]
    with FakeServer(sessions) as server:
        failure, _elapsed, _ = consume(server, Recorder(), reconnect=False)
        assert isinstance(failure, SlotError), repr(failure)
        assert "active for PID" in str(failure)
        assert server.connections == 1
        assert_ended(server)


def test_slot_gone_on_reconnect_is_not_recreated(fake_log: pytest.LogCaptureFixture) -> None:
    lost = error_response("57P01", "terminating connection due to administrator command", "FATAL")
    sessions = [
        Session(script=[*good_transaction(), Pause(0.5), lost, Close()]),
        Session(slot=None),
        Session(slot=None),
    ]
    with FakeServer(sessions) as server:
        # create_slot=True: a slot that vanished must still not be recreated.
        failure, _elapsed, _ = consume(server, Recorder(), create_slot=True)
        assert isinstance(failure, SlotError), repr(failure)
        assert "dropped" in str(failure)
        assert server.connections == 2
        assert not any("CREATE_REPLICATION_SLOT" in q for _, q in server.queries)
        assert_ended(server)


def test_unknown_message_from_backend_outside_copy(fake_log: pytest.LogCaptureFixture) -> None:
    # A backend message libpq does not expect in COPY BOTH mode ('Z' out of
    # place) must not hang the reader.
    sessions = [Session(script=[*good_transaction(), message(b"Z", b"I")]) for _ in range(2)]
    with FakeServer(sessions) as server:
        failure, elapsed, _ = consume(server, Recorder(), reconnect=False)
        assert failure is not None
        assert isinstance(failure, (ProtocolError, ConnectionLost, ServerError)), repr(failure)
        assert elapsed < PROMPT
        assert_ended(server)


def test_run_reconnects_then_fails_on_malformed_data(fake_log: pytest.LogCaptureFixture) -> None:
    # run() takes the same reconnect settings as Consumer.
    shutdown = error_response(
        "57P01", "terminating connection due to administrator command", "FATAL"
    )
    sessions = [
        Session(script=[*good_transaction(), Pause(0.3), shutdown, Close()]),
        Session(script=[Pause(0.2), copy_data(b"w\0")]),
        Session(script=[]),
    ]
    with FakeServer(sessions) as server:
        recorder = Recorder(commits_only=True)
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="XLogData frame truncated"):
            replicant.run(
                server.dsn,
                slot="fake",
                publication="pub",
                callback=recorder,
                create_slot=False,
                status_interval=0.2,
                reconnect=True,
                max_retries=5,
                backoff_initial=0.05,
                backoff_max=0.1,
                receive_timeout=10.0,
            )
        assert time.monotonic() - started < PROMPT
        assert server.connections == 2
        assert recorder.kinds() == ["Begin", "Relation", "Insert", "Insert", "Commit"]
        # The second stream resumed after the acknowledged commit.
        assert str(LSN(LSN0 + 0x104)) in server.start_commands()[1]
        assert_ended(server)
