"""Checkpoints of the live history: each history slot's store and the examples topic's
positions it has read to, so a restarted history actor resumes from there instead of reading
the topic again from its earliest offsets (hours at scale over days of retention).

A root (a local folder or any ``pyarrow.fs`` URI; on a cluster, storage every node reaches,
as for snapshots) holds one file per checkpoint, ``history-<number>.bin``:

- 8 bytes, little-endian: the length h of the header;
- the header, h bytes of JSON: ``format``, ``topic``, ``positions`` (partition -> the offset
  after the last example observed), ``taken_at`` (unix s) and ``slots``: per slot its name
  and the byte length of its frames;
- each slot's frames (``HistoryStore.to_bytes``: ``.npy`` arrays, never pickle), in order.

A file is written in one pass and read whole; one whose length is not what its header
says (a write cut short) or that fails to parse is skipped for the one before it. After each
write the newest ``keep`` files are kept. The store and the positions agree: the actor's
reading thread, the only one that feeds the store, takes the checkpoint between two
micro-batches.

Costs at U users held and N entries a user per slot: the file is about 16·N·U bytes a slot
(with 8 bytes a user), built in memory once per checkpoint (one copy of the stores) and read
whole on restore.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import struct
import time
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

from monolith_ray.files import absolute_location, filesystem_and_path

logger = logging.getLogger(__name__)

FORMAT = "monolith_ray.history/1"
_NAME = re.compile(r"history-(\d+)\.bin$")
_HEADER = struct.Struct("<Q")
MAX_HEADER = 1 << 24  # bytes: a header past this is not one this module wrote


def _numbered(fs: pafs.FileSystem, root: str) -> list[tuple[int, str]]:
    """(number, path) of the checkpoint files under ``root``, newest first."""
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = [(int(m.group(1)), info.path) for info in infos
             if info.type == pafs.FileType.File and (m := _NAME.search(info.base_name))]
    return sorted(found, reverse=True)


def write_checkpoint(root: str, topic: str, positions: Mapping[int, int],
                     frames: Mapping[str, bytes], keep: int = 2) -> str:
    """Write a new checkpoint of ``frames`` (slot name -> ``HistoryStore.to_bytes``) read to
    ``positions`` of ``topic`` under ``root``, then keep the newest ``keep`` -> its
    location."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    fs, path = filesystem_and_path(root)
    fs.create_dir(path, recursive=True)
    numbered = _numbered(fs, path)
    number = numbered[0][0] + 1 if numbered else 1
    header = json.dumps({
        "format": FORMAT, "topic": topic, "taken_at": time.time(),
        "positions": {str(p): int(o) for p, o in positions.items()},
        "slots": [{"name": name, "bytes": len(data)} for name, data in frames.items()],
    }).encode()
    target = posixpath.join(path, f"history-{number:06d}.bin")
    with fs.open_output_stream(target) as out:
        out.write(_HEADER.pack(len(header)))
        out.write(header)
        for data in frames.values():
            out.write(data)
    for _, old in _numbered(fs, path)[keep:]:
        fs.delete_file(old)
    return f"{absolute_location(root).rstrip('/')}/{posixpath.basename(target)}"


def read_checkpoint(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A checkpoint file's bytes -> (its header, slot name -> frames); ValueError if they
    are not one whole checkpoint of this format."""
    if len(data) < _HEADER.size:
        raise ValueError("shorter than its header's length")
    (length,) = _HEADER.unpack_from(data)
    if length > MAX_HEADER or _HEADER.size + length > len(data):
        raise ValueError(f"a header of {length} bytes does not fit")
    header = json.loads(data[_HEADER.size:_HEADER.size + length])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint")
    frames, at = {}, _HEADER.size + length
    for slot in header["slots"]:
        size = int(slot["bytes"])
        frames[str(slot["name"])] = data[at:at + size]
        at += size
    if at != len(data):
        raise ValueError(f"{len(data)} bytes where its header says {at}")
    return header, frames


def latest_checkpoint(root: str, topic: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The newest whole checkpoint under ``root`` of ``topic`` -> (header, frames); None if
    there is none. Files that are cut short, unreadable or of another topic are skipped
    (logged)."""
    fs, path = filesystem_and_path(root)
    for _, file in _numbered(fs, path):
        try:
            with fs.open_input_stream(file) as f:
                header, frames = read_checkpoint(f.read())
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("history: skipping checkpoint %s: %s", file, err)
            continue
        if header["topic"] != topic:
            logger.warning("history: skipping checkpoint %s of topic %r, not %r", file,
                           header["topic"], topic)
            continue
        return header, frames
    return None
