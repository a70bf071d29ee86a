"""The golden reads of tests/golden/, shared by the decoder tests.

tests/capture_golden.py wrote them from real servers for one fixed
workload: ``pgoutput-pgNN.json`` holds what pgoutput sent for several option
sets (``READS``, one pytest parameter a read), ``wal2json-pgNN.json`` what
wal2json wrote (``WAL2JSON_READS``). ``FIRST_ROW`` is the workload's first
row as the decoders must give it back.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from replicant.decoders import PgOutputDecoder
from replicant.lsn import LSN

__all__ = [
    "FIRST_ROW",
    "GOLDEN",
    "READS",
    "WAL2JSON_READS",
    "decoded_reprs",
    "decoder_for",
    "messages_of",
]

GOLDEN = Path(__file__).parent / "golden"
UTC = dt.timezone.utc

# What the workload in capture_golden.py wrote into "golden" (id 1).
FIRST_ROW = {
    "id": 1,
    "name": 'héllo "wörld"',
    "amount": Decimal("12.50"),
    "at": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    "data": b"\x00\xff\x10",
    "tags": ["a", "b c", None],
    "doc": {"k": [1, 2.5, None]},
    "feeling": "happy",
    "flag": True,
    "big": "x" * 3000,
}


def _reads() -> Iterator[Any]:
    for path in sorted(GOLDEN.glob("pgoutput-pg*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        for read in content["reads"]:
            yield pytest.param(read, id=f"{path.stem}-{read['label']}")


def _wal2json_reads() -> Iterator[Any]:
    for path in sorted(GOLDEN.glob("wal2json-pg*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        for read in content["reads"]:
            yield pytest.param(read, id=f"{path.stem}-format{read['format_version']}")


#: Every pgoutput read, as pytest parameters (ids: file and label).
READS = list(_reads())
#: Every wal2json read, as pytest parameters (ids: file and format version).
WAL2JSON_READS = list(_wal2json_reads())


def decoder_for(read: dict[str, Any]) -> PgOutputDecoder:
    """A pgoutput decoder with the options ``read`` was captured with."""
    options = read["options"]
    streaming: bool | str = options.get("streaming", "off")
    streaming = {"on": True, "off": False}.get(str(streaming), streaming)
    return PgOutputDecoder(
        "golden_pub",
        proto_version=int(options["proto_version"]),
        binary=options.get("binary") == "true",
        messages=options.get("messages") == "true",
        streaming=streaming,
        two_phase=options.get("two_phase") == "on",
    )


def messages_of(read: dict[str, Any]) -> list[tuple[bytes, LSN, int]]:
    """The messages of a read: payload, LSN and xid (pgoutput's hex, wal2json's text)."""
    if "format_version" in read:
        return [(m["data"].encode(), LSN.parse(m["lsn"]), m["xid"]) for m in read["messages"]]
    return [(bytes.fromhex(m["data"]), LSN.parse(m["lsn"]), m["xid"]) for m in read["messages"]]


def decoded_reprs(read: dict[str, Any]) -> list[str]:
    """Every event of a pgoutput read, as the repr of its to_dict()."""
    decoder = decoder_for(read)
    return [
        repr(event.to_dict())
        for data, lsn, _ in messages_of(read)
        for event in decoder.decode(data, lsn, lsn)
    ]
