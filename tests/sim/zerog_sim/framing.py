"""Length-prefixed JSON framing of the local key provider (client and server helpers).

The gramine-sealing-key-provider speaks raw TCP, not HTTP: every message is a 4-byte
big-endian unsigned length followed by that many bytes of JSON.  A request is
``{"quote": [<bytes as integers>]}``; a reply is
``{"encrypted_key": [...], "provider_quote": [...]}`` in the same framing.  The provider
answers one request per connection and then closes it; on any error it closes the connection
without writing anything (dstack-cli.md section 3).

This module is the one place that encodes and decodes that framing.  The dstack host API
stand-in and the stand-in CVM import it for the client side; the key-provider stand-in uses
``read_exact`` and ``encode_frame`` for the server side.

Errors raised by the client helpers:

* ``ConnectionClosed`` (a ``ConnectionError``): the peer closed (or reset) the connection
  before a whole frame arrived.  ``received`` holds the bytes that did arrive (empty when the peer
  closed before sending anything, which is what the key provider does on every error).
* ``FrameTooLarge``: a length prefix above the caller's ``max_len``.
* ``FramingError`` (base class): a frame whose body is not valid UTF-8 JSON.
* ``OSError`` subclasses from the socket layer pass through unchanged
  (``ConnectionRefusedError`` when nothing listens, ``TimeoutError`` on ``timeout``).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

#: Size of the length prefix in bytes (a big-endian u32).
HEADER_LEN = 4
#: Largest length the 4-byte prefix can carry.  The provider enforces no smaller limit itself.
MAX_FRAME_LEN = 0xFFFFFFFF
#: Default client timeout in seconds for ``request``.
DEFAULT_TIMEOUT = 10.0

_HEADER = struct.Struct(">I")


class FramingError(Exception):
    """A frame could not be decoded."""


class FrameTooLarge(FramingError):
    """The length prefix announced more bytes than the caller accepts."""

    def __init__(self, length: int, max_len: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {max_len} bytes")
        self.length = length
        self.max_len = max_len


class ConnectionClosed(FramingError, ConnectionError):
    """The peer closed the connection before a complete frame was read."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        self.received = received


def encode_header(length: int) -> bytes:
    """Return the 4-byte big-endian length prefix for ``length`` bytes."""
    if not 0 <= length <= MAX_FRAME_LEN:
        raise ValueError(f"frame length {length} does not fit in 4 bytes")
    return _HEADER.pack(length)


def decode_header(header: bytes) -> int:
    """Return the length carried by a 4-byte prefix."""
    if len(header) != HEADER_LEN:
        raise ValueError(f"a length prefix is {HEADER_LEN} bytes, got {len(header)}")
    return int(_HEADER.unpack(header)[0])


def encode_json(obj: Any) -> bytes:
    """Serialise ``obj`` as compact JSON (no spaces), the way serde_json writes it."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def encode_frame(obj: Any) -> bytes:
    """Return the complete frame (prefix and JSON body) for ``obj``."""
    body = encode_json(obj)
    return encode_header(len(body)) + body


def read_exact(sock: socket.socket, count: int) -> bytes:
    """Read exactly ``count`` bytes; raise ``ConnectionClosed`` on EOF before that."""
    chunks: list[bytes] = []
    remaining = count
    while remaining > 0:
        try:
            chunk = sock.recv(min(remaining, 65536))
        except ConnectionResetError:
            chunk = b""  # closed with our request unread: the kernel reset it; same outcome
        if not chunk:
            got = b"".join(chunks)
            raise ConnectionClosed(f"connection closed after {len(got)} of {count} bytes", received=got)
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, obj: Any) -> None:
    """Send ``obj`` as one frame."""
    sock.sendall(encode_frame(obj))


def recv_frame(sock: socket.socket, max_len: int | None = None) -> Any:
    """Read one frame and return the decoded JSON value.

    ``max_len`` (optional) rejects a longer announced body with ``FrameTooLarge`` before
    reading it.  EOF anywhere inside the frame raises ``ConnectionClosed``.
    """
    try:
        header = read_exact(sock, HEADER_LEN)
    except ConnectionClosed as exc:
        if not exc.received:
            raise ConnectionClosed("connection closed before any reply") from None
        raise ConnectionClosed(
            f"connection closed inside the length prefix ({len(exc.received)} of {HEADER_LEN} bytes)",
            received=exc.received,
        ) from None
    length = decode_header(header)
    if max_len is not None and length > max_len:
        raise FrameTooLarge(length, max_len)
    try:
        body = read_exact(sock, length)
    except ConnectionClosed as exc:
        raise ConnectionClosed(
            f"connection closed inside a {length}-byte frame after {len(exc.received)} bytes",
            received=header + exc.received,
        ) from None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FramingError(f"frame body is not JSON: {exc}") from exc


def request(host: str, port: int, obj: Any, timeout: float | None = DEFAULT_TIMEOUT, max_len: int | None = None) -> Any:
    """Open a connection, send ``obj`` as one frame, and return the decoded reply frame."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        send_frame(sock, obj)
        return recv_frame(sock, max_len=max_len)
