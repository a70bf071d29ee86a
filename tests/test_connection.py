"""ReplicationConnection and ReplicationStream against real servers."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from replicant import (
    LSN,
    ConfigurationError,
    ConnectionLost,
    ReplicantError,
    ServerError,
    SlotError,
)
from replicant.connection import ReplicationConnection, ReplicationStream, mask_dsn
from replicant.protocol import PrimaryKeepalive, XLogData

from .conftest import Database


def pgoutput_options(publication: str = "pub") -> dict[str, str]:
    return {"proto_version": "1", "publication_names": f'"{publication}"'}


@pytest.fixture
def conn(db: Database) -> Iterator[ReplicationConnection]:
    with ReplicationConnection.connect(db.dsn) as connection:
        yield connection


@pytest.fixture
def table(db: Database) -> str:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    return "t"


def read_xlogdata(stream: ReplicationStream, count: int, timeout: float = 30.0) -> list[XLogData]:
    """Read until ``count`` XLogData frames arrived (keepalives are skipped)."""
    frames: list[XLogData] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {len(frames)} of {count} frames arrived"
        frames += [f for f in stream.read(0.5) if isinstance(f, XLogData)]
    return frames


def slot_row(db: Database, slot: str) -> tuple[str | None, bool]:
    rows = db.query(
        "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    return rows[0]


def wait_inactive(db: Database, slot: str) -> None:
    deadline = time.monotonic() + 10
    while slot_row(db, slot)[1]:
        assert time.monotonic() < deadline, "slot stayed active"
        time.sleep(0.05)


# --- connecting


def test_connect_forms(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    params = db.cluster.params_for(db.dbname)
    uri = f"postgresql://{params['user']}@{params['host']}:{params['port']}/{db.dbname}"
    for make in (
        lambda: ReplicationConnection.connect(db.dsn),
        lambda: ReplicationConnection.connect(uri),
        lambda: ReplicationConnection.connect(**params),
        lambda: ReplicationConnection.connect(
            "dbname=wrong",
            dbname=db.dbname,
            host=params["host"],
            port=params["port"],
            user=params["user"],
        ),
    ):
        with make() as connection:
            assert connection.identify_system().dbname == db.dbname
    monkeypatch.setenv("PGHOST", params["host"])
    monkeypatch.setenv("PGPORT", str(params["port"]))
    monkeypatch.setenv("PGUSER", params["user"])
    monkeypatch.setenv("PGDATABASE", db.dbname)
    with ReplicationConnection.connect() as connection:
        assert connection.identify_system().dbname == db.dbname
    assert connection.closed


def test_identify_system(conn: ReplicationConnection, db: Database) -> None:
    info = conn.identify_system()
    assert info.system_id.isdigit()
    assert info.timeline == 1
    assert isinstance(info.xlogpos, LSN) and info.xlogpos > 0
    assert info.dbname == db.dbname
    assert conn.server_version // 10000 == db.cluster.version
    (current,) = db.query("SELECT pg_current_wal_lsn()::text")[0]
    assert info.xlogpos <= LSN(current)


def test_unreachable_server_is_connection_lost() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionLost, match="could not connect"):
        ReplicationConnection.connect(host="127.0.0.1", port=port, connect_timeout=2)


def test_missing_database_is_server_error(db: Database) -> None:
    with pytest.raises(ServerError, match="does not exist") as info:
        ReplicationConnection.connect(db.cluster.dsn_for("no_such_db"))
    assert info.value.sqlstate == "3D000"


def test_repr_and_mask_hide_password(db: Database) -> None:
    with ReplicationConnection.connect(db.dsn, password="s3cret") as connection:
        assert "s3cret" not in repr(connection)
        assert "password=***" in repr(connection)
    assert "s3cret" not in mask_dsn("host=x password=s3cret")
    assert "s3cret" not in mask_dsn("postgresql://u:s3cret@h/db")


# --- slots


def test_create_read_drop_persistent(conn: ReplicationConnection, db: Database) -> None:
    created = conn.create_slot("s_persist")
    assert created.name == "s_persist" and created.plugin == "pgoutput"
    assert isinstance(created.consistent_point, LSN) and created.snapshot_name is None
    state = conn.read_slot("s_persist")
    assert state is not None
    assert (state.slot_type, state.plugin, state.database) == ("logical", "pgoutput", db.dbname)
    assert not state.temporary and not state.active and state.active_pid is None
    assert state.confirmed_flush_lsn == created.consistent_point
    assert state.restart_lsn is not None and state.restart_lsn <= created.consistent_point
    assert state.wal_status == "reserved"
    conn.drop_slot("s_persist")
    assert conn.read_slot("s_persist") is None
    with pytest.raises(SlotError, match="does not exist"):
        conn.drop_slot("s_persist")


def test_temporary_slot_goes_with_connection(db: Database) -> None:
    with ReplicationConnection.connect(db.dsn) as connection:
        connection.create_slot("s_temp", temporary=True)
        state = connection.read_slot("s_temp")
        assert state is not None and state.temporary and state.active
    deadline = time.monotonic() + 10
    while db.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 's_temp'"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_exported_snapshot_is_importable(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    db.execute("INSERT INTO t VALUES (1, 'before')")
    created = conn.create_slot("s_export", snapshot="export")
    assert created.snapshot_name
    db.execute("INSERT INTO t VALUES (2, 'after')")
    other = db.connect()
    try:
        with other.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SET TRANSACTION SNAPSHOT %s", (created.snapshot_name,))
            cur.execute("SELECT id FROM t ORDER BY id")
            assert cur.fetchall() == [(1,)]
    finally:
        other.close()


def test_used_snapshot(conn: ReplicationConnection, db: Database, table: str) -> None:
    db.execute("INSERT INTO t VALUES (1, 'before')")
    conn.create_slot("s_use", snapshot="use")
    db.execute("INSERT INTO t VALUES (2, 'after')")
    assert conn.execute("SELECT id FROM t ORDER BY id") == [(1,)]
    conn.commit()
    assert conn.execute("SELECT count(*) FROM t") == [(2,)]


def test_duplicate_slot_is_slot_error(conn: ReplicationConnection) -> None:
    conn.create_slot("s_dup")
    with pytest.raises(SlotError, match="already exists") as info:
        conn.create_slot("s_dup")
    assert info.value.sqlstate == "42710"


def test_invalid_slot_name_refused_before_sending(conn: ReplicationConnection) -> None:
    with pytest.raises(ConfigurationError, match="lower-case"):
        conn.create_slot('x"; DROP_REPLICATION_SLOT "y')
    with pytest.raises(ConfigurationError):
        conn.read_slot("Bad")
    assert conn.identify_system()  # the connection was never disturbed


def test_unknown_plugin_is_server_error(conn: ReplicationConnection) -> None:
    restricted = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_settings WHERE name = 'output_plugin_libraries'"
    )
    with pytest.raises(ServerError) as info:
        conn.create_slot("s_noplugin", plugin="no_such_plugin")
    if restricted:
        # Servers with an allow-list refuse an unlisted library before
        # looking for it; the error says which setting to change.
        assert info.value.sqlstate == "42501"
        assert '"output_plugin_libraries"' in str(info.value)
    else:
        assert info.value.sqlstate == "58P01"
    assert not isinstance(info.value, SlotError)


def test_a_plugin_taken_off_the_allow_list_is_a_prompt_final_error(
    make_cluster: Any, installation: Any
) -> None:
    import replicant

    if not installation.knows_setting("output_plugin_libraries"):
        pytest.skip("this server has no output plugin allow-list")
    if not installation.has_plugin("wal2json"):
        pytest.skip("no wal2json on this server")
    cluster = make_cluster()
    # A slot made while wal2json was allowed; then the list goes back to its default.
    cluster.execute("SELECT pg_create_logical_replication_slot('listed', 'wal2json')")
    cluster.execute("ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding")
    cluster.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while "wal2json" in cluster.execute("SHOW output_plugin_libraries")[0][0]:
        assert time.monotonic() < deadline, "the server kept the old setting"
        time.sleep(0.05)
    started = time.monotonic()
    for slot in ("listed", "unlisted"):  # reading the slot, creating one
        with pytest.raises(ServerError) as info:
            replicant.run(cluster.dsn_for(), slot=slot, plugin="wal2json", callback=print)
        assert info.value.sqlstate == "42501" and '"output_plugin_libraries"' in str(info.value)
    assert time.monotonic() - started < 10  # not retried as if the connection broke


# --- streaming


def test_stream_receives_changes_and_acknowledges(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_stream")
    stream = conn.start("s_stream", options=pgoutput_options(), plugin="pgoutput")
    assert conn.streaming
    db.execute("INSERT INTO t VALUES (1, 'one')")
    frames = read_xlogdata(stream, 4)  # Begin, Relation, Insert, Commit
    assert [f.data[:1] for f in frames] == [b"B", b"R", b"I", b"C"]
    assert all(isinstance(f.wal_start, LSN) for f in frames)
    assert b"one" in frames[2].data
    commit_end = frames[-1].wal_end
    stream.send_status(commit_end, commit_end, commit_end)
    deadline = time.monotonic() + 10
    while LSN(slot_row(db, "s_stream")[0] or "0/0") != commit_end:
        assert time.monotonic() < deadline, "confirmed_flush_lsn did not move"
        time.sleep(0.05)


def test_keepalive_on_request(conn: ReplicationConnection, table: str) -> None:
    conn.create_slot("s_keep")
    stream = conn.start("s_keep", options=pgoutput_options())
    stream.send_status(0, 0, 0, reply=True)
    deadline = time.monotonic() + 10
    keepalives: list[PrimaryKeepalive] = []
    while not keepalives:
        assert time.monotonic() < deadline, "no keepalive in answer to reply=True"
        keepalives = [f for f in stream.read(0.5) if isinstance(f, PrimaryKeepalive)]
    assert keepalives[0].wal_end > 0


def test_read_timeout_returns_empty(conn: ReplicationConnection, table: str) -> None:
    conn.create_slot("s_idle")
    stream = conn.start("s_idle", options=pgoutput_options())
    start = time.monotonic()
    frames = [f for f in stream.read(0.3) if isinstance(f, XLogData)]
    assert frames == []
    assert time.monotonic() - start < 5
    started = time.monotonic()
    stream.read(0)  # a zero timeout never waits
    assert time.monotonic() - started < 0.5
    assert stream.fileno() >= 0


def test_status_updates_from_another_thread_while_reading(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_threads")
    stream = conn.start("s_threads", options=pgoutput_options())
    db.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100000) g")
    errors: list[BaseException] = []
    done = threading.Event()
    sent = 0

    def sender() -> None:
        nonlocal sent
        try:
            while not done.is_set():
                stream.send_status(0, 0, 0)
                sent += 1
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    thread = threading.Thread(target=sender, name="test-status-sender")
    thread.start()
    try:
        frames = read_xlogdata(stream, 100_003, timeout=120)
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert sent > 100
    assert sum(1 for f in frames if f.data[:1] == b"I") == 100_000


def test_stop_leaves_connection_usable(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_stop")
    stream = conn.start("s_stop", options=pgoutput_options())
    db.execute("INSERT INTO t VALUES (1, 'one')")
    frames = read_xlogdata(stream, 4)
    stream.send_status(frames[-1].wal_end, frames[-1].wal_end, frames[-1].wal_end)
    stream.stop()
    assert stream.ended and not conn.streaming
    stream.stop()  # idempotent
    assert conn.identify_system().dbname == db.dbname
    state = conn.read_slot("s_stop")
    assert state is not None and state.confirmed_flush_lsn == frames[-1].wal_end
    with pytest.raises(Exception, match="ended"):
        stream.read(0.1)
    # The server allows one logical stream per connection: a second start is
    # refused clearly, and a new connection resumes after the acknowledged commit.
    with pytest.raises(ReplicantError, match="new connection"):
        conn.start("s_stop", options=pgoutput_options())
    db.execute("INSERT INTO t VALUES (2, 'two')")
    with ReplicationConnection.connect(db.dsn) as again_conn:
        stream = again_conn.start("s_stop", options=pgoutput_options())
        again = read_xlogdata(stream, 4)
        assert [f.data[:1] for f in again] == [b"B", b"R", b"I", b"C"]
        assert b"two" in again[2].data
        assert all(b"one" not in f.data for f in again)
        stream.stop()


def test_stop_in_the_middle_of_a_large_transaction(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_bigstop")
    stream = conn.start("s_bigstop", options=pgoutput_options())
    db.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 200000) g")
    read_xlogdata(stream, 1000)
    stream.stop(timeout=60)
    assert conn.identify_system()


def test_commands_refused_while_streaming(conn: ReplicationConnection, table: str) -> None:
    conn.create_slot("s_busy")
    stream = conn.start("s_busy", options=pgoutput_options())
    with pytest.raises(Exception, match="streaming"):
        conn.identify_system()
    stream.stop()


# --- errors


def test_missing_slot(conn: ReplicationConnection) -> None:
    with pytest.raises(SlotError, match="does not exist"):
        conn.start("no_such_slot")


def test_slot_in_use(conn: ReplicationConnection, db: Database, table: str) -> None:
    conn.create_slot("s_inuse")
    conn.start("s_inuse", options=pgoutput_options())
    with (
        ReplicationConnection.connect(db.dsn) as other,
        pytest.raises(SlotError, match="active") as info,
    ):
        other.start("s_inuse", options=pgoutput_options())
    assert info.value.sqlstate == "55006"


def test_slot_of_another_plugin(conn: ReplicationConnection, table: str) -> None:
    conn.create_slot("s_td")
    with pytest.raises(SlotError, match="uses plugin 'pgoutput', not 'wal2json'"):
        conn.start("s_td", options={"format-version": "2"}, plugin="wal2json")


def test_slot_of_another_database(conn: ReplicationConnection, db: Database) -> None:
    other_name = db.dbname + "_b"
    db.cluster.create_database(other_name)
    try:
        with ReplicationConnection.connect(db.cluster.dsn_for(other_name)) as other:
            other.create_slot("s_otherdb")
            with pytest.raises(SlotError, match="database"):
                conn.start("s_otherdb")
            other.drop_slot("s_otherdb")
    finally:
        db.cluster.drop_database(other_name)


def test_missing_publication_is_server_error_with_sqlstate(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_badpub")
    stream = conn.start("s_badpub", options={"proto_version": "1", "publication_names": '"nope"'})
    db.execute("INSERT INTO t VALUES (1, 'x')")  # the publication is looked up on decoding
    if conn.server_version >= 180000:
        # 18 only logs a WARNING and decodes on, publishing nothing: why the
        # consumer checks its publications before streaming.
        frames: list[XLogData] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            frames += [f for f in stream.read(0.2) if isinstance(f, XLogData)]
        assert not [f for f in frames if f.data[:1] == b"I"]
        return
    with pytest.raises(ServerError, match='publication "nope" does not exist') as info:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stream.read(0.2)
    assert info.value.sqlstate == "42704"
    assert not isinstance(info.value, SlotError)


def test_unknown_plugin_option(conn: ReplicationConnection, table: str) -> None:
    conn.create_slot("s_unknownopt")
    with pytest.raises(ServerError) as info:
        stream = conn.start("s_unknownopt", options={"proto_version": "1", "bogus": "1"})
        while True:
            stream.read(1.0)
    assert info.value.sqlstate is not None
    assert not isinstance(info.value, SlotError)


def test_terminated_walsender_is_connection_lost(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_kill")
    stream = conn.start("s_kill", options=pgoutput_options())
    db.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
        "s_kill",
    )
    with pytest.raises(ConnectionLost):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stream.read(0.5)
    assert stream.ended
    with pytest.raises(ConnectionLost):
        stream.send_status(0, 0, 0)


def test_closed_connection_is_connection_lost(conn: ReplicationConnection, table: str) -> None:
    conn.create_slot("s_closed")
    stream = conn.start("s_closed", options=pgoutput_options())
    conn.close()
    with pytest.raises(ConnectionLost):
        stream.read(0.1)
    with pytest.raises(ConnectionLost):
        stream.send_status(0, 0, 0)


def test_socket_shut_down_under_the_stream(conn: ReplicationConnection, table: str) -> None:
    import socket

    conn.create_slot("s_shut")
    stream = conn.start("s_shut", options=pgoutput_options())
    sock = socket.socket(fileno=os.dup(stream.fileno()))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    with pytest.raises(ConnectionLost):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stream.read(0.5)


def test_server_error_carries_fields(conn: ReplicationConnection) -> None:
    with pytest.raises(ServerError) as info:
        conn.execute("SELECT 1/0")
    assert info.value.sqlstate == "22012"
    assert "division by zero" in str(info.value)
    assert conn.identify_system()  # still usable


def test_psycopg2_unaffected_after_stream(
    conn: ReplicationConnection, db: Database, table: str
) -> None:
    conn.create_slot("s_after")
    conn.start("s_after", options=pgoutput_options()).stop()
    with conn.raw.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)
    assert isinstance(conn.raw, psycopg2.extensions.connection)


def test_stream_states_move_only_as_written() -> None:
    from replicant.connection import _MOVES, _State

    assert set(_MOVES) == set(_State)
    assert not _MOVES[_State.ABANDONED], "abandoned is the end"
    stream = ReplicationStream.__new__(ReplicationStream)  # no connection needed
    stream._state = _State.STREAMING
    stream._move(_State.STOPPING)
    with pytest.raises(AssertionError, match="cannot go from"):
        stream._move(_State.STREAMING)
    stream._move(_State.ENDED)
    assert stream.ended
    stream._move(_State.ABANDONED)
    stream._move(_State.ENDED)  # ending an abandoned stream leaves it abandoned
    assert stream._state is _State.ABANDONED and stream.ended
