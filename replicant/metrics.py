"""Prometheus metrics for a consumer: a collector, and an endpoint that serves it.

Needs ``prometheus_client`` (``pip install 'replicant[metrics]'``).

A service that already exposes metrics registers the collector in its own
registry::

    from prometheus_client import REGISTRY
    from replicant.metrics import ConsumerCollector

    REGISTRY.register(ConsumerCollector(consumer))

One that does not can serve them on a port of their own with
:func:`serve` (what ``replicant stream --metrics ADDRESS:PORT`` does).
Every figure is read from :meth:`Consumer.health()
<replicant.runtime.Consumer.health>` at scrape time; each metric carries a
``slot`` label, so several consumers can share one registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from replicant.errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from replicant.runtime import Consumer

__all__ = ["ConsumerCollector", "MetricsServer", "parse_address", "serve"]

# Every state pg_replication_slots.wal_status can take, so each is a series
# (0 or 1) and an alert can look for the one that matters.
_WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")


def _prometheus() -> Any:
    try:
        import prometheus_client.core
    except ImportError:
        raise ConfigurationError(
            "metrics need prometheus_client: pip install 'replicant[metrics]'"
        ) from None
    return prometheus_client.core


class ConsumerCollector:
    """A Prometheus collector of one consumer's figures (register it in a registry).

    Counters: ``replicant_events_total``, ``replicant_transactions_total``,
    ``replicant_received_bytes_total``, ``replicant_reconnects_total``,
    ``replicant_errors_total{kind}``. Gauges: ``replicant_received_lsn``,
    ``replicant_acknowledged_lsn``, ``replicant_server_lsn`` (LSNs as byte
    positions), ``replicant_lag_bytes``,
    ``replicant_lag_seconds{position="acknowledged"|"received"}``,
    ``replicant_events_per_second``, ``replicant_transactions_per_second``,
    ``replicant_seconds_since_last_message``, ``replicant_streaming``
    (1 while a stream is open), ``replicant_running``,
    ``replicant_slot_safe_wal_size_bytes`` and
    ``replicant_slot_wal_status{status}`` (1 for the slot's current state).
    A figure not known yet is left out rather than reported as 0. ``labels``
    are added to every metric, beside ``slot``.
    """

    def __init__(self, consumer: Consumer, *, labels: Mapping[str, str] | None = None) -> None:
        self._core = _prometheus()
        self.consumer = consumer
        extra = dict(labels or {})
        if "slot" in extra:
            raise ConfigurationError("the slot label is the consumer's own; pick another name")
        self._names = ["slot", *extra]
        self._values = [consumer.slot, *extra.values()]

    def describe(self) -> Iterator[Any]:
        """The metric families, without reading the consumer (for the registry's checks)."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The figures of :meth:`Consumer.health` now, as metric families."""
        core = self._core
        health = self.consumer.health()
        names, values = self._names, self._values

        def counter(name: str, doc: str, value: float) -> Any:
            family = core.CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float | None) -> Any:
            family = core.GaugeMetricFamily(name, doc, labels=names)
            if value is not None:
                family.add_metric(values, value)
            return family

        yield counter("replicant_events", "Events delivered to the callback.", health.events)
        yield counter(
            "replicant_transactions", "Transactions delivered (their ends).", health.transactions
        )
        yield counter("replicant_received_bytes", "Bytes of change payload received.", health.bytes)
        yield counter(
            "replicant_reconnects", "Reconnections after a lost connection.", health.reconnects
        )
        errors = core.CounterMetricFamily(
            "replicant_errors", "Failures, by kind (a retried one included).",
            labels=[*names, "kind"],
        )  # fmt: skip
        for kind, count in sorted(health.errors.items()):
            errors.add_metric([*values, kind], count)
        yield errors
        yield gauge(
            "replicant_received_lsn", "Highest WAL position received.", int(health.received_lsn)
        )
        yield gauge(
            "replicant_acknowledged_lsn",
            "WAL position acknowledged to the server.",
            int(health.acknowledged_lsn),
        )
        yield gauge(
            "replicant_server_lsn",
            "The server's WAL end, as last known.",
            None if health.server_lsn is None else int(health.server_lsn),
        )
        yield gauge(
            "replicant_lag_bytes",
            "Bytes from the acknowledged position to the server's WAL end.",
            health.bytes_behind,
        )
        lag = core.GaugeMetricFamily(
            "replicant_lag_seconds",
            "Now minus the commit time of the last acknowledged or received transaction.",
            labels=[*names, "position"],
        )
        for position, seconds in (
            ("acknowledged", health.seconds_behind),
            ("received", health.seconds_behind_received),
        ):
            if seconds is not None:
                lag.add_metric([*values, position], seconds)
        yield lag
        yield gauge(
            "replicant_events_per_second",
            f"Events per second over the last {health.rate_window:g} s.",
            health.events_per_second,
        )
        yield gauge(
            "replicant_transactions_per_second",
            f"Transactions per second over the last {health.rate_window:g} s.",
            health.transactions_per_second,
        )
        yield gauge(
            "replicant_seconds_since_last_message",
            "Seconds since the server last sent anything.",
            health.seconds_since_last_message,
        )
        yield gauge("replicant_streaming", "1 while a stream is open.", int(health.streaming))
        yield gauge("replicant_running", "1 while the consumer runs.", int(health.running))
        yield gauge(
            "replicant_slot_safe_wal_size_bytes",
            "WAL that can still be written before the slot is lost (as last read).",
            health.safe_wal_size,
        )
        status = core.GaugeMetricFamily(
            "replicant_slot_wal_status",
            "The slot's wal_status (as last read): 1 for the current one.",
            labels=[*names, "status"],
        )
        if health.wal_status is not None:
            for name in sorted({*_WAL_STATUSES, health.wal_status}):
                status.add_metric([*values, name], int(name == health.wal_status))
        yield status


def parse_address(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT``, ``:PORT`` or ``PORT`` (all addresses), ``[::1]:PORT``."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"expected ADDRESS:PORT, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"not a port number: {port}")
    return host, port


class MetricsServer:
    """An HTTP endpoint serving a registry in Prometheus' text format, until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        _prometheus()  # a clear error when it is missing
        from prometheus_client import start_http_server

        self.registry = registry
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        address = self._server.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        """The endpoint's address, ``http://HOST:PORT/metrics``."""
        host = str(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port!s}/metrics"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(consumer: Consumer, address: str | tuple[str, int]) -> MetricsServer:
    """Serve ``consumer``'s metrics at ``address`` (``"HOST:PORT"``; port 0: any free one).

    The endpoint has a registry of its own holding only this consumer's
    collector. Close the returned server when the consumer is done.
    Raises :class:`~replicant.errors.ConfigurationError` for a bad address
    or a missing ``prometheus_client``, :class:`OSError` when the port
    cannot be bound.
    """
    _prometheus()
    from prometheus_client import CollectorRegistry

    host, port = parse_address(address) if isinstance(address, str) else address
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConsumerCollector(consumer))
    return MetricsServer(registry, host, port)
