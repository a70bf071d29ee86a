"""pgoutput decoder: golden payloads captured from real servers, options, errors.

The golden files (tests/golden/pgoutput-pgNN.json, made by
tests/capture_golden.py) hold what the server's own SQL interface returned
for one fixed workload, read with several option sets. Each read is replayed
through a decoder; the named cases must decode to what the workload wrote,
and every message, cut short at every byte, must raise DecodeError.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

import pytest

from replicant.changes import (
    UNCHANGED,
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Event,
    Insert,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from replicant.decoders import PgOutputDecoder, make_decoder
from replicant.decoders.pgoutput import quote_publication_names
from replicant.errors import ConfigurationError, DecodeError, ProtocolError
from replicant.lsn import LSN
from replicant.values import BinaryValue

from .golden_reads import FIRST_ROW, READS, decoder_for, messages_of

UTC = dt.timezone.utc

EVENT_FOR_KIND = {
    "B": Begin,
    "C": Commit,
    "O": Origin,
    "R": Relation,
    "I": Insert,
    "U": Update,
    "D": Delete,
    "T": Truncate,
    "M": Message,
    "S": StreamStart,
    "E": StreamStop,
    "c": StreamCommit,
    "A": StreamAbort,
    "b": BeginPrepare,
    "P": Prepare,
    "K": CommitPrepared,
    "r": RollbackPrepared,
    "p": StreamPrepare,
}


def _replay(read: dict[str, Any]) -> tuple[PgOutputDecoder, list[list[Event]]]:
    decoder = decoder_for(read)
    return decoder, [decoder.decode(data, lsn, lsn) for data, lsn, _ in messages_of(read)]


def _case(read: dict[str, Any], name: str) -> Event:
    if name not in read["cases"]:
        pytest.skip(f"{name} not in this read")
    _, events = _replay(read)
    (event,) = events[read["cases"][name]]
    return event


def test_golden_files_exist() -> None:
    assert READS, "no golden files: run tests/capture_golden.py"


@pytest.mark.parametrize("read", READS)
def test_every_message_decodes_to_its_event_class(read: dict[str, Any]) -> None:
    decoder, events = _replay(read)
    for (data, lsn, _), produced in zip(messages_of(read), events, strict=True):
        kind = chr(data[0])
        if kind == "Y":
            assert produced == []
            continue
        (event,) = produced
        assert type(event) is EVENT_FOR_KIND[kind]
        assert isinstance(event.lsn, LSN)
        if kind in "IUDTR" or (kind == "M" and isinstance(event, Message)):
            # A change's event carries the change's own position.
            assert event.lsn == lsn
        if kind in "CcPpKr":
            # Ends carry the end of the transaction, which the server reports as the row's LSN.
            assert event.lsn == lsn
    assert not decoder.in_transaction


@pytest.mark.parametrize("read", READS)
def test_transaction_ids_and_framing(read: dict[str, Any]) -> None:
    decoder = decoder_for(read)
    current: int | None = None
    for data, lsn, xid in messages_of(read):
        (event,) = decoder.decode(data, lsn, lsn) or (None,)
        if isinstance(event, (Begin, BeginPrepare)):
            assert event.xid == xid
            assert decoder.in_transaction
            current = xid
        elif isinstance(event, (Commit, Prepare)):
            assert event.xid == current == xid
            assert not decoder.in_transaction
            assert event.lsn == lsn
        elif isinstance(event, StreamStart):
            assert decoder.in_transaction
        elif isinstance(event, StreamStop):
            assert not decoder.in_transaction
        elif isinstance(event, (Insert, Update, Delete)) and "streaming" not in read["options"]:
            # Outside streaming the xid comes from Begin; inside it is in each message.
            assert event.xid == xid


@pytest.mark.parametrize("read", READS)
def test_insert_carries_what_was_written(read: dict[str, Any]) -> None:
    name = "insert_binary" if read["options"].get("binary") == "true" else "insert"
    event = _case(read, name)
    assert isinstance(event, Insert)
    assert (event.schema, event.table) == ("public", "golden")
    expected = dict(FIRST_ROW)
    if name == "insert_binary":
        # An enum has a send function, so it comes in binary; replicant has no reader for it.
        feeling = event.new["feeling"]
        assert isinstance(feeling, BinaryValue) and feeling.data == b"happy"
        expected["feeling"] = feeling
    assert dict(event.new) == expected
    assert dict(event.key) == {"id": 1}
    assert event.old is None


@pytest.mark.parametrize("read", READS)
def test_update_without_old_row_has_unchanged_toast(read: dict[str, Any]) -> None:
    name = "update_binary" if read["options"].get("binary") == "true" else "update"
    event = _case(read, name)
    assert isinstance(event, Update)
    assert event.old is None
    assert event.new["name"] == "second"
    assert event.new["big"] is UNCHANGED
    assert event.new.raw("big") is UNCHANGED
    assert dict(event.key) == {"id": 1}


@pytest.mark.parametrize("read", READS)
def test_update_of_the_key_has_the_old_key(read: dict[str, Any]) -> None:
    binary = read["options"].get("binary") == "true"
    event = _case(read, "update_key_binary" if binary else "update_key")
    assert isinstance(event, Update)
    assert event.old is not None
    assert dict(event.old) == {"id": 1}
    assert event.new["id"] == 2
    assert event.new["big"] is UNCHANGED
    assert dict(event.key) == {"id": 1}


@pytest.mark.parametrize("read", READS)
def test_update_with_replica_identity_full(read: dict[str, Any]) -> None:
    binary = read["options"].get("binary") == "true"
    event = _case(read, "update_full_binary" if binary else "update_full")
    assert isinstance(event, Update)
    assert event.relation.replica_identity == "full"
    assert event.old is not None
    assert dict(event.old) == {"id": 1, "note": "one"}
    assert dict(event.new) == {"id": 1, "note": "uno"}
    assert dict(event.key) == {"id": 1, "note": "one"}


@pytest.mark.parametrize("read", READS)
def test_deletes(read: dict[str, Any]) -> None:
    full = _case(read, "delete_full")
    assert isinstance(full, Delete)
    assert dict(full.old) == {"id": 2, "note": None}
    assert full.new is None
    key = _case(read, "delete_key")
    assert isinstance(key, Delete)
    assert dict(key.old) == {"id": 2}
    assert key.relation.key_columns == ("id",)


@pytest.mark.parametrize("read", READS)
def test_truncate(read: dict[str, Any]) -> None:
    event = _case(read, "truncate")
    assert isinstance(event, Truncate)
    assert event.tables == (("public", "golden"), ("public", "golden_full"))
    assert event.restart_identity is True
    assert event.cascade is False


@pytest.mark.parametrize("read", READS)
def test_messages(read: dict[str, Any]) -> None:
    event = _case(read, "message")
    assert isinstance(event, Message)
    assert (event.prefix, event.content, event.transactional) == (
        "golden",
        "transactional ü".encode(),
        True,
    )
    assert event.xid is not None
    alone = _case(read, "message_non_transactional")
    assert isinstance(alone, Message)
    assert (alone.content, alone.transactional, alone.xid) == (b"\x00\x01\x02\x03", False, None)


@pytest.mark.parametrize("read", READS)
def test_origin_and_type_messages(read: dict[str, Any]) -> None:
    decoder, events = _replay(read)
    origins = [e for batch in events for e in batch if isinstance(e, Origin)]
    assert [(o.name, o.origin_lsn) for o in origins] == [("golden_origin", LSN("0/ABCDEF"))]
    assert ("public", "mood") in decoder.types.values()
    relation = next(r for r in decoder.relations.values() if r.table == "golden")
    assert relation.key_columns == ("id",)
    assert relation.replica_identity == "default"
    numeric = next(c for c in relation.columns if c.name == "amount")
    assert (numeric.type_oid, numeric.type_modifier) == (1700, (10 << 16 | 2) + 4)


@pytest.mark.parametrize("read", READS)
def test_streamed_transactions(read: dict[str, Any]) -> None:
    if read["options"].get("streaming") not in ("on", "parallel"):
        pytest.skip("not a streaming read")
    _, batches = _replay(read)
    events = [e for batch in batches for e in batch]
    starts = [e for e in events if isinstance(e, StreamStart)]
    assert starts and starts[0].first_segment
    commits = [e for e in events if isinstance(e, StreamCommit)]
    aborts = [e for e in events if isinstance(e, StreamAbort)]
    assert commits
    if read["label"] == "parallel":
        assert aborts and all(a.abort_lsn is not None and a.abort_time for a in aborts)
    elif read["label"] == "streaming":
        # One subtransaction rolled back, one whole transaction rolled back.
        assert {a.subxid == a.xid for a in aborts} == {True, False}
        assert all(a.abort_lsn is None for a in aborts)
    inserted = _case(read, "insert_streamed")
    assert isinstance(inserted, Insert)
    assert inserted.new["id"] == 100 and inserted.new["note"] == "s" * 50
    streamed_xids = {s.xid for s in starts}
    assert inserted.xid in streamed_xids


@pytest.mark.parametrize("read", READS)
def test_two_phase(read: dict[str, Any]) -> None:
    if read["options"].get("two_phase") != "on":
        pytest.skip("not a two-phase read")
    _, batches = _replay(read)
    events = [e for batch in batches for e in batch]
    begins = {e.gid: e for e in events if isinstance(e, BeginPrepare)}
    prepares = {e.gid: e for e in events if isinstance(e, (Prepare, StreamPrepare))}
    committed = {e.gid for e in events if isinstance(e, CommitPrepared)}
    rolled_back = {e.gid for e in events if isinstance(e, RollbackPrepared)}
    assert {"golden_gid1", "golden_gid2"} <= set(begins)
    assert {"golden_gid1", "golden_gid3"} <= committed
    assert rolled_back == {"golden_gid2"}
    for gid, begin in begins.items():
        assert prepares[gid].lsn == begin.end_lsn
        assert prepares[gid].prepare_lsn == begin.prepare_lsn
    if read["label"] == "stream_prepare":
        assert isinstance(prepares["golden_gid3"], StreamPrepare)


def _one_of_each_kind(read: dict[str, Any]) -> list[int]:
    """The index of the first message of each kind, and every named case."""
    seen: dict[int, int] = {}
    for i, (data, _, _) in enumerate(messages_of(read)):
        seen.setdefault(data[0], i)
    return sorted(set(seen.values()) | set(read["cases"].values()))


def _state(decoder: PgOutputDecoder) -> tuple[Any, ...]:
    return (
        decoder.in_transaction,
        decoder._in_stream,
        decoder._xid,
        len(decoder.relations),
        len(decoder.types),
    )


@pytest.mark.parametrize("read", READS)
def test_every_message_cut_short_raises_decode_error(read: dict[str, Any]) -> None:
    messages = messages_of(read)
    targets = _one_of_each_kind(read)
    decoder = decoder_for(read)
    for i, (data, lsn, _) in enumerate(messages):
        if i in targets:
            before = _state(decoder)
            for cut in range(len(data)):
                with pytest.raises(DecodeError):
                    decoder.decode(data[:cut], lsn, lsn)
                # A failed decode leaves the decoder as it was.
                assert _state(decoder) == before
        decoder.decode(data, lsn, lsn)


@pytest.mark.parametrize("read", READS)
def test_messages_with_trailing_bytes_raise_decode_error(read: dict[str, Any]) -> None:
    decoder = decoder_for(read)
    targets = set(_one_of_each_kind(read))
    for i, (data, lsn, _) in enumerate(messages_of(read)):
        if i in targets and data[:1] not in (b"M",):
            with pytest.raises(DecodeError):
                decoder.decode(data + b"\x00", lsn, lsn)
        decoder.decode(data, lsn, lsn)


# --- hand-built payloads ---------------------------------------------------------------


def _relation(relid: int = 16384, columns: tuple[tuple[str, int, bool], ...] = ()) -> bytes:
    columns = columns or (("id", 23, True), ("v", 25, False))
    out = b"R" + struct.pack(">I", relid) + b"\x00t\x00d" + struct.pack(">H", len(columns))
    for name, oid, key in columns:
        out += bytes([key]) + name.encode() + b"\x00" + struct.pack(">Ii", oid, -1)
    return out


def _tuple(*values: tuple[bytes, bytes | None]) -> bytes:
    out = struct.pack(">H", len(values))
    for kind, value in values:
        out += kind
        if value is not None:
            out += struct.pack(">I", len(value)) + value
    return out


def test_empty_schema_name_means_pg_catalog() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    (relation,) = decoder.decode(_relation(), 0, 0)
    assert isinstance(relation, Relation)
    assert (relation.schema, relation.table) == ("pg_catalog", "t")


def test_row_for_an_undescribed_relation_is_a_decode_error() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    payload = b"I" + struct.pack(">I", 99) + b"N" + _tuple((b"t", b"1"), (b"n", None))
    with pytest.raises(DecodeError, match="relation 99"):
        decoder.decode(payload, 0, 0)


def test_reset_forgets_relations_and_transaction() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    decoder.decode(b"B" + struct.pack(">QqI", 100, 0, 7), 50, 50)
    decoder.decode(_relation(), 0, 0)
    assert decoder.in_transaction
    decoder.reset()
    assert not decoder.in_transaction
    payload = b"I" + struct.pack(">I", 16384) + b"N" + _tuple((b"t", b"1"), (b"n", None))
    with pytest.raises(DecodeError):
        decoder.decode(payload, 60, 60)


def test_unknown_message_type_and_empty_payload() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    with pytest.raises(DecodeError, match="unknown pgoutput message type"):
        decoder.decode(b"Z", 0, 0)
    with pytest.raises(DecodeError, match="empty"):
        decoder.decode(b"", 0, 0)


def test_bad_column_kind_and_count() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    decoder.decode(_relation(), 0, 0)
    head = b"I" + struct.pack(">I", 16384) + b"N"
    with pytest.raises(DecodeError, match="column kind"):
        decoder.decode(head + _tuple((b"t", b"1"), (b"x", None)), 0, 0)
    with pytest.raises(DecodeError, match="3 columns"):
        decoder.decode(head + _tuple((b"t", b"1"), (b"n", None), (b"n", None)), 0, 0)


def test_text_and_binary_columns_mixed_in_one_tuple() -> None:
    decoder = make_decoder("pgoutput", publication="p", binary=True)
    decoder.decode(_relation(columns=(("a", 23, True), ("b", 23, False), ("c", 25, False))), 0, 0)
    payload = (
        b"I"
        + struct.pack(">I", 16384)
        + b"N"
        + _tuple((b"b", struct.pack(">i", 5)), (b"t", b"6"), (b"n", None))
    )
    (event,) = decoder.decode(payload, 10, 10)
    assert isinstance(event, Insert)
    assert dict(event.new) == {"a": 5, "b": 6, "c": None}


def test_bad_value_raises_decode_error_on_read_only() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    decoder.decode(_relation(), 0, 0)
    payload = b"I" + struct.pack(">I", 16384) + b"N" + _tuple((b"t", b"x1"), (b"t", b"\xff"))
    (event,) = decoder.decode(payload, 10, 10)
    assert isinstance(event, Insert)
    with pytest.raises(DecodeError, match="column 'id'"):
        event.new["id"]
    with pytest.raises(DecodeError, match="column 'v'"):
        event.new["v"]
    assert event.new.raw("id") == b"x1"


def test_decode_values_false_keeps_the_bytes() -> None:
    decoder = make_decoder("pgoutput", publication="p", decode_values=False)
    decoder.decode(_relation(), 0, 0)
    payload = b"I" + struct.pack(">I", 16384) + b"N" + _tuple((b"t", b"12"), (b"u", None))
    (event,) = decoder.decode(payload, 10, 10)
    assert isinstance(event, Insert)
    assert dict(event.new) == {"id": b"12", "v": UNCHANGED}


def test_row_lsn_without_frame_position_falls_back_to_last_end() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    decoder.decode(b"B" + struct.pack(">QqI", 0x500, 0, 7), 0x100, 0x100)
    decoder.decode(b"C" + struct.pack(">BQQq", 0, 0x500, 0x530, 0), 0x530, 0x530)
    decoder.decode(b"B" + struct.pack(">QqI", 0x900, 0, 8), 0, 0)
    decoder.decode(_relation(), 0, 0)
    payload = b"I" + struct.pack(">I", 16384) + b"N" + _tuple((b"t", b"1"), (b"n", None))
    (event,) = decoder.decode(payload, 0, 0)
    assert event.lsn == 0x530 and event.xid == 8


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "version"),
    [(130010, "1"), (140005, "2"), (150004, "3"), (160002, "4"), (170000, "4")],
)
def test_proto_version_defaults_to_the_servers_highest(server: int, version: str) -> None:
    options = make_decoder("pgoutput", publication="p").start_options(server)
    assert options == {"proto_version": version, "publication_names": '"p"'}


def test_options_in_order_with_every_feature() -> None:
    decoder = make_decoder(
        "pgoutput",
        publication=["a", "b"],
        binary=True,
        messages=True,
        streaming="parallel",
        two_phase=True,
        origin="none",
    )
    assert list(decoder.start_options(160000).items()) == [
        ("proto_version", "4"),
        ("publication_names", '"a","b"'),
        ("binary", "true"),
        ("messages", "true"),
        ("streaming", "parallel"),
        ("two_phase", "on"),
        ("origin", "none"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "server"),
    [
        ({"proto_version": 4}, 150000),
        ({"streaming": True}, 130000),
        ({"streaming": "parallel"}, 150000),
        ({"streaming": True, "proto_version": 1}, 150000),
        ({"two_phase": True}, 140000),
        ({"binary": True}, 130000),
        ({"origin": "any"}, 150000),
    ],
)
def test_options_the_server_lacks_are_configuration_errors(
    kwargs: dict[str, Any], server: int
) -> None:
    decoder = make_decoder("pgoutput", publication="p", **kwargs)
    with pytest.raises(ConfigurationError):
        decoder.start_options(server)


def test_publication_names_are_quoted_identifiers() -> None:
    assert quote_publication_names("p") == '"p"'
    assert quote_publication_names(['My "Pub"', "a,b", "x y", "é"]) == (
        '"My ""Pub""","a,b","x y","é"'
    )
    for bad in ([], [""], ["a\x00b"]):
        with pytest.raises(ConfigurationError):
            quote_publication_names(bad)


def test_make_decoder_argument_errors() -> None:
    with pytest.raises(ConfigurationError, match="publication"):
        make_decoder("pgoutput")
    with pytest.raises(ConfigurationError):
        make_decoder("pgoutput", publication="p", proto_version=5)
    with pytest.raises(ConfigurationError):
        make_decoder("pgoutput", publication="p", streaming="sometimes")
    with pytest.raises(ConfigurationError, match="unknown options"):
        make_decoder("pgoutput", publication="p", colour="blue")
    with pytest.raises(ConfigurationError):
        make_decoder("wal2json", publication="p")


def test_decode_error_is_a_protocol_error_with_position() -> None:
    decoder = make_decoder("pgoutput", publication="p")
    with pytest.raises(ProtocolError) as info:
        decoder.decode(b"Z", 0, 0)
    assert info.value.position == 0
