#!/usr/bin/env python
"""Build the broker package fixtures of the provider_config scenario (never downloaded).

Writes into DEST:

* ``fine-tuning-broker.tar.gz``: a stand-in of the release package with the layout of the
  broker's ``api/Makefile`` target ``package-fine-tuning`` (reference finetune-broker.md §3):
  ``fine-tuning-broker/`` holding README.md, config.example.yaml, docker-compose.yml (with the
  ``#PORT#`` placeholder), init.sql, an empty models/ and transformer/ (Dockerfile, config.json,
  config.toml, transformer/finetune.py, finetune-img.py, requirements.txt). The contents are
  short stand-ins written for the tests; only the layout is upstream's. Members belong to uid
  and gid 1001, as in a tarball built by a CI runner.
* ``not-a-broker.tar.gz``: a package missing most of that layout.
* ``mobilenet_v2.zip``: a real ZIP standing for a customized model's usage file.
* ``<name>.sha256`` beside each tarball: its SHA-256 in hex.

The tarballs are byte-for-byte reproducible (fixed mtimes, gzip header mtime 0).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tarfile
import zipfile

MTIME = 1718000000
TOP = "fine-tuning-broker"

PACKAGE_FILES = {
    "README.md": "Stand-in of the 0G fine-tuning broker package (zerog.compute tests).\n",
    "config.example.yaml": (
        "networks:\n  ethereum0g:\n    url: \"https://evmrpc-testnet.0g.ai\"\n    chainID: 16601\n"
        "    privateKeys:\n      - 1111111111111111111111111111111111111111111111111111111111111111\n"
        "service:\n  servingUrl: \"<Serving_URL>\"\n"
    ),
    "docker-compose.yml": (
        "services:\n  broker:\n    image: ghcr.io/0glabs/0g-serving-broker:0.2.1\n"
        "    ports:\n      - \"#PORT#:3080\"\n"
    ),
    "init.sql": "CREATE DATABASE IF NOT EXISTS fineTune;\n",
    "transformer/Dockerfile": "FROM scratch\n",
    "transformer/config.json": "{}\n",
    "transformer/config.toml": "# stand-in\n",
    "transformer/transformer/finetune.py": "print('stand-in')\n",
    "transformer/transformer/finetune-img.py": "print('stand-in')\n",
    "transformer/transformer/requirements.txt": "\n",
}
PACKAGE_DIRS = ("", "models", "transformer", "transformer/transformer")


def _member(name: str, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"{TOP}/{name}".rstrip("/"))
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.uid = info.gid = 1001
    info.uname = info.gname = "runner"
    info.mtime = MTIME
    info.size = size
    return info


def build_tarball(path: str, dirs: tuple[str, ...], files: dict[str, str]) -> None:
    """Write a reproducible .tar.gz of ``dirs`` and ``files`` under ``fine-tuning-broker/``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in dirs:
            tar.addfile(_member(name, True))
        for name, text in files.items():
            data = text.encode("utf-8")
            tar.addfile(_member(name, False, len(data)), io.BytesIO(data))
    with open(path, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    with open(path + ".sha256", "w", encoding="ascii") as fh:
        fh.write(digest + "\n")


def build_usage_zip(path: str) -> None:
    """A real ZIP with one usage note, as a model's usage file."""
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("mobilenet_v2/USAGE.md", date_time=(2024, 6, 10, 0, 0, 0))
        zf.writestr(info, "Stand-in usage notes for the mobilenet_v2 customized model.\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DEST", file=sys.stderr)
        return 2
    dest = argv[1]
    os.makedirs(dest, exist_ok=True)
    build_tarball(os.path.join(dest, "fine-tuning-broker.tar.gz"), PACKAGE_DIRS, PACKAGE_FILES)
    build_tarball(os.path.join(dest, "not-a-broker.tar.gz"), ("",), {"README.md": "not a broker\n"})
    build_usage_zip(os.path.join(dest, "mobilenet_v2.zip"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
