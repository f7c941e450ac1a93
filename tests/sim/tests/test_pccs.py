"""The PCCS stand-in (``zerog_sim.pccs``): HTTPS on 127.0.0.1, Intel PCCS routes and errors."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SIM_DIR))
from zerog_sim import pccs  # noqa: E402

NOT_FOUND_VERSION = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                     "<title>Error</title>\n</head>\n<body>\n"
                     "<pre>Cannot GET /sgx/certification/v4/version</pre>\n</body>\n</html>\n")
QEID = "00112233445566778899aabbccddeeff"
PCKCERT_QUERY = f"cpusvn={'0' * 32}&pcesvn=0e00&pceid=0000&qeid={QEID}"


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=_client_context())
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    srv, thread = pccs.serve_in_thread(0)
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _is_lower_hex_der(body: bytes) -> bool:
    text = body.decode("ascii")
    return text == text.lower() and bytes.fromhex(text)[:1] == b"\x30"


# (method, path, status, content type, check of the body)
ROUTES = [
    ("GET", "/sgx/certification/v4/rootcacrl", 200, "text/html; charset=utf-8", _is_lower_hex_der),
    ("GET", "/sgx/certification/v3/rootcacrl", 200, "text/html; charset=utf-8", _is_lower_hex_der),
    ("GET", "/SGX/Certification/V4/RootCaCrl/", 200, "text/html; charset=utf-8", _is_lower_hex_der),
    ("GET", "/sgx/certification/v4/pckcrl?ca=platform", 200, "application/x-pem-file; charset=utf-8",
     lambda b: b.startswith(b"-----BEGIN X509 CRL-----\n") and b.endswith(b"-----END X509 CRL-----\n")),
    ("GET", "/sgx/certification/v4/pckcrl?ca=PROCESSOR", 200, "application/x-pem-file; charset=utf-8",
     lambda b: b.startswith(b"-----BEGIN X509 CRL-----\n")),
    ("GET", "/sgx/certification/v4/pckcrl?ca=platform&encoding=der", 200, "application/pkix-crl",
     lambda b: b[:1] == b"\x30" and b"-----" not in b),
    ("GET", "/sgx/certification/v4/pckcrl", 400, "text/html; charset=utf-8",
     lambda b: b == b"Invalid request parameters."),
    ("GET", "/sgx/certification/v4/pckcrl?ca=root", 400, "text/html; charset=utf-8",
     lambda b: b == b"Invalid request parameters."),
    ("GET", f"/sgx/certification/v4/pckcert?{PCKCERT_QUERY}", 200, "application/x-pem-file; charset=utf-8",
     lambda b: b.startswith(b"-----BEGIN CERTIFICATE-----\n")),
    ("GET", "/sgx/certification/v4/pckcert?cpusvn=00&pcesvn=0e00&pceid=0000&qeid=" + QEID, 400,
     "text/html; charset=utf-8", lambda b: b == b"Invalid request parameters."),
    ("GET", "/sgx/certification/v4/tcb?fmspc=90C06F000000", 200, "application/json; charset=utf-8",
     lambda b: b.startswith(b'{"tcbInfo":{"id":"SGX",')),
    ("GET", "/tdx/certification/v4/tcb?fmspc=90C06F000000", 200, "application/json; charset=utf-8",
     lambda b: b.startswith(b'{"tcbInfo":{"id":"TDX",')),
    ("GET", "/sgx/certification/v4/tcb?fmspc=xyz", 400, "text/html; charset=utf-8",
     lambda b: b == b"Invalid request parameters."),
    ("GET", "/sgx/certification/v4/qe/identity", 200, "application/json; charset=utf-8",
     lambda b: b.startswith(b'{"enclaveIdentity":{"id":"QE",')),
    ("GET", "/sgx/certification/v4/platforms", 401, "text/html; charset=utf-8",
     lambda b: b == b"Authentication failed."),
    ("POST", "/sgx/certification/v4/platforms", 401, "text/html; charset=utf-8",
     lambda b: b == b"Authentication failed."),
    ("GET", "/sgx/certification/v4/version", 404, "text/html; charset=utf-8",
     lambda b: b.decode() == NOT_FOUND_VERSION),
    ("GET", "/version", 404, "text/html; charset=utf-8",
     lambda b: b"<pre>Cannot GET /version</pre>" in b),
    ("POST", "/sgx/certification/v4/rootcacrl", 404, "text/html; charset=utf-8",
     lambda b: b"<pre>Cannot POST /sgx/certification/v4/rootcacrl</pre>" in b),
    ("GET", "/", 404, "text/html; charset=utf-8", lambda b: b"<pre>Cannot GET /</pre>" in b),
]


@pytest.mark.parametrize(("method", "path", "status", "ctype", "check"), ROUTES,
                         ids=[f"{m} {p}" for m, p, *_rest in ROUTES])
def test_routes(server: int, method: str, path: str, status: int, ctype: str, check) -> None:
    got_status, headers, body = _get(server, path, method)
    assert (got_status, headers["content-type"]) == (status, ctype)
    assert headers["content-length"] == str(len(body))
    assert headers["x-powered-by"] == "Express"
    assert check(body), body[:200]


@pytest.mark.parametrize(("path", "header"), [
    ("/sgx/certification/v4/pckcrl?ca=platform", "sgx-pck-crl-issuer-chain"),
    (f"/sgx/certification/v4/pckcert?{PCKCERT_QUERY}", "sgx-pck-certificate-issuer-chain"),
])
def test_issuer_chain_headers_are_url_encoded_pem(server: int, path: str, header: str) -> None:
    _status, headers, _body = _get(server, path)
    chain = urllib.parse.unquote(headers[header])
    assert chain.count("-----BEGIN CERTIFICATE-----") == 2
    assert "\n" not in headers[header]


def test_pckcert_tcbm_and_fmspc_headers(server: int) -> None:
    _status, headers, _body = _get(server, f"/sgx/certification/v4/pckcert?{PCKCERT_QUERY}")
    assert headers["sgx-tcbm"] == "0" * 32 + "0E00"
    assert headers["sgx-fmspc"] == "90C06F000000"
    assert headers["sgx-pck-certificate-ca-type"] == "platform"


def test_head_has_headers_but_no_body(server: int) -> None:
    status, headers, body = _get(server, "/sgx/certification/v4/rootcacrl", "HEAD")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


def test_serves_tls_with_a_localhost_certificate(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as raw, \
            _client_context().wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert der is not None
    assert b"localhost" in der


def test_plain_http_gets_the_connection_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"GET /sgx/certification/v4/rootcacrl HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass  # closed with unread data: the kernel resets it
    assert data == b""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SIM_DIR)}
    return subprocess.Popen([sys.executable, "-B", "-m", "zerog_sim.pccs", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_runs_in_the_foreground_and_logs_requests() -> None:
    port = _free_port()
    proc = _cli("--port", str(port))
    try:
        first = proc.stdout.readline()
        assert first.split(" [info]: ", 1)[1] == f"HTTPS Server is running on: https://localhost:{port}\n"
        status, _headers, _body = _get(port, "/sgx/certification/v4/rootcacrl")
        assert status == 200
        access = proc.stdout.readline()
        assert '"GET /sgx/certification/v4/rootcacrl HTTP/1.1" 200 ' in access
        time.sleep(0.3)
        assert proc.poll() is None  # still serving: it is a foreground service
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert proc.returncode == -15  # SIGTERM ends it like it ends node


def test_cli_port_in_use_fails() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = _cli("--port", str(port))
        out, _err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert out.split(" [error]: ", 1)[1] == (
        f"Error: listen EADDRINUSE: address already in use 127.0.0.1:{port}\n")


def test_cli_missing_ssl_files(tmp_path: Path) -> None:
    proc = _cli("--port", str(_free_port()), "--ssl-dir", str(tmp_path))
    out, _err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert out.split(" [error]: ", 1)[1] == (
        "The private key or certificate for HTTPS server is missing.\n")
