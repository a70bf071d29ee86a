"""wal2json decoder: golden documents captured from a real server, options, errors.

tests/golden/wal2json-pgNN.json holds what wal2json wrote, in format 1 and
format 2, for the same workload as the pgoutput golden files (see
tests/capture_golden.py); the events must carry what the workload wrote,
typed as the pgoutput decoder types them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from replicant.changes import (
    Begin,
    Commit,
    Delete,
    Event,
    Insert,
    Message,
    Truncate,
    Update,
)
from replicant.decoders import Wal2JsonDecoder, make_decoder
from replicant.errors import ConfigurationError, DecodeError
from replicant.lsn import LSN

from .golden_reads import FIRST_ROW, WAL2JSON_READS, messages_of

READS = WAL2JSON_READS


def _events(read: dict[str, Any]) -> list[Event]:
    decoder = Wal2JsonDecoder(format_version=read["format_version"])
    return [e for data, lsn, _ in messages_of(read) for e in decoder.decode(data, lsn, lsn)]


def _data_events(read: dict[str, Any]) -> list[Event]:
    return [e for e in _events(read) if not isinstance(e, (Begin, Commit))]


def test_golden_files_exist() -> None:
    if not READS:
        pytest.skip("no wal2json golden files (no server with wal2json when they were made)")


@pytest.mark.parametrize("read", READS)
def test_the_workload_in_order(read: dict[str, Any]) -> None:
    kinds = [type(e).__name__ for e in _data_events(read)]
    truncate = ["Truncate"] if read["format_version"] == 2 else []  # format 1 has none
    assert kinds == [
        "Insert",
        "Update",
        "Update",
        "Insert",
        "Insert",
        "Update",
        "Delete",
        "Delete",
        "Insert",
        *truncate,
        "Message",
        "Message",
        "Insert",
    ]


@pytest.mark.parametrize("read", READS)
def test_rows_carry_what_was_written(read: dict[str, Any]) -> None:
    events = _data_events(read)
    insert, update, update_key = events[0], events[1], events[2]
    assert isinstance(insert, Insert)
    assert (insert.schema, insert.table) == ("public", "golden")
    assert dict(insert.new) == FIRST_ROW
    assert dict(insert.key) == {"id": 1}
    assert isinstance(update, Update)
    assert update.old is None
    assert update.new["name"] == "second"
    # An unchanged TOASTed value: wal2json leaves the column out.
    assert "big" not in update.new
    assert isinstance(update_key, Update)
    assert update_key.old is not None and dict(update_key.old) == {"id": 1}
    assert update_key.new["id"] == 2 and "big" not in update_key.new
    full_update, full_delete, key_delete = events[5], events[6], events[7]
    assert isinstance(full_update, Update) and full_update.old is not None
    assert dict(full_update.old) == {"id": 1, "note": "one"}
    assert dict(full_update.new) == {"id": 1, "note": "uno"}
    assert isinstance(full_delete, Delete)
    if read["format_version"] == 1:
        # Format 1 leaves NULLs out of an old row; a delete has nothing to recover them from.
        assert dict(full_delete.old) == {"id": 2}
    else:
        assert dict(full_delete.old) == {"id": 2, "note": None}
    assert isinstance(key_delete, Delete)
    assert dict(key_delete.old) == {"id": 2}


@pytest.mark.parametrize("read", READS)
def test_truncate_and_messages(read: dict[str, Any]) -> None:
    events = _data_events(read)
    messages = [e for e in events if isinstance(e, Message)]
    # wal2json writes message content as a C string: it stops at the first NUL.
    assert [(m.prefix, m.content, m.transactional) for m in messages] == [
        ("golden", "transactional ü".encode(), True),
        ("golden", b"", False),
    ]
    assert messages[0].xid is not None and messages[1].xid is None
    truncates = [e for e in events if isinstance(e, Truncate)]
    if read["format_version"] == 2:
        (truncate,) = truncates
        assert truncate.tables == (("public", "golden"), ("public", "golden_full"))


@pytest.mark.parametrize("read", READS)
def test_positions_and_transaction_ids(read: dict[str, Any]) -> None:
    decoder = Wal2JsonDecoder(format_version=read["format_version"])
    previous_end = LSN(0)
    for data, lsn, xid in messages_of(read):
        events = decoder.decode(data, lsn, lsn)
        for event in events:
            if isinstance(event, Commit):
                # The end of the transaction, which the server reports as the row's LSN.
                assert event.lsn == lsn
                assert event.xid == xid
                previous_end = event.lsn
            elif isinstance(event, Message) and not event.transactional:
                assert event.lsn == lsn
            elif isinstance(event, Truncate):
                # Merged from one record per table, emitted with the next record.
                assert event.lsn < lsn and event.xid == xid
            elif read["format_version"] == 2 and not isinstance(event, Begin):
                assert event.lsn == lsn and event.xid == xid
            elif read["format_version"] == 1:
                # No position per change: the end of the previous transaction.
                assert event.lsn == previous_end and event.xid == xid
        if read["format_version"] == 1:
            assert not decoder.in_transaction


@pytest.mark.parametrize("read", READS)
def test_every_document_cut_short_raises_decode_error(read: dict[str, Any]) -> None:
    decoder = Wal2JsonDecoder(format_version=read["format_version"])
    for data, lsn, _ in messages_of(read):
        # Cutting a 3000-byte value at every byte takes long; every byte of
        # the start and end, and every 7th in between, finds each boundary.
        cuts = [c for c in range(len(data)) if c < 400 or c > len(data) - 400 or c % 7 == 0]
        for cut in cuts:
            with pytest.raises(DecodeError):
                decoder.decode(data[:cut], lsn, lsn)
        decoder.decode(data, lsn, lsn)


def test_options_default_and_override() -> None:
    decoder = make_decoder("wal2json", options={"add-tables": "public.t", "include-pk": "0"})
    assert decoder.start_options(150000) == {
        "format-version": "2",
        "include-xids": "1",
        "include-timestamp": "1",
        "include-type-oids": "1",
        "include-pk": "0",
        "include-lsn": "1",
        "include-transaction": "1",
        "add-tables": "public.t",
    }
    first = make_decoder("wal2json", format_version=1)
    assert first.start_options(150000)["format-version"] == "1"
    assert "include-transaction" not in first.start_options(150000)
    assert (
        make_decoder("wal2json", options={"format-version": "1"}).start_options(1)["format-version"]
        == "1"
    )


def test_unsupported_options() -> None:
    with pytest.raises(ConfigurationError):
        make_decoder("wal2json", format_version=3)
    with pytest.raises(ConfigurationError):
        make_decoder("wal2json", options={"write-in-chunks": "1"})
    with pytest.raises(ConfigurationError):
        make_decoder("wal2json", options={"format-version": "two"})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'{"action":"X"}',
        b'{"action":"I","lsn":"nope","schema":"s","table":"t","columns":[]}',
        b'{"action":"I","lsn":"0/1","schema":"s","table":"t","columns":[1]}',
        b'{"action":"I","lsn":"0/1","schema":"s","table":"t"}',
        b'{"action":"D","lsn":"0/1","schema":"s","table":"t"}',
        b'{"action":"B","xid":"x"}',
        b'{"action":"C","nextlsn":5}',
        b'{"action":"M","lsn":"0/1","prefix":"p"}',
        b'{"action":"B"} trailing',
        b"\xff\xfe",
    ],
)
def test_malformed_format_2_records(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        Wal2JsonDecoder().decode(payload, 1, 1)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"change":[{"kind":"insert","schema":"s","table":"t","columnnames":["a"],'
        b'"columntypeoids":[23],"columnvalues":[]}],"nextlsn":"0/5"}',
        b'{"change":[{"kind":"bogus"}],"nextlsn":"0/5"}',
        b'{"change":{},"nextlsn":"0/5"}',
        b'{"change":[{"kind":"delete","schema":"s","table":"t"}],"nextlsn":"0/5"}',
    ],
)
def test_malformed_format_1_documents(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        Wal2JsonDecoder(format_version=1).decode(payload, 1, 1)


def test_values_typed_like_pgoutput() -> None:
    decoder = Wal2JsonDecoder()
    record = {
        "action": "I",
        "xid": 5,
        "lsn": "0/10",
        "schema": "s",
        "table": "t",
        "columns": [
            {"name": "n", "typeoid": 1700, "value": 12.5},
            {"name": "f", "typeoid": 701, "value": 0.1},
            {"name": "b", "typeoid": 16, "value": True},
            {"name": "y", "typeoid": 17, "value": "00ff"},
            {"name": "z", "typeoid": 1700, "value": None},
        ],
    }
    # wal2json writes numerics as JSON numbers with the server's digits: keep them.
    text = json.dumps(record).replace("12.5", "12.50").encode()
    (event,) = decoder.decode(text, 16, 16)
    assert isinstance(event, Insert)
    assert repr(dict(event.new)) == (
        "{'n': Decimal('12.50'), 'f': 0.1, 'b': True, 'y': b'\\x00\\xff', 'z': None}"
    )
    raw = make_decoder("wal2json", decode_values=False)
    (kept,) = raw.decode(text, 16, 16)
    assert isinstance(kept, Insert)
    assert kept.new["n"] == "12.50" and kept.new["b"] is True


@pytest.mark.parametrize(
    "payload",
    [b'{"action": "X"}', b'{"action": ["B"]}', b'{"action": null}', b"{}"],
)
def test_unknown_format_2_action_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="unknown wal2json action"):
        Wal2JsonDecoder().decode(payload, 1, 1)
