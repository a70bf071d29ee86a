"""Record and replay against real servers: replay gives exactly what the live decode gave.

* pgoutput with every event kind the server has (Begin/Commit, Relation,
  Insert/Update/Delete/Truncate, Message, Type, streamed transactions,
  two-phase) and wal2json: a recording replayed offline gives the events,
  in their JSON form, that a live consumer on a second slot created at the
  same point decoded.
* A recorder stopped in the middle of a transaction, and one killed with
  SIGKILL while a workload runs, continue the file on the next run with
  nothing missing and nothing twice.
* A cut last record is reported and ignored; a damaged record, a file that
  is not a recording, a newer format version: RecordingError, never a bare
  struct error.
* ``replicant record`` and ``replicant replay`` end to end: replay prints the
  lines ``replicant stream`` printed for the same stream.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from replicant import (
    ConfigurationError,
    Consumer,
    DecodeError,
    Event,
    Insert,
    RawChange,
    RecordingError,
    Relation,
    SlotError,
)
from replicant.cli import main
from replicant.decoders import make_decoder
from replicant.formatting import format_json
from replicant.lsn import LSN
from replicant.protocol import PG_EPOCH
from replicant.recording import (
    MAGIC,
    Position,
    RecordedFrame,
    Recorder,
    Recording,
    Session,
    Stop,
    read,
    replay,
)
from tests.helpers import Recorder as Collect
from tests.helpers import confirmed_flush, wait_for

TIMEOUT = 30.0


def _server(db: Any) -> int:
    return int(db.query("SHOW server_version_num")[0][0])


def _wal_now(db: Any) -> LSN:
    return LSN(db.query("SELECT pg_current_wal_lsn()::text")[0][0])


def _create_slot(db: Any, name: str, plugin: str, *, two_phase: bool = False) -> None:
    if two_phase:
        db.execute("SELECT pg_create_logical_replication_slot(%s, %s, false, true)", name, plugin)
    else:
        db.execute("SELECT pg_create_logical_replication_slot(%s, %s)", name, plugin)


def _live(db: Any, slot: str, decoder: Any, end: LSN) -> list[Event]:
    """What a live consumer decodes from ``slot`` up to ``end``."""
    collect = Collect()
    consumer = Consumer(db.dsn, slot=slot, decoder=decoder, callback=collect, end_lsn=end)
    collect.consumer = consumer
    consumer.start()
    consumer.join(TIMEOUT)
    return collect.events


def _lines(events: list[Event]) -> list[str]:
    return [format_json(event) for event in events]


def _kinds(events: list[Event]) -> set[str]:
    return {type(e).__name__ for e in events}


# --- the workload: every event kind ------------------------------------------------------


def _schema(db: Any) -> None:
    db.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")  # a Type message
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, feel mood, big text)")
    db.execute("CREATE TABLE notes (id int, note text)")
    db.execute("ALTER TABLE notes REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION pub FOR TABLE items, notes")


def _workload(db: Any, server: int) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            # big: incompressible enough to be stored out of line (TOAST)
            cur.execute(
                "INSERT INTO items VALUES (1, 'one', 'ok', (SELECT string_agg(md5(g::text), '') "
                "FROM generate_series(1, 300) g)), (2, 'two', 'sad', NULL)"
            )
            cur.execute("UPDATE items SET name = 'uno' WHERE id = 1")  # big unchanged (TOAST)
            cur.execute("DELETE FROM items WHERE id = 2")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO notes VALUES (1, 'a'), (2, NULL)")
            cur.execute("UPDATE notes SET note = 'b' WHERE id = 1")
            cur.execute("SELECT pg_logical_emit_message(true, 'wl', 'in a transaction')")
            cur.execute("SELECT pg_logical_emit_message(false, 'wl', 'on its own')")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("TRUNCATE notes")
        conn.commit()
        if server >= 140000:
            with conn.cursor() as cur:
                # Past logical_decoding_work_mem (64kB): streamed, with a
                # subtransaction rolled back inside.
                cur.execute(
                    "INSERT INTO notes SELECT g, repeat('s', 40) FROM generate_series(100, 1099) g"
                )
                cur.execute("SAVEPOINT sp")
                cur.execute("INSERT INTO notes SELECT g, 'gone' FROM generate_series(2000, 2999) g")
                cur.execute("ROLLBACK TO SAVEPOINT sp")
            conn.commit()
            with conn.cursor() as cur:
                cur.execute("INSERT INTO notes SELECT g, 'aborted' FROM generate_series(1, 2000) g")
            conn.rollback()  # a streamed transaction aborted
        if server >= 150000:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO items VALUES (50, 'prepared', 'happy', NULL)")
                cur.execute("PREPARE TRANSACTION 'rec_gid'")
                cur.execute("COMMIT PREPARED 'rec_gid'")
                cur.execute("BEGIN")
                cur.execute("INSERT INTO items VALUES (51, 'rolled back', 'sad', NULL)")
                cur.execute("PREPARE TRANSACTION 'rec_gid2'")
                cur.execute("ROLLBACK PREPARED 'rec_gid2'")
    finally:
        conn.close()


def _pgoutput_options(server: int) -> dict[str, Any]:
    return {
        "messages": server >= 140000,
        "streaming": server >= 140000,
        "two_phase": server >= 150000,
    }


def _record_pgoutput(db: Any, path: Path) -> tuple[list[Event], list[Event], int]:
    """Record the workload on one slot, decode it live on another: (live, recorded live, server)."""
    server = _server(db)
    _schema(db)
    options = _pgoutput_options(server)
    _create_slot(db, "rec", "pgoutput", two_phase=options["two_phase"])
    _create_slot(db, "live", "pgoutput", two_phase=options["two_phase"])
    _workload(db, server)
    end = _wal_now(db)
    seen = Collect()
    recorder = Recorder(
        path,
        db.dsn,
        slot="rec",
        publication="pub",
        decoder_options=options,
        end_lsn=end,
        fsync_interval=0.2,
        callback=seen,
    )
    recorder.run()
    live = _live(db, "live", make_decoder("pgoutput", publication="pub", **options), end)
    return live, seen.events, server


# --- replay equals the live decode --------------------------------------------------------


def test_pgoutput_replay_gives_exactly_the_live_events(db: Any, tmp_path: Path) -> None:
    path = tmp_path / "pgoutput.rpl"
    live, seen, server = _record_pgoutput(db, path)

    replayed = list(read(path))
    assert _lines(replayed) == _lines(live)
    assert _lines(seen) == _lines(live)  # the recorder's own callback saw the same
    expected = {"Begin", "Commit", "Relation", "Insert", "Update", "Delete", "Truncate"}
    if server >= 140000:
        expected |= {"Message", "StreamStart", "StreamStop", "StreamCommit", "StreamAbort"}
    if server >= 150000:
        expected |= {"BeginPrepare", "Prepare", "CommitPrepared", "RollbackPrepared"}
    assert expected <= _kinds(replayed), expected - _kinds(replayed)
    assert any('"$unchanged"' in line for line in _lines(replayed))

    with Recording(path) as recording:
        header = recording.header
        assert (header.slot, header.plugin, header.publication) == ("rec", "pgoutput", ("pub",))
        assert header.server_version == server
        assert header.decoder_options == _pgoutput_options(server)
        assert header.start_options["publication_names"] == '"pub"'
        entries = list(recording.entries())
        frames = [e for e in entries if isinstance(e, RecordedFrame)]
        assert frames and all(f.sent_at is not None for f in frames)
        assert any(f.data[:1] == b"Y" for f in frames)  # the Type message of the enum
        assert isinstance(entries[0], Session) and isinstance(entries[-1], Stop)
        assert recording.truncated is None

    # The slot was told exactly what the file holds.
    assert confirmed_flush(db, "rec") == entries[-1].acknowledged

    calls: list[Event] = []
    summary = replay(path, calls.append)
    assert _lines(calls) == _lines(live)
    assert summary.events == len(live) and summary.frames == len(frames)
    assert summary.stopped_cleanly and summary.truncated is None
    assert summary.position >= entries[-1].acknowledged


@pytest.mark.requires_plugin("wal2json")
def test_wal2json_replay_gives_exactly_the_live_events(db: Any, tmp_path: Path) -> None:
    server = _server(db)
    _schema(db)
    _create_slot(db, "rec", "wal2json")
    _create_slot(db, "live", "wal2json")
    _workload(db, min(server, 130000))  # no streaming or two-phase: wal2json has neither
    end = _wal_now(db)
    path = tmp_path / "wal2json.rpl"
    Recorder(
        path,
        db.dsn,
        slot="rec",
        plugin="wal2json",
        decoder_options={"format_version": 2},
        end_lsn=end,
        fsync_interval=0,
    ).run()
    live = _live(db, "live", make_decoder("wal2json", format_version=2), end)
    replayed = list(read(path))
    assert _lines(replayed) == _lines(live)
    assert {"Begin", "Commit", "Insert", "Update", "Delete", "Message"} <= _kinds(replayed)


# --- continuing a recording ---------------------------------------------------------------


def _plain_schema(db: Any) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE items")
    _create_slot(db, "rec", "pgoutput")
    _create_slot(db, "live", "pgoutput")


def _transactions(db: Any, count: int, rows: int, *, first: int = 0, pause: float = 0) -> None:
    conn = db.connect()
    try:
        for t in range(count):
            with conn.cursor() as cur:
                base = first + t * rows
                cur.execute(
                    "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(%s, %s) g",
                    (base, base + rows - 1),
                )
            conn.commit()
            if pause:
                threading.Event().wait(pause)
    finally:
        conn.close()


def _without_relations(events: list[Event]) -> list[str]:
    # A new connection describes each table again before its first change:
    # Relation events are per connection, the changes are not.
    return [format_json(e) for e in events if not isinstance(e, Relation)]


def test_a_recorder_stopped_inside_a_transaction_is_continued_without_loss_or_duplicate(
    db: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _plain_schema(db)
    _transactions(db, 3, 50)
    end = _wal_now(db)
    path = tmp_path / "cut.rpl"

    inserts = 0

    def stop_in_second(event: Event) -> bool:
        nonlocal inserts
        inserts += isinstance(event, Insert)
        return inserts == 75  # half of the second transaction

    seen = Collect(stop_after=stop_in_second)
    first = Recorder(path, db.dsn, slot="rec", publication="pub", callback=seen, fsync_interval=0)
    seen.consumer = first.consumer
    first.run()
    cut = list(read(path))
    assert type(cut[-1]).__name__ == "Insert"  # the file ends inside the second transaction
    assert sum(isinstance(e, Insert) for e in cut) >= 75
    commits = [e for e in cut if type(e).__name__ == "Commit"]
    assert len(commits) == 1
    assert confirmed_flush(db, "rec") == commits[0].lsn  # the cut transaction not acknowledged

    caplog.set_level("WARNING", logger="replicant")
    Recorder(path, db.dsn, slot="rec", publication="pub", end_lsn=end, fsync_interval=0).run()
    assert any("dropped" in r.getMessage() for r in caplog.records)
    live = _live(db, "live", make_decoder("pgoutput", publication="pub"), end)
    replayed = list(read(path))
    assert _without_relations(replayed) == _without_relations(live)
    with Recording(path) as recording:
        sessions = [e for e in recording.entries() if isinstance(e, Session)]
    assert len(sessions) == 2 and sessions[1].start == commits[0].lsn

    # A slot moved past the end of the file, or gone, would leave a gap: refused.
    before = path.read_bytes()
    _transactions(db, 1, 5, first=1000)
    db.execute("SELECT pg_replication_slot_advance('rec', pg_current_wal_lsn())")
    with pytest.raises(SlotError, match="beyond the end of"):
        Recorder(path, db.dsn, slot="rec", publication="pub", fsync_interval=0).run()
    db.execute("SELECT pg_drop_replication_slot('rec')")
    with pytest.raises(SlotError, match="does not exist"):
        Recorder(path, db.dsn, slot="rec", publication="pub", create_slot=True).run()
    assert path.read_bytes() == before
    assert not db.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'rec'")


def test_a_filtered_stream_still_moves_the_slot_through_position_records(
    db: Any, tmp_path: Path
) -> None:
    _plain_schema(db)
    db.execute("CREATE TABLE other (id int PRIMARY KEY)")  # not published
    path = tmp_path / "filtered.rpl"
    recorder = Recorder(
        path, db.dsn, slot="rec", publication="pub", fsync_interval=0.1, status_interval=0.2
    )
    with recorder:
        _transactions(db, 1, 2)
        db.execute("INSERT INTO other SELECT generate_series(1, 100)")
        end = _wal_now(db)
        # Nothing published after the first transaction: the slot follows the
        # server's position anyway, as the file records it.
        wait_for(lambda: (confirmed_flush(db, "rec") or LSN(0)) >= end, what="slot to advance")
    with Recording(path) as recording:
        positions = [e for e in recording.entries() if isinstance(e, Position)]
    assert positions and positions[-1].lsn >= end
    _transactions(db, 1, 2, first=100)
    end = _wal_now(db)
    Recorder(path, db.dsn, slot="rec", publication="pub", end_lsn=end, fsync_interval=0).run()
    live = _live(db, "live", make_decoder("pgoutput", publication="pub"), end)
    assert _without_relations(list(read(path))) == _without_relations(live)


def test_a_reconnect_inside_a_streamed_transaction_cuts_the_file_back(
    db: Any, tmp_path: Path
) -> None:
    if _server(db) < 140000:
        pytest.skip("streamed transactions need PostgreSQL 14")
    _plain_schema(db)
    _transactions(db, 1, 10)
    path = tmp_path / "reconnect.rpl"
    killer = db.connect()
    killer.autocommit = True
    killed = threading.Event()

    def kill_at_first_block(event: Event) -> None:
        # The server streams the open transaction's first block; the
        # connection dies before the transaction ends.
        if type(event).__name__ == "StreamStop" and not killed.is_set():
            killed.set()
            with killer.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE slot_name = 'rec'"
                )

    recorder = Recorder(
        path,
        db.dsn,
        slot="rec",
        publication="pub",
        decoder_options={"streaming": True},
        fsync_interval=0.1,
        callback=kill_at_first_block,
    )
    open_transaction = db.connect()
    try:
        with recorder:
            with open_transaction.cursor() as cur:
                cur.execute(
                    "INSERT INTO items SELECT g, repeat('s', 40) FROM generate_series(100, 2099) g"
                )
            wait_for(killed.is_set, what="the first streamed block")
            wait_for(lambda: recorder.consumer.stats.reconnects >= 1, what="a reconnect")
            open_transaction.commit()
            _transactions(db, 1, 10, first=5000)
            end = _wal_now(db)
            wait_for(lambda: recorder.acknowledged >= end, what="everything acknowledged")
    finally:
        open_transaction.close()
        killer.close()
    live = _live(db, "live", make_decoder("pgoutput", publication="pub", streaming=True), end)
    replayed = list(read(path))
    assert _without_relations(replayed) == _without_relations(live)
    assert sum(isinstance(e, Insert) for e in replayed) == 10 + 2000 + 10
    with Recording(path) as recording:
        assert sum(isinstance(e, Session) for e in recording.entries()) == 2


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replicant", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_record_killed_and_run_again_misses_nothing_and_repeats_nothing(
    db: Any, tmp_path: Path
) -> None:
    _plain_schema(db)
    path = tmp_path / "killed.rpl"
    command = [
        sys.executable, "-m", "replicant", "record", db.dsn, "--slot", "rec",
        "--publication", "pub", "--out", str(path), "-F", "0.1",
    ]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writer = threading.Thread(target=_transactions, args=(db, 150, 20), kwargs={"pause": 0.01})
    try:
        writer.start()
        wait_for(lambda: path.exists() and path.stat().st_size > 40_000, what="recorded data")
        first.send_signal(signal.SIGKILL)
        first.wait(TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
        writer.join()
    assert first.returncode == -signal.SIGKILL
    end = _wal_now(db)
    assert (confirmed_flush(db, "rec") or LSN(0)) < end  # killed while behind
    second = _cli(*command[3:], "--end", str(end))
    assert second.returncode == 0, second.stderr

    live = _live(db, "live", make_decoder("pgoutput", publication="pub"), end)
    replayed = list(read(path))
    assert _without_relations(replayed) == _without_relations(live)
    assert len([e for e in replayed if isinstance(e, Insert)]) == 150 * 20


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``replicant ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_line_replays_what_stream_printed(
    db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _plain_schema(db)
    _create_slot(db, "live_text", "pgoutput")
    # The message first: a commit after it flushes it to WAL.
    db.execute("SELECT pg_logical_emit_message(false, 'cli', 'hello')")
    _transactions(db, 2, 3)
    end = _wal_now(db)
    path = tmp_path / "cli.rpl"
    recording = subprocess.Popen(
        [
            sys.executable, "-m", "replicant", "record", db.dsn, "--slot", "rec",
            "--publication", "pub", "-o", "messages=true", "--out", str(path),
            "-F", "0.1", "-s", "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # Everything is in the file once the slot confirms the end: SIGTERM stops cleanly.
        wait_for(lambda: (confirmed_flush(db, "rec") or LSN(0)) >= end, what="the recording")
        recording.send_signal(signal.SIGTERM)
        _, stderr = recording.communicate(timeout=TIMEOUT)
    finally:
        if recording.poll() is None:
            recording.kill()
    assert recording.returncode == 143, stderr
    assert "terminated;" in stderr and "frames recorded" in stderr
    for form, slot in (("json", "live"), ("text", "live_text")):
        streamed = _cli(
            "stream", db.dsn, "--slot", slot, "--publication", "pub", "-o", "messages=true",
            "--end", str(end), "--format", form,
        )  # fmt: skip
        assert streamed.returncode == 0, streamed.stderr
        code, out, err = _main(capsys, "replay", str(path), "--format", form)
        assert code == 0, err
        assert out == streamed.stdout
        assert out.count("\n") == 1 + 2 * 5  # a message; begin, 3 inserts, commit
    code, out, err = _main(capsys, "replay", str(path), "--info")
    assert code == 0, err
    assert "rec (plugin pgoutput, publication pub)" in out
    assert "stopped cleanly" in out
    events = tmp_path / "events.jsonl"
    code, out, err = _main(capsys, "replay", str(path), "--file", str(events))
    assert code == 0, err
    assert events.read_text().count("\n") == 11
    code, out, err = _main(capsys, "replay", str(tmp_path / "nope.rpl"))
    assert code == 1 and "nope.rpl" in err
    path.write_bytes(path.read_bytes()[:-3])
    code, out, err = _main(capsys, "replay", str(path))
    assert code == 0 and "incomplete" in err and out.count("\n") == 11
    code, out, err = _main(capsys, "replay", str(path), "--info")
    assert code == 0 and "cut by a crash" in out
    code, out, err = _main(
        capsys, "record", db.dsn, "--slot", "live", "--publication", "pub", "--out", str(path)
    )
    assert code == 2 and "another stream" in err


# --- damaged files --------------------------------------------------------------------------


def _small_recording(db: Any, path: Path) -> list[str]:
    """A short real recording at ``path``; returns its events' JSON lines."""
    _plain_schema(db)
    _transactions(db, 4, 3)
    Recorder(
        path, db.dsn, slot="rec", publication="pub", end_lsn=_wal_now(db), fsync_interval=0
    ).run()
    return _lines(list(read(path)))


def _records(path: Path) -> list[tuple[int, int]]:
    """(offset, end) of every record after the preamble, read with the format's own rules."""
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    spans, offset = [], 10
    while offset < len(data):
        length = int.from_bytes(data[offset + 1 : offset + 5], "big")
        end = offset + 7 + length + 4
        spans.append((offset, end))
        offset = end
    assert offset == len(data)
    return spans


def test_a_cut_last_record_is_reported_and_ignored(db: Any, tmp_path: Path) -> None:
    path = tmp_path / "whole.rpl"
    whole = _small_recording(db, path)
    data = path.read_bytes()
    spans = _records(path)
    # Cut inside the last frame (the recorder was killed while writing it).
    frames = [(o, e) for o, e in spans if data[o : o + 1] in (b"x", b"X")]
    last_start, last_end = frames[-1]
    without_last = list(read_cut(path, tmp_path, data[:last_start]))
    for cut in (last_start + 3, last_start + 7, last_start + 20, last_end - 1):
        target = tmp_path / f"cut{cut}.rpl"
        target.write_bytes(data[:cut])
        calls: list[Event] = []
        summary = replay(target, calls.append)
        assert _lines(calls) == without_last
        assert summary.truncated is not None and summary.truncated.offset == last_start
        assert not summary.stopped_cleanly
    # Zero bytes after the end (a file system that grew the file before the
    # data reached it): the same.
    target = tmp_path / "zeros.rpl"
    target.write_bytes(data + bytes(300))
    summary = replay(target, lambda event: None)
    assert summary.truncated is not None and summary.truncated.offset == len(data)
    assert _lines(list(read(target))) == whole
    # A half-written last record (garbage where its checksum is) likewise.
    target.write_bytes(data[: last_end - 2] + b"\xff\xfe")
    assert replay(target, lambda event: None).truncated is not None


def read_cut(path: Path, tmp_path: Path, data: bytes) -> list[str]:
    target = tmp_path / "prefix.rpl"
    target.write_bytes(data)
    return _lines(list(read(target)))


def test_damage_is_a_recording_error_never_a_struct_error(db: Any, tmp_path: Path) -> None:
    path = tmp_path / "whole.rpl"
    whole = _small_recording(db, path)
    data = path.read_bytes()
    spans = _records(path)
    middle = spans[len(spans) // 2]
    target = tmp_path / "damaged.rpl"

    def damaged(offset: int, value: int | None = None) -> bytes:
        changed = bytearray(data)
        changed[offset] = (changed[offset] ^ 0x5A) if value is None else value
        return bytes(changed)

    # A byte of a record's body, its length, its kind: an error naming the record.
    for offset in (middle[0] + 12, middle[0] + 2, middle[0]):
        target.write_bytes(damaged(offset))
        with pytest.raises(RecordingError) as caught:
            list(read(target))
        assert caught.value.position == middle[0], offset
        assert "damaged" in str(caught.value)
    # A length made huge does not pass for a record cut short.
    target.write_bytes(damaged(middle[0] + 1, 0x7F))
    with pytest.raises(RecordingError, match="damaged"):
        list(read(target))
    # Every single flipped byte: the same events, or the tail reported, or RecordingError.
    for offset in range(0, len(data), max(1, len(data) // 300)):
        target.write_bytes(damaged(offset))
        try:
            with Recording(target) as recording:
                lines = _lines(list(recording.events()))
                truncated = recording.truncated
        except RecordingError:
            continue
        assert truncated is not None and offset >= spans[-1][0], offset
        assert lines == whole[: len(lines)]

    for content, message in (
        (b"", "cut before its header"),
        (MAGIC[:5], "cut before its header"),
        (data[: spans[0][1] - 3], "cut before its header"),
        (b"some text\nthat is not a recording\n", "not a replicant recording"),
        (MAGIC + b"\x00\x02" + data[10:], "format version 2"),
    ):
        target.write_bytes(content)
        with pytest.raises(RecordingError, match=message):
            list(read(target))

    # A file cut before its header was complete held nothing: the recorder starts it afresh.
    target.write_bytes(data[: spans[0][1] - 3])
    Recorder(target, db.dsn, slot="rec", publication="pub").close()
    assert target.read_bytes() == b""
    # The recorder refuses to write over what is not a recording, or another stream's.
    target.write_bytes(b"precious notes\n")
    with pytest.raises(RecordingError, match="not a replicant recording"):
        Recorder(target, db.dsn, slot="rec", publication="pub")
    assert target.read_bytes() == b"precious notes\n"
    with pytest.raises(ConfigurationError, match="another stream"):
        Recorder(path, db.dsn, slot="other", publication="pub")
    with pytest.raises(ConfigurationError, match="another stream"):
        Recorder(path, db.dsn, slot="rec", publication="pub", options={"messages": "true"})


class _Fussy:
    """pgoutput, but a logical message with the prefix 'boom' is a DecodeError (a decoder bug)."""

    plugin = "pgoutput"

    def __init__(self) -> None:
        self.inner = make_decoder("pgoutput", publication="pub", messages=True)

    def start_options(self, server_version: int) -> dict[str, str]:
        return self.inner.start_options(server_version)

    def reset(self) -> None:
        self.inner.reset()

    @property
    def in_transaction(self) -> bool:
        return self.inner.in_transaction

    def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
        events = self.inner.decode(data, wal_start, wal_end)
        if any(getattr(e, "prefix", None) == "boom" for e in events):
            raise DecodeError("cannot read this message")
        return events


def test_the_frame_a_decoder_fails_on_is_in_the_recording(
    db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _plain_schema(db)
    _transactions(db, 1, 2)
    db.execute("SELECT pg_logical_emit_message(true, 'boom', 'x')")
    _transactions(db, 1, 2, first=10)
    path = tmp_path / "bug.rpl"
    recorder = Recorder(path, db.dsn, slot="rec", decoder=_Fussy(), end_lsn=_wal_now(db))
    with pytest.raises(DecodeError, match="cannot read this message"):
        recorder.run()
    # Offline, the same decoder fails on the same frame, after the same events.
    seen: list[Event] = []
    with pytest.raises(DecodeError, match="cannot read this message"):
        replay(path, seen.append, decoder=_Fussy())
    assert [type(e).__name__ for e in seen] == [
        "Begin",
        "Relation",
        "Insert",
        "Insert",
        "Commit",
        "Begin",
    ]
    # The built-in decoder reads the frame: attach the file to the bug report.
    assert any(getattr(e, "prefix", None) == "boom" for e in read(path))
    code = main(["replay", str(path), "--format", "text"])
    out, _ = capsys.readouterr()
    assert code == 0 and "boom: x" in out


def test_a_frame_the_decoder_cannot_read_is_a_decode_error(tmp_path: Path) -> None:
    # Written by hand from the documented format: a header, then a frame with
    # a payload no pgoutput message starts with.
    def record(kind: bytes, body: bytes) -> bytes:
        head = kind + len(body).to_bytes(4, "big")
        head += (zlib.crc32(head) & 0xFFFF).to_bytes(2, "big")
        return head + body + zlib.crc32(head + body).to_bytes(4, "big")

    header = {
        "slot": "s", "plugin": "pgoutput", "publication": ["pub"], "options": {},
        "decoder_options": {}, "start_options": {}, "server_version": 150000,
        "start": "0/100", "replicant": "0", "created": "",
    }  # fmt: skip
    frame = (0x200).to_bytes(8, "big") + (0).to_bytes(8, "big") + b"Zbogus"
    path = tmp_path / "hand.rpl"
    path.write_bytes(
        MAGIC + b"\x00\x01" + record(b"H", json.dumps(header).encode()) + record(b"x", frame)
    )
    with Recording(path) as recording:
        assert recording.header.start == LSN("0/100")
        (only,) = recording.frames()
        assert (only.data_start, only.data, only.sent_at) == (LSN(0x200), b"Zbogus", PG_EPOCH)
    with pytest.raises(DecodeError, match="unknown pgoutput message"):
        list(read(path))
    # An unknown record kind (a later version's optional record) is skipped.
    path.write_bytes(path.read_bytes() + record(b"?", b"later"))
    with pytest.raises(DecodeError, match="unknown pgoutput message"):
        list(read(path))
    with Recording(path) as recording:
        assert len(list(recording.entries())) == 2 and recording.truncated is None


@pytest.mark.requires_plugin("test_decoding")
def test_a_plugin_without_a_decoder_is_recorded_and_replayed_raw(db: Any, tmp_path: Path) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    _create_slot(db, "rec", "test_decoding")
    _create_slot(db, "live", "test_decoding")
    _transactions(db, 2, 2)
    end = _wal_now(db)
    path = tmp_path / "raw.rpl"
    Recorder(path, db.dsn, slot="rec", plugin="test_decoding", end_lsn=end, fsync_interval=0).run()
    live = _live(db, "live", make_decoder("test_decoding"), end)
    replayed = list(read(path))
    assert _lines(replayed) == _lines(live)
    texts = [e.text() for e in replayed if isinstance(e, RawChange)]
    assert len(texts) == len(replayed) == 2 * 4
    assert texts[0].startswith("BEGIN") and texts[3].startswith("COMMIT")
    assert texts[1] == "table public.items: INSERT: id[integer]:0 name[text]:'row 0'"
