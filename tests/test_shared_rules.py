"""Rules kept in one place: identifier and connection-string quoting, the
PostgreSQL epoch's overflow policy, and misuse raising ``UsageError``."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import psycopg2.extensions
import pytest

from replicant.cluster import ClusterError, Installation, LocalCluster
from replicant.connection import ReplicationConnection, mask_dsn
from replicant.decoders.pgoutput import PgOutputDecoder, quote_publication_names
from replicant.errors import ConfigurationError, DecodeError, ProtocolError, UsageError
from replicant.protocol import (
    PG_EPOCH,
    pg_timestamp_to_datetime,
    quote_conninfo_value,
    quote_identifier,
)

from .conftest import Database

# --- identifiers


@pytest.mark.parametrize(
    ("name", "minimal"),
    [
        ("plain", "plain"),
        ("_x1", "_x1"),
        ("user", '"user"'),  # a keyword: bare, it would not be a name
        ("select", '"select"'),
        ("Mixed", '"Mixed"'),
        ("1abc", '"1abc"'),
        ("a$b", '"a$b"'),
        ("prés", '"prés"'),
        ('we"ird', '"we""ird"'),
        ("a b", '"a b"'),
    ],
)
def test_quote_identifier_minimal_quotes_what_the_server_would(name: str, minimal: str) -> None:
    assert quote_identifier(name, minimal=True) == minimal
    assert quote_identifier(name) == '"' + name.replace('"', '""') + '"'


def test_quote_identifier_refuses_empty_and_nul() -> None:
    for bad in ("", "a\x00b"):
        for minimal in (False, True):
            with pytest.raises(ConfigurationError):
                quote_identifier(bad, minimal=minimal)


def test_publication_names_are_quoted_identifiers() -> None:
    assert quote_publication_names(["a", 'B"c']) == '"a","B""c"'
    with pytest.raises(ConfigurationError, match="NUL"):
        quote_publication_names("a\x00")


# --- connection strings


@pytest.mark.parametrize(
    "value",
    ["plain", "", "a b", "tab\there", "it's", "back\\slash", "\\'", "=x", "a=b c", "päss", "'"],
)
def test_conninfo_values_round_trip_through_libpq(value: str) -> None:
    quoted = quote_conninfo_value(value)
    assert psycopg2.extensions.parse_dsn(f"host=h password={quoted} dbname=d") == {
        "host": "h",
        "password": value,
        "dbname": "d",
    }


def test_mask_dsn_and_the_cluster_quote_alike(cluster: LocalCluster) -> None:
    masked = mask_dsn("dbname='my db' application_name='it\\'s' password=x")
    assert psycopg2.extensions.parse_dsn(masked) == {
        "dbname": "my db",
        "application_name": "it's",
        "password": "***",
    }
    dsn = cluster.dsn_for("my db", application_name="back\\slash 'q'")
    parsed = psycopg2.extensions.parse_dsn(dsn)
    assert parsed["dbname"] == "my db" and parsed["application_name"] == "back\\slash 'q'"


# --- the epoch


def test_message_times_out_of_range_are_errors_never_clamped() -> None:
    assert pg_timestamp_to_datetime(0) == PG_EPOCH == datetime(2000, 1, 1, tzinfo=timezone.utc)
    for micros in (2**63 - 1, -(2**63)):
        with pytest.raises(ProtocolError, match="out of range"):
            pg_timestamp_to_datetime(micros)
    decoder = PgOutputDecoder("p")
    begin = b"B" + struct.pack(">qqI", 0x100, 2**63 - 1, 7)
    with pytest.raises(DecodeError, match="malformed Begin message: timestamp out of range"):
        decoder.decode(begin, 0x100, 0x100)
    fine = b"B" + struct.pack(">qqI", 0x100, 86_400_000_000, 7)
    (event,) = decoder.decode(fine, 0x100, 0x100)
    assert event.commit_time == datetime(2000, 1, 2, tzinfo=timezone.utc)


# --- misuse


def test_cluster_misuse_is_a_usage_error(installation: Installation) -> None:
    cluster = LocalCluster(bindir=installation.bindir)
    for call in (lambda: cluster.port, lambda: cluster.restart(), cluster.create_standby):
        with pytest.raises(UsageError) as info:
            call()
        assert isinstance(info.value, ClusterError)  # as before


def test_connection_misuse_is_a_usage_error(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION p FOR TABLE t")
    with ReplicationConnection.connect(db.dsn) as conn:
        conn.create_slot("misuse")
        stream = conn.start("misuse", options={"proto_version": "1", "publication_names": '"p"'})
        with pytest.raises(UsageError, match="streaming: stop the stream first"):
            conn.identify_system()
        with pytest.raises(UsageError, match="streaming"):
            conn.start("misuse")
        stream.stop()
        with pytest.raises(UsageError, match="has ended"):
            stream.read(timeout=0)
        with pytest.raises(UsageError, match="already streamed once"):
            conn.start("misuse")
