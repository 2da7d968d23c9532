"""The channel's wire format: a fixed header, a msgpack body and raw array buffers, no pickle.

Why: a channel's peer is another process on the network; decoding what it sent must never
run code, as unpickling can. A message is three or more parts:

- ``head``: :data:`HEAD` (magic ``b"MRW1"``, kind, method id, count of buffers, length of the
  body, sequence number, oldest unanswered call) then one u64 length per buffer, all
  little-endian. It is checked (magic, kind, method, at most ``MAX_BUFFERS`` buffers, at most
  ``MAX_BODY_BYTES`` of body and ``MAX_MESSAGE_BYTES`` in all) before anything else is read.
- ``body``: msgpack (``msgspec``) of the value: None, bool, int (64-bit), float, str, bytes,
  tuples (msgpack arrays; a list is sent as a tuple), dicts with str or int keys, and three
  extension-tagged kinds: an array (its buffer's index, a dtype code from :data:`DTYPES`, at
  most ``MAX_NDIM`` dimensions), a ``PackedSlots`` and a ``TableDelta`` (a msgpack array whose
  first item is the record's tag, then its fields). Numpy scalars go as Python scalars.
  Nesting deeper than ``MAX_DEPTH`` is refused.
- the buffers: each array's C-order bytes, sent without a copy, received as writable arrays
  over the receiver's memory (their sizes must match the declared dtype and shape exactly, and
  every buffer must be used by exactly one array).

A request's value is the tuple of the method's arguments, a result's the method's return
value, an error's ``(type name, message)``: the type is one of :data:`ERRORS` (an exception
of another type goes as its nearest listed base, else RuntimeError, its message naming the
original type) and is raised as that type. Anything malformed raises :class:`WireError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from math import prod
from typing import Any, NamedTuple

import msgspec
import numpy as np

from monolith_ray.ps.calls import ShardUnavailableError
from monolith_ray.ps.packed_slots import PackedSlots
from monolith_ray.table import TableDelta

# The methods a channel can call, by their id on the wire (append only: ids are the protocol).
METHODS = ("pull", "push", "push_pull", "lookup", "stats", "evict", "evict_expired",
           "export_since", "changes_since", "forget_evictions", "pid")
METHOD_IDS = {name: i for i, name in enumerate(METHODS)}
REQUEST, RESULT, ERROR = 0, 1, 2  # kinds of message
MAGIC = b"MRW1"
# magic, kind, method id, count of buffers, body bytes, sequence number, acked
HEAD = struct.Struct("<4sBBHIQQ")
MAX_BUFFERS = 1024
MAX_BODY_BYTES = 16 << 20
MAX_MESSAGE_BYTES = 1 << 30  # body and buffers
MAX_NDIM = 4
MAX_DEPTH = 32
DTYPES = tuple(np.dtype(t) for t in ("bool", "uint8", "int32", "int64", "float32", "float64"))
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}
_ARRAY, _PACKED, _DELTA = 1, 2, 3  # msgpack extension codes
_RECORDS: dict[int, type] = {_PACKED: PackedSlots, _DELTA: TableDelta}
_RECORD_CODES = {cls: code for code, cls in _RECORDS.items()}
_ARRAY_META = struct.Struct("<IBB")  # buffer index, dtype code, ndim; then ndim u64 dims
ERRORS: dict[str, type[Exception]] = {cls.__name__: cls for cls in (
    ShardUnavailableError, KeyError, ValueError, TypeError, IndexError, AttributeError,
    LookupError, ArithmeticError, OverflowError, ZeroDivisionError, NotImplementedError,
    TimeoutError, FileNotFoundError, MemoryError, RuntimeError)}
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()

Buffer = bytes | bytearray | memoryview


class WireError(ValueError):
    """A message that is malformed, too large, or holds a value the wire format cannot carry."""


class Head(NamedTuple):
    """The fixed header of a message (:data:`HEAD`)."""

    kind: int
    method: int
    n_buffers: int
    body_bytes: int
    seq: int
    acked: int


def encode(kind: int, method: int, seq: int, acked: int, value: Any) -> list[Buffer]:
    """The parts of one message -> ``[head, body, *buffers]`` (arrays' memory, not copied).
    WireError if ``value`` holds anything the format cannot carry."""
    buffers: list[memoryview] = []
    try:
        body = _encoder.encode(_to_node(value, buffers, 0))
    except WireError:
        raise
    except (TypeError, OverflowError, ValueError) as err:
        raise WireError(f"cannot encode the value: {err}") from None
    head = HEAD.pack(MAGIC, kind, method, len(buffers), len(body), seq, acked)
    sizes = struct.pack(f"<{len(buffers)}Q", *(b.nbytes for b in buffers))
    return [head + sizes, body, *buffers]


def parse_head(data: Buffer) -> Head:
    """The header at the start of ``data`` (at least ``HEAD.size`` bytes), checked: WireError
    if it is not one or declares more than a message may hold."""
    if len(data) < HEAD.size:
        raise WireError(f"a header needs {HEAD.size} bytes, got {len(data)}")
    magic, *fields = HEAD.unpack_from(data)
    head = Head(*fields)
    if magic != MAGIC:
        raise WireError(f"not a channel message (magic {bytes(magic)!r})")
    if head.kind not in (REQUEST, RESULT, ERROR):
        raise WireError(f"unknown message kind {head.kind}")
    if head.method >= len(METHODS):
        raise WireError(f"unknown method id {head.method}")
    if head.n_buffers > MAX_BUFFERS:
        raise WireError(f"a message declared {head.n_buffers} buffers, more than {MAX_BUFFERS}")
    if head.body_bytes > MAX_BODY_BYTES:
        raise WireError(f"a message declared a body of {head.body_bytes} bytes, more than "
                        f"{MAX_BODY_BYTES}")
    return head


def parse_sizes(head: Head, data: Buffer) -> tuple[int, ...]:
    """The buffer sizes that follow the header in ``data`` (the whole head part): WireError if
    the part has another length or they declare more than ``MAX_MESSAGE_BYTES`` in all."""
    if len(data) != HEAD.size + 8 * head.n_buffers:
        raise WireError(f"a head part of {len(data)} bytes for {head.n_buffers} buffers")
    sizes = struct.unpack_from(f"<{head.n_buffers}Q", data, HEAD.size)
    if head.body_bytes + sum(sizes) > MAX_MESSAGE_BYTES:
        raise WireError(f"a message declared {head.body_bytes + sum(sizes)} bytes, more than "
                        f"{MAX_MESSAGE_BYTES}")
    return sizes


def decode(body: Buffer, buffers: Sequence[Buffer]) -> Any:
    """The value of a message's body and buffers (arrays are views over ``buffers``, writable
    if they are). WireError if anything in it is malformed; no code of the sender's runs."""
    try:
        node = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, ValueError) as err:
        raise WireError(f"a body that is not msgpack: {err}") from None
    used = [False] * len(buffers)
    value = _from_node(node, buffers, used, 0)
    if not all(used):
        raise WireError(f"{used.count(False)} of {len(buffers)} buffers are not used")
    return value


def error_value(err: BaseException) -> tuple[str, str]:
    """What an error travels as: (its type's name, or its nearest base's in :data:`ERRORS`,
    else ``RuntimeError``; its message, naming its own type if that is not the one sent)."""
    cls = next((c for c in type(err).__mro__ if ERRORS.get(c.__name__) is c), RuntimeError)
    message = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(
        err.args[0], str) else str(err)
    if cls is not type(err):
        message = f"{type(err).__name__}: {message}"
    return cls.__name__, message


def error_of(value: Any) -> Exception:
    """The exception an error message's value stands for (see :func:`error_value`)."""
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str)
                                                                for v in value)):
        raise WireError(f"an error message must be (type name, message), got {value!r:.200}")
    name, message = value
    cls = ERRORS.get(name)
    return cls(message) if cls is not None else RuntimeError(f"{name}: {message}")


def _to_node(value: Any, buffers: list[memoryview], depth: int) -> Any:
    """``value`` as msgpack-able data, its arrays appended to ``buffers``."""
    if depth > MAX_DEPTH:
        raise WireError(f"a value nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.ndarray):
        return _array_node(value, buffers)
    if isinstance(value, np.generic) and isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    code = _RECORD_CODES.get(type(value))
    if code is not None:
        return [msgspec.msgpack.Ext(code, b""),
                *(_to_node(v, buffers, depth + 1) for v in value)]
    if isinstance(value, (tuple, list)):
        return [_to_node(v, buffers, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
            raise WireError("dict keys must be str or int")
        return {k: _to_node(v, buffers, depth + 1) for k, v in value.items()}
    raise WireError(f"a {type(value).__name__} cannot be sent over a channel")


def _array_node(array: np.ndarray, buffers: list[memoryview]) -> msgspec.msgpack.Ext:
    code = _DTYPE_CODES.get(array.dtype)
    if code is None:
        raise WireError(f"arrays of dtype {array.dtype} cannot be sent; "
                        f"only {', '.join(map(str, DTYPES))}")
    if array.ndim > MAX_NDIM:
        raise WireError(f"arrays of {array.ndim} dimensions cannot be sent; at most {MAX_NDIM}")
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    meta = _ARRAY_META.pack(len(buffers), code, array.ndim) + struct.pack(
        f"<{array.ndim}Q", *array.shape)
    buffers.append(memoryview(flat))
    return msgspec.msgpack.Ext(_ARRAY, meta)


def _from_node(node: Any, buffers: Sequence[Buffer], used: list[bool], depth: int) -> Any:
    """The value of a decoded msgpack node (see :func:`_to_node`)."""
    if depth > MAX_DEPTH:
        raise WireError(f"a value nested deeper than {MAX_DEPTH}")
    if node is None or isinstance(node, (bool, int, float, str, bytes)):
        return node
    if isinstance(node, list):
        if node and isinstance(node[0], msgspec.msgpack.Ext):
            cls = _RECORDS.get(node[0].code)
            if cls is not None:
                fields = [_from_node(v, buffers, used, depth + 1) for v in node[1:]]
                if len(fields) != len(cls._fields):  # type: ignore[attr-defined]
                    raise WireError(f"a {cls.__name__} of {len(fields)} fields")
                return cls(*fields)
        return tuple(_from_node(v, buffers, used, depth + 1) for v in node)
    if isinstance(node, dict):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in node):
            raise WireError("dict keys must be str or int")
        return {k: _from_node(v, buffers, used, depth + 1) for k, v in node.items()}
    if isinstance(node, msgspec.msgpack.Ext) and node.code == _ARRAY:
        return _array_of(bytes(node.data), buffers, used)
    raise WireError(f"a {type(node).__name__} is not a value the wire format carries")


def _array_of(meta: bytes, buffers: Sequence[Buffer], used: list[bool]) -> np.ndarray:
    """The array an array node's ``meta`` declares, over its buffer (checked to fit)."""
    if len(meta) < _ARRAY_META.size:
        raise WireError("a truncated array")
    index, code, ndim = _ARRAY_META.unpack_from(meta)
    if ndim > MAX_NDIM or len(meta) != _ARRAY_META.size + 8 * ndim:
        raise WireError(f"an array of {ndim} dimensions in {len(meta)} bytes of metadata")
    if code >= len(DTYPES):
        raise WireError(f"unknown dtype code {code}")
    if index >= len(buffers) or used[index]:
        raise WireError(f"buffer {index} of {len(buffers)} is missing or used twice")
    shape = struct.unpack_from(f"<{ndim}Q", meta, _ARRAY_META.size)
    dtype, buffer = DTYPES[code], buffers[index]
    if any(d >= 1 << 40 for d in shape) or prod(shape) * dtype.itemsize != memoryview(buffer).nbytes:
        raise WireError(f"an array {shape} of {dtype} over a buffer of {memoryview(buffer).nbytes} bytes")
    used[index] = True
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)
