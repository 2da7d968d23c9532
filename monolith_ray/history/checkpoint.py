"""Checkpoints of the live history: each history slot's store and the examples topic's
positions it has read to, so a restarted history actor resumes from there instead of reading
the topic again from its earliest offsets (hours at scale over days of retention).

A root (a local folder or any ``pyarrow.fs`` URI; on a cluster, storage every node reaches,
as for snapshots) holds one file per checkpoint, ``history-<owner>-<number>.bin``, where the
owner names the writer (the Ray actor's id, which a restart keeps), so writers sharing a root
never take each other's numbers or prune each other's files, and a restarted actor never
loads a checkpoint of another run:

- 8 bytes, little-endian: the length h of the header (at most ``MAX_HEADER``);
- the header, h bytes of JSON: ``format``, ``topic``, ``positions`` (partition -> the offset
  after the last example observed), ``taken_at`` (unix s), ``config`` (the history slots as
  configured: a checkpoint of other slots is not loaded) and ``slots``: per slot its name
  and the byte length of its frames;
- each slot's frames (``HistoryStore.to_bytes``: ``.npy`` arrays, never pickle), in order.

On a local disk a file is written under a ``.part`` name and renamed when whole; an object
store publishes an object only once it is closed. A reader still checks that a file's length
is what its header says and skips one that is not, or that fails to parse, for the one
before it. After each write the owner's newest ``keep`` files are kept, and other owners'
files not modified for ``ABANDONED_S`` (7 days) are deleted: every new deployment's actor
has a new id, and its predecessors' files would otherwise stay for good. (An actor down for
longer than that, sharing the root with a live one, loses its checkpoints and reads the
topic from the start.)

Costs at U users held and N entries a user per slot: the file is about 16·N·U bytes a slot
(with 8 bytes a user); its frames are built in memory first (about 2.5 times one slot's
store while a slot's are built, then all slots' frames) and read whole on restore.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow.fs as pafs

from monolith_ray.files import absolute_location, filesystem_and_path

logger = logging.getLogger(__name__)

FORMAT = "monolith_ray.history/2"
_OWNER = re.compile(r"[A-Za-z0-9_]{1,64}")
_ANY = re.compile(r"history-[A-Za-z0-9_]{1,64}-\d+\.bin(\.part)?")
ABANDONED_S = 7 * 86_400.0  # another owner's files untouched this long are deleted
_HEADER = struct.Struct("<Q")
MAX_HEADER = 1 << 20  # bytes: a header past this is not one this module wrote


def _numbered(fs: pafs.FileSystem, root: str, owner: str) -> list[tuple[int, str]]:
    """(number, path) of ``owner``'s checkpoint files under ``root``, newest first."""
    name = re.compile(rf"history-{re.escape(owner)}-(\d+)\.bin$")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = [(int(m.group(1)), info.path) for info in infos
             if info.type == pafs.FileType.File and (m := name.fullmatch(info.base_name))]
    return sorted(found, reverse=True)


def _check_owner(owner: str) -> str:
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"owner: 1-64 letters, digits or '_', got {owner!r}")
    return owner


def write_checkpoint(root: str, owner: str, topic: str, positions: Mapping[int, int],
                     frames: Mapping[str, bytes], config: Any = None, keep: int = 2,
                     abandoned_s: float = ABANDONED_S) -> str:
    """Write ``owner``'s new checkpoint of ``frames`` (slot name ->
    ``HistoryStore.to_bytes``) read to ``positions`` of ``topic`` under ``root``, with
    ``config`` (JSON-able: what the stores were built with), then keep ``owner``'s newest
    ``keep`` and delete other owners' files older than ``abandoned_s`` -> its location. A
    failure to prune is logged, not raised."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    fs, path = filesystem_and_path(root)
    fs.create_dir(path, recursive=True)
    numbered = _numbered(fs, path, _check_owner(owner))
    number = numbered[0][0] + 1 if numbered else 1
    header = json.dumps({
        "format": FORMAT, "topic": topic, "taken_at": time.time(), "config": config,
        "positions": {str(p): int(o) for p, o in positions.items()},
        "slots": [{"name": name, "bytes": len(data)} for name, data in frames.items()],
    }).encode()
    name = f"history-{owner}-{number:06d}.bin"
    target = posixpath.join(path, name)
    local = isinstance(fs, pafs.LocalFileSystem)
    with fs.open_output_stream(target + ".part" if local else target) as out:
        out.write(_HEADER.pack(len(header)))
        out.write(header)
        for data in frames.values():
            out.write(data)
    if local:
        fs.move(target + ".part", target)
    try:
        for _, old in _numbered(fs, path, owner)[keep:]:
            fs.delete_file(old)
        _prune_abandoned(fs, path, owner, abandoned_s)
    except OSError as err:
        logger.warning("history: older checkpoints under %s not pruned: %s", root, err)
    return f"{absolute_location(root).rstrip('/')}/{name}"


def _prune_abandoned(fs: pafs.FileSystem, path: str, owner: str, abandoned_s: float) -> None:
    """Delete ``owner``'s ``.part`` files (a write cut short: its writes are done) and other
    owners' checkpoint and ``.part`` files not modified for ``abandoned_s``: those of actors
    that are gone (each new deployment's actor has a new id), which would otherwise stay
    under the root for good."""
    cutoff = time.time() - abandoned_s
    mine = re.compile(rf"history-{re.escape(owner)}-\d+\.bin(\.part)?")
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.File or not _ANY.fullmatch(info.base_name):
            continue
        if mine.fullmatch(info.base_name):
            stale = info.base_name.endswith(".part")
        else:
            stale = info.mtime is not None and info.mtime.timestamp() < cutoff
        if stale:
            fs.delete_file(info.path)
            logger.warning("history: deleted %s (a write cut short, or not written for "
                           "%.0f s)", info.path, abandoned_s)


def read_checkpoint(data: bytes | memoryview) -> tuple[dict[str, Any], dict[str, memoryview]]:
    """A checkpoint file's bytes -> (its header, slot name -> its frames, views into
    ``data``); ValueError if they are not one whole checkpoint of this format."""
    view = memoryview(data).cast("B")
    if len(view) < _HEADER.size:
        raise ValueError("shorter than its header's length")
    (length,) = _HEADER.unpack_from(view)
    if length > MAX_HEADER or _HEADER.size + length > len(view):
        raise ValueError(f"a header of {length} bytes does not fit")
    try:
        header = json.loads(bytes(view[_HEADER.size:_HEADER.size + length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"header: {err}") from None
    _check_header(header)
    frames, at = {}, _HEADER.size + length
    for slot in header["slots"]:
        frames[slot["name"]] = view[at:at + slot["bytes"]]
        at += slot["bytes"]
    if at != len(view):
        raise ValueError(f"{len(view)} bytes where its header says {at}")
    return header, frames


def _check_header(header: Any) -> None:
    """ValueError unless ``header`` has this format's keys with values of their types."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint")
    positions, slots = header.get("positions"), header.get("slots")
    if not isinstance(header.get("topic"), str) or not isinstance(
            header.get("taken_at"), (int, float)):
        raise ValueError("header: topic and taken_at missing or of the wrong type")
    if not isinstance(positions, dict) or not all(
            isinstance(p, str) and p.isdigit() and type(o) is int and o >= 0
            for p, o in positions.items()):
        raise ValueError("header: positions must map partitions to offsets >= 0")
    if not isinstance(slots, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str)
            and type(s.get("bytes")) is int and s["bytes"] >= 0 for s in slots):
        raise ValueError("header: slots must be a list of {name, bytes >= 0}")
    if len({s["name"] for s in slots}) != len(slots):
        raise ValueError("header: a slot named twice")


def checkpoints(root: str, owner: str, topic: str, max_bytes: int | None = None
                ) -> Iterator[tuple[str, dict[str, Any], dict[str, memoryview]]]:
    """``owner``'s whole checkpoints of ``topic`` under ``root``, newest first -> (file,
    header, frames). Files cut short, unreadable, of another topic or larger than
    ``max_bytes`` (checked before they are read) are skipped (logged); the caller may reject
    one (say, frames that do not load) and take the next."""
    fs, path = filesystem_and_path(root)
    for _, file in _numbered(fs, path, _check_owner(owner)):
        try:
            size = fs.get_file_info(file).size
            if max_bytes is not None and (size is None or size > max_bytes):
                raise ValueError(f"{size} bytes, more than the {max_bytes} the config's "
                                 f"history can hold")
            with fs.open_input_stream(file) as f:
                header, frames = read_checkpoint(f.read())
        except (OSError, ValueError) as err:
            logger.warning("history: skipping checkpoint %s: %s", file, err)
            continue
        if header["topic"] != topic:
            logger.warning("history: skipping checkpoint %s of topic %r, not %r", file,
                           header["topic"], topic)
            continue
        yield file, header, frames
