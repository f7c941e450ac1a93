"""A fake local key provider for the unit tests of the modules that probe it.

A one-connection TCP server on 127.0.0.1 that plays one behaviour of the real provider, of docker's
port proxy with nothing behind it, or of a wrong service on the port, and records what it received.
The framing is the provider's: a 4-byte big-endian length, then JSON.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

REPLY = {"encrypted_key": list(range(80)), "provider_quote": [7] * 100}


def _frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def _read_exact(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_request(conn: socket.socket, seen: dict[str, Any]) -> None:
    header = _read_exact(conn, 4)
    (length,) = struct.unpack(">I", header)
    body = _read_exact(conn, length)
    seen["length"] = length
    seen["body"] = body


class FakeProvider:
    """A one-connection TCP server on 127.0.0.1 playing one behaviour."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.seen: dict[str, Any] = {}
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _peer = self.listener.accept()
        except OSError:
            return
        with conn:
            getattr(self, "_" + self.behaviour)(conn)

    # -- behaviours ----------------------------------------------------------------------
    def _close_at_once(self, conn: socket.socket) -> None:
        """docker-proxy with nothing listening inside the container."""

    def _speak_first(self, conn: socket.socket) -> None:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        self.release.wait(5)

    def _reject(self, conn: socket.socket) -> None:
        """The provider with a quote it cannot use: read it all, close without a reply."""
        _read_request(conn, self.seen)

    def _reset(self, conn: socket.socket) -> None:
        """Close with the request unread: the kernel resets the connection."""
        _read_exact(conn, 1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _hang(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        self.release.wait(5)

    def _answer(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(_frame(REPLY))

    def _answer_without_quote(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(_frame({"encrypted_key": [1, 2, 3]}))

    def _answer_a_list(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(_frame([1, 2, 3]))

    def _answer_not_json(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(struct.pack(">I", 9) + b"not json!")

    def _answer_huge(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(struct.pack(">I", 5 * 1024 * 1024))

    def _answer_truncated(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(struct.pack(">I", 100) + b"{" * 10)

    def _close_in_prefix(self, conn: socket.socket) -> None:
        _read_request(conn, self.seen)
        conn.sendall(b"\0\0")

    def _connect_only(self, conn: socket.socket) -> None:
        """Record whether the client sent anything before it closed."""
        conn.settimeout(2)
        try:
            self.seen["sent"] = conn.recv(1)
        except OSError:
            self.seen["sent"] = None

    def finish(self) -> dict[str, Any]:
        """Let the connection end, wait for the server and return what it received."""
        self.release.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the fake provider did not finish"
        return self.seen

    def close(self) -> dict[str, Any]:
        """Stop listening (a case that never connects ends too), then finish."""
        self.listener.close()
        return self.finish()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_request_json(seen: dict[str, Any]) -> Any:
    """The request the fake received, decoded."""
    return json.loads(seen["body"])
