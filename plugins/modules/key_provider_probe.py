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
  listeners:
    description:
      - >-
        Also list the TCP sockets that listen on O(port) on this host, as
        C(ss --listening --tcp --numeric 'sport = :PORT') would, read from C(/proc/net/tcp) and
        C(/proc/net/tcp6) (no command runs). The key provider must listen on a loopback address only.
      - The sockets are those of the network namespace the module runs in. Docker's port proxy
        listens in the host's, on the address the compose file publishes.
    type: bool
    default: false
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

- name: One round trip, and every address the port is open on
  zerog.compute.key_provider_probe:
    listeners: true
  register: kp
  failed_when: kp.listeners_error or kp.listeners | rejectattr('loopback') | list | length > 0

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
listeners:
  description:
    - With O(listeners=true), the sockets listening on O(port), IPv4 first, in the kernel's order.
      V(null) when not asked, or when the tables could not be read (see RV(listeners_error)).
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: The local address and port, IPv6 in brackets, as C(ss) prints it.
      type: str
      sample: 127.0.0.1:3443
    port:
      description: The port.
      type: int
      sample: 3443
    family:
      description: V(ipv4) or V(ipv6).
      type: str
      sample: ipv4
    loopback:
      description: The address is a loopback one (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104).
      type: bool
      sample: true
  sample: [{address: 127.0.0.1:3443, port: 3443, family: ipv4, loopback: true}]
listeners_error:
  description: Why the listening sockets could not be read (V(null) when read or not asked).
  returned: always
  type: str
  sample: "/proc/net/tcp does not exist: the listening sockets cannot be read (is /proc mounted?)."
elapsed:
  description: Seconds the probe took.
  returned: always
  type: float
  sample: 0.53
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils import _proc_net
from ansible_collections.zerog.compute.plugins.module_utils._kms import (
    invalid_option,
    parse_quote_option,
    probe_result,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 3443},
            "round_trip": {"type": "bool", "default": True},
            "timeout": {"type": "float", "default": 10.0},
            "settle": {"type": "float", "default": 0.5},
            "quote": {"type": "str"},
            "listeners": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    problem = invalid_option(params["port"], params["timeout"], params["settle"])
    if problem:
        module.fail_json(msg=problem)
    quote = None
    if params["quote"] is not None:
        try:
            quote = parse_quote_option(params["quote"])
        except ValueError as exc:
            module.fail_json(msg=f"Invalid option quote: {exc}. Give the quote as hexadecimal.")
    result = probe_result(params["host"], params["port"], params["round_trip"], params["timeout"], params["settle"], quote)
    result["listeners"], result["listeners_error"] = (
        _proc_net.listeners(params["port"]) if params["listeners"] else (None, None))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
