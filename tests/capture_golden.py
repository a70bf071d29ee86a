"""Regenerate the golden payloads under tests/golden/ from real servers.

Run ``python tests/capture_golden.py`` (every installation found) or
``python tests/capture_golden.py --pg 15``. For each server it runs one fixed
workload (see WORKLOAD) and reads the slot back through the SQL functions
``pg_logical_slot_peek_binary_changes`` (pgoutput) and
``pg_logical_slot_peek_changes`` (wal2json), which return exactly the payloads
the walsender puts in XLogData frames, with each payload's LSN and xid.

pgoutput is read once per option set (protocol versions, binary, streaming,
two-phase, parallel streaming). Of the row-carrying messages (Insert, Update,
Delete, Truncate, Message) only the first of each variant is kept, as a
named case; every other message is kept so a test can replay the state a
case needs (relations, types, stream blocks, the open transaction). The
output is one JSON file per plugin and server: tests/golden/pgoutput-pgNN.json
and tests/golden/wal2json-pgNN.json.

The values the workload writes are fixed (see tests/test_pgoutput.py for
what each case must decode to); LSNs, xids and times differ per capture.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2
import psycopg2.extensions

from replicant.cluster import LocalCluster, find_installations

GOLDEN = Path(__file__).resolve().parent / "golden"
PUBLICATION = "golden_pub"

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE golden (
    id int PRIMARY KEY, name text, amount numeric(10,2), at timestamptz, data bytea,
    tags text[], doc jsonb, feeling mood, flag bool, big text
);
ALTER TABLE golden ALTER big SET STORAGE EXTERNAL;
CREATE TABLE golden_full (id int, note text);
ALTER TABLE golden_full REPLICA IDENTITY FULL;
CREATE PUBLICATION golden_pub FOR ALL TABLES;
SELECT pg_replication_origin_create('golden_origin');
"""

BIG = "x" * 3000  # stored out of line (STORAGE EXTERNAL): an unchanged TOAST value on UPDATE

# Each entry is one transaction (a list of statements run in one session).
WORKLOAD: list[list[str]] = [
    [
        "INSERT INTO golden VALUES (1, 'héllo \"wörld\"', 12.50, "
        "'2024-05-06 07:08:09.123456+00', '\\x00ff10', '{a,\"b c\",NULL}', "
        "'{\"k\": [1, 2.5, null]}', 'happy', true, repeat('x', 3000))"
    ],
    ["UPDATE golden SET name = 'second' WHERE id = 1"],
    ["UPDATE golden SET id = 2 WHERE id = 1"],
    ["INSERT INTO golden_full VALUES (1, 'one'), (2, NULL)"],
    ["UPDATE golden_full SET note = 'uno' WHERE id = 1"],
    ["DELETE FROM golden_full WHERE id = 2"],
    ["DELETE FROM golden WHERE id = 2"],
    ["INSERT INTO golden_full VALUES (3, 'before truncate')"],
    ["TRUNCATE golden, golden_full RESTART IDENTITY"],
    ["SELECT pg_logical_emit_message(true, 'golden', 'transactional ü')"],
    ["SELECT pg_logical_emit_message(false, 'golden', '\\x00010203'::bytea)"],
    [
        "SELECT pg_replication_origin_session_setup('golden_origin')",
        "BEGIN",
        "SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-01 00:00:00+00')",
        "INSERT INTO golden_full VALUES (4, 'from elsewhere')",
        "COMMIT",
        "SELECT pg_replication_origin_session_reset()",
    ],
]

# Run after WORKLOAD; wal2json is read only up to the WAL position before them.
STREAMING_WORKLOAD: list[list[str]] = [
    # Big enough to pass logical_decoding_work_mem (64kB): streamed.
    [
        "BEGIN",
        "INSERT INTO golden_full SELECT g, repeat('s', 50) FROM generate_series(100, 1099) g",
        "COMMIT",
    ],
    # A subtransaction rolled back inside a streamed transaction.
    [
        "BEGIN",
        "INSERT INTO golden_full SELECT g, repeat('t', 50) FROM generate_series(2000, 2999) g",
        "SAVEPOINT sp",
        "INSERT INTO golden_full SELECT g, repeat('u', 50) FROM generate_series(3000, 3999) g",
        "ROLLBACK TO SAVEPOINT sp",
        "COMMIT",
    ],
    # A streamed transaction rolled back as a whole.
    [
        "BEGIN",
        "INSERT INTO golden_full SELECT g, repeat('v', 50) FROM generate_series(4000, 4999) g",
        "ROLLBACK",
    ],
    # Two-phase: prepared then committed, prepared then rolled back, and a big one.
    [
        "BEGIN",
        "INSERT INTO golden_full VALUES (10, 'prepared')",
        "PREPARE TRANSACTION 'golden_gid1'",
        "COMMIT PREPARED 'golden_gid1'",
    ],
    [
        "BEGIN",
        "INSERT INTO golden_full VALUES (11, 'rolled back')",
        "PREPARE TRANSACTION 'golden_gid2'",
        "ROLLBACK PREPARED 'golden_gid2'",
    ],
    [
        "BEGIN",
        "INSERT INTO golden_full SELECT g, repeat('w', 50) FROM generate_series(5000, 5999) g",
        "PREPARE TRANSACTION 'golden_gid3'",
        "COMMIT PREPARED 'golden_gid3'",
    ],
]

# The kinds whose messages carry rows or data; only the first of each variant is kept.
_DATA_KINDS = set(b"IUDTM")


def _variant(data: bytes, in_stream: bool, binary: bool) -> str:
    """A name for the shape of a data message, e.g. ``update_key`` or ``insert_streamed``."""
    kind = chr(data[0])
    body = data[5:] if in_stream else data[1:]
    suffix = "_streamed" if in_stream else ""
    if kind == "I":
        return ("insert_binary" if binary else "insert") + suffix
    if kind == "U":
        marker = chr(body[4])
        name = {"K": "update_key", "O": "update_full", "N": "update"}[marker]
        return name + ("_binary" if binary else "") + suffix
    if kind == "D":
        marker = chr(body[4])
        return {"K": "delete_key", "O": "delete_full"}[marker] + suffix
    if kind == "T":
        return "truncate" + suffix
    transactional = body[0] & 1
    return ("message" if transactional else "message_non_transactional") + suffix


def _option_sets(server_version: int) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(label, slot, pgoutput options) for each read of the slots."""
    major = server_version // 10000
    base = {"publication_names": f'"{PUBLICATION}"'}
    top = 2 if major == 14 else 3 if major == 15 else 4
    yield "proto1", "golden_slot", {"proto_version": "1", **base, "messages": "true"}
    yield "binary", "golden_slot", {"proto_version": "1", **base, "binary": "true"}
    yield (
        "streaming",
        "golden_slot",
        {"proto_version": str(top), **base, "messages": "true", "streaming": "on"},
    )
    if major >= 15:
        yield (
            "two_phase",
            "golden_2pc_slot",
            {"proto_version": str(top), **base, "two_phase": "on"},
        )
        yield (
            "stream_prepare",
            "golden_2pc_slot",
            {"proto_version": str(top), **base, "two_phase": "on", "streaming": "on"},
        )
    if major >= 16:
        yield (
            "parallel",
            "golden_slot",
            {"proto_version": "4", **base, "streaming": "parallel"},
        )


def _run(conn: psycopg2.extensions.connection, transactions: list[list[str]]) -> None:
    with conn.cursor() as cur:
        for statements in transactions:
            for sql in statements:
                cur.execute(sql)


def _peek(
    cur: psycopg2.extensions.cursor, slot: str, options: dict[str, str], upto: str | None
) -> list[tuple[str, int, bytes]]:
    flat = [item for pair in options.items() for item in pair]
    placeholders = ", ".join(["%s"] * len(flat))
    cur.execute(
        f"SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_binary_changes("
        f"%s, %s, NULL, {placeholders})",
        [slot, upto, *flat],
    )
    return [(lsn, xid, bytes(data)) for lsn, xid, data in cur.fetchall()]


def _capture_pgoutput(cur: psycopg2.extensions.cursor, server_version: int) -> dict[str, Any]:
    reads = []
    for label, slot, options in _option_sets(server_version):
        rows = _peek(cur, slot, options, None)
        messages: list[dict[str, Any]] = []
        cases: dict[str, int] = {}
        in_stream = False
        binary = options.get("binary") == "true"
        for lsn, xid, data in rows:
            kind = data[0]
            if kind in _DATA_KINDS:
                name = _variant(data, in_stream, binary)
                if name in cases:
                    continue
                cases[name] = len(messages)
            elif kind == ord("S"):
                in_stream = True
            elif kind == ord("E"):
                in_stream = False
            messages.append({"lsn": lsn, "xid": xid, "data": data.hex()})
        reads.append({"label": label, "options": options, "messages": messages, "cases": cases})
    return {"server_version_num": server_version, "reads": reads}


def _capture_wal2json(
    cur: psycopg2.extensions.cursor, server_version: int, upto: str
) -> dict[str, Any]:
    reads = []
    for version in (1, 2):
        options = {
            "format-version": str(version),
            "include-xids": "1",
            "include-timestamp": "1",
            "include-type-oids": "1",
            "include-pk": "1",
            "include-lsn": "1",
        }
        flat = [item for pair in options.items() for item in pair]
        placeholders = ", ".join(["%s"] * len(flat))
        cur.execute(
            f"SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_changes("
            f"'golden_w2j_slot', %s, NULL, {placeholders})",
            [upto, *flat],
        )
        rows = [{"lsn": lsn, "xid": xid, "data": data} for lsn, xid, data in cur.fetchall()]
        reads.append({"format_version": version, "options": options, "messages": rows})
    return {"server_version_num": server_version, "reads": reads}


def capture(cluster: LocalCluster) -> None:
    """Run the workload on a fresh database of ``cluster`` and write its golden files."""
    cluster.create_database("golden")
    conn = cluster.connect("golden")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
            cur.execute("SELECT current_setting('server_version_num')::int")
            server_version = cur.fetchone()[0]  # type: ignore[index]
            cur.execute("SELECT pg_create_logical_replication_slot('golden_slot', 'pgoutput')")
            if server_version >= 150000:
                cur.execute(
                    "SELECT pg_create_logical_replication_slot("
                    "'golden_2pc_slot', 'pgoutput', false, true)"
                )
            wal2json = cluster.has_plugin("wal2json")
            if wal2json:
                cur.execute(
                    "SELECT pg_create_logical_replication_slot('golden_w2j_slot', 'wal2json')"
                )
        _run(conn, WORKLOAD)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            upto = cur.fetchone()[0]  # type: ignore[index]
        _run(conn, STREAMING_WORKLOAD)
        major = server_version // 10000
        GOLDEN.mkdir(exist_ok=True)
        with conn.cursor() as cur:
            result = _capture_pgoutput(cur, server_version)
            _write(GOLDEN / f"pgoutput-pg{major}.json", result)
            if wal2json:
                _write(
                    GOLDEN / f"wal2json-pg{major}.json",
                    _capture_wal2json(cur, server_version, upto),
                )
            for slot in ("golden_slot", "golden_2pc_slot", "golden_w2j_slot"):
                cur.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (slot,),
                )
    finally:
        conn.close()


def _write(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(GOLDEN.parent.parent)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", type=int, action="append", default=[], help="major version")
    args = parser.parse_args(argv)
    for installation in find_installations():
        if args.pg and installation.version not in args.pg:
            continue
        with LocalCluster(bindir=installation.bindir) as cluster:
            capture(cluster)


if __name__ == "__main__":
    main()
