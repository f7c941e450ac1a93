#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: what a provider's verification reads, in one call (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: provider_status_info
short_description: Read files' modes, the local key provider, units' states and HTTP answers in one call
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Reads in one round trip what an operator checks by hand on a provider host, and what the
    C(verify) stage of the C(zerog.compute.provider) playbook checks. In this order -
  - The existence, type, mode, owner and group of each file of O(files), not their content.
  - The local key provider (O(key_provider)), probed with one request in its own protocol exactly as
    M(zerog.compute.key_provider_probe) does with its defaults.
  - The state of each systemd unit of O(units), from one C(systemctl is-active) call for all of them.
  - The answer to a C(GET) of each URL of O(urls) - its HTTP status and its body as JSON.
  - Never changes anything. Nothing it reads fails the module - a missing file, a key provider that is not
    healthy, a unit that is not active or a URL that does not answer is reported, so that the caller decides
    what it means. It fails only on invalid options, when C(systemctl) cannot be run or does not answer for
    each unit.
options:
  files:
    description:
      - Files whose existence, type, mode, owner and group to report in RV(files). Symbolic links are not
        followed (as M(ansible.builtin.stat) does by default), so a link is reported as the link.
    type: list
    elements: path
    default: []
  key_provider:
    description:
      - The local key provider to probe with one request in its own protocol (RV(key_provider)), as
        M(zerog.compute.key_provider_probe) does with O(zerog.compute.key_provider_probe#module:round_trip=true)
        and its built-in dummy quote.
      - Not probed when omitted.
    type: dict
    suboptions:
      host:
        description:
          - Address of the key provider. dstack publishes it on the loopback address only.
        type: str
        default: 127.0.0.1
      port:
        description:
          - TCP port of the key provider. This is C(dstack run --kp-port), 3443 upstream.
        type: int
        required: true
      timeout:
        description:
          - Seconds to wait for the TCP connection, and then for the reply.
        type: float
        default: 10
      settle:
        description:
          - Seconds to watch a new connection before sending the request. A connection that is closed
            within this time was accepted by a port proxy with nothing behind it.
        type: float
        default: 0.5
  units:
    description:
      - systemd units whose state to report in RV(units). A name without a suffix is a C(.service), as for
        C(systemctl).
      - All of them are asked with one C(systemctl is-active) call, which prints one line per unit in order.
    type: list
    elements: str
    default: []
  urls:
    description:
      - C(http://) or C(https://) URLs to C(GET), each once. The answer of each is in RV(urls).
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds the C(systemctl) call may take, and each request of O(urls) (to connect, and then for each read).
    type: int
    default: 10
  systemctl_path:
    description:
      - Absolute path of C(systemctl); by default it is looked up on C(PATH). Only needed when O(units) is not empty.
    type: path
notes:
  - The key provider logs each probe. With the dummy quote it logs C(Connection error from <peer>) and the
    reason. This is expected and harmless.
  - The requests of O(urls) use the proxy of the C(http_proxy), C(https_proxy) and C(no_proxy) environment
    variables, verify HTTPS certificates and follow redirects, as M(ansible.builtin.uri) does by default.
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
seealso:
  - module: zerog.compute.key_provider_probe
    description: The same probe of the key provider, with more options (a genuine quote, connect only).
  - module: ansible.builtin.stat
    description: Reads one file per task, with checksums and more.
  - module: ansible.builtin.uri
    description: One request per task, with every HTTP option.
"""

EXAMPLES = r"""
- name: Read config.local.yaml's mode, the key provider, the CVM's unit and its broker's models
  zerog.compute.provider_status_info:
    files: [/opt/zerog/broker/0.2.2/config.local.yaml]
    key_provider:
      port: 3443
    units: [zerog-cvm-finetune.service]
    urls: [http://127.0.0.1:8080/v1/model]
  register: provider_status

- name: Fail when the configuration is not root's alone
  ansible.builtin.assert:
    that:
      - provider_status.files['/opt/zerog/broker/0.2.2/config.local.yaml'].mode == '0600'
      - provider_status.files['/opt/zerog/broker/0.2.2/config.local.yaml'].owner == 'root'
      - provider_status.key_provider.healthy
      - provider_status.units['zerog-cvm-finetune.service'] == 'active'
      - provider_status.urls['http://127.0.0.1:8080/v1/model'].status == 200
"""

RETURN = r"""
files:
  description:
    - Each path of O(files), as given (after C(~) expansion), to what is there.
    - C(exists) - something is at the path (a broken symbolic link too); C(type) - V(file), V(directory),
      V(link) or V(other) (empty when it does not exist).
    - C(mode) - its permission bits in octal, for example V(0600); C(owner) and C(group) - their names (the
      number when it has none). Empty when it does not exist.
    - C(msg) - why it cannot be looked at, when something else than its absence keeps C(exists) false (empty
      otherwise).
  returned: always
  type: dict
  sample:
    /opt/zerog/broker/0.2.2/config.local.yaml: {exists: true, type: file, mode: "0600", owner: root, group: root, msg: ""}
    /opt/zerog/broker/0.2.2/init.sql: {exists: false, type: "", mode: "", owner: "", group: "", msg: ""}
key_provider:
  description:
    - The result of the probe of O(key_provider), with the keys M(zerog.compute.key_provider_probe) returns
      (C(reachable), C(served), C(answered), C(healthy), C(outcome), C(error), C(quote), C(request_length),
      C(encrypted_key_length), C(provider_quote_length), C(elapsed)) and their meaning.
    - V(null) when O(key_provider) is omitted.
  returned: always
  type: dict
  sample:
    reachable: true
    served: true
    answered: false
    healthy: true
    outcome: rejected
    error: null
    quote: dummy
    request_length: 2822
    encrypted_key_length: null
    provider_quote_length: null
    elapsed: 0.53
units:
  description:
    - Each unit of O(units), as given, to the state C(systemctl is-active) prints for it, for example V(active),
      V(inactive), V(failed), V(activating) or V(deactivating). A unit systemd does not know is V(inactive).
  returned: always
  type: dict
  sample: {zerog-cvm-finetune.service: active}
urls:
  description:
    - Each URL of O(urls), as given, to its answer.
    - C(status) - the HTTP status (after redirects), or V(-1) when no HTTP answer came (as
      M(ansible.builtin.uri) returns it).
    - C(content_type) - the media type of the answer, for example V(application/json) (empty without an answer).
    - C(json) - the body parsed as JSON when the media type is JSON (C(application/json), C(*/*+json) or
      JavaScript, as M(ansible.builtin.uri) decides) and the body parses, whatever the status; V(null) otherwise.
    - C(error) - why there is no successful answer (no connection, a timeout, a status of 400 or more); V(null)
      when the status is below 400.
  returned: always
  type: dict
  sample:
    http://127.0.0.1:8080/v1/model: {status: 200, content_type: application/json, json: [], error: null}
    http://127.0.0.1:8081/v1/model:
      status: -1
      content_type: ""
      json: null
      error: "cannot connect to http://127.0.0.1:8081/v1/model: [Errno 111] Connection refused"
"""

import errno
import grp
import http.client
import json
import os
import pwd
import stat
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url
from ansible_collections.zerog.compute.plugins.module_utils._command import (
    CommandFailed,
    Tool,
    ToolMissing,
    explain,
    fail_command,
)
from ansible_collections.zerog.compute.plugins.module_utils._kms import invalid_option, probe_result

#: The media subtypes (or +suffixes) whose body is parsed as JSON, as ansible.builtin.uri decides.
JSON_SUBTYPES = ("json", "javascript")
HTTP_AGENT = "ansible-httpget"


def name_of(lookup, number):
    """The name of a uid or gid (``lookup`` is pwd.getpwuid or grp.getgrgid), or the number when it has none."""
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def file_entry(path):
    """The RV(files) entry of ``path`` (the link itself for a symbolic link)."""
    entry = {"exists": False, "type": "", "mode": "", "owner": "", "group": "", "msg": ""}
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            entry["msg"] = f"cannot look at it: {exc.strerror}"
        return entry
    if stat.S_ISREG(info.st_mode):
        kind = "file"
    elif stat.S_ISDIR(info.st_mode):
        kind = "directory"
    elif stat.S_ISLNK(info.st_mode):
        kind = "link"
    else:
        kind = "other"
    entry.update(exists=True, type=kind, mode=f"{stat.S_IMODE(info.st_mode):04o}",
                 owner=name_of(pwd.getpwuid, info.st_uid), group=name_of(grp.getgrgid, info.st_gid))
    return entry


def parse_is_active(text, units):
    """``systemctl is-active UNIT...`` output as {unit: state}; ValueError unless it is one word per unit."""
    lines = [line.strip() for line in text.splitlines()]
    if len(lines) != len(units):
        raise ValueError(f"{len(lines)} line(s) for {len(units)} unit(s)")
    bad = [line for line in lines if not line or len(line.split()) != 1]
    if bad:
        raise ValueError(f"a line that is not a state: {bad[0]!r}")
    return {unit: lines[index] for index, unit in enumerate(units)}


def read_units(systemctl, units):
    """{unit: state} from one ``systemctl is-active`` call."""
    if not units:
        return {}
    cmd_args = ["is-active", "--", *units]
    where = "Reading the state of " + ", ".join(units) + " (systemctl is-active)"
    fix = ("see stderr: systemctl needs a running systemd (PID 1) and its bus; on a host without systemd, "
           "leave units empty.")
    # rc 0 when at least one unit is active (systemd since 2016, PR #2430), 3 when none is, 1 when systemd
    # cannot be asked: only the lines say which unit is in which state, so they are read, not the rc.
    rc, out, err = systemctl.run(cmd_args, where, fix, ok_rcs=None)
    try:
        return parse_is_active(out, units)
    except ValueError as exc:
        last = (err or "").strip().splitlines()
        reason = f"; {last[-1]}" if last else ""
        raise CommandFailed(explain(where, f"systemctl printed {exc} (rc {rc}{reason}).", fix),
                            systemctl.argv(cmd_args), rc, out, err) from exc


def is_json_type(content_type):
    """Whether a media type (``type/subtype``) is JSON for ansible.builtin.uri."""
    _main, _sep, sub = content_type.partition("/")
    if "+" in sub:
        sub = sub.partition("+")[2]
    return sub.lower() in JSON_SUBTYPES


def url_entry(url, timeout):
    """The RV(urls) entry of one GET of ``url``."""
    entry = {"status": -1, "content_type": "", "json": None, "error": None}
    response = None
    body = b""
    try:
        response = open_url(url, method="GET", timeout=timeout, http_agent=HTTP_AGENT, follow_redirects="safe")
        body = response.read()
        entry["status"] = response.getcode()
    except urllib.error.HTTPError as exc:
        response = exc
        entry.update(status=exc.code, error=f"{url} answered HTTP {exc.code} ({exc.reason})")
        try:
            body = exc.read() if exc.fp is not None else b""
        except (OSError, http.client.HTTPException):
            body = b""
    except urllib.error.URLError as exc:
        return dict(entry, error=f"cannot connect to {url}: {exc.reason}")
    except (OSError, http.client.HTTPException, UrlsConnectionError, ValueError) as exc:
        return dict(entry, status=-1, error=f"cannot GET {url}: {str(exc) or type(exc).__name__}")
    headers = getattr(response, "headers", None)
    if headers is None:
        return entry
    entry["content_type"] = headers.get_content_type() if headers.get("Content-Type") else ""
    if entry["content_type"] and is_json_type(entry["content_type"]):
        charset = headers.get_content_charset() or "utf-8"
        try:
            entry["json"] = json.loads(body.decode(charset))
        except (LookupError, UnicodeDecodeError, ValueError):
            entry["json"] = None
    return entry


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "path", "default": []},
            "key_provider": {
                "type": "dict",
                "no_log": False,  # an address, not a key
                "options": {
                    "host": {"type": "str", "default": "127.0.0.1"},
                    "port": {"type": "int", "required": True},
                    "timeout": {"type": "float", "default": 10.0},
                    "settle": {"type": "float", "default": 0.5},
                },
            },
            "units": {"type": "list", "elements": "str", "default": []},
            "urls": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "int", "default": 10},
            "systemctl_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    kms = params["key_provider"]
    if kms is not None:
        problem = invalid_option(kms["port"], kms["timeout"], kms["settle"], prefix="key_provider.")
        if problem:
            module.fail_json(msg=problem)
    if params["timeout"] < 1:
        module.fail_json(msg=f"timeout must be at least 1 second, got {params['timeout']}.")
    bad = [unit for unit in params["units"] if not unit or unit.startswith("-") or any(c.isspace() for c in unit)]
    if bad:
        module.fail_json(msg=f"units must be systemd unit names (not empty, no blank, not starting with -), got {bad!r}.")
    bad = [url for url in params["urls"] if not url.lower().startswith(("http://", "https://"))]
    if bad:
        module.fail_json(msg=f"urls must be http:// or https:// URLs, got {bad!r}.")

    files = {path: file_entry(path) for path in dict.fromkeys(params["files"])}
    key_provider = None
    if kms is not None:
        key_provider = probe_result(kms["host"], kms["port"], timeout=kms["timeout"], settle=kms["settle"])
    systemctl = Tool(module, "systemctl", path=params["systemctl_path"], option="systemctl_path",
                     timeout=params["timeout"])
    try:
        units = read_units(systemctl, list(dict.fromkeys(params["units"])))
    except (CommandFailed, ToolMissing) as exc:
        fail_command(module, exc, files=files, key_provider=key_provider)
    urls = {url: url_entry(url, params["timeout"]) for url in dict.fromkeys(params["urls"])}
    module.exit_json(changed=False, files=files, key_provider=key_provider, units=units, urls=urls)


if __name__ == "__main__":
    main()
