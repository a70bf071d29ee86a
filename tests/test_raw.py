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


def test_register_decoder() -> None:
    from replicant.decoders import _REGISTRY, needs_publication, register_decoder

    made: list[dict[str, object]] = []

    def factory(**kwargs: object) -> Decoder:
        made.append(kwargs)
        return RawDecoder("my_plugin")

    try:
        register_decoder("my_plugin", factory, keywords={"level"})
        decoder = make_decoder("my_plugin", options={"x": "1"}, level=3)
        assert isinstance(decoder, RawDecoder) and decoder.plugin == "my_plugin"
        assert made == [
            {"publication": None, "options": {"x": "1"}, "decode_values": True, "level": 3}
        ]
        with pytest.raises(ConfigurationError, match="unknown options for plugin my_plugin: depth"):
            make_decoder("my_plugin", depth=1)
        with pytest.raises(ConfigurationError, match="does not take it"):
            make_decoder("my_plugin", publication="p")
        assert not needs_publication("my_plugin")

        register_decoder("my_plugin", factory, publication=True)  # replaces
        assert needs_publication("my_plugin")
        with pytest.raises(ConfigurationError, match="my_plugin needs a publication"):
            make_decoder("my_plugin")
        make_decoder("my_plugin", publication=["a", "b"])
        assert made[-1]["publication"] == ["a", "b"]

        register_decoder("my_plugin", lambda **_: object())  # type: ignore[arg-type,return-value]
        with pytest.raises(ConfigurationError, match="not a Decoder"):
            make_decoder("my_plugin")
        with pytest.raises(ConfigurationError, match="callable"):
            register_decoder("my_plugin", None)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="plugin name"):
            register_decoder("", factory)
    finally:
        _REGISTRY.pop("my_plugin", None)
    assert isinstance(make_decoder("my_plugin"), RawDecoder)  # unregistered: raw
    assert needs_publication("pgoutput") and not needs_publication("wal2json")
