"""The public API: what the package exports, and the error misuse raises."""

from __future__ import annotations

import socket

import pytest

import replicant
from replicant import changes, errors, runtime


def test_the_package_exports_what_a_callback_needs() -> None:
    for name in changes.__all__:
        if name != "json_value":
            assert getattr(replicant, name) is getattr(changes, name), name
            assert name in replicant.__all__
    for name in errors.__all__:
        assert getattr(replicant, name) is getattr(errors, name), name
        assert name in replicant.__all__
    assert replicant.UNCHANGED is changes.UNCHANGED


def test_the_consumer_parts_are_not_top_level() -> None:
    for name in ("WalProgress", "StatusTimer", "Backoff"):
        assert not hasattr(replicant, name) and name not in replicant.__all__
        assert hasattr(runtime, name)  # still there, for the consumer and its tests


def test_usage_error_is_a_replicant_error_and_a_runtime_error() -> None:
    assert issubclass(replicant.UsageError, replicant.ReplicantError)
    assert issubclass(replicant.UsageError, RuntimeError)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_consumer_misuse_raises_usage_error() -> None:
    consumer = replicant.Consumer(
        f"host=127.0.0.1 port={_closed_port()} dbname=x user=x connect_timeout=2",
        slot="s",
        callback=lambda event: None,
        publication="p",
        reconnect=False,
    )
    with pytest.raises(replicant.UsageError, match="never started"):
        consumer.join()
    consumer.start()
    with pytest.raises(replicant.UsageError, match="already started"):
        consumer.start()
    with pytest.raises(replicant.ConnectionLost):  # nothing listens there
        consumer.join(30)
