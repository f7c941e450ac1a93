"""Command line of the simulation kit's host part.

``python3 -m zerog_sim materialize --profile NAME --root DIR [--state FILE]``
    build the fixture tree of profile NAME under DIR (absent or empty) and write the active
    state JSON to FILE (default: ``$ZEROG_SIM_STATE`` or ``/etc/zerog-sim/active.json``).
``python3 -m zerog_sim list-profiles [--long]``
    the concrete profiles, one per line (``--long``: with expected failures and description).
``python3 -m zerog_sim show --profile NAME [--root DIR]``
    print the state a profile resolves to, without writing anything.
"""

from __future__ import annotations

import argparse
import json
import sys

from zerog_sim import profiles
from zerog_sim.state import state_path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python3 -m zerog_sim", description="zerog.compute simulated host")
    sub = parser.add_subparsers(dest="command", required=True)
    mat = sub.add_parser("materialize", help="build a profile's fixture tree and active state")
    mat.add_argument("--profile", required=True)
    mat.add_argument("--root", required=True)
    mat.add_argument("--state", default=None, help="state file (default: $ZEROG_SIM_STATE or /etc/zerog-sim/active.json)")
    lst = sub.add_parser("list-profiles", help="list the concrete profiles")
    lst.add_argument("--long", action="store_true")
    show = sub.add_parser("show", help="print the state a profile resolves to")
    show.add_argument("--profile", required=True)
    show.add_argument("--root", default="/opt/zerog-sim/root")
    args = parser.parse_args(argv)
    try:
        if args.command == "materialize":
            path = args.state or state_path()
            profiles.materialize(args.profile, args.root, path)
            sys.stdout.write(f"materialized profile {args.profile} at {args.root}, state {path}\n")
        elif args.command == "list-profiles":
            for name in profiles.list_profiles():
                if args.long:
                    state = profiles.build_state(name, "/nonexistent")
                    failures = ",".join(state["expected_failures"]) or "-"
                    sys.stdout.write(f"{name}\t{failures}\t{state['description']}\n")
                else:
                    sys.stdout.write(f"{name}\n")
        else:
            json.dump(profiles.build_state(args.profile, args.root), sys.stdout, indent=2)
            sys.stdout.write("\n")
    except (profiles.ProfileError, FileExistsError) as exc:
        sys.stderr.write(f"zerog_sim: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
