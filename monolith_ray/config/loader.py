"""The generic strict loader: YAML text or file -> nested dicts -> frozen dataclasses.

:func:`from_dict` builds a dataclass from the nested dicts and lists that ``yaml.safe_load``
returns, and is strict: an unknown key, a value of the wrong type or a missing required key
raises :class:`ConfigError` naming the full key path, e.g.
``slots[2].optimizer.learnin_rate: unknown key (allowed: ...)``.

Value rules (ranges, uniqueness) live in each dataclass's ``__post_init__``, which raises
``ConfigError`` keyed by the field's name *relative to that dataclass* (:func:`_require` for
bounds); ``from_dict`` prefixes the path of the mapping it was building, so a rule never needs
to know where its dataclass sits in the file, and a dataclass built directly in code reports
the bare field name. Nothing here knows the sections: they are the sibling modules, gathered
by ``root.Config``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import os
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class ConfigError(ValueError):
    """A config value that is unknown, mistyped, missing or out of range.

    ``key`` is the dotted key path (``slots[2].optimizer.learning_rate``; empty for the whole
    document) and ``reason`` what is wrong with it; ``str(err)`` is ``"key: reason"``.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        return type(self), (self.key, self.reason)

    def under(self, path: str) -> ConfigError:
        """The same error with its key placed under ``path``, the enclosing mapping's path."""
        return ConfigError(_join(path, self.key), self.reason)


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and value types against its fields.

    Supported field types: ``int``, ``float`` (ints accepted), ``bool`` (ints refused), ``str``,
    ``Literal[...]``, ``Optional[X]``, nested dataclasses, ``tuple[X, ...]`` (from a list) and
    ``dict[str, X]``. ``path`` is where ``data`` sits in the document and prefixes every error.
    Fields with no default are required; fields with ``init=False`` are not keys.
    """
    if not isinstance(data, Mapping):
        raise _type_error(cls, data, path)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(_join(path, str(key)), _unknown_key_reason(str(key), fields))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = _join(path, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(path) from None


def load_yaml(source: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Any:
    """The document in a YAML file or YAML text, with ``key.path=value`` overrides applied.

    A path-like, or a str with no line break, is a file path; a str with a line break is the
    YAML text itself. Each override's value is parsed as YAML (``train.epochs=1``;
    ``data.test=`` is the empty string); its key is checked like any other key when the
    document is built (:func:`from_dict`).
    """
    if isinstance(source, os.PathLike) or "\n" not in source:
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = source
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("", f"invalid YAML: {err}") from None
    for item in overrides:
        data = _override(data, item)
    return data


def _override(data: Any, item: str) -> dict[str, Any]:
    """``data`` with one ``a.b.c=value`` override applied (mappings only, not list items)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(item, "an override must look like key.path=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as err:
        raise ConfigError(key, f"invalid YAML value {text!r}: {err}") from None
    root = dict(data or {})
    node = root
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, {})
        if not isinstance(child, Mapping):
            raise ConfigError(".".join(parts[: i + 1]),
                              "is not a section; cannot override inside it")
        node[part] = node = dict(child)
    node[parts[-1]] = value
    return root


_SCALARS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
}


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against field type ``tp`` (and converted: dict -> dataclass, list ->
    tuple, int -> float); ConfigError at ``key`` if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _type_error(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        try:
            return _convert(_optional_of(tp), value, key)
        except ConfigError as err:
            if err.key != key:
                raise
            raise _type_error(tp, value, key) from None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise _type_error(tp, value, key)
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict and args[0] is str:
        if not isinstance(value, Mapping):
            raise _type_error(tp, value, key)
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(_join(key, str(k)), f"keys must be str, got {type(k).__name__}")
        return {k: _convert(args[1], v, _join(key, k)) for k, v in value.items()}
    if tp in _SCALARS:
        if isinstance(value, _SCALARS[tp]) and (tp is bool or not isinstance(value, bool)):
            return float(value) if tp is float else value
        raise _type_error(tp, value, key)
    raise TypeError(f"unsupported config field type {tp!r} at {key!r}")


def _optional_of(tp: Any) -> Any:
    """X for ``Optional[X]``; TypeError for other unions, which the loader does not support."""
    rest = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(rest) != 1:
        raise TypeError(f"unsupported config field type {tp!r}: only Optional[X] unions")
    return rest[0]


def _describe(tp: Any) -> str:
    """Human name of a field type, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return f"{_describe(_optional_of(tp))} or null"
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of str to {_describe(args[1])}"
    return tp.__name__


def _type_error(tp: Any, value: Any, key: str) -> ConfigError:
    reason = f"expected {_describe(tp)}, got {reprlib.repr(value)} ({type(value).__name__})"
    if tp is float and isinstance(value, str) and _is_float_text(value):
        reason += "; YAML reads exponents without a dot as text: write e.g. 1.0e-8, not 1e-8"
    return ConfigError(key, reason)


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unknown_key_reason(key: str, fields: Mapping[str, Any]) -> str:
    reason = f"unknown key (allowed: {', '.join(fields)})"
    close = difflib.get_close_matches(key, list(fields), n=1)
    return reason + (f"; did you mean {close[0]!r}?" if close else "")


def _join(path: str, key: str) -> str:
    """Key path of ``key`` inside ``path``: ``a.b``, or ``a[0]`` when key is an index."""
    if not path or not key:
        return path or key
    return path + key if key.startswith("[") else f"{path}.{key}"


def require_unique_names(entries: Sequence[Any], key: str, label: str) -> None:
    """ConfigError at ``<key>[i].name`` for the first entry whose ``name`` an earlier entry
    already has, naming that one as ``<label>[j]``."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        j = seen.setdefault(entry.name, i)
        if j != i:
            raise ConfigError(f"{key}[{i}].name", f"duplicate {entry.name!r}, already used "
                                                  f"by {label}[{j}]")


def _require(obj: Any, name: str, *, gt: float | None = None, ge: float | None = None,
             lt: float | None = None, le: float | None = None) -> None:
    """ConfigError at field ``name`` of ``obj`` unless its value is within the given bounds.

    A float must also be finite (NaN or inf is refused first): an interval or timeout of
    ``.inf`` overflows the waits that read it, a ``max_abs`` of ``.inf`` lets values past
    float32 through.
    """
    value = getattr(obj, name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    given = [(op, b) for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    if not all(_COMPARE[op](value, b) for op, b in given):
        rule = " and ".join(f"{op} {b}" for op, b in given)
        raise ConfigError(name, f"must be {rule}, got {value!r}")


# Resources Ray sets through their own actor options, which its ``resources`` option refuses.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _require_resources(obj: Any, name: str) -> None:
    """ConfigError at ``name.<resource>`` unless field ``name`` of ``obj`` maps custom Ray
    resource names (not Ray's built-in ones) to finite amounts > 0."""
    for resource, amount in getattr(obj, name).items():
        if resource in _BUILTIN_RESOURCES:
            raise ConfigError(f"{name}.{resource}", "a built-in Ray resource: set it with the "
                              "section's cpus keys, not as a custom resource")
        if not (amount > 0 and math.isfinite(amount)):
            raise ConfigError(f"{name}.{resource}", f"must be > 0 and finite, "
                                                    f"got {amount!r}")
