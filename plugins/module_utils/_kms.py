# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe of dstack's local key provider, in its own wire protocol.

Private to the collection (the leading underscore): no stability promise to other collections.
Used by the modules key_provider_probe and provider_status_info, so that both ask the provider
the same way and return the same keys (see key_provider_probe's documentation for the protocol
and what each outcome means).
"""

from __future__ import annotations

import binascii
import errno
import hashlib
import json
import select
import socket
import struct
import time

#: The largest quote this module sends, and the largest reply it reads (bytes).
MAX_QUOTE = 1024 * 1024
MAX_REPLY = 4 * 1024 * 1024
_LENGTH = struct.Struct(">I")

#: Intel's QE vendor ID, as every DCAP quote carries it.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TDX_QUOTE_VERSION = 4
ECDSA_P256_KEY_TYPE = 2
TDX_TEE_TYPE = 0x81
TD_REPORT_BODY_LEN = 584
TD_REPORT_DATA_OFFSET = 520
CERT_DATA_TYPE_PCK_CHAIN = 6


def dummy_quote():
    """A TDX (v4) quote with the right layout and no valid signature.

    Header (48 bytes), TD report body (584 bytes, report data = a marker hash), then the
    signature data with its length: an all-zero ECDSA signature and attestation key and empty
    certification data. Any verifier rejects it; the provider reads it completely first.
    """
    header = struct.pack("<HHIHH16s20s", TDX_QUOTE_VERSION, ECDSA_P256_KEY_TYPE, TDX_TEE_TYPE, 0, 0,
                         INTEL_QE_VENDOR_ID, b"\0" * 20)
    body = bytearray(TD_REPORT_BODY_LEN)
    marker = hashlib.sha256(b"zerog.compute.key_provider_probe").digest()
    body[TD_REPORT_DATA_OFFSET:TD_REPORT_DATA_OFFSET + len(marker)] = marker
    signature = b"\0" * 64 + b"\0" * 64 + struct.pack("<HI", CERT_DATA_TYPE_PCK_CHAIN, 0)
    return header + bytes(body) + struct.pack("<I", len(signature)) + signature


def encode_request(quote):
    """The framed request for ``quote``: 4-byte big-endian length, then compact JSON."""
    body = json.dumps({"quote": list(bytearray(quote))}, separators=(",", ":")).encode("ascii")
    return _LENGTH.pack(len(body)) + body, len(body)


def parse_quote_option(text):
    """Bytes of the hexadecimal ``quote`` option; ValueError with the reason when invalid."""
    cleaned = "".join(text.split())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    if not cleaned:
        raise ValueError("quote is empty")
    try:
        data = binascii.unhexlify(cleaned)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"quote is not hexadecimal ({exc})") from None
    if len(data) > MAX_QUOTE:
        raise ValueError(f"quote has {len(data)} bytes, more than the {MAX_QUOTE} this module sends")
    return data


class Outcome:
    """The result of one probe, as the module returns it."""

    def __init__(self, dummy):
        self.reachable = False
        self.served = False
        self.answered = False
        self.outcome = None
        self.error = None
        self.request_length = None
        self.encrypted_key_length = None
        self.provider_quote_length = None
        self.dummy = dummy

    def finish(self, outcome, error=None):
        """Record the final outcome and the reason it is not healthy (if it is not)."""
        self.outcome = outcome
        self.error = error
        return self

    def healthy(self, round_trip):
        """Healthy as far as this probe can tell (see the module documentation)."""
        if not round_trip:
            return self.reachable
        return self.answered if not self.dummy else self.served

    def as_dict(self, round_trip, elapsed):
        """The module's return values."""
        healthy = self.healthy(round_trip)
        return {
            "reachable": self.reachable,
            "served": self.served,
            "answered": self.answered,
            "healthy": healthy,
            "outcome": self.outcome,
            "error": None if healthy else self.error,
            "quote": "dummy" if self.dummy else "given",
            "request_length": self.request_length,
            "encrypted_key_length": self.encrypted_key_length,
            "provider_quote_length": self.provider_quote_length,
            "elapsed": round(elapsed, 3),
        }


def _connect(address, timeout, result):
    """Open the TCP connection, or record why it failed and return None."""
    where = f"{address[0]}:{address[1]}"
    try:
        return socket.create_connection(address, timeout=timeout)
    except ConnectionRefusedError:
        result.finish("refused", f"nothing accepts TCP connections on {where} (connection refused): "
                                 "the key provider's container is not running, or its port is not published.")
    except (socket.timeout, TimeoutError):
        result.finish("connect_timeout", f"no answer to the TCP connection to {where} within {timeout:g} s "
                                         "(a firewall drops it, or the address is wrong).")
    except OSError as exc:
        result.finish("connect_error", f"cannot connect to {where}: {exc.strerror or exc}.")
    return None


def _wait_readable(sock, seconds):
    """True when ``sock`` becomes readable (data, EOF or reset) within ``seconds``."""
    if seconds <= 0:
        return False
    readable, _w, _x = select.select([sock], [], [], seconds)
    return bool(readable)


def _read_exact(sock, count, deadline):
    """Read ``count`` bytes before ``deadline``; returns (bytes, 'eof'|'reset'|'timeout'|None)."""
    chunks = []
    remaining = count
    while remaining > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(remaining, 65536))
        except (socket.timeout, TimeoutError):
            return b"".join(chunks), "timeout"
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not chunk:
            return b"".join(chunks), "eof"
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks), None


def _settle(sock, where, settle, result):
    """Watch the new connection for ``settle`` seconds; False (and the outcome) if it closes."""
    if not _wait_readable(sock, settle):
        return True
    try:
        peeked = sock.recv(1, socket.MSG_PEEK)
    except ConnectionResetError:
        peeked = b""
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            peeked = b""
        else:
            return True
    if peeked:
        result.finish("spoke_first", f"{where} sent data before any request: the key provider never does, "
                                     "so something else listens on this port.")
    else:
        result.finish("closed_before_request",
                      f"{where} accepted the connection and closed it before any request was sent: the port is "
                      "published, but nothing listens behind it yet (the enclave is starting, or waits for AESM).")
    return False


def _exchange(sock, where, request, timeout, result):
    """Send the framed request and classify what comes back."""
    try:
        sock.settimeout(timeout)
        sock.sendall(request)
    except (ConnectionResetError, BrokenPipeError):
        return result.finish("reset", f"{where} reset the connection while the request was being sent.")
    except (socket.timeout, TimeoutError):
        return result.finish("no_reply", f"{where} did not take the request within {timeout:g} s.")
    deadline = time.monotonic() + timeout
    header, problem = _read_exact(sock, _LENGTH.size, deadline)
    if problem == "eof" and not header:
        result.served = True
        return result.finish("rejected",
                             f"the key provider on {where} read the request and closed the connection without a "
                             "reply: it could not serve this quote. Its log says why (Connection error from ...): "
                             "no PCCS, AESM not running, a PPID mismatch, or a quote that does not verify.")
    if problem == "reset":
        return result.finish("reset", f"{where} reset the connection instead of replying: the request was not "
                                      "read completely (the provider crashed, or this is not the key provider).")
    if problem == "timeout":
        return result.finish("no_reply", f"{where} sent no reply within {timeout:g} s and kept the connection "
                                         "open: the provider hangs, or something else listens on this port.")
    if problem == "eof":
        return result.finish("bad_reply", f"{where} closed the connection inside a reply's length prefix.")
    (length,) = _LENGTH.unpack(header)
    if length > MAX_REPLY:
        return result.finish("bad_reply", f"{where} announced a reply of {length} bytes, more than the "
                                          f"{MAX_REPLY} a key provider sends: this is not the key provider.")
    body, problem = _read_exact(sock, length, deadline)
    if problem is not None:
        ending = {"eof": "closed the connection", "reset": "reset the connection", "timeout": "stalled"}[problem]
        return result.finish("bad_reply", f"{where} sent {len(body)} of the {length} bytes of its reply, then {ending}.")
    result.served = True
    try:
        reply = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return result.finish("bad_reply", f"the reply from {where} is not JSON: {exc}.")
    if not isinstance(reply, dict):
        return result.finish("bad_reply", f"the reply from {where} is not a JSON object.")
    missing = [key for key in ("encrypted_key", "provider_quote") if not isinstance(reply.get(key), list)]
    if missing:
        return result.finish("bad_reply", f"the reply from {where} has no {' or '.join(missing)} list.")
    result.answered = True
    result.encrypted_key_length = len(reply["encrypted_key"])
    result.provider_quote_length = len(reply["provider_quote"])
    return result.finish("answered")


def probe(host, port, round_trip=True, timeout=10.0, settle=0.5, quote=None):
    """Probe the key provider; returns an ``Outcome``."""
    result = Outcome(dummy=quote is None)
    where = f"{host}:{port}"
    sock = _connect((host, port), timeout, result)
    if sock is None:
        return result
    result.reachable = True
    try:
        if not round_trip:
            return result.finish("connected")
        if not _settle(sock, where, settle, result):
            return result
        request, result.request_length = encode_request(quote if quote is not None else dummy_quote())
        return _exchange(sock, where, request, timeout, result)
    finally:
        sock.close()


def invalid_option(port, timeout, settle, prefix=""):
    """Why the probe's ``port``, ``timeout`` or ``settle`` is invalid (the first that is), or None.

    ``prefix`` names the option that holds them (``key_provider.`` for provider_status_info).
    """
    if not 0 < port < 65536:
        return f"{prefix}port must be between 1 and 65535, got {port}."
    if timeout <= 0:
        return f"{prefix}timeout must be more than 0 seconds, got {timeout:g}."
    if settle < 0:
        return f"{prefix}settle cannot be negative, got {settle:g}."
    return None


def probe_result(host, port, round_trip=True, timeout=10.0, settle=0.5, quote=None):
    """Probe the key provider and return the result keys of key_provider_probe (``elapsed`` included)."""
    started = time.monotonic()
    result = probe(host, port, round_trip, timeout, settle, quote)
    return result.as_dict(round_trip, time.monotonic() - started)
