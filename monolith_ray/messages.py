"""The JSON messages on the Kafka topics: one definition, with validation.

Every topic carries UTF-8 JSON objects (never pickle). Times are event times in unix seconds
(int). Slot values are raw values, as in the Parquet examples: an int, a string (hashed with
``features.hash_str``), or for a multi-valued slot a list of them; ``null`` means no value.

``features`` (serving logs one per impression)::

    {"request_id": "r-1", "time": 1700000000, "user_id": 7, "item_id": 42,
     "slots": {"user_id": 7, "item_id": 42, "gender": "M", "genres": ["Drama", "War"]},
     "context": {"page": "home"}}            # context: optional, free-form

``actions`` (one per user action)::

    {"request_id": "r-1", "item_id": 42, "time": 1700000030, "action": "click"}

``examples`` (the online joiner writes one per joined or expired impression)::

    {"request_id": "r-1", "time": 1700000000, "slots": {...}, "label": 1.0, "weight": 1.0}

(the joiner's are the impression's ``features`` message with label and weight added, so its
other fields ride along; :func:`parse_example` ignores them).

``dead_letter`` (anything that failed validation)::

    {"topic": "actions", "partition": 0, "offset": 17, "reason": "time: expected int",
     "payload": "<the raw message as text, at most 4096 characters>"}

The parsers below take the decoded JSON value and return a validated dict, or raise
:class:`MessageError` whose text names the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

ACTIONS = ("click", "like", "share", "finish", "skip")
POSITIVE_ACTIONS = ("click", "like", "share", "finish")
MAX_PAYLOAD_CHARS = 4096

Scalar = int | str
SlotValue = Scalar | list[Scalar] | None


class MessageError(ValueError):
    """A message failed validation; the text names the field and the problem."""


def decode(raw: bytes) -> Any:
    """UTF-8 JSON bytes -> value; MessageError for anything that is not valid JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"not UTF-8 JSON: {err}") from None


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(message: Mapping[str, Any]) -> bytes:
    """A message -> compact UTF-8 JSON bytes (NaN and Infinity refused)."""
    return _ENCODER.encode(message).encode("utf-8")


def parse_feature(value: Any) -> dict[str, Any]:
    """A ``features`` message, validated."""
    msg = _object(value)
    out = {"request_id": _str(msg, "request_id"), "time": _time(msg),
           "user_id": _scalar(msg, "user_id"), "item_id": _scalar(msg, "item_id"),
           "slots": _slots(msg)}
    context = msg.get("context", {})
    if not isinstance(context, dict):
        raise MessageError(f"context: expected an object, got {type(context).__name__}")
    out["context"] = context
    return out


def parse_action(value: Any) -> dict[str, Any]:
    """An ``actions`` message, validated."""
    msg = _object(value)
    action = _str(msg, "action")
    if action not in ACTIONS:
        raise MessageError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    return {"request_id": _str(msg, "request_id"), "item_id": _scalar(msg, "item_id"),
            "time": _time(msg), "action": action}


def parse_example(value: Any) -> dict[str, Any]:
    """An ``examples`` message, validated."""
    msg = _object(value)
    label, weight = msg.get("label"), msg.get("weight", 1.0)
    if not _is_number(label) or not 0.0 <= label <= 1.0:
        raise MessageError(f"label: expected a number in [0, 1], got {label!r}")
    if not _is_number(weight) or weight <= 0:
        raise MessageError(f"weight: expected a number > 0, got {weight!r}")
    return {"request_id": _str(msg, "request_id"), "time": _time(msg), "slots": _slots(msg),
            "label": float(label), "weight": float(weight)}


def dead_letter(topic: str, partition: int, offset: int, reason: str,
                raw: bytes) -> dict[str, Any]:
    """The ``dead_letter`` record of a message that failed validation."""
    return {"topic": topic, "partition": int(partition), "offset": int(offset),
            "reason": reason,
            "payload": raw.decode("utf-8", errors="replace")[:MAX_PAYLOAD_CHARS]}


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _str(msg: Mapping[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise MessageError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _time(msg: Mapping[str, Any]) -> int:
    value = msg.get("time")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MessageError(f"time: expected int unix seconds >= 0, got {value!r}")
    return value


def _scalar(msg: Mapping[str, Any], key: str) -> Scalar:
    value = msg.get(key)
    if not _is_scalar(value):
        raise MessageError(f"{key}: expected an int or a string, got {value!r}")
    return value


def _slots(msg: Mapping[str, Any]) -> dict[str, SlotValue]:
    slots = msg.get("slots")
    if not isinstance(slots, dict) or not slots:
        raise MessageError(f"slots: expected a non-empty object, got {slots!r}")
    for name, value in slots.items():
        # Exact types first: they are all JSON gives, and the check is per value per message.
        kind = type(value)
        if kind is str:
            ok = value != ""
        elif kind is int or value is None:
            ok = True
        elif kind is list:
            ok = True
            for v in value:
                if not (type(v) is int or (type(v) is str and v != "") or _is_scalar(v)):
                    ok = False
                    break
        else:
            ok = _is_scalar(value) or (isinstance(value, list)
                                       and all(_is_scalar(v) for v in value))
        if not ok:
            raise MessageError(f"slots.{name}: expected an int, a string, a list of them or "
                               f"null, got {value!r}")
    return slots


def _is_scalar(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
