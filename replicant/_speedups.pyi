# The compiled module's interface; see _speedups.c, which names the C file and
# the pure-Python equivalent of each piece (that one defines its behaviour).
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

def drain(
    pgconn: int,
    consume_input: int,
    get_copy_data: int,
    freemem: int,
    limit: int,
    extra_reads: int,
    xlogdata: type[Any],
    lsn: type[int],
    /,
) -> tuple[list[Any], int, int]: ...
def read_row(
    data: bytes,
    pos: int,
    count: int,
    text: Any,
    binary: Any,
    row_type: type[Any],
    unchanged: object,
    /,
) -> tuple[Any, int] | None: ...

class RowCore:
    _layout: Any
    _raw: list[Any]
    def __init__(self, layout: Any, raw: list[Any], /) -> None: ...
    def __getitem__(self, name: str, /) -> Any: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object, /) -> bool: ...

def maker(cls: type[Any], names: tuple[str, ...], /) -> Any: ...
def from_text(
    parse: Callable[[str], Any], fallback: Callable[[Any], Any] | None = None, /
) -> Callable[[str | bytes], Any]: ...
def float4_bin(data: bytes, /) -> float: ...
def isoformat(value: Any, /) -> str: ...
def pg_datetime(value: int, /) -> datetime: ...

class JsonWriter:
    def __init__(
        self,
        make_plan: Callable[[Any], Any],
        column: Callable[[Any, int, bool], str],
        row_slow: Callable[[Any, bool], bytes],
        line_exact: Callable[[Any], bytes],
        line_other: Callable[[Any], bytes],
        row_type: type[Any],
        lsn_type: type[int],
        insert_type: type[Any],
        update_type: type[Any],
        delete_type: type[Any],
        unchanged: object,
        begin_type: type[Any],
        commit_type: type[Any],
        datetime_type: type[Any],
        isoformat: Callable[[Any], str],
        /,
    ) -> None: ...
    def __call__(self, event: Any, /) -> bytes: ...
    def row(self, row: Any, debezium: bool = False, /) -> bytes: ...
    def value(self, event: Any, /) -> bytes | None: ...
    def debezium(
        self, event: Any, transaction: bytes, txid: int | None, ts_ms: int, read: bool = False, /
    ) -> bytes | None: ...
def w2j_record(data: bytes, /) -> tuple[Any, ...] | None: ...

class PgOutputFast:
    def __init__(
        self,
        decoder: Any,
        reference: Callable[[bytes, int, int], list[Any]],
        lsn_type: type,
        row_type: type,
        unchanged: Any,
        new_begin: Callable[..., Any],
        new_commit: Callable[..., Any],
        new_insert: Callable[..., Any],
        new_update: Callable[..., Any],
        to_datetime: Callable[[int], datetime],
    ) -> None: ...
    def __call__(self, data: bytes, wal_start: int, wal_end: int, /) -> list[Any]: ...
