# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait until the 0G broker in a dstack CVM answers (run by zerog.compute.dstack_cvm).

Polls ``GET <url>`` (the broker's ``/v1/model``) until it returns 200 with a JSON list that
holds every expected customized model, and meanwhile watches the CVM's systemd unit: a
``boot.error`` line in its journal since the current run started (the guest failed to boot and
QEMU exited to reboot it), or a unit that gave up (``failed``), ends the wait at once instead of
after the timeout. Prints one JSON object on stdout: ``{"ok": bool, "msg": str, "models":
[...], "waited": seconds, "journal": [...]}``; exits 0 when ok, 1 otherwise.

Standard library only; runs under the managed host's python3.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": ""}


def run(argv):
    """Output of a command (empty on any failure), without a shell."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=ENV, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def unit_state(unit):
    """ActiveState and the start of the current run (``@<epoch>``, or '') of the unit."""
    props = {}
    out = run(["systemctl", "show", unit, "--property=ActiveState,ExecMainStartTimestamp", "--timestamp=unix"])
    for line in out.splitlines():
        key, _sep, value = line.partition("=")
        props[key] = value.strip()
    return props.get("ActiveState", ""), props.get("ExecMainStartTimestamp", "")


def journal(unit, since, lines):
    """The unit's journal lines since ``since`` (``@<epoch>``), at most ``lines`` of them."""
    argv = ["journalctl", "-u", unit, "--no-pager", "-o", "cat", "-n", str(lines)]
    if since:
        argv += ["--since", since]
    return run(argv).splitlines()


def fetch(url, timeout):
    """(status, parsed JSON or None, error text) of one GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, None, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return None, None, str(getattr(exc, "reason", exc))
    try:
        return status, json.loads(body.decode("utf-8")), ""
    except ValueError:
        return status, None, "the answer is not JSON"


def wait(args):
    """The wait loop; returns the result object."""
    start = time.monotonic()
    deadline = start + args.timeout
    _state, since = unit_state(args.unit)
    last = "nothing answered yet"
    while True:
        status, data, error = fetch(args.url, min(args.interval, 10))
        if status == 200 and isinstance(data, list):
            names = [m.get("name") for m in data if isinstance(m, dict)]
            missing = [m for m in args.model if m not in names]
            if not missing:
                return {"ok": True, "msg": f"{args.url} lists {len(names)} model(s)", "models": names}
            return {"ok": False, "models": names,
                    "msg": f"{args.url} answers but lacks the configured model(s) {', '.join(missing)}: the guest "
                           "runs another configuration than the one delivered. Fix: restart the CVM's unit (the guest "
                           "copies its files at boot) and check the configuration file."}
        last = f"HTTP {status}, not a JSON list" if status is not None and not error else error
        state, started = unit_state(args.unit)
        since = started or since
        lines = journal(args.unit, since, args.lines)
        errors = [line for line in lines if "boot.error" in line]
        if errors:
            return {"ok": False, "journal": lines,
                    "msg": f"The guest of {args.unit} failed to boot: {errors[-1].strip()}. dstack reboots it (QEMU "
                           "exits 0 and the unit starts it again), so it would never serve."}
        if state == "failed":
            return {"ok": False, "journal": lines,
                    "msg": f"{args.unit} failed (it exited too often and systemd gave up)."}
        if time.monotonic() >= deadline:
            return {"ok": False, "journal": lines,
                    "msg": f"{args.url} did not answer within {args.timeout} s (last: {last}). The first start of the "
                           "broker is slow (TEE quote, on-chain sync, execution image build): raise the timeout if "
                           "the guest is still working, else read the journal below and the broker's container log "
                           "in the guest."}
        time.sleep(args.interval)


def main(argv=None):
    """Command line: --url, --unit, --model (repeated), --timeout, --interval, --lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--unit", required=True)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--lines", type=int, default=40)
    args = parser.parse_args(argv)
    began = time.monotonic()
    result = wait(args)
    result["waited"] = round(time.monotonic() - began, 1)
    result.setdefault("models", [])
    result.setdefault("journal", [])
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
