"""Artifact manifests: sha256 of every file of a trained stack, readable without torch.

The Django side verifies and registers artifacts through this module so the web process never
imports torch for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """A trained-stack artifact is missing, incomplete or does not match its checksums."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{path} does not exist (not a trained-stack artifact directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest's sha256; raise :class:`ArtifactError` on mismatch."""
    manifest = read_manifest(directory)
    for key in ("kind", "sha256", "files", "world", "stack_key"):
        if key not in manifest:
            raise ArtifactError(f"{Path(directory) / MANIFEST} lacks {key!r}")
    for name, digest in manifest["files"].items():
        path = Path(directory) / name
        if not path.exists():
            raise ArtifactError(f"{path} is missing")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{path} does not match its sha256 in {MANIFEST}")
    if manifest["files"].get("weights.pt") != manifest["sha256"]:
        raise ArtifactError(f"{directory}: manifest sha256 is not the weights file's checksum")
    return manifest
