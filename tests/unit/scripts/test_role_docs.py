"""scripts/role-docs.py: the README tables come from the argument specs, and drift is caught."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "role-docs.py"
_spec = importlib.util.spec_from_file_location("role_docs", SCRIPT)
role_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(role_docs)

SPEC = {
    "argument_specs": {
        "main": {
            "short_description": "Demo role",
            "options": {
                "demo_port": {"type": "int", "default": 8080, "description": "Host port | published."},
                "demo_mode": {"type": "str", "default": "a", "choices": ["a", "b"], "description": "Mode."},
                "demo_keys": {"type": "list", "elements": "str", "required": True, "no_log": True,
                              "description": ["Private keys.", "From vault."]},
            },
        }
    }
}


def make_role(tmp_path: Path, defaults: dict, spec: dict | None = None, readme: str | None = None) -> Path:
    spec = SPEC if spec is None else spec
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(spec))
    (role / "defaults" / "main.yml").write_text(yaml.safe_dump(defaults))
    if readme is None:
        readme = f"# demo\n\n{role_docs.BEGIN}\nstale\n{role_docs.END}\n\nmore text\n"
    (role / "README.md").write_text(readme)
    return role


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--roles", str(tmp_path / "roles"), *args],
                          capture_output=True, text=True, check=False)


def test_render_table_rows():
    text = role_docs.render(SPEC)
    assert text.splitlines() == [
        "Entry point `main`: Demo role",
        "",
        "| Variable | Type | Required | Default | Choices | Description |",
        "|---|---|---|---|---|---|",
        "| `demo_keys` | list of str | yes |  |  | Private keys. From vault. |",
        '| `demo_mode` | str |  | `"a"` | `a`, `b` | Mode. |',
        "| `demo_port` | int |  | `8080` |  | Host port \\| published. |",
    ]


def test_rewrite_then_check_passes(tmp_path):
    role = make_role(tmp_path, {"demo_port": 8080, "demo_mode": "a"})
    assert run(tmp_path, "--check").returncode == 1
    assert run(tmp_path).returncode == 0
    readme = (role / "README.md").read_text()
    assert "stale" not in readme and "more text" in readme and "| `demo_port` |" in readme
    assert run(tmp_path, "--check").returncode == 0


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        ({"demo_port": 9090, "demo_mode": "a"}, "demo_port defaults to 9090 but the spec says 8080"),
        ({"demo_port": 8080, "demo_mode": "a", "demo_extra": 1}, "default demo_extra is not in meta/argument_specs.yml"),
        ({"demo_port": 8080}, "spec gives demo_mode a default but defaults/main.yml does not"),
        ({"demo_port": 8080, "demo_mode": "a", "other_x": 1}, "default other_x lacks the role prefix"),
    ],
)
def test_defaults_and_spec_must_agree(tmp_path, defaults, message):
    make_role(tmp_path, defaults)
    run(tmp_path)
    result = run(tmp_path, "--check")
    assert result.returncode == 1
    assert message in result.stderr


def test_missing_markers(tmp_path):
    make_role(tmp_path, {"demo_port": 8080, "demo_mode": "a"}, readme="# demo\n")
    result = run(tmp_path, "--check")
    assert result.returncode == 1
    assert "lacks the <!-- BEGIN ARGUMENT SPECS -->" in result.stderr
