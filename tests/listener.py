"""The TCP listener the test servers share: accept, serve, close, bounded lifetime.

:class:`Listener` listens on 127.0.0.1 (an ephemeral ``port``) and hands
every connection it accepts to :meth:`Listener._accepted`, from one accept
thread. Subclasses (the fake PostgreSQL server, the fault proxy) say how a
connection is served and which threads serve it; the listener owns the rest:

- the accept loop polls every ``_TICK`` seconds, so it sees ``closing``
  promptly and never blocks past the end;
- ``lifetime`` bounds how long it runs at all: when it is over the accept
  loop ends and :meth:`Listener._expired` runs (by default it sets
  ``closing``, which every serving thread watches);
- :meth:`Listener.close` stops accepting, drops the open connections and
  waits for every thread; ``with SomeListener(...) as it:`` closes on exit;
- :meth:`Listener.threads` and :meth:`Listener.assert_closed_cleanly` let a
  test check that nothing of the listener is left behind.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from types import TracebackType
from typing import TypeVar

__all__ = ["Listener"]

_TICK = 0.05  # how often a waiting thread looks at its flags

_L = TypeVar("_L", bound="Listener")


class Listener:
    """A bounded TCP listener on 127.0.0.1 that serves each connection from threads.

    A subclass builds its own state, then calls :meth:`_start_accepting`; it
    implements :meth:`_accepted` (serve one socket), :meth:`_serving_threads`
    (the threads started for connections) and :meth:`_drop_connections`
    (close every open connection, for :meth:`close`).
    """

    def __init__(self, *, name: str, lifetime: float, backlog: int = 16) -> None:
        self.name = name
        self.closing = threading.Event()
        self.errors: list[BaseException] = []  # failures of the listener itself
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(backlog)
        self.port: int = self._listener.getsockname()[1]
        self._deadline = time.monotonic() + lifetime
        self._acceptor = threading.Thread(target=self._accept_loop, name=name, daemon=True)

    # -- what a subclass provides

    def _accepted(self, sock: socket.socket) -> None:
        """Serve one accepted connection (from the accept thread: start a thread for it)."""
        raise NotImplementedError

    def _serving_threads(self) -> list[threading.Thread]:
        """Every thread started to serve a connection, alive or not."""
        raise NotImplementedError

    def _drop_connections(self) -> None:
        """Close every open connection (called by :meth:`close`)."""
        raise NotImplementedError

    def _expired(self) -> None:
        """The lifetime is over: by default, tell every serving thread to end."""
        self.closing.set()

    # -- lifetime

    def _start_accepting(self) -> None:
        self._acceptor.start()

    @property
    def expired(self) -> bool:
        """True once the listener's lifetime is over."""
        return time.monotonic() > self._deadline

    def close(self) -> None:
        """Stop accepting, drop every connection and wait for the threads (5 s each)."""
        self.closing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_connections()
        current = threading.current_thread()
        if self._acceptor is not current and self._acceptor.ident is not None:
            self._acceptor.join(5)
        for thread in self._serving_threads():
            if thread is not current and thread.ident is not None:
                thread.join(5)

    def threads(self) -> list[threading.Thread]:
        """The listener's threads still alive."""
        alive = [t for t in self._serving_threads() if t.is_alive()]
        if self._acceptor.is_alive():
            alive.append(self._acceptor)
        return alive

    def assert_closed_cleanly(self) -> None:
        """Close; fail if a thread of the listener is left or the listener itself failed."""
        self.close()
        assert not self.threads(), f"{self.name} threads left: {self.threads()}"
        assert not self.errors, f"{self.name} itself failed: {self.errors!r}"

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the accept loop

    def _accept_loop(self) -> None:
        try:
            while not self.closing.is_set() and not self.expired:
                try:
                    readable, _, _ = select.select([self._listener], [], [], _TICK)
                except (OSError, ValueError):
                    break  # closed under us
                if not readable:
                    continue
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    continue
                self._accepted(sock)
        finally:
            if not self.closing.is_set():
                self._expired()
