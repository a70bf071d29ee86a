"""A value of every built-in type, and the table that holds them all, for the value tests.

Each sample is ``(SQL type, SQL literal)``; the edge cases of each type are
among them. Used by the fidelity tests and the snapshot tests alike.
"""

from __future__ import annotations

from .conftest import Database

# (SQL type, SQL literal): a value of every built-in type, with the edge cases.
VALUES: list[tuple[str, str]] = [
    ("int2", "-32768"),
    ("int4", "2147483647"),
    ("int8", "-9223372036854775808"),
    ("oid", "4294967295"),
    ("numeric", "'12.50'"),
    ("numeric", "'NaN'"),
    ("numeric", "'-0.0000000500'"),
    ("numeric", "9e1000 + 1"),
    ("numeric", "'1e-20'"),
    ("float4", "1004.3"),
    ("float4", "'NaN'"),
    ("float4", "'-Infinity'"),
    ("float8", "0.1"),
    ("float8", "'NaN'"),
    ("float8", "'Infinity'"),
    ("float8", "1e-308"),
    ("text", "'héllo \"q\" \\ ☃'"),
    ("varchar(5)", "'ab'"),
    ("bpchar(4)", "'ab'"),
    ("name", "'a name'"),
    ('"char"', "'x'"),
    ("bytea", "'\\x00ff10'"),
    ("bool", "true"),
    ("date", "'2024-02-29'"),
    ("date", "'0044-03-15 BC'"),
    ("date", "'10000-01-01'"),
    ("date", "'infinity'"),
    ("date", "'-infinity'"),
    ("time", "'23:59:59.999999'"),
    ("time", "'24:00:00'"),
    ("timetz", "'12:34:56.5+05:30'"),
    ("timestamp", "'2024-01-01 00:00:00.000001'"),
    ("timestamp", "'10000-01-01 00:00:00'"),
    ("timestamp", "'0044-03-15 12:00:00 BC'"),
    ("timestamp", "'infinity'"),
    ("timestamptz", "'2024-01-01 12:00+03'"),
    ("timestamptz", "'0044-03-15 12:00:00+00 BC'"),
    ("timestamptz", "'10000-01-01 00:00:00+00'"),
    ("timestamptz", "'-infinity'"),
    ("interval", "'1 mon'"),
    ("interval", "'1 year 2 mons -3 days 04:05:06.5'"),
    ("interval", "'-1 years -2 mons +3 days -04:05:06'"),
    ("interval", "'178000000 years'"),
    ("interval", "'2 days 1000000000:00:00'"),
    ("json", '\'{"a": 1, "a": 2}\''),
    ("json", "'null'"),
    ("jsonb", "'null'"),
    ("jsonb", '\'{"n": 1.000000000000000000001, "s": "é"}\''),
    ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("inet", "'10.1.2.3/8'"),
    ("cidr", "'2001:db8::/32'"),
    ("macaddr", "'08:00:2b:01:02:03'"),
    ("money", "'12.34'"),
    ("bit(4)", "B'1010'"),
    ("varbit", "B'101'"),
    ("int4[]", "'{1,NULL,3}'"),
    ("int4[]", "'[0:2][0:2]={{1,2,3},{4,5,6},{7,8,9}}'"),
    ("int4[]", "'[0:4]={1,2,3,4,5}'"),
    ("text[]", '\'{a,"b c",NULL,"NULL","\\\\"}\''),
    ("numeric[]", "'{1.50,NaN,NULL}'"),
    ("date[]", "'{2024-01-02,\"0044-03-15 BC\",infinity}'"),
    ("timestamptz[]", "'{\"2024-01-02 03:04:05+00\",-infinity}'"),
    ("interval[]", '\'{"1 mon","178000000 years"}\''),
    ("time[]", "'{24:00:00,12:00:00}'"),
    ("timetz[]", "'{24:00:00+02,12:00:00-05:30}'"),
    ("jsonb[]", "ARRAY['null'::jsonb, NULL, '{\"a\": [1]}']"),
    ("bytea[]", "'{\"\\\\x00ff\",NULL}'"),
    ("int4range", "'[1,10)'"),
    ("int8range", "'empty'"),
    ("numrange", "'(1.50,)'"),
    ("daterange", "'[2024-01-01,infinity)'"),
    ("tsrange", "'[2024-01-01 00:00,2024-01-02 12:00:00.5)'"),
    ("tstzrange", "'(,2024-01-01 00:00+00]'"),
    ("int4range[]", "ARRAY['[1,2)'::int4range, 'empty']"),
    ("macaddr[]", "'{08:00:2b:01:02:03,NULL}'"),
    ("varbit[]", "'{101,\"\"}'"),
    ("mood", "'happy'"),
    ("positive", "5"),
    ("pair", "ROW(1, 'a b')"),
]
MULTIRANGES: list[tuple[str, str]] = [
    ("int4multirange", "'{[1,3),[5,7)}'"),
    ("datemultirange", "'{}'"),
    ("tstzmultirange", "'{[2024-01-01 00:00+00,2024-01-02 00:00+00)}'"),
    ("int4multirange[]", "ARRAY['{[1,3),[5,7)}'::int4multirange, '{}', NULL]"),
]


def server_version(db: Database) -> int:
    return int(db.query("SHOW server_version_num")[0][0])


def all_samples(db: Database) -> list[tuple[str, str]]:
    return VALUES + (MULTIRANGES if server_version(db) >= 140000 else [])


def create_all_types(db: Database, samples: list[tuple[str, str]]) -> None:
    db.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    db.execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)")
    db.execute("CREATE TYPE pair AS (a int, b text)")
    columns = ", ".join(f"c{i} {sql_type}" for i, (sql_type, _) in enumerate(samples))
    db.execute(f"CREATE TABLE everything (id int PRIMARY KEY, {columns})")
    db.execute("ALTER TABLE everything REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION pub FOR TABLE everything")


def insert_all_types(db: Database, samples: list[tuple[str, str]]) -> None:
    names = ", ".join(f"c{i}" for i in range(len(samples)))
    literals = ", ".join(f"({literal})::{sql_type}" for sql_type, literal in samples)
    db.execute(f"INSERT INTO everything (id, {names}) VALUES (1, {literals})")
    db.execute("INSERT INTO everything (id) VALUES (2)")  # every column NULL
