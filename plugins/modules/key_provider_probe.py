#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: probe dstack's local key provider with its own wire protocol (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: key_provider_probe
short_description: Probe dstack's local key provider with one request in its own protocol
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Checks the local key provider (C(gramine-sealing-key-provider), started by
    C(key-provider-build/run.sh) of private-ml-sdk's dstack) the way a CVM talks to it. It opens a TCP
    connection, sends one request and reads the reply.
  - >-
    The provider is B(not) an HTTP or HTTPS server, so C(curl) cannot check it, and an HTTP
    request even crashes it. Each message is a 4-byte big-endian length followed by JSON. The
    request is C({"quote": [bytes]}) and the reply is C({"encrypted_key": [...], "provider_quote": [...]}).
    The provider answers one request per connection. On any error it closes the connection
    without a reply.
  - A successful TCP connect proves little. Docker's port proxy accepts connections on the
    published port while the container runs, even when nothing listens inside it. The connection
    is then closed at once. So after connecting, the module waits O(settle) seconds. If the
    connection is closed before any request is sent, the outcome is V(closed_before_request).
  - Without O(quote) the module sends a well-formed TDX quote (version 4) that carries no valid
    signature. The provider cannot verify it, so it reads the whole request and closes the
    connection without a reply (outcome V(rejected)). That proves that the provider runs, listens
    and reads framed requests. It does not prove that it can make keys, because that also needs
    AESM and the PCCS. Give O(quote), a genuine quote of a TD on this platform, to get a real
    answer (outcome V(answered)).
  - Never fails because of the provider. Read RV(reachable), RV(healthy) and RV(outcome), and retry
    with C(until). It fails only on invalid options.
options:
  host:
    description:
      - Address of the key provider. dstack publishes it on the loopback address only.
    type: str
    default: 127.0.0.1
  port:
    description:
      - TCP port of the key provider. This is C(dstack run --kp-port), 3443 upstream.
    type: int
    default: 3443
  round_trip:
    description:
      - V(true) sends one request and reads the reply.
      - V(false) only opens and closes a TCP connection, for a fast wait until the port is published.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the TCP connection, and then for the reply.
    type: float
    default: 10
  settle:
    description:
      - Seconds to watch a new connection before sending the request. A connection that is closed
        within this time was accepted by a port proxy with nothing behind it.
      - The provider itself never closes a connection before it has received a request.
    type: float
    default: 0.5
  quote:
    description:
      - A genuine quote, as hexadecimal (whitespace allowed), to send instead of the built-in
        dummy quote. With it, only a real answer counts as healthy.
      - At most 1 MiB. The provider allocates whatever length a request announces, and a length
        of 256 MiB or more crashes it.
    type: str
attributes:
  check_mode:
    support: full
    description: The module only reads. It behaves the same in check mode and sends the request there too.
  diff_mode:
    support: none
    description: Nothing is changed, so there is no diff.
  idempotent:
    support: full
    description: Read-only. The provider writes one line to its log for each probe.
notes:
  - The provider logs each probe. With the dummy quote it logs C(Connection error from <peer>) and
    the reason. This is expected and harmless.
seealso:
  - name: dstack key provider
    description: The local key provider that C(dstack run --kp-port) points a CVM at.
    link: https://github.com/Dstack-TEE/dstack/tree/master/key-provider-build
"""

EXAMPLES = r"""
- name: Wait until the key provider's port is published
  zerog.compute.key_provider_probe:
    port: 3443
    round_trip: false
  register: kp
  until: kp.reachable
  retries: 60
  delay: 5

- name: One round trip in the provider's own protocol
  zerog.compute.key_provider_probe:
    port: 3443
  register: kp
  until: kp.healthy
  retries: 30
  delay: 2

- name: Full round trip with a quote captured from a TD on this platform
  zerog.compute.key_provider_probe:
    quote: "{{ lookup('ansible.builtin.file', 'td-quote.hex') }}"
  register: kp
  failed_when: not kp.answered
"""

RETURN = r"""
reachable:
  description: The TCP connection to O(host):O(port) was accepted.
  returned: always
  type: bool
  sample: true
served:
  description:
    - The provider read the whole request. Either it answered, or it closed the connection
      cleanly after the request arrived, which it does with a quote it cannot use.
    - V(false) when O(round_trip=false).
  returned: always
  type: bool
  sample: true
answered:
  description: A reply frame with C(encrypted_key) and C(provider_quote) came back.
  returned: always
  type: bool
  sample: false
healthy:
  description:
    - The provider is healthy as far as this probe can tell.
    - With the dummy quote, RV(served) must be true. With O(quote), RV(answered) must be true.
    - With O(round_trip=false), RV(reachable) must be true.
  returned: always
  type: bool
  sample: true
outcome:
  description:
    - What happened, one of V(refused), V(connect_timeout), V(connect_error), V(connected)
      (O(round_trip=false)), V(closed_before_request), V(spoke_first), V(reset), V(rejected),
      V(no_reply), V(bad_reply) or V(answered).
  returned: always
  type: str
  sample: rejected
error:
  description: Why the probe is not healthy, and what that usually means. V(null) when RV(healthy).
  returned: always
  type: str
  sample: >-
    127.0.0.1:3443 accepted the connection and closed it before any request was sent: the port is published,
    but nothing listens behind it yet (the enclave is starting, or waits for AESM).
quote:
  description: V(dummy) (the built-in quote) or V(given) (O(quote)).
  returned: always
  type: str
  sample: dummy
request_length:
  description: Length in bytes of the JSON body that was sent (V(null) when nothing was sent).
  returned: always
  type: int
  sample: 2822
encrypted_key_length:
  description: Length of the C(encrypted_key) of the reply (V(null) without a reply).
  returned: always
  type: int
  sample: 80
provider_quote_length:
  description: Length of the C(provider_quote) of the reply (V(null) without a reply).
  returned: always
  type: int
  sample: 4734
elapsed:
  description: Seconds the probe took.
  returned: always
  type: float
  sample: 0.53
"""

import binascii
import errno
import hashlib
import json
import select
import socket
import struct
import time

from ansible.module_utils.basic import AnsibleModule

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


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 3443},
            "round_trip": {"type": "bool", "default": True},
            "timeout": {"type": "float", "default": 10.0},
            "settle": {"type": "float", "default": 0.5},
            "quote": {"type": "str"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if not 0 < params["port"] < 65536:
        module.fail_json(msg=f"port must be between 1 and 65535, got {params['port']}.")
    if params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be more than 0 seconds, got {params['timeout']:g}.")
    if params["settle"] < 0:
        module.fail_json(msg=f"settle cannot be negative, got {params['settle']:g}.")
    quote = None
    if params["quote"] is not None:
        try:
            quote = parse_quote_option(params["quote"])
        except ValueError as exc:
            module.fail_json(msg=f"Invalid option quote: {exc}. Give the quote as hexadecimal.")
    started = time.monotonic()
    result = probe(params["host"], params["port"], params["round_trip"], params["timeout"], params["settle"], quote)
    module.exit_json(changed=False, **result.as_dict(params["round_trip"], time.monotonic() - started))


if __name__ == "__main__":
    main()
