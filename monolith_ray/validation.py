"""The one validation of what enters monolith_ray from outside: slot values, ids, labels,
event times and request contexts.

The HTTP models (``serve/api.py``), the Kafka messages (``messages``) and the Arrow columns
(``data/slot_columns``) all check values here, so what serving accepts the joiner and the
trainer accept, and the other way round. Every check raises :class:`MessageError` whose text
names the field and the problem. The bounds, also in the README's API and message tables:

==================  ==========================================================================
value               bound
==================  ==========================================================================
slot value          an int in int64, or a string of 1..``MAX_TEXT_CHARS`` characters that
                    UTF-8 can encode (no lone surrogates); a multi-valued slot a list of at
                    most its ``max_values`` (and never more than ``MAX_VALUES``) of them
slots of a message  at most ``MAX_SLOTS`` names, each a slot of the config when it is known
request id          1..``MAX_ID_CHARS`` printable ASCII characters, no space
event time          int unix seconds in [``limits.min_event_time_s``, wall clock +
                    ``limits.max_event_skew_s``]: a message from the far future would move
                    the joiner's event-time clock and expire every impression
label, weight       finite numbers; label in [0, 1], weight in (0, ``MAX_WEIGHT``]
dense features      an object of at most ``MAX_DENSE`` names, each a dense feature of the
                    config when it is known, -> a finite int or float within the feature's
                    ``max_abs`` (``DEFAULT_MAX_ABS`` when unknown), or null (= its default)
context             a JSON object nested at most ``limits.max_context_depth`` deep, at most
                    ``limits.max_context_bytes`` encoded, UTF-8 encodable, no NaN/Infinity
policy, arm         (the serving decision, optional) printable ASCII without spaces,
                    1..``MAX_NAME_CHARS`` characters (an arm: ``experiment/arm``), or null
propensity          (optional) a number in (0, 1], or null
==================  ==========================================================================

Checks test exact types first (``type(v) is int``): JSON gives nothing else, and slot values
are checked once per value per message on the stream's hot path.
"""

from __future__ import annotations

import json
import math
import re
import time as _time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monolith_ray.config import DenseFeature, LimitsConfig, SlotConfig

MAX_TEXT_CHARS = 256
MAX_ID_CHARS = 128
MAX_VALUES = 1024
MAX_SLOTS = 256
MAX_WEIGHT = 1.0e6
MAX_DENSE = 256
MAX_CANDIDATES = 10_000  # most candidates (or /predict pairs) a request may list
MAX_NAME_CHARS = 129
DEFAULT_MAX_ABS = 1.0e12
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_ID_CHARS)
_NAME = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_NAME_CHARS)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)

Scalar = int | str


class MessageError(ValueError):
    """A value failed validation; the text names the field and the problem."""


def _limits(limits: LimitsConfig | None) -> LimitsConfig:
    if limits is not None:
        return limits
    from monolith_ray.config import LimitsConfig

    return LimitsConfig()


def text_ok(value: str) -> bool:
    """True iff UTF-8 can encode ``value`` (Python strings may hold lone surrogates, which
    JSON's ``\\ud800`` escapes produce and which no hash or Kafka message can carry)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scalar(value: Any, where: str) -> Scalar:
    """A slot value, user id or item id: an int in int64 or a non-empty encodable string of
    at most ``MAX_TEXT_CHARS`` characters -> the value."""
    kind = type(value)
    if kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise MessageError(f"{where}: {value} does not fit in int64")
    if kind is str:
        if not value:
            raise MessageError(f"{where}: expected a non-empty string")
        if len(value) > MAX_TEXT_CHARS:
            raise MessageError(f"{where}: a string of {len(value)} characters, more than "
                               f"{MAX_TEXT_CHARS}")
        if not text_ok(value):
            raise MessageError(f"{where}: not encodable as UTF-8 (a lone surrogate?)")
        return value
    raise MessageError(f"{where}: expected an int or a string, got {_short(value)}")


def slot_value(value: Any, max_values: int, where: str) -> Scalar | list[Scalar] | None:
    """A slot's value checked against its shape: a scalar (or None) for a single-valued slot
    (``max_values == 1``), else a list (a bare scalar is a list of one) of at most
    ``max_values`` scalars, or None."""
    if value is None:
        return None
    if max_values == 1:
        if type(value) is list:
            raise MessageError(f"{where}: single-valued, got a list")
        return scalar(value, where)
    values = value if type(value) is list else [value]
    limit = min(max_values, MAX_VALUES)
    if len(values) > limit:
        raise MessageError(f"{where}: {len(values)} values, more than max_values {limit}")
    for i, v in enumerate(values):
        if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
            scalar(v, f"{where}[{i}]")
    return values


def slots(value: Any, known: Mapping[str, SlotConfig] | None = None,
          where: str = "slots") -> dict[str, Any]:
    """A message's slots: a non-empty object of at most ``MAX_SLOTS`` slot name -> value.
    With ``known`` (slot name -> its config) every name must be a known slot and every value
    fit its slot; without, names are strings and values scalars, lists of at most
    ``MAX_VALUES`` scalars, or null.

    This runs once per message on the stream's hot path: values that are plainly valid (ints
    in range, ASCII strings within bounds, null, short lists of those) pass inline; any other
    goes to :func:`slot_value`, which decides, so the rules live in one place."""
    if type(value) is not dict or not value:
        raise MessageError(f"{where}: expected a non-empty object, got {_short(value)}")
    if len(value) > MAX_SLOTS:
        raise MessageError(f"{where}: {len(value)} entries, more than {MAX_SLOTS}")
    for name, v in value.items():
        if known is None:
            max_values = MAX_VALUES if type(v) is list else 1
        else:
            slot = known.get(name)
            if slot is None:
                raise MessageError(f"{where}.{_name(name)}: not a slot of the model; slots: "
                                   f"{', '.join(known)}")
            max_values = slot.max_values
        kind = type(v)
        if kind is int:
            if INT64_MIN <= v <= INT64_MAX:
                continue
        elif kind is str:
            if 0 < len(v) <= MAX_TEXT_CHARS and v.isascii():
                continue
        elif v is None:
            continue
        elif kind is list and 1 < max_values and len(v) <= max_values and _plain_list(v):
            continue
        slot_value(v, max_values, f"{where}.{_name(name)}")
    return value


def _plain_list(values: list[Any]) -> bool:
    """True if every value is surely a valid scalar: an int in int64 or an ASCII string of 1
    to ``MAX_TEXT_CHARS`` characters (others are left to :func:`scalar` to decide)."""
    if len(values) > MAX_VALUES:
        return False
    for v in values:
        kind = type(v)
        if kind is int:
            if not INT64_MIN <= v <= INT64_MAX:
                return False
        elif kind is not str or not 0 < len(v) <= MAX_TEXT_CHARS or not v.isascii():
            return False
    return True


def dense(value: Any, known: Mapping[str, DenseFeature] | None = None,
          where: str = "dense") -> dict[str, float | None]:
    """A message's or request's dense features: absent (None) or an object of at most
    ``MAX_DENSE`` name -> number or null. With ``known`` (name -> its config; empty when the
    model has none) every name must be a known feature and every number finite and within
    its ``max_abs``; without, within ``DEFAULT_MAX_ABS``. Booleans are not numbers."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise MessageError(f"{where}: expected an object of feature name -> number, got "
                           f"{_short(value)}")
    if len(value) > MAX_DENSE:
        raise MessageError(f"{where}: {len(value)} entries, more than {MAX_DENSE}")
    for name, v in value.items():
        if known is None:
            bound = DEFAULT_MAX_ABS
        else:
            feature = known.get(name)
            if feature is None:
                names = ", ".join(known) if known else "none"
                raise MessageError(f"{where}.{_name(name)}: not a dense feature of the model; "
                                   f"dense features: {names}")
            bound = feature.max_abs
        if v is None:
            continue
        kind = type(v)
        if (kind is not float and kind is not int) or not abs(v) <= bound:
            raise MessageError(f"{where}.{_name(name)}: expected a finite number within "
                               f"±{bound:g} or null, got {_short(v)}")
    return value


def request_id(value: Any, where: str = "request_id") -> str:
    """A request id: 1..``MAX_ID_CHARS`` printable ASCII characters without spaces."""
    if type(value) is not str or not _REQUEST_ID.fullmatch(value):
        raise MessageError(f"{where}: expected 1 to {MAX_ID_CHARS} printable ASCII characters "
                           f"without spaces, got {_short(value)}")
    return value


def event_time(value: Any, limits: LimitsConfig | None = None, now: float | None = None,
               where: str = "time") -> int:
    """An event time: int unix seconds, not before ``limits.min_event_time_s`` and at most
    ``limits.max_event_skew_s`` ahead of ``now`` (default: the wall clock)."""
    limits = _limits(limits)
    if type(value) is not int:
        raise MessageError(f"{where}: expected int unix seconds, got {_short(value)}")
    if value < limits.min_event_time_s:
        raise MessageError(f"{where}: {value} is before limits.min_event_time_s "
                           f"{limits.min_event_time_s}")
    now = _time.time() if now is None else now
    if value > now + limits.max_event_skew_s:
        raise MessageError(f"{where}: {value} is more than limits.max_event_skew_s "
                           f"{limits.max_event_skew_s:g} s ahead of this service's clock "
                           f"({int(now)})")
    return value


def number(value: Any, where: str, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number in [low, high] (``(low, high]`` if ``low_open``) -> it as a float."""
    if type(value) not in (int, float) or not math.isfinite(value) or value > high or (
            value <= low if low_open else value < low):
        bracket = "(" if low_open else "["
        raise MessageError(f"{where}: expected a number in {bracket}{low:g}, {high:g}], "
                           f"got {_short(value)}")
    return float(value)


def decision(message: Mapping[str, Any]) -> dict[str, Any]:
    """The serving decision an impression may carry: ``policy`` and ``arm`` (names) and
    ``propensity`` (in (0, 1]) -> those of them the message gives and are not null."""
    out: dict[str, Any] = {}
    for name in ("policy", "arm"):
        value = message.get(name)
        if value is not None:
            if type(value) is not str or not _NAME.fullmatch(value):
                raise MessageError(f"{name}: expected 1 to {MAX_NAME_CHARS} printable ASCII "
                                   f"characters without spaces, got {_short(value)}")
            out[name] = value
    if message.get("propensity") is not None:
        out["propensity"] = number(message["propensity"], "propensity", 0.0, 1.0,
                                   low_open=True)
    return out


def context(value: Any, limits: LimitsConfig | None = None, where: str = "context") -> bytes:
    """A request's free-form context: a JSON object within the depth and size limits ->
    its compact UTF-8 JSON, encoded once so that every logged impression reuses it."""
    limits = _limits(limits)
    if type(value) is not dict:
        raise MessageError(f"{where}: expected an object, got {_short(value)}")
    # Depth first, without recursion: an object nested a thousand deep must not reach the
    # encoder, which recurses.
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limits.max_context_depth:
            raise MessageError(f"{where}: nested deeper than limits.max_context_depth "
                               f"{limits.max_context_depth}")
        nested = []
        for node in level:
            for child in (node.values() if type(node) is dict else node):
                if type(child) in (dict, list):
                    nested.append(child)
        level = nested
    try:
        encoded = _ENCODER.encode(value).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as err:
        raise MessageError(f"{where}: not encodable as JSON: {err}") from None
    if len(encoded) > limits.max_context_bytes:
        raise MessageError(f"{where}: {len(encoded)} bytes encoded, more than "
                           f"limits.max_context_bytes {limits.max_context_bytes}")
    return encoded


def _name(name: Any) -> str:
    """A field name as it may appear in an error: itself if short and encodable, else its
    cut ``repr``."""
    if type(name) is str and len(name) <= 64 and text_ok(name):
        return name
    return _short(name)


def _short(value: Any) -> str:
    """``repr`` of a bad value cut to 80 characters, so an error never echoes a megabyte."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
