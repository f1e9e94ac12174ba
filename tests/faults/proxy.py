"""A TCP relay a test puts between a client and the control plane, to break the network.

- :meth:`Relay.cut` closes every relayed connection now, as a firewall reset or a crashed
  load balancer would: both ends see the connection fail at once.
- :meth:`Relay.freeze` stops relaying bytes on the open connections but keeps them open, as a
  network partition does: nothing fails, nothing arrives, and only the peers' own timeouts and
  keepalives can notice. New connections flow, as a client that dials again gets a new path.
- While :meth:`Relay.refusing` is on, new connections are closed as soon as they arrive.
- While :meth:`Relay.dropping_upstream` is on, what clients send is lost (on open and new
  connections alike) while what the server sends still arrives: a one-way partition. When it
  ends, the connections that lost bytes are reset, as TCP gives up on a connection whose
  segments were never acknowledged.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator

_CHUNK = 1 << 16


class Relay:
    """Relays connections from a local port to ``target`` (``host:port``), on threads."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._refusing = False
        self._dropping = False
        #: Client sockets whose bytes were dropped (reset when the partition ends).
        self._damaged: set[socket.socket] = set()
        self._closed = False
        self.connections = 0
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Reset every open connection."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for *pair, flowing in pairs:
            flowing.set()
            for sock in pair:
                with contextlib.suppress(OSError):
                    # SO_LINGER 0: close with RST, as a dropped connection looks to its peers.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()

    def freeze(self) -> None:
        """Stop relaying bytes on the open connections; they stay open and silent."""
        with self._lock:
            for *_, flowing in self._pairs:
                flowing.clear()

    def thaw(self) -> None:
        """Relay again (bytes held in the kernel's buffers flow on)."""
        with self._lock:
            for *_, flowing in self._pairs:
                flowing.set()

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Close new connections at once while inside the block."""
        self._refusing = True
        try:
            yield
        finally:
            self._refusing = False

    @contextlib.contextmanager
    def dropping_upstream(self) -> Iterator[None]:
        """Lose every byte clients send while inside the block; server bytes still flow."""
        self._dropping = True
        try:
            yield
        finally:
            self._dropping = False
            with self._lock:
                damaged = [pair for pair in self._pairs if pair[0] in self._damaged]
                self._pairs = [pair for pair in self._pairs if pair[0] not in self._damaged]
                self._damaged.clear()
            for *pair, flowing in damaged:
                flowing.set()
                for sock in pair:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        sock.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
        self._acceptor.join(timeout=5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            flowing = threading.Event()
            flowing.set()
            with self._lock:
                self._pairs.append((client, upstream, flowing))
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink, flowing, source is client),
                    name="relay-pump",
                    daemon=True,
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, flowing: threading.Event, upward: bool
    ) -> None:
        try:
            while not self._closed:
                readable, _, _ = select.select([source], [], [], 0.1)
                if not readable:
                    continue
                flowing.wait()
                data = source.recv(_CHUNK)
                if not data:
                    break
                if upward and self._dropping:
                    with self._lock:
                        self._damaged.add(source)
                    continue
                sink.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
