"""Where files live: any location as a ``pyarrow.fs`` filesystem and a path in it (local
folders, ``s3://``, ``gs://``, ...: what shards, the dense server, snapshots, dumps and the
start-of-job input check read and write), and local files that appear whole."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def absolute_location(location: str | os.PathLike[str]) -> str:
    """``location`` as every process reads it alike: a URI (``file:///...``,
    ``s3://bucket/...``, ...) as it is, a local path made absolute against this process's
    working directory."""
    text = os.fspath(location)
    return text if _URI.match(text) else os.path.abspath(text)


def filesystem_and_path(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs`` filesystem of ``location`` (see :func:`absolute_location`) and the
    path within it; a URI goes through ``FileSystem.from_uri``."""
    text = absolute_location(location)
    if _URI.match(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), text


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content to; it replaces ``path`` when the block
    ends without error, so readers see the old file or the new one, never a part."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        yield f
    part.replace(path)
