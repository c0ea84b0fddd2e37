"""File access for the data steps through Beam's FileSystems, so the same code reads and writes
local paths and remote URIs (gs://, s3://, ...) from the launcher and from any runner's workers."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from typing import Any

from apache_beam.io.filesystems import FileSystems


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def makedirs(path: str) -> None:
    """Creates a local directory (object stores need none)."""
    if "://" not in path:
        os.makedirs(path, exist_ok=True)


def write_text(path: str, text: str) -> None:
    makedirs(os.path.dirname(path) if "://" not in path else "")
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def read_lines(path: str) -> list[str]:
    """The file's non-blank lines (a vocabulary: users.txt, items.txt), without their line ends."""
    return [line.rstrip("\r") for line in read_text(path).split("\n") if line.strip()]


def write_json(path: str, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2))


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def match(pattern: str) -> list[str]:
    """Sorted paths matching a glob pattern; [] when none."""
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def remove_tree(path: str) -> None:
    """Removes a directory (local) or every object under a prefix (remote); nothing if absent."""
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
        return
    paths = match(join(path, "**"))
    if paths:
        FileSystems.delete(paths)


def for_beam(path: str, uri: str) -> str:
    """The location a Beam step should use for a KFP artifact: its remote URI when it has one
    (Dataflow workers cannot see the launcher's mounted path), else its local path."""
    return uri if uri and "://" in uri and not uri.startswith("file://") else path
