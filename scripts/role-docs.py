#!/usr/bin/env python
"""Generate each role README's variable table from its meta/argument_specs.yml.

The table sits between the lines ``<!-- BEGIN ARGUMENT SPECS -->`` and
``<!-- END ARGUMENT SPECS -->`` of roles/<role>/README.md and is never edited by hand.

With ``--check`` nothing is written; the script fails when a table is out of date, or when a
role's defaults/main.yml and its argument spec disagree (a default missing from the spec, a spec
default that differs from defaults/main.yml, a variable without the role's prefix).

    python3 scripts/role-docs.py            # rewrite the tables
    python3 scripts/role-docs.py --check    # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

BEGIN = "<!-- BEGIN ARGUMENT SPECS -->"
END = "<!-- END ARGUMENT SPECS -->"


def _cell(value: object) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ").strip()
    return text


def _default(value: object) -> str:
    if value is None:
        return ""
    return "`" + _cell(json.dumps(value, sort_keys=True)) + "`"


def _rows(options: dict, prefix: str = "") -> list[str]:
    rows = []
    for name in sorted(options):
        spec = options[name] or {}
        typ = spec.get("type", "str")
        if typ == "list" and spec.get("elements"):
            typ = f"list of {spec['elements']}"
        desc = spec.get("description", "")
        if isinstance(desc, list):
            desc = " ".join(desc)
        choices = ", ".join(f"`{c}`" for c in spec.get("choices", []))
        required = "yes" if spec.get("required") else ""
        rows.append(
            f"| `{prefix}{name}` | {typ} | {required} | {_default(spec.get('default'))} | {choices} | {_cell(desc)} |"
        )
        if spec.get("options"):
            sub = f"{prefix}{name}[]." if spec.get("type") == "list" else f"{prefix}{name}."
            rows.extend(_rows(spec["options"], sub))
    return rows


def render(specs: dict) -> str:
    out = []
    for entry in sorted(specs.get("argument_specs", {})):
        ep = specs["argument_specs"][entry]
        out.append(f"Entry point `{entry}`: {_cell(ep.get('short_description', ''))}")
        out.append("")
        out.append("| Variable | Type | Required | Default | Choices | Description |")
        out.append("|---|---|---|---|---|---|")
        out.extend(_rows(ep.get("options", {})))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def check_defaults(role: Path, specs: dict) -> list[str]:
    problems = []
    defaults_file = role / "defaults" / "main.yml"
    defaults = {}
    if defaults_file.exists():
        defaults = yaml.safe_load(defaults_file.read_text()) or {}
    options = specs.get("argument_specs", {}).get("main", {}).get("options", {})
    prefix = role.name + "_"
    for name, value in defaults.items():
        if not name.startswith(prefix):
            problems.append(f"{role.name}: default {name} lacks the role prefix {prefix!r}")
        if name not in options:
            problems.append(f"{role.name}: default {name} is not in meta/argument_specs.yml")
        elif "default" not in options[name] or options[name]["default"] != value:
            spec_default = options[name].get("default")
            problems.append(f"{role.name}: {name} defaults to {value!r} but the spec says {spec_default!r}")
    for name, spec in options.items():
        if not name.startswith(prefix):
            problems.append(f"{role.name}: option {name} lacks the role prefix {prefix!r}")
        if "default" in (spec or {}) and name not in defaults:
            problems.append(f"{role.name}: spec gives {name} a default but defaults/main.yml does not")
        if not (spec or {}).get("description"):
            problems.append(f"{role.name}: option {name} has no description")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail instead of rewriting")
    parser.add_argument("--roles", default=str(Path(__file__).resolve().parent.parent / "roles"))
    args = parser.parse_args()
    problems = []
    for spec_file in sorted(Path(args.roles).glob("*/meta/argument_specs.yml")):
        role = spec_file.parent.parent
        specs = yaml.safe_load(spec_file.read_text()) or {}
        problems.extend(check_defaults(role, specs))
        readme = role / "README.md"
        text = readme.read_text() if readme.exists() else ""
        if BEGIN not in text or END not in text:
            problems.append(f"{role.name}: README.md lacks the {BEGIN} / {END} markers")
            continue
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = f"{head}{BEGIN}\n{render(specs)}{END}{tail}"
        if new != text:
            if args.check:
                problems.append(f"{role.name}: README.md variable table is out of date (run scripts/role-docs.py)")
            else:
                readme.write_text(new)
                print(f"updated {readme}")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
