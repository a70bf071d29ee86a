"""The raw decoder: payloads of plugins replicant does not decode, as they came."""

from __future__ import annotations

import json

import pytest

from replicant.changes import RawChange
from replicant.decoders import Decoder, RawDecoder, make_decoder
from replicant.errors import ConfigurationError
from replicant.lsn import LSN


def test_payload_and_positions_pass_through() -> None:
    decoder = make_decoder("test_decoding", options={"include-xids": "0"})
    assert isinstance(decoder, RawDecoder)
    assert isinstance(decoder, Decoder)
    assert decoder.plugin == "test_decoding"
    assert decoder.start_options(150000) == {"include-xids": "0"}
    payload = b"table public.t: INSERT: id[integer]:1 \xff"
    (event,) = decoder.decode(payload, 0x16B3748, 0x16B3800)
    assert isinstance(event, RawChange)
    assert event.data == payload
    assert (event.lsn, event.wal_end) == (LSN("0/16B3748"), LSN("0/16B3800"))
    assert event.xid is None
    assert event.text().startswith("table public.t: INSERT")
    assert not decoder.in_transaction
    decoder.reset()


def test_memoryview_payload_is_copied() -> None:
    buffer = bytearray(b"abc")
    (event,) = RawDecoder("mine").decode(memoryview(buffer), 1, 2)  # type: ignore[arg-type]
    buffer[0] = ord("x")
    assert isinstance(event, RawChange) and event.data == b"abc"


def test_json_form_tags_the_bytes() -> None:
    (event,) = RawDecoder("mine").decode(b"\x00\x01", 5, 6)
    assert json.loads(json.dumps(event.to_dict())) == {
        "kind": "raw",
        "lsn": "0/5",
        "xid": None,
        "data": {"$base64": "AAE="},
        "wal_end": "0/6",
    }


def test_bad_plugin_names_and_keywords() -> None:
    with pytest.raises(ConfigurationError):
        RawDecoder("")
    with pytest.raises(ConfigurationError, match="unknown options"):
        make_decoder("decoderbufs", binary=True)
