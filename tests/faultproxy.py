"""A TCP proxy for fault injection between a client and a PostgreSQL server.

Threads and sockets only, listening on 127.0.0.1. Every connection the
proxy accepts is paired with a new connection to the target; two pump
threads copy bytes each way. Faults act on the connections open at the time
of the call:

- :meth:`FaultProxy.cut`: reset both sides at once (TCP RST, ``SO_LINGER``
  0), as a crashed middlebox or a pulled cable followed by a timeout would.
- :meth:`FaultProxy.cut_mid_copydata`: let the server's messages through
  until the next XLogData CopyData message that matches, forward part of it,
  then reset both sides. The server-to-client byte stream is parsed as
  PostgreSQL backend messages (1 type byte, int32 length) to find it.
- :meth:`FaultProxy.stall`: stop forwarding in both directions (for a while,
  or until :meth:`FaultProxy.resume`): the peers see silence, not an error.
- :meth:`FaultProxy.delay`: hold every chunk for a while before passing it on.
- :meth:`FaultProxy.refuse`: reset new connections as soon as they arrive.

It is bounded: every wait has a timeout, every thread is a daemon that checks
for the end, and the whole proxy shuts itself down after ``lifetime``
seconds. ``with FaultProxy(host, port) as proxy:`` closes everything on exit.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

from .listener import Listener

__all__ = ["BackendParser", "FaultProxy"]

_TICK = 0.05  # how often a waiting thread looks at its flags
_CHUNK = 65536
_LINGER_RST = struct.pack("ii", 1, 0)
_HEADER = struct.Struct("!cI")
# Enough of a message to see the CopyData type, the XLogData header (25
# bytes) and the pgoutput message type that follows it.
_LOOKAHEAD = 5 + 25 + 1


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.close()


class BackendParser:
    """Follows message boundaries in a server-to-client PostgreSQL byte stream.

    Before authentication the server may answer an SSLRequest or a
    GSSENCRequest with one bare byte: ``N`` (no) keeps the stream readable;
    ``S`` or ``G`` means what follows is encrypted, and the parser gives up
    (``opaque``). After that, every message is a type byte and an int32
    length that counts itself.

    :meth:`feed` takes each chunk as it passes and, when a cut is armed,
    returns the offset inside that chunk at which to cut: in the middle of
    the first XLogData message that is at least the ``nth`` pgoutput message
    of its transaction (``B`` Begin starts the count at 0).
    """

    def __init__(self) -> None:
        self.opaque = False
        self._startup = True
        self._remaining = 0  # bytes of the current message still to pass
        self._prefix = b""  # the first bytes of a message whose header is incomplete
        self._in_transaction_count = 0
        self.messages = 0
        self.copydata = 0
        self._armed_nth: int | None = None

    def arm(self, nth_in_transaction: int) -> None:
        """Ask for a cut inside the next XLogData matching ``nth_in_transaction``."""
        self._armed_nth = nth_in_transaction

    @property
    def armed(self) -> bool:
        return self._armed_nth is not None

    def feed(self, data: bytes) -> int | None:
        """Account for ``data``; return where to cut it, or None to pass it all."""
        i = 0
        size = len(data)
        while i < size and not self.opaque:
            if self._remaining:
                step = min(self._remaining, size - i)
                self._remaining -= step
                i += step
                continue
            if self._startup and not self._prefix:
                first = data[i : i + 1]
                if first == b"N":  # "no" to SSLRequest / GSSENCRequest
                    i += 1
                    continue
                if first in (b"S", b"G"):
                    self.opaque = True
                    return None
                self._startup = False
            # At a message start (or inside its first bytes): collect the prefix.
            need = _LOOKAHEAD - len(self._prefix)
            take = data[i : i + need]
            self._prefix += take
            i += len(take)
            if len(self._prefix) < 5:
                continue
            kind, length = _HEADER.unpack_from(self._prefix)
            total = 1 + length
            if len(self._prefix) < min(total, _LOOKAHEAD):
                continue  # wait for the rest of the lookahead
            prefix, self._prefix = self._prefix, b""
            if len(prefix) > total:  # a short message: hand back what is not ours
                i -= len(prefix) - total
                prefix = prefix[:total]
            self._remaining = total - len(prefix)
            self.messages += 1
            cut = self._account(kind, prefix, total)
            if cut is not None:
                # ``cut`` counts from the message start; the message's bytes
                # already passed in this chunk are the last len(prefix).
                # When the message goes on past this chunk, cut at the chunk's end.
                start_in_chunk = i - len(prefix)
                return min(max(start_in_chunk + cut, 0), size)
        return None

    def _account(self, kind: bytes, prefix: bytes, total: int) -> int | None:
        if kind != b"d" or len(prefix) < 6 or prefix[5:6] != b"w":
            return None
        self.copydata += 1
        pgoutput_type = prefix[30:31] if len(prefix) > 30 else b""
        if pgoutput_type == b"B":
            self._in_transaction_count = 0
            return None
        self._in_transaction_count += 1
        nth = self._armed_nth
        if nth is None or self._in_transaction_count < nth or pgoutput_type == b"C":
            return None
        self._armed_nth = None
        # Past the XLogData header and into the pgoutput message, not at its end.
        return min(total - 1, max(31, total // 2))


class _Pipe:
    """One proxied connection: client socket, server socket, two pumps."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.parser = BackendParser()
        self.stalled_until: float | None = None  # inf: until resume()
        self.closed = threading.Event()
        self._close_lock = threading.Lock()
        self.threads = [
            threading.Thread(
                target=self._pump,
                args=(client, server, False),
                name="faultproxy-up",
                daemon=True,
            ),
            threading.Thread(
                target=self._pump,
                args=(server, client, True),
                name="faultproxy-down",
                daemon=True,
            ),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stalled(self) -> bool:
        until = self.stalled_until
        if until is None:
            return False
        if time.monotonic() >= until:
            self.stalled_until = None
            return False
        return True

    def reset(self) -> None:
        """RST both sides."""
        with self._close_lock:
            if self.closed.is_set():
                return
            self.closed.set()
            _reset(self.client)
            _reset(self.server)

    def close(self) -> None:
        """Orderly close of both sides (after the other side closed)."""
        with self._close_lock:
            if self.closed.is_set():
                return
            self.closed.set()
            for sock in (self.client, self.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        proxy = self.proxy
        try:
            while not self.closed.is_set() and not proxy.closing.is_set():
                if self.stalled():
                    time.sleep(_TICK)
                    continue
                try:
                    readable, _, _ = select.select([source], [], [], _TICK)
                except (OSError, ValueError):
                    break
                if not readable or self.closed.is_set():
                    continue
                if self.stalled():
                    continue  # stalled between the wait and the read: leave it queued
                try:
                    data = source.recv(_CHUNK)
                except OSError:
                    self.reset()
                    break
                if not data:
                    self.close()
                    break
                delay = proxy.delay_seconds
                if delay > 0 and proxy.closing.wait(delay):
                    break
                cut_at: int | None = None
                if downstream:
                    cut_at = self.parser.feed(data)
                if cut_at is not None:
                    with contextlib.suppress(OSError):
                        sink.sendall(data[:cut_at])
                    # Let the client read the partial message before the reset.
                    time.sleep(0.2)
                    proxy.record_mid_copydata_cut(cut_at)
                    self.reset()
                    break
                try:
                    sink.sendall(data)
                except OSError:
                    self.reset()
                    break
        finally:
            if proxy.closing.is_set():
                self.reset()


class FaultProxy(Listener):
    """A fault-injecting TCP proxy on 127.0.0.1 in front of ``target_host:target_port``.

    ``port`` is where clients connect. ``connections`` counts the connections
    accepted and forwarded; ``refused`` those reset at once by :meth:`refuse`.
    ``lifetime`` bounds how long it runs at all.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        lifetime: float = 300.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self.delay_seconds = 0.0
        self.connections = 0
        self.refused = 0
        self.mid_copydata_cuts: list[float] = []  # when each armed cut happened
        self._refusing = False
        self._pipes: list[_Pipe] = []
        super().__init__(name="faultproxy-accept", lifetime=lifetime, backlog=64)
        self._cut_done = threading.Condition(self._lock)
        self._start_accepting()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"connections={self.connections} active={self.active}>"
        )

    # -- faults

    @property
    def active(self) -> int:
        """Connections currently open through the proxy."""
        with self._lock:
            return sum(1 for p in self._pipes if not p.closed.is_set())

    def cut(self) -> int:
        """Reset every open connection (RST to both peers). Returns how many."""
        pipes = self._open_pipes()
        for pipe in pipes:
            pipe.reset()
        return len(pipes)

    def cut_mid_copydata(self, nth_in_transaction: int = 1) -> None:
        """Cut the open connections inside their next matching XLogData message.

        The cut comes inside the first XLogData that is at least the
        ``nth_in_transaction``-th pgoutput message after a Begin (1: the
        first change of any transaction), after part of it was forwarded.
        :meth:`wait_mid_copydata_cut` waits for it to happen.
        """
        for pipe in self._open_pipes():
            pipe.parser.arm(nth_in_transaction)

    def wait_mid_copydata_cut(self, timeout: float) -> bool:
        """True once an armed :meth:`cut_mid_copydata` has cut a connection."""
        with self._cut_done:
            return self._cut_done.wait_for(lambda: bool(self.mid_copydata_cuts), timeout)

    def record_mid_copydata_cut(self, offset: int) -> None:
        with self._cut_done:
            self.mid_copydata_cuts.append(time.monotonic())
            self._cut_done.notify_all()

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding on the open connections, both ways.

        For ``seconds``, or (``None``) until :meth:`resume`. New connections
        are not stalled: a client that gives up and reconnects gets through.
        """
        until = float("inf") if seconds is None else time.monotonic() + seconds
        for pipe in self._open_pipes():
            pipe.stalled_until = until

    def resume(self) -> None:
        """End a stall."""
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.stalled_until = None

    def delay(self, seconds: float) -> None:
        """Hold every chunk, both ways, ``seconds`` before forwarding it (0 to stop)."""
        self.delay_seconds = max(0.0, float(seconds))

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections as they arrive (until ``refuse(False)``)."""
        self._refusing = refusing

    # -- internals

    def _open_pipes(self) -> list[_Pipe]:
        with self._lock:
            self._pipes = [p for p in self._pipes if not p.closed.is_set()]
            return list(self._pipes)

    # -- serving (the listener calls these)

    def _accepted(self, sock: socket.socket) -> None:
        if self._refusing:
            self.refused += 1
            _reset(sock)
            return
        self._forward(sock)

    def _serving_threads(self) -> list[threading.Thread]:
        with self._lock:
            pipes = list(self._pipes)
        return [t for p in pipes for t in p.threads]

    def _drop_connections(self) -> None:
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.reset()

    def _expired(self) -> None:
        # The lifetime ran out: shut everything down, from a thread of its
        # own (close() waits for the accept thread, which calls this).
        threading.Thread(target=self.close, name="faultproxy-expire", daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            # The server is down: the client sees its connection reset.
            _reset(client)
            return
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(self, client, server)
        with self._lock:
            self._pipes.append(pipe)
            self.connections += 1
        pipe.start()
