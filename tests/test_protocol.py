"""The sans-I/O protocol layer: frames, status updates, timestamps, commands."""

from __future__ import annotations

import contextlib
import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicant import LSN, ConfigurationError, ProtocolError
from replicant.protocol import (
    PG_EPOCH,
    PrimaryKeepalive,
    XLogData,
    create_slot_command,
    datetime_to_pg_timestamp,
    drop_slot_command,
    encode_status_update,
    identify_system_command,
    parse_frame,
    pg_now,
    pg_timestamp_to_datetime,
    quote_identifier,
    quote_literal,
    read_slot_command,
    start_replication_command,
    validate_slot_name,
)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


def xlogdata(start: int, end: int, sent: int, data: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", start, end, sent) + data


def keepalive(end: int, sent: int, reply: int) -> bytes:
    return b"k" + struct.pack("!QqB", end, sent, reply)


# --- frames


def test_xlogdata() -> None:
    frame = parse_frame(xlogdata(0x1_0000_0010, 0x1_0000_0020, 42, b"Bpayload"))
    assert isinstance(frame, XLogData)
    assert frame.wal_start == LSN("1/10") and isinstance(frame.wal_start, LSN)
    assert frame.wal_end == LSN("1/20")
    assert frame.send_time == 42
    assert frame.sent_at == PG_EPOCH + timedelta(microseconds=42)
    assert frame.data == b"Bpayload"


def test_xlogdata_with_empty_payload() -> None:
    frame = parse_frame(xlogdata(1, 2, 3, b""))
    assert isinstance(frame, XLogData) and frame.data == b""


def test_keepalive() -> None:
    frame = parse_frame(keepalive(0xFFFFFFFF_FFFFFFFF, -5, 1))
    assert frame == PrimaryKeepalive(LSN("FFFFFFFF/FFFFFFFF"), -5, True)
    assert parse_frame(keepalive(7, 0, 0)) == PrimaryKeepalive(LSN(7), 0, False)


@pytest.mark.parametrize(
    "frame", [xlogdata(1, 2, 3, b""), keepalive(1, 2, 1)], ids=["xlogdata", "keepalive"]
)
def test_truncated_at_every_byte(frame: bytes) -> None:
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            parse_frame(frame[:cut])


def test_keepalive_too_long() -> None:
    with pytest.raises(ProtocolError, match="expected 18"):
        parse_frame(keepalive(1, 2, 0) + b"x")


@pytest.mark.parametrize("kind", [b"r", b"s", b"\x00", b"W", b"\xff"])
def test_unknown_frame_type(kind: bytes) -> None:
    with pytest.raises(ProtocolError, match="unknown replication message type") as info:
        parse_frame(kind + b"\x00" * 30)
    assert info.value.position == 0


@given(u64, u64, i64, st.binary(max_size=64))
def test_xlogdata_round_trip(start: int, end: int, sent: int, data: bytes) -> None:
    assert parse_frame(xlogdata(start, end, sent, data)) == XLogData(
        LSN(start), LSN(end), sent, data
    )


@given(st.binary(max_size=40))
def test_random_bytes_raise_only_protocol_error(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_frame(payload)


# --- status updates


@given(u64, u64, u64, i64, st.booleans())
def test_status_update_layout(
    written: int, flushed: int, applied: int, now: int, reply: bool
) -> None:
    payload = encode_status_update(written, flushed, applied, now=now, reply=reply)
    assert len(payload) == 34
    assert struct.unpack("!cQQQqB", payload) == (b"r", written, flushed, applied, now, int(reply))


def test_status_update_high_lsn_is_unsigned() -> None:
    # The fault of the original: halves held as signed 32-bit.
    payload = encode_status_update(LSN("0/80000000"), LSN("0/80000000"), 0, now=0)
    assert payload[1:9] == b"\x00\x00\x00\x00\x80\x00\x00\x00"


def test_status_update_defaults_to_now() -> None:
    before = pg_now()
    (_, _, _, _, clock, reply) = struct.unpack("!cQQQqB", encode_status_update(1, 1, 1))
    assert before <= clock <= pg_now() and reply == 0


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_status_update_rejects_out_of_range(bad: int) -> None:
    with pytest.raises(ConfigurationError):
        encode_status_update(bad, 0, 0)


# --- timestamps


def test_pg_epoch() -> None:
    assert pg_timestamp_to_datetime(0) == datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert datetime_to_pg_timestamp(datetime(2000, 1, 1, 0, 0, 1, tzinfo=timezone.utc)) == 1_000_000


def test_now_matches_wall_clock() -> None:
    now = datetime.now(timezone.utc)
    assert abs(pg_timestamp_to_datetime(pg_now()) - now) < timedelta(seconds=1)


def test_naive_datetime_is_utc() -> None:
    assert datetime_to_pg_timestamp(datetime(2000, 1, 2)) == 86_400_000_000


def test_timestamp_out_of_range_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        pg_timestamp_to_datetime(2**63 - 1)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(timezone.utc),
    )
)
def test_timestamp_round_trip(value: datetime) -> None:
    assert pg_timestamp_to_datetime(datetime_to_pg_timestamp(value)) == value


# --- quoting and commands


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("pub", '"pub"'),
        ('we"ird', '"we""ird"'),
        ("a,b c;d\\e", '"a,b c;d\\e"'),
        ("prés", '"prés"'),
    ],
)
def test_quote_identifier(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted


def test_quote_literal() -> None:
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("back\\slash") == "'back\\slash'"
    with pytest.raises(ConfigurationError, match="NUL"):
        quote_literal("a\x00b")
    with pytest.raises(ConfigurationError):
        quote_identifier("")


@pytest.mark.parametrize("name", ["app", "app_1", "0abc", "_", "a" * 63])
def test_valid_slot_names(name: str) -> None:
    assert validate_slot_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "App", "a-b", "a b", 'a"; DROP_REPLICATION_SLOT x', "a;b", "é", "a" * 64, "a\x00"],
)
def test_invalid_slot_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="slot name"):
        validate_slot_name(name)
    with pytest.raises(ConfigurationError):
        start_replication_command(name)
    with pytest.raises(ConfigurationError):
        drop_slot_command(name)


def test_identify_and_read_and_drop() -> None:
    assert identify_system_command() == "IDENTIFY_SYSTEM"
    assert read_slot_command("s") == 'READ_REPLICATION_SLOT "s"'
    assert drop_slot_command("s") == 'DROP_REPLICATION_SLOT "s"'
    assert drop_slot_command("s", wait=True) == 'DROP_REPLICATION_SLOT "s" WAIT'


def test_create_slot_syntax_by_version() -> None:
    assert (
        create_slot_command("s", "pgoutput", server_version=150004)
        == 'CREATE_REPLICATION_SLOT "s" LOGICAL "pgoutput" (SNAPSHOT \'nothing\')'
    )
    assert (
        create_slot_command(
            "s",
            "wal2json",
            server_version=160000,
            temporary=True,
            snapshot="export",
            two_phase=True,
        )
        == 'CREATE_REPLICATION_SLOT "s" TEMPORARY LOGICAL "wal2json" '
        "(SNAPSHOT 'export', TWO_PHASE true)"
    )
    assert (
        create_slot_command("s", "pgoutput", server_version=140010, two_phase=True)
        == 'CREATE_REPLICATION_SLOT "s" LOGICAL "pgoutput" NOEXPORT_SNAPSHOT TWO_PHASE'
    )
    assert create_slot_command("s", "p", server_version=120000, snapshot="use").endswith(
        "USE_SNAPSHOT"
    )
    with pytest.raises(ConfigurationError, match="14"):
        create_slot_command("s", "p", server_version=130000, two_phase=True)
    with pytest.raises(ConfigurationError, match="snapshot"):
        create_slot_command("s", "p", server_version=150000, snapshot="maybe")


def test_start_replication() -> None:
    assert start_replication_command("s") == 'START_REPLICATION SLOT "s" LOGICAL 0/0'
    command = start_replication_command(
        "s",
        LSN("16/B374D848"),
        {"proto_version": "1", "publication_names": '"a,b","c""d"', "binary": True, "flag": None},
    )
    assert command == (
        'START_REPLICATION SLOT "s" LOGICAL 16/B374D848 ("proto_version" \'1\', '
        '"publication_names" \'"a,b","c""d"\', "binary" \'true\', "flag")'
    )


def test_start_replication_cannot_be_injected() -> None:
    command = start_replication_command("s", 0, [("x') ; DROP", "v'); IDENTIFY_SYSTEM; --")])
    assert command.endswith("(\"x') ; DROP\" 'v''); IDENTIFY_SYSTEM; --')")
    with pytest.raises(ConfigurationError):
        start_replication_command("s", 0, {"": "v"})
    with pytest.raises(ConfigurationError):
        start_replication_command("s", "bogus")
