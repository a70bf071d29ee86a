"""Value fidelity on real servers: odd server settings, the JSON round trip, values past Python.

* A server configured with DateStyle, IntervalStyle and extra_float_digits
  far from the defaults gives the same Python values as a default one.
* For every built-in type, the JSON the ``replicant stream`` command writes
  reads back, cast with ``::type`` on the server, as the original value.
* A stream holding a BC date, a year-10000 timestamp and a huge interval
  runs to its end, in the library and in the command, and resumes after it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import pytest

import replicant
from replicant import PgValue
from replicant.changes import Event, Insert, json_value
from replicant.values import OID, BinaryValue

from .conftest import Database, DatabaseFactory
from .helpers import run_cli
from .type_samples import (
    all_samples,
    create_all_types,
    insert_all_types,
    server_version,
)

# --- reading the JSON form back -------------------------------------------------------


def _dims(items: list[Any]) -> list[int]:
    dims = [len(items)]
    while items and isinstance(items[0], list):
        items = items[0]
        dims.append(len(items))
    return dims


def _array_text(items: list[Any]) -> str:
    parts = []
    for item in items:
        if isinstance(item, list):
            parts.append(_array_text(item))
        elif item is None:
            parts.append("NULL")
        else:
            text = _sql_text(item)
            assert text is not None
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def _sql_text(form: Any) -> str | None:
    """The text a reader of the JSON form gives the server for ``::type`` (None: NULL).

    What the guide's type table says about each JSON form, as code.
    """
    if form is None:
        return None
    if isinstance(form, bool):
        return "true" if form else "false"
    if isinstance(form, (int, float, str)):
        return str(form)
    if isinstance(form, list):
        return _array_text(form)
    assert isinstance(form, dict), form
    if "$json" in form:
        return str(form["$json"])
    if "$base64" in form:
        return "\\x" + base64.b64decode(form["$base64"]).hex()
    if "$array" in form:
        items = form["$array"]
        bounds = "".join(
            f"[{lower}:{lower + n - 1}]"
            for lower, n in zip(form["lower_bounds"], _dims(items), strict=True)
        )
        return bounds + "=" + _array_text(items)
    raise AssertionError(f"unknown JSON form {form!r}")


def _stream_json(db: Database, slot: str, *args: str) -> list[dict[str, Any]]:
    ((end,),) = db.query("SELECT pg_current_wal_lsn()::text")
    result = run_cli("stream", db.dsn, "--slot", slot, "--end", end, *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# Values wal2json writes as JSON null (it cannot write NaN or infinities).
_WAL2JSON_NULLS = {"'NaN'", "'-Infinity'", "'Infinity'"}


@pytest.mark.parametrize("mode", ["text", "binary", "wal2json"])
def test_the_json_form_round_trips_through_the_server(db: Database, mode: str) -> None:
    server = server_version(db)
    if mode == "binary" and server < 140000:
        pytest.skip("pgoutput binary mode needs PostgreSQL 14")
    if mode == "wal2json" and not db.cluster.has_plugin("wal2json"):
        pytest.skip("no wal2json on this server")
    samples = all_samples(db)
    create_all_types(db, samples)
    plugin = "wal2json" if mode == "wal2json" else "pgoutput"
    db.execute("SELECT pg_create_logical_replication_slot('rt', %s)", plugin)
    insert_all_types(db, samples)
    args = ["--plugin", plugin] if mode == "wal2json" else ["--publication", "pub"]
    if mode == "binary":
        args += ["-o", "binary=true"]
    events = [e for e in _stream_json(db, "rt", *args) if e["kind"] == "insert"]
    assert [e["new"]["id"] for e in events] == [1, 2]
    full, nulls = events[0]["new"], events[1]["new"]
    wrong = []
    opaque: list[str] = []
    for i, (sql_type, literal) in enumerate(samples):
        assert nulls[f"c{i}"] is None, (sql_type, nulls[f"c{i}"])
        form = full[f"c{i}"]
        if mode == "wal2json" and literal in _WAL2JSON_NULLS:
            assert form is None, (sql_type, literal, form)  # the documented loss
            continue
        text = _sql_text(form)
        if mode == "binary" and isinstance(form, dict) and "type_oid" in form:
            # No binary reader (documented): the send form as it came.
            opaque.append(sql_type)
            continue
        ((same,),) = db.query(
            f"SELECT (%s::{sql_type})::text IS NOT DISTINCT FROM (({literal})::{sql_type})::text",
            text,
        )
        if not same:
            wrong.append((sql_type, literal, form))
    assert wrong == []
    # Money's text depends on lc_monetary; user-defined types have no fixed OID.
    assert opaque == (["money", "mood", "positive", "pair"] if mode == "binary" else [])


# --- odd server settings ------------------------------------------------------------------

# Date, time, interval and float values, compared between a default server and one
# whose configuration writes them in other styles.
STYLED: list[tuple[str, str]] = [
    ("date", "'2024-02-29'"),
    ("date", "'0044-03-15 BC'"),
    ("date", "'infinity'"),
    ("time", "'13:14:15.5'"),
    ("timetz", "'13:14:15+02'"),
    ("timestamp", "'2024-12-31 23:59:59.25'"),
    ("timestamp", "'10000-01-01 00:00:00'"),
    ("timestamptz", "'2024-06-01 12:00:00+02'"),
    ("interval", "'10 days'"),
    ("interval", "'1 min'"),
    ("interval", "'1 year 2 mons -3 days 04:05:06.5'"),
    ("interval", "'178000000 years'"),
    ("float4", "1004.3"),
    ("float4", "3.14159274"),
    ("float8", "0.1"),
    ("float8", "2.718281828459045"),
    ("float8", "'NaN'"),
    ("numeric", "'1.50'"),
    ("date[]", "'{2024-01-02,infinity}'"),
    ("interval[]", '\'{"10 days","1 mon"}\''),
    ("float8[]", "'{0.1,1e-300}'"),
    ("tsrange", "'[2024-01-01 00:00,2024-01-02 00:00)'"),
]


def _inserts_up_to_now(
    db: Database, slot: str, mode: str, *, read_values: bool = False
) -> list[Insert]:
    """Stream the existing ``slot`` in ``mode`` up to the current WAL end; the Inserts seen.

    ``mode`` is ``text``/``binary`` (pgoutput, publication ``pub``) or
    ``wal2json``; ``read_values`` converts every value of each row as it arrives.
    """
    ((end,),) = db.query("SELECT pg_current_wal_lsn()::text")
    got: list[Insert] = []

    def keep(event: Event) -> Any:
        if isinstance(event, Insert):
            got.append(event)
            if read_values:
                event.new.to_dict()  # every value read and written
        return event.lsn

    replicant.run(
        db.dsn,
        slot=slot,
        callback=keep,
        plugin="wal2json" if mode == "wal2json" else "pgoutput",
        publication=None if mode == "wal2json" else "pub",
        options={"binary": "true"} if mode == "binary" else None,
        create_slot=False,
        end_lsn=end,
    )
    return got


def _styled_values(db: Database, mode: str) -> list[Any]:
    """The Python values of STYLED and of every built-in type's sample, streamed in ``mode``."""
    samples = STYLED + all_samples(db)
    create_all_types(db, samples)
    plugin = "wal2json" if mode == "wal2json" else "pgoutput"
    db.execute("SELECT pg_create_logical_replication_slot('styled', %s)", plugin)
    insert_all_types(db, samples)
    got = _inserts_up_to_now(db, "styled", mode)
    assert len(got) == 2
    row = got[0].new
    return [row[f"c{i}"] for i in range(len(samples))]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return str(a) == str(b)
    return type(a) is type(b) and bool(a == b)


@pytest.mark.parametrize("mode", ["text", "binary", "wal2json"])
def test_odd_server_settings_give_the_same_values(
    db: Database, make_cluster: Any, make_db: DatabaseFactory, mode: str
) -> None:
    if mode == "binary" and db.cluster.version < 14:
        pytest.skip("pgoutput binary mode needs PostgreSQL 14")
    if mode == "wal2json" and not db.cluster.has_plugin("wal2json"):
        pytest.skip("no wal2json on this server")
    odd_cluster = make_cluster(
        bindir=db.cluster.bindir,
        settings={
            "DateStyle": "SQL, DMY",
            "IntervalStyle": "sql_standard",
            "extra_float_digits": 0,
            "TimeZone": "America/New_York",
        },
    )
    odd = make_db(odd_cluster, prefix="odd")
    # (psycopg2 sets DateStyle ISO on its own ordinary connections: read the default.)
    styles = odd.query(
        "SELECT name, reset_val FROM pg_settings"
        " WHERE name IN ('DateStyle', 'IntervalStyle', 'extra_float_digits') ORDER BY name"
    )
    assert sorted(styles) == [
        ("DateStyle", "SQL, DMY"),
        ("IntervalStyle", "sql_standard"),
        ("extra_float_digits", "0"),
    ]
    expected = _styled_values(db, mode)
    got = _styled_values(odd, mode)
    samples = STYLED + all_samples(db)
    wrong = []
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if samples[i][0] == "timestamptz" and e is not None:
            # Written in each server's own TimeZone: the same instant, perhaps
            # another offset (and '10000-01-01 00:00+00' is year 9999 in New York).
            ((equal,),) = db.query(
                "SELECT %s::timestamptz = %s::timestamptz", json_value(e), json_value(g)
            )
            if not equal:
                wrong.append((samples[i], e, g))
        elif isinstance(e, BinaryValue) and isinstance(g, BinaryValue):
            if e.data != g.data:  # a user-defined type: its OID differs per database
                wrong.append((samples[i], e, g))
        elif not _same(e, g):
            wrong.append((samples[i], e, g))
    assert wrong == []
    # A sanity check that the values really are the intended ones.
    assert expected[8] == dt.timedelta(days=10) and expected[9] == dt.timedelta(minutes=1)
    assert expected[12] == 1004.3
    assert expected[1] == PgValue(OID.DATE, "0044-03-15 BC")


# --- values past Python's types do not stop the stream ------------------------------------


def _far_values(db: Database, first_id: int) -> None:
    db.execute(
        "INSERT INTO far VALUES (%s, '0044-03-15 BC', '10000-01-01 00:00:00', '178000000 years')",
        first_id,
    )
    db.execute(
        "INSERT INTO far VALUES (%s, '2024-01-01', '2024-01-01 00:00', '1 day')", first_id + 1
    )


@pytest.mark.parametrize("mode", ["text", "binary", "wal2json"])
def test_values_past_python_do_not_stop_the_stream_and_restart_resumes(
    db: Database, mode: str
) -> None:
    if mode == "binary" and server_version(db) < 140000:
        pytest.skip("pgoutput binary mode needs PostgreSQL 14")
    if mode == "wal2json" and not db.cluster.has_plugin("wal2json"):
        pytest.skip("no wal2json on this server")
    db.execute("CREATE TABLE far (id int PRIMARY KEY, d date, ts timestamp, i interval)")
    db.execute("CREATE PUBLICATION pub FOR TABLE far")
    plugin = "wal2json" if mode == "wal2json" else "pgoutput"
    db.execute("SELECT pg_create_logical_replication_slot('far', %s)", plugin)
    db.execute("SELECT pg_create_logical_replication_slot('far_cli', %s)", plugin)
    _far_values(db, 1)

    def run_library() -> list[Insert]:
        return _inserts_up_to_now(db, "far", mode, read_values=True)

    first = run_library()
    assert [e.new["id"] for e in first] == [1, 2]
    assert first[0].new["d"] == PgValue(OID.DATE, "0044-03-15 BC")
    assert first[0].new["ts"] == PgValue(OID.TIMESTAMP, "10000-01-01 00:00:00")
    assert first[0].new["i"] == PgValue(OID.INTERVAL, "178000000 years")
    assert str(first[0].new["d"]) == "0044-03-15 BC"
    assert first[0].new.to_dict() == {
        "id": 1,
        "d": "0044-03-15 BC",
        "ts": "10000-01-01 00:00:00",
        "i": "P178000000Y",
    }
    assert first[1].new["d"] == dt.date(2024, 1, 1)

    _far_values(db, 3)
    assert [e.new["id"] for e in run_library()] == [3, 4]  # resumed after the first run

    args = ["--plugin", plugin] if mode == "wal2json" else ["--publication", "pub"]
    if mode == "binary":
        args += ["-o", "binary=true"]
    lines = [e for e in _stream_json(db, "far_cli", *args) if e["kind"] == "insert"]
    assert [e["new"]["id"] for e in lines] == [1, 2, 3, 4]
    assert lines[0]["new"]["d"] == "0044-03-15 BC"
    assert lines[0]["new"]["i"] == "P178000000Y"
    _far_values(db, 5)
    again = [e for e in _stream_json(db, "far_cli", *args) if e["kind"] == "insert"]
    assert [e["new"]["id"] for e in again] == [5, 6]


def test_strict_values_raise_where_asked(db: Database) -> None:
    from replicant.decoders import PgOutputDecoder
    from replicant.values import text_reader

    with pytest.raises(replicant.DecodeError, match="out of Python's range"):
        text_reader(OID.DATE, strict=True)(b"0044-03-15 BC")
    assert text_reader(OID.DATE, strict=True)(b"2024-01-01") == dt.date(2024, 1, 1)
    assert PgOutputDecoder("pub", strict_values=True).strict_values


# --- the pinned session settings ------------------------------------------------------


def _settings(conn: Any) -> dict[str, str]:
    with conn.raw.cursor() as cur:
        out = {}
        for name in ("DateStyle", "IntervalStyle", "extra_float_digits", "work_mem"):
            cur.execute(f"SHOW {name}")
            out[name] = cur.fetchone()[0]
        cur.execute("SHOW application_name")
        out["application_name"] = cur.fetchone()[0]
        return out


def _pinned(got: dict[str, str]) -> bool:
    return (
        got["DateStyle"].startswith("ISO")
        and got["IntervalStyle"] == "postgres"
        and got["extra_float_digits"] == "3"
    )


def test_replication_connections_pin_the_settings_replicant_parses(
    db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from replicant.connection import ReplicationConnection

    monkeypatch.delenv("PGOPTIONS", raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    # The user's options survive, escapes and all; ours win for our three settings.
    user = r"-c work_mem=12MB -c application_name=a\ b\\c -c DateStyle=SQL,DMY"
    with ReplicationConnection.connect(db.dsn_with(options=user)) as conn:
        got = _settings(conn)
    assert _pinned(got) and got["work_mem"] == "12MB" and got["application_name"] == "a b\\c"

    with ReplicationConnection.connect(db.dsn, options="-c work_mem=13MB") as conn:
        got = _settings(conn)
    assert _pinned(got) and got["work_mem"] == "13MB"

    monkeypatch.setenv("PGOPTIONS", "-c work_mem=14MB -c intervalstyle=iso_8601")
    with ReplicationConnection.connect(db.dsn) as conn:
        got = _settings(conn)
    assert _pinned(got) and got["work_mem"] == "14MB"
    monkeypatch.delenv("PGOPTIONS")

    # Options from a service file are libpq's to read: the settings are SET instead.
    service = tmp_path / "pg_service.conf"
    params = dict(part.split("=", 1) for part in db.dsn.split())
    service.write_text(
        "[fidelity]\n"
        + "".join(f"{k}={v}\n" for k, v in params.items())
        + "options=-c work_mem=15MB -c extra_float_digits=0\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(service))
    with ReplicationConnection.connect("service=fidelity") as conn:
        got = _settings(conn)
    assert _pinned(got) and got["work_mem"] == "15MB"


# --- wal2json after schema changes --------------------------------------------------------


@pytest.mark.parametrize("format_version", [1, 2])
def test_wal2json_reports_only_the_columns_and_types_the_row_has(
    wal2json_db: Database, format_version: int
) -> None:
    from replicant.changes import Update
    from replicant.decoders import Wal2JsonDecoder

    db = wal2json_db
    db.execute("CREATE TABLE t (id int PRIMARY KEY, n int, drop1 text, big text)")
    db.execute("ALTER TABLE t ALTER big SET STORAGE EXTERNAL")
    db.execute("SELECT pg_create_logical_replication_slot('w2j', 'wal2json')")
    db.execute("INSERT INTO t VALUES (1, 1, 'x', repeat('B', 5000))")
    db.execute("ALTER TABLE t DROP COLUMN drop1")
    db.execute("UPDATE t SET n = 2 WHERE id = 1")
    db.execute("ALTER TABLE t ALTER COLUMN n TYPE numeric")
    db.execute("UPDATE t SET n = 1.5 WHERE id = 1")
    decoder = Wal2JsonDecoder(format_version=format_version)
    options = decoder.start_options(150000)
    flat = [x for pair in options.items() for x in pair]
    rows = db.query(
        "SELECT lsn::text, data FROM pg_logical_slot_get_changes('w2j', NULL, NULL"
        + ", %s" * len(flat)
        + ")",
        *flat,
    )
    events = []
    for _lsn, data in rows:
        events.extend(decoder.decode(data.encode(), 0, 0))
    updates = [e for e in events if isinstance(e, Update)]
    assert len(updates) == 2
    first, second = updates
    assert list(first.new) == ["id", "n"]  # no dropped column, no invented TOASTed one
    assert dict(first.new) == {"id": 1, "n": 2}
    assert [c.name for c in first.relation.columns] == ["id", "n"]
    assert second.new["n"] == Decimal("1.5")  # read with the type the row carries
    assert second.new.type_oid("n") == OID.NUMERIC
    assert second.new.to_dict() == {"id": 1, "n": "1.5"}
