"""Host API served by ``dstack run`` / ``dstack serve`` (zerog.compute simulation stand-in).

Behaviour follows upstream ``host_api.py`` (nearai/private-ml-sdk, blob 9c5df9a, identical in the
0.3 era and at v0.5.5); the code here is an independent re-implementation:

* ``POST /api/GetSealingKey`` with body ``{"quote": "<hex>"}``: the quote is forwarded to the local
  key provider at ``kp_address:kp_port`` over raw TCP, framed as a 4-byte big-endian length
  followed by the JSON ``{"quote": [<byte>, ...]}``.  The reply (same framing,
  ``{"encrypted_key": [...], "provider_quote": [...]}``) is returned as
  ``{"encrypted_key": "<hex>", "provider_quote": "<hex>"}``.
* ``POST /api/Notify`` with body ``{"event": ..., "payload": ...}``: for ``instance.info`` the
  payload string is written to ``<vm_dir>/shared/.instance_info``; the reply is ``null``.
* Any other POST path: 404 with body ``null``.  Bodies over 128 KiB: 400
  ``{"error": "Request body too large"}``.  There is no GET handler, so ``http.server`` answers
  GET with its stock 501.
* Errors (key provider down, bad JSON) are not caught: ``socketserver`` prints the traceback to
  stderr and closes the connection without a response, as upstream does.
* Only ``recv(4)`` is attempted for the reply length, as upstream does.
"""

import json
import os
import socket
import struct
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer

MAX_BODY = 128 * 1024


@dataclass
class ServerConfig:
    """Where the key provider listens and which VM directory the API serves."""

    kp_address: str
    kp_port: int
    vm_dir: str


@dataclass
class SealingKeyReply:
    """Decoded reply of the key provider."""

    encrypted_key: bytes
    provider_quote: bytes


def request_sealing_key(quote: bytes, address: str, port: int) -> SealingKeyReply:
    """Ask the key provider for a sealing key, using its length-prefixed JSON protocol."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.connect((address, port))
    try:
        request = json.dumps({"quote": list(quote)}).encode()
        conn.sendall(struct.pack(">I", len(request)))
        conn.sendall(request)
        (expected,) = struct.unpack(">I", conn.recv(4))
        received = b""
        while len(received) < expected:
            chunk = conn.recv(min(4096, expected - len(received)))
            if not chunk:
                raise ConnectionError("Connection closed prematurely")
            received += chunk
        reply = json.loads(received)
        return SealingKeyReply(
            encrypted_key=bytes(reply["encrypted_key"]),
            provider_quote=bytes(reply["provider_quote"]),
        )
    finally:
        conn.close()


class HostApiHandler(BaseHTTPRequestHandler):
    """Request handler bound to one :class:`ServerConfig`."""

    config: ServerConfig

    def do_POST(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        length = int(self.headers["Content-Length"])
        if length > MAX_BODY:
            self._reply(400, json.dumps({"error": "Request body too large"}).encode())
            return
        body = self.rfile.read(length)

        if path == "/api/GetSealingKey":
            quote_hex = json.loads(body)["quote"]
            key = request_sealing_key(
                bytes.fromhex(quote_hex), self.config.kp_address, self.config.kp_port
            )
            answer = json.dumps(
                {
                    "encrypted_key": key.encrypted_key.hex(),
                    "provider_quote": key.provider_quote.hex(),
                }
            ).encode()
        elif path == "/api/Notify":
            notice = json.loads(body)
            if notice["event"] == "instance.info":
                target = os.path.join(self.config.vm_dir, "shared", ".instance_info")
                with open(target, "w") as out:
                    out.write(notice["payload"])
            answer = b"null"
        else:
            self._reply(404, b"null")
            return
        self._reply(200, answer)

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def create_http_server(config: ServerConfig) -> tuple[HTTPServer, int]:
    """Create the API server on ``localhost`` with a free port chosen by the kernel."""
    handler = type("BoundHostApiHandler", (HostApiHandler,), {"config": config})
    server = HTTPServer(("localhost", 0), handler)
    return server, server.server_port
