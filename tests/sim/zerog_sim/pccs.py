"""Stand-in for Intel's Provisioning Certificate Caching Service (PCCS) on the simulated host.

The local key provider needs a PCCS on ``127.0.0.1:8081``: its AESM / DCAP quote provider
library fetches the platform's PCK certificate from ``https://127.0.0.1:8081/sgx/certification/
v4/`` (``sgx_default_qcnl.conf``, ``use_secure_cert: false``) whenever it produces an SGX quote.

Run it in the foreground (it is a systemd unit in a simulated instance)::

    python3 -m zerog_sim.pccs [--port 8081] [--bind 127.0.0.1] [--ssl-dir DIR]

What the real PCCS (Node.js/express, intel/SGXDataCenterAttestationPrimitives
``QuoteGeneration/pccs``) does and this stand-in reproduces:

* HTTPS only.  The real one reads ``ssl_key/private.pem`` and ``ssl_key/file.crt`` (a
  self-signed certificate its installer makes with ``openssl``) and listens on
  ``HTTPS_PORT`` (8081) at ``hosts`` (127.0.0.1).  Python's ``ssl`` module cannot create a
  certificate, and no ``openssl`` binary is guaranteed inside an instance, so this module
  embeds a self-signed test certificate (EC P-256, CN=localhost, SAN localhost/127.0.0.1,
  valid 2025-2124) made once with ``openssl``; ``--ssl-dir`` uses the real file names
  instead.  A plain-HTTP request gets the connection closed, as with the real server.
* Startup line ``HTTPS Server is running on: https://localhost:<port>`` and one access-log
  line per request (morgan "combined" through the PCCS logger) on stdout.
* Routes under ``/sgx/certification/v3`` and ``/sgx/certification/v4``: ``GET pckcert``,
  ``pckcrl`` (``ca=processor|platform``, optional ``encoding=der``), ``tcb``,
  ``qe/identity``, ``qve/identity``, ``rootcacrl`` (hex of the DER CRL, as PCCS returns it),
  ``crl`` (``uri=``); ``platforms``, ``platformcollateral`` and ``refresh`` answer 401
  ``Authentication failed.`` (no tokens are configured).  ``/tdx/certification/v4/tcb`` and
  ``/tdx/certification/v4/qe/identity``.  Bad parameters: 400 ``Invalid request
  parameters.``.  Anything else: express's 404 page ``Cannot <METHOD> <path>``.
* There is **no** version or health endpoint in Intel's PCCS; ``GET .../v4/rootcacrl`` (200
  with a hex body) is the cheapest request that proves the service answers.

The certificates and CRLs are a made-up PKI ("zerog-sim SGX Root CA", clearly not Intel's);
the TCB info and identity bodies are minimal and unsigned.  Nothing here can be verified by
Intel's libraries; it only has to look and fail like the service for the simulator.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import errno
import hashlib
import html
import json
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 8081
DEFAULT_BIND = "127.0.0.1"

# Test-only key and certificates for the simulator (made with openssl, see module docstring).
# They protect nothing; never use them outside the simulated host.
TLS_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4Xym7ATwhZ4j8Icn
uU4bh1VyuDesoexwbfQYOeYkIJWhRANCAARo6hCWclf2Lz8TXparONUR3AlSs9W1
3uR3+2ZVnDBuHLOz55z1kevdRplbNyYtM/ZtSaQ1rNij00vWugcHDdUX
-----END PRIVATE KEY-----
"""

TLS_CERT_PEM = """-----BEGIN CERTIFICATE-----
MIIBzjCCAXOgAwIBAgIBATAKBggqhkjOPQQDAjA2MRIwEAYDVQQDDAlsb2NhbGhv
c3QxIDAeBgNVBAoMF3plcm9nLXNpbSBQQ0NTIHN0YW5kLWluMCAXDTI1MDEwMTAw
MDAwMFoYDzIxMjQxMjMxMDAwMDAwWjA2MRIwEAYDVQQDDAlsb2NhbGhvc3QxIDAe
BgNVBAoMF3plcm9nLXNpbSBQQ0NTIHN0YW5kLWluMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAEaOoQlnJX9i8/E16WqzjVEdwJUrPVtd7kd/tmVZwwbhyzs+ec9ZHr
3UaZWzcmLTP2bUmkNazYo9NL1roHBw3VF6NwMG4wDAYDVR0TAQH/BAIwADAOBgNV
HQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0RBBMwEYIJbG9j
YWxob3N0hwR/AAABMB0GA1UdDgQWBBT8JxYskvpOHHK0+P3TcGxfE7iwqzAKBggq
hkjOPQQDAgNJADBGAiEAi/CB+vg/Y2VNOguceDfKzuHWmlv5cneBejm+sjOXGRUC
IQDrDOXUvqwHnPtQ+6eQ/iihhyZD4IOwBrCabX41ArWF2w==
-----END CERTIFICATE-----
"""

ROOT_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBzDCCAXOgAwIBAgIBATAKBggqhkjOPQQDAjBNMR4wHAYDVQQDDBV6ZXJvZy1z
aW0gU0dYIFJvb3QgQ0ExHjAcBgNVBAoMFXplcm9nLXNpbSAobm90IEludGVsKTEL
MAkGA1UEBhMCVVMwIBcNMjUwMTAxMDAwMDAwWhgPMjEyNDEyMzEwMDAwMDBaME0x
HjAcBgNVBAMMFXplcm9nLXNpbSBTR1ggUm9vdCBDQTEeMBwGA1UECgwVemVyb2ct
c2ltIChub3QgSW50ZWwpMQswCQYDVQQGEwJVUzBZMBMGByqGSM49AgEGCCqGSM49
AwEHA0IABLjIc6G1wb1M7IPKIvUOVJu8AkdYnn/HbU0o+SuAD5bLh8s+KFy24qki
3WopzR676bzq/RDwP4ejGugtCtO9uSujQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYD
VR0PAQH/BAQDAgEGMB0GA1UdDgQWBBQcWcbrkNIC7FvmFo2IsViBK4mJNjAKBggq
hkjOPQQDAgNHADBEAiB8DsPTTSiJZwqn3TfLIdqKh1Vs5tswg3qRE4YsJMzxKgIg
Y+K7PTLxGlAv26XG9P/CLT6m8ps8I11CXo1+/svqAz4=
-----END CERTIFICATE-----
"""

PLATFORM_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIB+TCCAZ+gAwIBAgIBAjAKBggqhkjOPQQDAjBNMR4wHAYDVQQDDBV6ZXJvZy1z
aW0gU0dYIFJvb3QgQ0ExHjAcBgNVBAoMFXplcm9nLXNpbSAobm90IEludGVsKTEL
MAkGA1UEBhMCVVMwIBcNMjUwMTAxMDAwMDAwWhgPMjEyNDEyMzEwMDAwMDBaMFUx
JjAkBgNVBAMMHXplcm9nLXNpbSBTR1ggUENLIFBsYXRmb3JtIENBMR4wHAYDVQQK
DBV6ZXJvZy1zaW0gKG5vdCBJbnRlbCkxCzAJBgNVBAYTAlVTMFkwEwYHKoZIzj0C
AQYIKoZIzj0DAQcDQgAEvmpREiMLG5TI+2edefgKqKjTYLgUKMbGWRbUDB2RNJ26
YB0F7DHJckc4st/lMmMZvLukq8q7I7/gnMEc+LnGAKNmMGQwEgYDVR0TAQH/BAgw
BgEB/wIBADAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYEFFYgDE3sdE4Nma+xVZ6l
++Oz7R8yMB8GA1UdIwQYMBaAFBxZxuuQ0gLsW+YWjYixWIEriYk2MAoGCCqGSM49
BAMCA0gAMEUCIQCpLqc3G1DmuDgXccbzMf5GsjArwqMsJzK+tOsvog7HDAIgcdGe
PK+nRirMTgl/wBbkU/9KJYzb/uYouhX9W/lL66k=
-----END CERTIFICATE-----
"""

PCK_CERT_PEM = """-----BEGIN CERTIFICATE-----
MIIB+zCCAaGgAwIBAgIBATAKBggqhkjOPQQDAjBVMSYwJAYDVQQDDB16ZXJvZy1z
aW0gU0dYIFBDSyBQbGF0Zm9ybSBDQTEeMBwGA1UECgwVemVyb2ctc2ltIChub3Qg
SW50ZWwpMQswCQYDVQQGEwJVUzAgFw0yNTAxMDEwMDAwMDBaGA8yMTI0MTIzMTAw
MDAwMFowVTEmMCQGA1UEAwwdemVyb2ctc2ltIFNHWCBQQ0sgQ2VydGlmaWNhdGUx
HjAcBgNVBAoMFXplcm9nLXNpbSAobm90IEludGVsKTELMAkGA1UEBhMCVVMwWTAT
BgcqhkjOPQIBBggqhkjOPQMBBwNCAARIG1mFKvRmHZ5SQ43DE8vYOo6wg1xGpmN9
vPk2mHamCrmXvj7vKBqmzm2wP1KpMnHoO61xBH0J00RlcCxJ5XZIo2AwXjAMBgNV
HRMBAf8EAjAAMA4GA1UdDwEB/wQEAwIGwDAfBgNVHSMEGDAWgBRWIAxN7HRODZmv
sVWepfvjs+0fMjAdBgNVHQ4EFgQUh2ugmqbuUAkAGgeCxf1LJPTLipwwCgYIKoZI
zj0EAwIDSAAwRQIhAOo/4aCRiAj3huGCwZzps4F1EC23fkBCYMiJSBTKfIfTAiAc
YKmFcOWuXBfQQUoF2uvw9MyR+txg0BbkSzlsxQ2DlQ==
-----END CERTIFICATE-----
"""

ROOT_CRL_PEM = """-----BEGIN X509 CRL-----
MIHoMIGPAgEBMAoGCCqGSM49BAMCME0xHjAcBgNVBAMMFXplcm9nLXNpbSBTR1gg
Um9vdCBDQTEeMBwGA1UECgwVemVyb2ctc2ltIChub3QgSW50ZWwpMQswCQYDVQQG
EwJVUxcNMjUwMTAxMDAwMDAwWhgPMjEyNDEyMzEwMDAwMDBaoA8wDTALBgNVHRQE
BAICEAAwCgYIKoZIzj0EAwIDSAAwRQIhAIIZw3xgJHLixK+Soovo7dcO+ZpILQyy
7XCgEcAyNyEbAiAhG/jEQgIdLe2GTT6r3Wp9I2Ctb+CDkwQcftePGcnBGA==
-----END X509 CRL-----
"""

PLATFORM_CRL_PEM = """-----BEGIN X509 CRL-----
MIHvMIGXAgEBMAoGCCqGSM49BAMCMFUxJjAkBgNVBAMMHXplcm9nLXNpbSBTR1gg
UENLIFBsYXRmb3JtIENBMR4wHAYDVQQKDBV6ZXJvZy1zaW0gKG5vdCBJbnRlbCkx
CzAJBgNVBAYTAlVTFw0yNTAxMDEwMDAwMDBaGA8yMTI0MTIzMTAwMDAwMFqgDzAN
MAsGA1UdFAQEAgIQADAKBggqhkjOPQQDAgNHADBEAiBQh1L2ik8VgltEhsVCaYx+
7JupCiQn860uKQuP/YPOMwIgZInYDXx/qSufNQFHDLzD+YlZ1ZF+gabr1fW3Jz2R
cqY=
-----END X509 CRL-----
"""

#: FMSPC the stand-in reports for every platform (an Emerald Rapids-like value).
SIM_FMSPC = "90C06F000000"

MSG_INVALID = "Invalid request parameters."
MSG_UNAUTHORIZED = "Authentication failed."

_HEX = {n: re.compile(rf"^[0-9a-fA-F]{{{n}}}$") for n in (4, 12, 32, 512, 768)}


def pem_to_der(pem: str) -> bytes:
    """Return the DER bytes inside one PEM block."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def _is_hex(value: str | None, *lengths: int) -> bool:
    return value is not None and any(_HEX[n].match(value) for n in lengths)


class Response:
    """What a route answers: status, body and the headers express would add."""

    def __init__(
        self, status: int, body: bytes | str, content_type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        if isinstance(body, str):
            # express res.send(string): text/html unless a type was set, always with charset.
            self.body = body.encode("utf-8")
            self.content_type = f"{content_type or 'text/html'}; charset=utf-8"
        else:
            self.body = body
            self.content_type = content_type or "application/octet-stream"
        self.headers = dict(headers or {})


def _json(obj: object, headers: dict[str, str] | None = None) -> Response:
    # express res.json -> application/json; charset=utf-8, compact JSON.
    return Response(200, json.dumps(obj, separators=(",", ":")), "application/json", headers)


def _chain(*pems: str) -> str:
    return urllib.parse.quote("".join(pems), safe="")


Route = Callable[[dict[str, str], str], Response]


def _pckcert(query: dict[str, str], api: str) -> Response:
    ppid = query.get("encrypted_ppid")
    if ppid is not None and not _is_hex(ppid, 512, 768):
        return Response(400, MSG_INVALID)
    if not (
        _is_hex(query.get("cpusvn"), 32)
        and _is_hex(query.get("pcesvn"), 4)
        and _is_hex(query.get("pceid"), 4)
        and _is_hex(query.get("qeid"), 32)
    ):
        return Response(400, MSG_INVALID)
    headers = {
        "SGX-PCK-Certificate-Issuer-Chain": _chain(PLATFORM_CA_PEM, ROOT_CA_PEM),
        "SGX-TCBm": (query["cpusvn"] + query["pcesvn"]).upper(),
        "SGX-FMSPC": SIM_FMSPC,
        "SGX-PCK-Certificate-CA-Type": "platform",
    }
    return Response(200, PCK_CERT_PEM, "application/x-pem-file", headers)


def _pckcrl(query: dict[str, str], api: str) -> Response:
    ca = (query.get("ca") or "").upper()
    if ca not in ("PROCESSOR", "PLATFORM"):
        return Response(400, MSG_INVALID)
    headers = {"SGX-PCK-CRL-Issuer-Chain": _chain(PLATFORM_CA_PEM, ROOT_CA_PEM)}
    encoding = query.get("encoding")
    if encoding is not None and encoding.upper() == "DER":
        return Response(200, pem_to_der(PLATFORM_CRL_PEM), "application/pkix-crl", headers)
    return Response(200, PLATFORM_CRL_PEM, "application/x-pem-file", headers)


def _rootcacrl(query: dict[str, str], api: str) -> Response:
    # PCCS returns the DER CRL hex-encoded "to keep backward compatibility".
    return Response(200, pem_to_der(ROOT_CRL_PEM).hex())


def _crl(query: dict[str, str], api: str) -> Response:
    uri = query.get("uri")
    if not uri:
        return Response(400, MSG_INVALID)
    pem = ROOT_CRL_PEM if "root" in uri.lower() else PLATFORM_CRL_PEM
    return Response(200, pem_to_der(pem), "application/pkix-crl")


def _issue_dates() -> tuple[str, str]:
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    later = now + _dt.timedelta(days=30)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ"), later.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tcb(tee: str) -> Route:
    def route(query: dict[str, str], api: str) -> Response:
        fmspc = query.get("fmspc")
        if not _is_hex(fmspc, 12):
            return Response(400, MSG_INVALID)
        issued, nxt = _issue_dates()
        info = {
            "id": tee.upper(),
            "version": 3,
            "issueDate": issued,
            "nextUpdate": nxt,
            "fmspc": fmspc.lower(),
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tcbLevels": [],
        }
        header = "TCB-Info-Issuer-Chain" if api == "v4" else "SGX-TCB-Info-Issuer-Chain"
        return _json({"tcbInfo": info, "signature": "00" * 64}, {header: _chain(PLATFORM_CA_PEM, ROOT_CA_PEM)})

    return route


def _identity(name: str) -> Route:
    def route(query: dict[str, str], api: str) -> Response:
        issued, nxt = _issue_dates()
        identity = {
            "id": name,
            "version": 2,
            "issueDate": issued,
            "nextUpdate": nxt,
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": "00" * 32,
            "isvprodid": 1,
            "tcbLevels": [],
        }
        return _json(
            {"enclaveIdentity": identity, "signature": "00" * 64},
            {"SGX-Enclave-Identity-Issuer-Chain": _chain(PLATFORM_CA_PEM, ROOT_CA_PEM)},
        )

    return route


def _unauthorized(query: dict[str, str], api: str) -> Response:
    return Response(401, MSG_UNAUTHORIZED)


_SGX_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "pckcert"): _pckcert,
    ("GET", "pckcrl"): _pckcrl,
    ("GET", "tcb"): _tcb("sgx"),
    ("GET", "qe/identity"): _identity("QE"),
    ("GET", "qve/identity"): _identity("QVE"),
    ("GET", "rootcacrl"): _rootcacrl,
    ("GET", "crl"): _crl,
    ("GET", "platforms"): _unauthorized,
    ("POST", "platforms"): _unauthorized,
    ("PUT", "platformcollateral"): _unauthorized,
    ("GET", "refresh"): _unauthorized,
    ("POST", "refresh"): _unauthorized,
}

_TDX_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "tcb"): _tcb("tdx"),
    ("GET", "qe/identity"): _identity("TD_QE"),
}

_PREFIXES: dict[str, tuple[str, dict[tuple[str, str], Route]]] = {
    "/sgx/certification/v3/": ("v3", _SGX_ROUTES),
    "/sgx/certification/v4/": ("v4", _SGX_ROUTES),
    "/tdx/certification/v4/": ("v4", _TDX_ROUTES),
}


def not_found_page(method: str, path: str) -> str:
    """express/finalhandler's 404 document for ``method path``."""
    message = html.escape(f"Cannot {method} {path}", quote=True)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>Error</title>\n</head>\n<body>\n"
        f"<pre>{message}</pre>\n</body>\n</html>\n"
    )


def route_request(method: str, target: str) -> Response:
    """Answer ``method`` on the request target ``target`` (path and query) like PCCS does."""
    parsed = urllib.parse.urlsplit(target)
    path = parsed.path
    # express routing is case-insensitive and ignores one trailing slash.
    key = path.lower()
    if len(key) > 1 and key.endswith("/"):
        key = key[:-1]
    lookup = "GET" if method == "HEAD" else method
    for prefix, (api, routes) in _PREFIXES.items():
        if key.startswith(prefix):
            route = routes.get((lookup, key[len(prefix) :]))
            if route is not None:
                query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
                return route(query, api)
    headers = {"Content-Security-Policy": "default-src 'none'", "X-Content-Type-Options": "nosniff"}
    return Response(404, not_found_page(method, path), "text/html", headers)


def _etag(body: bytes) -> str:
    # The express "etag" package: W/"<length hex>-<sha1 base64, 27 characters>".
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode("ascii")[:27]
    return f'W/"{len(body):x}-{digest}"'


def _log(level: str, message: str) -> None:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    sys.stdout.write(f"{stamp} [{level}]: {message}\n")
    sys.stdout.flush()


class PccsHandler(BaseHTTPRequestHandler):
    """One HTTPS connection to the PCCS stand-in."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        response = route_request(self.command, self.path)
        self.send_response_only(response.status)
        self.send_header("X-Powered-By", "Express")
        self.send_header("Request-ID", uuid.uuid4().hex)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if response.status != 404:
            self.send_header("ETag", _etag(response.body))
        self.send_header("Date", self.date_time_string())
        self.send_header("Connection", "keep-alive")
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)
        agent = self.headers.get("User-Agent", "-")
        referrer = self.headers.get("Referer", "-")
        stamp = _dt.datetime.now(_dt.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
        _log(
            "info",
            f'{self.client_address[0]} - - [{stamp}] "{self.requestline}" '
            f'{response.status} {len(response.body)} "{referrer}" "{agent}"',
        )

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Silence http.server's own stderr log; ``_answer`` logs like morgan."""


class PccsServer(ThreadingHTTPServer):
    """A threading HTTP server that performs the TLS handshake per connection thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.ssl_context = context
        super().__init__(address, PccsHandler)

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        """Wrap the accepted socket in TLS inside the connection thread, then serve it."""
        request.settimeout(30)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            # Plain HTTP or a bare TCP probe: node closes such a connection without a reply.
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def embedded_context() -> ssl.SSLContext:
    """A server SSL context with the embedded test certificate."""
    with tempfile.TemporaryDirectory(prefix="zerog-sim-pccs-") as tmp:
        cert = os.path.join(tmp, "file.crt")
        key = os.path.join(tmp, "private.pem")
        with open(cert, "w", encoding="ascii") as handle:
            handle.write(TLS_CERT_PEM)
        with open(key, "w", encoding="ascii") as handle:
            handle.write(TLS_KEY_PEM)
        return context_from_files(cert, key)


def context_from_files(cert: str, key: str) -> ssl.SSLContext:
    """A server SSL context from a certificate and a private-key file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def make_server(port: int = DEFAULT_PORT, bind: str = DEFAULT_BIND, ssl_dir: str | None = None) -> PccsServer:
    """Create (and bind) the server; ``ssl_dir`` holds ``private.pem`` and ``file.crt``."""
    if ssl_dir is None:
        context = embedded_context()
    else:
        context = context_from_files(os.path.join(ssl_dir, "file.crt"), os.path.join(ssl_dir, "private.pem"))
    return PccsServer((bind, port), context)


def serve_in_thread(port: int = 0, bind: str = DEFAULT_BIND) -> tuple[PccsServer, threading.Thread]:
    """Start a server in a daemon thread (for tests); ``port=0`` picks a free port."""
    server = make_server(port, bind)
    thread = threading.Thread(target=server.serve_forever, name="pccs", daemon=True)
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> int:
    """Run the PCCS stand-in in the foreground."""
    parser = argparse.ArgumentParser(prog="python3 -m zerog_sim.pccs", description="PCCS stand-in (HTTPS) for the simulated host")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTPS_PORT (8081)")
    parser.add_argument("--bind", default=DEFAULT_BIND, help="hosts (127.0.0.1)")
    parser.add_argument("--ssl-dir", help="directory with private.pem and file.crt (default: the embedded test certificate)")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.port, args.bind, args.ssl_dir)
    except (FileNotFoundError, ssl.SSLError):
        _log("error", "The private key or certificate for HTTPS server is missing.")
        return 1
    except OSError as exc:
        # node: "Error: listen EADDRINUSE: address already in use 127.0.0.1:8081"
        code = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
        reason = (exc.strerror or str(exc)).lower()
        _log("error", f"Error: listen {code}: {reason} {args.bind}:{args.port}")
        return 1
    _log("info", f"HTTPS Server is running on: https://localhost:{args.port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 130
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
