"""The JSON messages on the Kafka topics: one definition, with validation.

Every topic carries UTF-8 JSON objects (never pickle). Times are event times in unix seconds
(int). Slot values are raw values, as in the Parquet examples: an int, a string (hashed with
``features.hash_str``), or for a multi-valued slot a list of them; ``null`` means no value.

``features`` (serving logs one per impression)::

    {"request_id": "r-1", "time": 1700000000, "user_id": 7, "item_id": 42,
     "slots": {"user_id": 7, "item_id": 42, "gender": "M", "genres": ["Drama", "War"]},
     "dense": {"price": 12.5, "views": 3},    # dense: optional (config ``dense``)
     "context": {"page": "home"},            # context: optional, free-form
     "policy": "epsilon", "arm": "explore/eps", "propensity": 0.925}  # optional, see below

``policy``, ``arm`` and ``propensity`` are the serving decision (``monolith_ray.policy``): the
policy that chose the item, the experiment arm of the request (``experiment/arm``) and the
probability the policy showed the item in its slot given the earlier slots. Absent (or null):
greedy, no arm, propensity 1. Serving logs them only when a policy other than greedy,
satiation or experiments are configured; they ride along into the joined example.

``actions`` (one per user action)::

    {"request_id": "r-1", "item_id": 42, "time": 1700000030, "action": "click"}

``examples`` (the online joiner writes one per joined or expired impression)::

    {"request_id": "r-1", "time": 1700000000, "slots": {...}, "dense": {...},
     "label": 1.0, "weight": 1.0,
     "labels": {"click": 1.0, "like": 0.0}}   # labels: optional, with several tasks

(the joiner's are the impression's ``features`` message with label and weight added, so its
other fields ride along; :func:`parse_example` ignores them). ``label`` is the first task's;
with several tasks (config ``tasks``) ``labels`` holds every task's.

``dead_letter`` (anything that failed validation)::

    {"topic": "actions", "partition": 0, "offset": 17, "stage": "joiner",
     "reason": "time: expected int", "payload": "<the raw message as text, at most 4096
     characters>"}

The parsers below take the decoded JSON value and return a validated dict, or raise
:class:`MessageError` whose text names the offending field. Values are checked by
``monolith_ray.validation``, the checks the HTTP API and the Arrow columns use too, with its
bounds: ids and string values at most 128 / 256 characters, lists at most ``max_values``,
event times no further than ``limits.max_event_skew_s`` ahead of the wall clock, a context
within ``limits.max_context_depth`` and ``limits.max_context_bytes``. Given the slots of the
config (``known``), a message naming a slot the model does not have is refused too, and given
its dense features (``dense``: name -> ``DenseFeature``), so is a dense feature it does not
have or a value beyond the feature's ``max_abs``; a missing dense feature takes its default.

:class:`Reader` is the joiner's read of ``features`` and ``actions`` bytes: the same verdicts
as :func:`decode` and the parsers, in less than half their time (see its docstring).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import orjson

from monolith_ray import validation
from monolith_ray.validation import MessageError, Scalar

if TYPE_CHECKING:
    from monolith_ray.config import DenseFeature, LimitsConfig, SlotConfig

__all__ = ["ACTIONS", "POSITIVE_ACTIONS", "MessageError", "Reader", "dead_letter", "decode",
           "encode", "parse_action", "parse_example", "parse_feature", "refusal_reason"]

ACTIONS = ("click", "like", "share", "finish", "skip")
POSITIVE_ACTIONS = ("click", "like", "share", "finish")
MAX_PAYLOAD_CHARS = 4096

Known = Mapping[str, "SlotConfig"] | None
KnownDense = Mapping[str, "DenseFeature"] | None


def decode(raw: bytes) -> Any:
    """UTF-8 JSON bytes -> value; MessageError for anything that is not valid UTF-8 JSON,
    nests deeper than 1,024 levels, holds NaN or Infinity, a lone surrogate escape, or an int
    beyond 64 bits (all of which validation would refuse anyway). orjson decodes in C, about
    four times faster than the standard library: this runs once per message read."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise MessageError(f"not UTF-8 JSON: {err}") from None


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(message: Any) -> bytes:
    """A message (or any JSON value) -> compact UTF-8 JSON bytes (NaN and Infinity
    refused)."""
    return _ENCODER.encode(message).encode("utf-8")


def parse_feature(value: Any, known: Known = None, limits: LimitsConfig | None = None,
                  now: float | None = None, dense: KnownDense = None) -> dict[str, Any]:
    """A ``features`` message, validated (``now``: the wall clock its time is checked
    against; default the current time)."""
    msg = _object(value)
    out = {"request_id": validation.request_id(msg.get("request_id")),
           "time": validation.event_time(msg.get("time"), limits, now),
           "user_id": validation.scalar(msg.get("user_id"), "user_id"),
           "item_id": validation.scalar(msg.get("item_id"), "item_id"),
           "slots": validation.slots(msg.get("slots"), known),
           "dense": validation.dense(msg.get("dense"), dense)}
    context = msg.get("context")
    if context is None:
        out["context"] = {}
    else:
        validation.context(context, limits)
        out["context"] = context
    out.update(validation.decision(msg))
    return out


def parse_action(value: Any, limits: LimitsConfig | None = None,
                 now: float | None = None) -> dict[str, Any]:
    """An ``actions`` message, validated."""
    msg = _object(value)
    action = msg.get("action")
    if action not in ACTIONS or type(action) is not str:
        raise MessageError(f"action: expected one of {', '.join(ACTIONS)}, "
                           f"got {validation._short(action)}")
    return {"request_id": validation.request_id(msg.get("request_id")),
            "item_id": validation.scalar(msg.get("item_id"), "item_id"),
            "time": validation.event_time(msg.get("time"), limits, now), "action": action}


def parse_example(value: Any, known: Known = None, limits: LimitsConfig | None = None,
                  now: float | None = None, dense: KnownDense = None) -> dict[str, Any]:
    """An ``examples`` message, validated (``dense`` of the result: name -> number or None,
    only the features the message gives; ``labels``: task -> label, only if it has some)."""
    msg = _object(value)
    out = {"request_id": validation.request_id(msg.get("request_id")),
            "time": validation.event_time(msg.get("time"), limits, now),
            "slots": validation.slots(msg.get("slots"), known),
            "dense": validation.dense(msg.get("dense"), dense),
            "label": validation.number(msg.get("label"), "label", 0.0, 1.0),
            "weight": validation.number(msg.get("weight", 1.0), "weight", 0.0,
                                        validation.MAX_WEIGHT, low_open=True)}
    labels = _labels(msg.get("labels"))
    if labels is not None:
        out["labels"] = labels
    out.update(validation.decision(msg))
    return out


def _labels(value: Any) -> dict[str, float] | None:
    """An example's per-task ``labels``: None, or an object of at most 32 task names
    (strings) to labels in [0, 1]."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 32:
        raise MessageError("labels: expected an object of at most 32 task labels")
    out = {}
    for task, label in value.items():
        if not isinstance(task, str) or len(task) > 32:
            raise MessageError("labels: a task name must be a string of at most 32 characters")
        out[task] = validation.number(label, f"labels.{task}", 0.0, 1.0)
    return out


def refusal_reason(err: Exception) -> str:
    """The reason a stage gives in a dead letter for a record that raised ``err``: a
    validation error's own text, any other error with its type."""
    return str(err) if isinstance(err, MessageError) else f"{type(err).__name__}: {err}"


def dead_letter(topic: str, partition: int, offset: int, reason: str, raw: bytes,
                stage: str) -> dict[str, Any]:
    """The ``dead_letter`` record of a message that ``stage`` (``joiner``, ``source``,
    ``dump``) refused: the same record read by two stages is two dead letters, told apart by
    ``stage``."""
    return {"topic": topic, "partition": int(partition), "offset": int(offset), "stage": stage,
            "reason": reason[:MAX_PAYLOAD_CHARS],
            "payload": raw.decode("utf-8", errors="replace")[:MAX_PAYLOAD_CHARS]}


# The plainly valid messages, as msgspec types: every bound is validation's (a string's length
# is counted in characters, as Python's len; msgspec refuses lone surrogates and invalid UTF-8
# in strings, as orjson does). No type admits an unknown field, so nothing is skipped unchecked.
# A request id's characters (printable ASCII but space: validation's pattern) are checked after
# the decode with str methods: a msgspec pattern calls back into Python's re, which took 40% of
# a features message's decode.
Int64 = Annotated[int, msgspec.Meta(ge=validation.INT64_MIN, le=validation.INT64_MAX)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=validation.MAX_TEXT_CHARS)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=validation.MAX_ID_CHARS)]
PlainScalar = Int64 | Text
# printable ASCII without spaces, as ``validation.decision`` checks a name.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=validation.MAX_NAME_CHARS,
                                   pattern=r"^[\x21-\x7e]+$")]
Propensity = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
# A dense value's bound in a typed decode: at most 2**52, below which every integer is a
# double, so a JSON integer compares with max_abs exactly as validation.dense compares it.
_EXACT = float(2 ** 52)


class _Action(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    request_id: RequestId
    item_id: PlainScalar
    time: int
    action: Literal[ACTIONS]  # type: ignore[valid-type]


def plain_slot_type(max_values: int) -> Any:
    """A slot's plainly valid values as a msgspec type: null or a scalar, or for a
    multi-valued slot a list of at most ``max_values`` scalars too (validation.slot_value's
    shapes)."""
    if max_values == 1:
        return PlainScalar | None
    limit = min(max_values, validation.MAX_VALUES)
    return PlainScalar | Annotated[list[PlainScalar], msgspec.Meta(max_length=limit)] | None


def plain_dense_type(max_abs: float) -> Any:
    """A dense feature's plainly valid values as a msgspec type: null or a number within
    ``max_abs`` (msgspec takes a JSON int for a float field; JSON has no NaN or Infinity)."""
    bound = min(max_abs, _EXACT)
    return Annotated[float, msgspec.Meta(ge=-bound, le=bound)] | None


def _dense_type(dense: Mapping[str, DenseFeature]) -> Any:
    """The plainly valid ``dense`` objects of a model's features: each known name at most
    once (validation.dense's rules)."""
    names = [f"d{i}" for i in range(len(dense))]
    return msgspec.defstruct(
        "_Dense", [(n, plain_dense_type(f.max_abs), msgspec.UNSET)
                   for n, f in zip(names, dense.values())],
        rename=dict(zip(names, dense)), forbid_unknown_fields=True, gc=False)


class Reader:
    """The joiner's read of ``features`` and ``actions`` message bytes: the fields the join
    needs, with the verdicts of :func:`decode` and :func:`parse_feature` /
    :func:`parse_action` (``known`` slots, ``limits``).

    A typed msgspec decode, validating in C, first admits only what is plainly valid: the
    message's own fields and nothing else, no ``context``, values within validation's bounds,
    only ``known`` slots (with ``known``, and at most ``MAX_SLOTS`` of them). Anything else
    it refuses, valid or not, goes to ``decode`` and the parser, which decide and name the
    fault, so the rules stay in ``validation``. The typed decode builds no dicts and checks
    in C: 1.3 µs a MovieLens features message, 3.4 µs for ``decode`` and ``parse_feature``."""

    def __init__(self, known: Known = None, limits: LimitsConfig | None = None,
                 dense: KnownDense = None) -> None:
        self._known, self._limits = known, validation._limits(limits)
        self._dense = dense
        self._min_time, self._skew = self._limits.min_event_time_s, self._limits.max_event_skew_s
        self._features: msgspec.json.Decoder | None = None
        self._no_slots: Any = None
        if known is not None and len(known) <= validation.MAX_SLOTS:
            names = [f"s{i}" for i in range(len(known))]
            slots = msgspec.defstruct(
                "_Slots", [(n, plain_slot_type(s.max_values), msgspec.UNSET)
                           for n, s in zip(names, known.values())],
                rename=dict(zip(names, known)), forbid_unknown_fields=True, gc=False)
            fields = [("request_id", RequestId), ("time", int), ("user_id", PlainScalar),
                      ("item_id", PlainScalar), ("slots", slots), ("context", None, None),
                      ("policy", Name | None, None), ("arm", Name | None, None),
                      ("propensity", Propensity | None, None)]
            if dense:
                fields.append(("dense", _dense_type(dense) | None, None))
            feature = msgspec.defstruct("_Feature", fields, forbid_unknown_fields=True,
                                        gc=False)
            self._features = msgspec.json.Decoder(feature)
            self._no_slots = slots()
        self._actions = msgspec.json.Decoder(_Action)

    def _plain(self, request_id: str, t: int, now: float) -> bool:
        """Whether a typed-decoded message's request id and time pass as they are: time
        within the limits at wall clock ``now``, id printable ASCII without spaces."""
        return (self._min_time <= t <= now + self._skew and request_id.isascii()
                and request_id.isprintable() and " " not in request_id)

    def feature(self, raw: bytes | None, now: float) -> tuple[str, int, Scalar]:
        """A ``features`` message's (request id, time, item id); MessageError (or another
        error, as from the parser) if it is invalid at wall clock ``now``."""
        if self._features is not None:
            try:
                msg = self._features.decode(raw)
            except Exception:  # noqa: BLE001 - not plainly valid: the parser decides
                pass
            else:
                if (msg.slots != self._no_slots and self._plain(msg.request_id, msg.time, now)
                        and _plain_name(msg.policy) and _plain_name(msg.arm)):
                    return msg.request_id, msg.time, msg.item_id
        out = parse_feature(decode(raw or b""), self._known, self._limits, now, self._dense)
        return out["request_id"], out["time"], out["item_id"]

    def action(self, raw: bytes | None, now: float) -> tuple[str, Scalar, int, str]:
        """An ``actions`` message's (request id, item id, time, action); MessageError if it
        is invalid at wall clock ``now``."""
        try:
            msg = self._actions.decode(raw)
        except Exception:  # noqa: BLE001 - not plainly valid: the parser decides
            pass
        else:
            if self._plain(msg.request_id, msg.time, now):
                return msg.request_id, msg.item_id, msg.time, msg.action
        out = parse_action(decode(raw or b""), self._limits, now)
        return out["request_id"], out["item_id"], out["time"], out["action"]


def _plain_name(name: str | None) -> bool:
    """Whether a typed-decoded policy or arm name passes as it is: absent, or printable
    ASCII without spaces (validation.decision's rule)."""
    return name is None or (name.isascii() and name.isprintable() and " " not in name)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageError(f"expected a JSON object, got {type(value).__name__}")
    return value
