"""Typed configuration loaded from YAML, with errors that name the offending key.

Each section is a frozen dataclass. :func:`from_dict` builds one from the nested dicts and
lists that ``yaml.safe_load`` returns, and is strict: an unknown key, a value of the wrong
type or a missing required key raises :class:`ConfigError` naming the full key path, e.g.
``slots[2].optimizer.learnin_rate: unknown key (allowed: ...)``.

Value rules (ranges, uniqueness) live in each dataclass's ``__post_init__``, which raises
``ConfigError`` keyed by the field's name *relative to that dataclass*; ``from_dict`` prefixes
the path of the mapping it was building, so a rule never needs to know where its dataclass sits
in the file, and a dataclass built directly in code reports the bare field name. A new section
(model, train, kafka, serve) is one more dataclass and one more field of :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from monolith_ray.features import MAX_SLOT_ID

__all__ = [
    "AdmissionConfig",
    "Combiner",
    "Config",
    "ConfigError",
    "DataConfig",
    "InitializerConfig",
    "InitializerKind",
    "JoinerConfig",
    "KafkaConfig",
    "KafkaTopics",
    "ModelConfig",
    "OptimizerConfig",
    "OnlineConfig",
    "OptimizerKind",
    "SlotConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
]

T = TypeVar("T")

OptimizerKind = Literal["sgd", "adagrad", "ftrl", "adam"]
InitializerKind = Literal["zeros", "uniform", "normal"]
Combiner = Literal["sum", "mean"]

_SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_DIM = 4096
_MAX_OCCURRENCE_THRESHOLD = 255
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


DEFAULT_CONFIG = Path(__file__).parent / "defaults" / "movielens.yaml"


def load_config(source: str | os.PathLike[str] = DEFAULT_CONFIG,
                overrides: Sequence[str] = ()) -> Config:
    """The :class:`Config` in a YAML file or YAML text, with ``key.path=value`` overrides.

    A path-like, or a str with no line break, is a file path; a str with a line break is the
    YAML text itself. The default is the embedded MovieLens-100K config. Each override's
    value is parsed as YAML (``train.epochs=1``; ``data.test=`` is the empty string); its key must exist in the
    file or be a known field, like any other key.
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
    return Config.from_dict(data)


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
            raise ConfigError(".".join(parts[: i + 1]), "is not a section; cannot override inside it")
        node[part] = node = dict(child)
    node[parts[-1]] = value
    return root


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Row-wise optimizer of one slot's embeddings.

    Fields each kind uses: ``sgd``: learning_rate; ``adagrad``: learning_rate,
    initial_accumulator, eps; ``ftrl``: learning_rate (alpha), initial_accumulator, l1, l2,
    beta; ``adam``: learning_rate, beta1, beta2, eps. Fields a kind does not use are allowed
    and ignored (so switching kind is a one-word edit), but are still range-checked.
    """

    kind: OptimizerKind = "adagrad"
    learning_rate: float = 0.05
    initial_accumulator: float = 0.1
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999
    l1: float = 0.0
    l2: float = 0.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        _require(self, "learning_rate", gt=0)
        _require(self, "initial_accumulator", ge=0)
        _require(self, "eps", gt=0)
        _require(self, "beta1", ge=0, lt=1)
        _require(self, "beta2", ge=0, lt=1)
        _require(self, "l1", ge=0)
        _require(self, "l2", ge=0)
        _require(self, "beta", ge=0)


@dataclasses.dataclass(frozen=True)
class InitializerConfig:
    """Initial value of a newly admitted embedding row.

    ``uniform`` draws from U(-scale, scale), ``normal`` from N(0, scale**2) (scale is the
    standard deviation), ``zeros`` ignores scale and seed.
    """

    kind: InitializerKind = "uniform"
    scale: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self, "scale", ge=0)


@dataclasses.dataclass(frozen=True)
class SlotConfig:
    """One feature slot: its embedding table's shape, training and life-cycle settings.

    - ``slot_id``: the slot's number in the high bits of its feature ids (see ``features``).
    - ``occurrence_threshold``: an id is admitted once seen this many times; 0 or 1 admit it
      at first sight.
    - ``admit_probability``: each occurrence of a not-yet-admitted id admits it with this
      probability (1.0 = always).
    - ``expire_s``: rows not updated for this many seconds are evicted; 0 = never.
    - ``combiner``: how a multi-valued slot pools its values' embeddings.
    - ``max_values``: most values per example in this slot (1 = single-valued).
    """

    name: str
    slot_id: int
    dim: int
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    initializer: InitializerConfig = dataclasses.field(default_factory=InitializerConfig)
    occurrence_threshold: int = 0
    admit_probability: float = 1.0
    expire_s: float = 0.0
    combiner: Combiner = "sum"
    max_values: int = 1

    def __post_init__(self) -> None:
        if not _SLOT_NAME.fullmatch(self.name):
            raise ConfigError(
                "name", f"must match {_SLOT_NAME.pattern} (letters, digits, _), got {self.name!r}"
            )
        _require(self, "slot_id", ge=0, le=MAX_SLOT_ID)
        _require(self, "dim", ge=1, le=_MAX_DIM)
        _require(self, "occurrence_threshold", ge=0, le=_MAX_OCCURRENCE_THRESHOLD)
        _require(self, "admit_probability", gt=0, le=1)
        _require(self, "expire_s", ge=0)
        _require(self, "max_values", ge=1)


@dataclasses.dataclass(frozen=True)
class AdmissionConfig:
    """Count-min sketch that counts occurrences of not-yet-admitted ids, shared by all slots.

    ``sketch_width`` counters per row (a power of two, so a row index is a bit mask) times
    ``sketch_depth`` rows; wider means fewer over-counts from colliding ids.
    """

    sketch_width: int = 1 << 20
    sketch_depth: int = 4

    def __post_init__(self) -> None:
        _require(self, "sketch_width", ge=64)
        if self.sketch_width & (self.sketch_width - 1):
            raise ConfigError("sketch_width", f"must be a power of two, got {self.sketch_width}")
        _require(self, "sketch_depth", ge=1, le=8)


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole job's configuration: one section per field."""

    slots: tuple[SlotConfig, ...]
    admission: AdmissionConfig = dataclasses.field(default_factory=AdmissionConfig)
    model: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig())
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig())
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig())
    kafka: KafkaConfig = dataclasses.field(default_factory=lambda: KafkaConfig())
    joiner: JoinerConfig = dataclasses.field(default_factory=lambda: JoinerConfig())
    online: OnlineConfig = dataclasses.field(default_factory=lambda: OnlineConfig())
    serve: ServeConfig = dataclasses.field(default_factory=lambda: ServeConfig())

    def __post_init__(self) -> None:
        if not self.slots:
            raise ConfigError("slots", "must list at least one slot")
        for attr in ("name", "slot_id"):
            first_index: dict[Any, int] = {}
            for i, slot in enumerate(self.slots):
                value = getattr(slot, attr)
                j = first_index.setdefault(value, i)
                if j != i:
                    raise ConfigError(
                        f"slots[{i}].{attr}", f"duplicate {value!r}, already used by slots[{j}]"
                    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """The config in ``data`` (as parsed from YAML); see :func:`from_dict`."""
        return from_dict(cls, data)

    def check_serving(self) -> None:
        """ConfigError unless ``serve.user_slot`` and ``serve.item_slot`` name slots: checked
        when serving starts, as configs that only train may name their slots otherwise."""
        names = [s.name for s in self.slots]
        for attr in ("user_slot", "item_slot"):
            if getattr(self.serve, attr) not in names:
                raise ConfigError(f"serve.{attr}", f"{getattr(self.serve, attr)!r} is not a "
                                                   f"slot; slots: {', '.join(names)}")

    def slot(self, name: str) -> SlotConfig:
        """The slot called ``name``; KeyError listing the slot names if there is none."""
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(f"no slot named {name!r}; slots: {', '.join(s.name for s in self.slots)}")


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


def _require(obj: Any, name: str, *, gt: float | None = None, ge: float | None = None,
             lt: float | None = None, le: float | None = None) -> None:
    """ConfigError at field ``name`` of ``obj`` unless its value is within the given bounds.

    Every bound is a comparison that NaN fails, so NaN is rejected wherever a bound is set.
    """
    value = getattr(obj, name)
    given = [(op, b) for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    if not all(_COMPARE[op](value, b) for op, b in given):
        rule = " and ".join(f"{op} {b}" for op, b in given)
        raise ConfigError(name, f"must be {rule}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The dense part of the model (DeepFM): widths of the MLP's hidden layers. The sparse
    part is the slots; every slot must share one ``dim``, as DeepFM's FM term pairs them."""

    hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        for i, width in enumerate(self.hidden):
            if width < 1:
                raise ConfigError(f"hidden[{i}]", f"must be >= 1, got {width}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a trainer steps.

    - ``batch_size``: examples per step (a shorter last batch is padded with weight-0 rows).
    - ``dense_optimizer``: optimizer of the dense parameters (``sgd``, ``adagrad`` or
      ``adam``; ``ftrl`` is for embedding rows only).
    - ``n_shards``: parameter-server shards the embedding rows are spread over.
    - ``epochs``: passes over a finite (Parquet) source; a stream ignores it.
    - ``seed``: seed of the dense parameters' initialization.
    - ``stats_every``: steps between table-size reports (each costs a call per shard).
    - ``n_trainers``: trainer actors, each fed its own split of the data. With a dense
      parameter server, ``dense_pull_every`` is how many of its own steps a trainer goes
      between parameter pulls (the staleness bound, see ``monolith_ray.ps.dense``).
    - ``trainer_cpus``, ``shard_cpus``, ``read_cpus``: Ray CPUs reserved per trainer, per
      shard (and dense server) actor, and per Ray Data read task; reads need less than a whole
      CPU so that they run beside the actors on a small node. Ray Data also lists files with a
      task of one whole CPU: leave one CPU unreserved, or a read never starts.
    - ``call_timeout_s``: a parameter-server call not answered by then fails the step.
    - ``transport``: how trainers reach the shards each step: ``channel`` (a direct TCP
      connection per trainer and shard, opened through Ray; ``monolith_ray.ps.channel``) or
      ``ray`` (actor calls, a fixed ~1 ms of CPU each on the two ends).
    - ``xla_threads``: threads of a trainer's XLA CPU pool; 0: one per reserved CPU
      (``trainer_cpus``, at least one), as Ray sizes a worker's OpenMP threads.
    - ``actor_resources``: custom Ray resources every shard, dense-server and trainer actor
      needs, e.g. ``{training: 0.01}`` to keep them on the nodes that offer ``training``
      (``cluster.yaml``'s CPU workers), off the serving workers.
    - ``name``: names the job's parameter-server actors (``<name>.shard-K``,
      ``<name>.dense`` in Ray namespace ``monolith_ray``), so ``monolith-ray snapshot``,
      ``restore`` and ``serve --training NAME`` find them from another process; empty: the
      actors are anonymous, reachable only from the job that started them.
    """

    batch_size: int = 2048
    dense_optimizer: OptimizerConfig = dataclasses.field(
        default_factory=lambda: OptimizerConfig(kind="adam", learning_rate=1.0e-3))
    n_shards: int = 2
    epochs: int = 1
    seed: int = 0
    stats_every: int = 100
    n_trainers: int = 1
    dense_pull_every: int = 1
    trainer_cpus: float = 0.25
    shard_cpus: float = 0.1
    read_cpus: float = 0.25
    call_timeout_s: float = 60.0
    transport: Literal["channel", "ray"] = "channel"
    xla_threads: int = 0
    actor_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        _require(self, "n_trainers", ge=1)
        _require(self, "dense_pull_every", ge=1)
        _require(self, "trainer_cpus", ge=0)
        _require(self, "shard_cpus", ge=0)
        _require(self, "read_cpus", gt=0)
        _require(self, "call_timeout_s", gt=0)
        _require(self, "xla_threads", ge=0)
        for name, amount in self.actor_resources.items():
            if not amount > 0:
                raise ConfigError(f"actor_resources.{name}", f"must be > 0, got {amount!r}")
        _require(self, "batch_size", ge=1)
        _require(self, "n_shards", ge=1)
        _require(self, "epochs", ge=1)
        _require(self, "stats_every", ge=1)
        if self.dense_optimizer.kind == "ftrl":
            raise ConfigError("dense_optimizer.kind", "ftrl is for embedding rows only; use "
                              "sgd, adagrad or adam")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a job reads and writes: Parquet splits of examples (local paths or any
    ``pyarrow.fs`` URI, e.g. ``s3://bucket/prefix/train.parquet``), the output folder for
    metrics and the snapshots. An empty ``valid`` or ``test`` skips that evaluation.

    - ``snapshot_root``: where snapshots go (``monolith_ray.train.snapshots``), a local folder
      or any ``pyarrow.fs`` URI; empty = ``<output_dir>/snapshots``. On a cluster of several
      nodes it must be storage every node reaches (an object store, a shared mount): each
      shard actor writes its own tables there. Its filesystem is resolved when a job starts.
    - ``snapshot_keep``: complete snapshots kept; older ones are deleted after each new one.
    """

    train: str = "data/ml-100k/parquet/train.parquet"
    valid: str = "data/ml-100k/parquet/valid.parquet"
    test: str = "data/ml-100k/parquet/test.parquet"
    output_dir: str = "runs/train"
    snapshot_root: str = ""
    snapshot_keep: int = 3

    def __post_init__(self) -> None:
        for name in ("train", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")
        _require(self, "snapshot_keep", ge=1)


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_BROKER_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
_MAX_PARTITIONS = 10_000


@dataclasses.dataclass(frozen=True)
class KafkaTopics:
    """The names of the topics the loop uses; all distinct, each a legal Kafka topic name.

    - ``features``: request features logged by serving.
    - ``actions``: user actions (clicks, ...) logged by serving's feedback endpoint.
    - ``examples``: joined training examples written by the online joiner.
    - ``dead_letter``: messages that failed validation, with the reason.
    """

    features: str = "features"
    actions: str = "actions"
    examples: str = "examples"
    dead_letter: str = "dead_letter"

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for field in dataclasses.fields(self):
            name = getattr(self, field.name)
            if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
                raise ConfigError(
                    field.name, f"must be 1-249 of [A-Za-z0-9._-] (not . or ..), got {name!r}"
                )
            if name in seen:
                raise ConfigError(field.name, f"topic {name!r} is also {seen[name]}'s")
            seen[name] = field.name

    def names(self) -> list[str]:
        """Every topic name, in field order."""
        return [getattr(self, field.name) for field in dataclasses.fields(self)]


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    """How to reach Kafka and what the topics are called.

    - ``bootstrap_servers``: comma-separated ``host:port`` list; empty = start the embedded
      broker (:func:`kafka_session`).
    - ``security_protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    - ``sasl_mechanism``: required with a SASL protocol, refused without one; PLAIN and SCRAM
      need ``sasl_plain_username`` and ``sasl_plain_password`` (kafka-python's names for both).
    - ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``: PEM files, only with an SSL protocol;
      a key file needs its certificate file. Paths are not checked here: the config may be
      built on a machine other than the one that connects.
    - ``partitions``: partition count of topics this project creates.
    - ``client_id``: sent to the brokers with every request (shows in their logs and quotas).
    """

    bootstrap_servers: str = ""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = dataclasses.field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topics: KafkaTopics = dataclasses.field(default_factory=KafkaTopics)
    partitions: int = 2
    client_id: str = "monolith_ray"

    def __post_init__(self) -> None:
        for address in filter(None, (a.strip() for a in self.bootstrap_servers.split(","))):
            match = _BROKER_ADDRESS.fullmatch(address)
            if match is None or not 1 <= int(match[2]) <= 65535:
                raise ConfigError(
                    "bootstrap_servers", f"each entry must be host:port, got {address!r}"
                )
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigError(
                "security_protocol",
                f"must be one of {', '.join(_PROTOCOLS)}, got {self.security_protocol!r}",
            )
        self._check_sasl()
        self._check_ssl()
        if not 1 <= self.partitions <= _MAX_PARTITIONS:
            raise ConfigError(
                "partitions", f"must be >= 1 and <= {_MAX_PARTITIONS}, got {self.partitions!r}"
            )
        if not self.client_id:
            raise ConfigError("client_id", "must not be empty")

    def _check_sasl(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        if not sasl:
            for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, f"set, but security_protocol is "
                                            f"{self.security_protocol} (needs SASL_PLAINTEXT "
                                            f"or SASL_SSL)")
            return
        if self.sasl_mechanism not in _SASL_MECHANISMS:
            raise ConfigError("sasl_mechanism", f"must be one of {', '.join(_SASL_MECHANISMS)} "
                                                f"with {self.security_protocol}, "
                                                f"got {self.sasl_mechanism!r}")
        if self.sasl_mechanism in _PASSWORD_MECHANISMS:
            for name in ("sasl_plain_username", "sasl_plain_password"):
                if not getattr(self, name):
                    raise ConfigError(name, f"required with sasl_mechanism {self.sasl_mechanism}")

    def _check_ssl(self) -> None:
        ssl = self.security_protocol in ("SSL", "SASL_SSL")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None and not ssl:
                raise ConfigError(name, f"set, but security_protocol is {self.security_protocol} "
                                        f"(needs SSL or SASL_SSL)")
            if value == "":
                raise ConfigError(name, "must not be empty (leave it unset instead)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError("ssl_keyfile", "set without ssl_certfile")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any kafka-python client (producer, consumer, admin):
        brokers, client id and the security settings that are set (None ones are left out,
        so kafka-python's defaults apply)."""
        if not self.bootstrap_servers:
            raise ConfigError("bootstrap_servers", "empty: start the embedded broker with "
                                                   "kafka_session() and use the address it yields")
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                     "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


JoinerStart = Literal["earliest", "latest"]


@dataclasses.dataclass(frozen=True)
class JoinerConfig:
    """The online joiner (``monolith_ray.stream.joiner``): features + actions -> examples.

    Spans marked *event time* are seconds of the messages' own clock, so a replay at any speed
    joins the same way; the others are wall-clock schedules.

    - ``window_s`` (event time): how long after its impression a positive action still counts;
      an impression with none by then is a negative example.
    - ``allowed_lateness_s`` (event time): how far behind the newest event time a message may
      arrive and still be joined; the watermark is the event-time clock minus this.
    - ``spill_after_s`` (event time): features waiting longer than this move from memory to
      the on-disk store (and are still joined from there).
    - ``max_in_memory``: most waiting features kept in memory; beyond it the oldest move to
      the on-disk store whatever their age (a backlog may be read ahead on one topic).
    - ``idle_partition_s`` (wall clock): a partition read to its end with no record for this
      long stops holding back the event-time clock (until its next record).
    - ``negative_rate``: probability of keeping a negative example (by a stable hash of its
      request id); kept negatives carry weight ``1 / negative_rate``.
    - ``n_joiners``: joiner actors; joiner k reads the partitions p with p % n_joiners == k.
    - ``group_id``: Kafka consumer group the joiners commit their offsets to.
    - ``commit_interval_s`` (wall clock): time between offset commits; 0 = after every poll.
      It bounds the examples a restarted joiner emits twice.
    - ``start``: where a partition with no committed offset is read from.
    - ``max_poll_records``: most records handled per poll.
    - ``spill_dir``: folder of the on-disk store; empty = a fresh temp folder.
    - ``cpus``: Ray CPUs reserved per joiner actor.
    """

    window_s: int = 600
    allowed_lateness_s: int = 30
    spill_after_s: int = 120
    max_in_memory: int = 200_000
    idle_partition_s: float = 5.0
    negative_rate: float = 1.0
    n_joiners: int = 1
    group_id: str = "monolith_ray-joiner"
    commit_interval_s: float = 5.0
    start: JoinerStart = "earliest"
    max_poll_records: int = 5000
    spill_dir: str = ""
    cpus: float = 0.25

    def __post_init__(self) -> None:
        _require(self, "window_s", ge=0)
        _require(self, "allowed_lateness_s", ge=0)
        _require(self, "spill_after_s", ge=0)
        _require(self, "max_in_memory", ge=0)
        _require(self, "idle_partition_s", ge=0)
        _require(self, "negative_rate", gt=0, le=1)
        _require(self, "n_joiners", ge=1)
        _require(self, "commit_interval_s", ge=0)
        _require(self, "max_poll_records", ge=1)
        _require(self, "cpus", ge=0)
        if not self.group_id:
            raise ConfigError("group_id", "must not be empty")


_ONLINE_START = re.compile(r"earliest|(dump|snapshot):.+")


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Online training from the ``examples`` topic (``monolith_ray.train.online``) and the
    Ray Data source that reads it (``monolith_ray.data.kafka_source``).

    - ``start``: where training starts: ``earliest`` (each partition's first offset),
      ``dump:<path>`` (train on a Parquet dump of the topic first, then continue on Kafka from
      the offsets it ends at) or ``snapshot:<path>`` (restore parameters and offsets from
      the newest complete snapshot under a snapshot root, or from one snapshot folder).
    - ``stop``: ``never`` runs until stopped; ``end`` stops at the partitions' ends as of the
      start (a bounded replay).
    - ``idle_timeout_s`` (wall clock): also stop once no record has arrived for this long;
      0 = never.
    - ``snapshot_every_s`` (wall clock): time between snapshots of parameters and offsets
      (to ``data.snapshot_root``); daily by default, which the Monolith paper found enough.
    - ``commit_every_steps``: a trainer waits for its pushes and marks the offsets they trained
      as committed every this many steps; a restore retrains at most this many steps per
      trainer.
    - ``read_tasks``: Ray Data read tasks, each reading its share of the partitions; every
      one runs for the whole stream, so all must fit in the cluster at once.
    - ``poll_records``, ``poll_timeout_ms``: most records per poll (one micro-batch) and how
      long a poll waits for them.
    - ``block_bytes``: Ray Data block size of the stream; a block leaves its read task once
      this many bytes are read (or the read ends), so it bounds latency at low rates.
    - ``buffer_bytes``: object-store bytes the stream may hold ahead of the trainers; beyond
      it the read tasks pause (backpressure).
    """

    start: str = "earliest"
    stop: Literal["never", "end"] = "never"
    idle_timeout_s: float = 0.0
    snapshot_every_s: float = 86400.0
    commit_every_steps: int = 20
    read_tasks: int = 1
    poll_records: int = 2000
    poll_timeout_ms: int = 200
    block_bytes: int = 256 * 1024
    buffer_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not _ONLINE_START.fullmatch(self.start):
            raise ConfigError("start", f"must be earliest, dump:<path> or snapshot:<path>, "
                                       f"got {self.start!r}")
        _require(self, "idle_timeout_s", ge=0)
        _require(self, "snapshot_every_s", gt=0)
        _require(self, "commit_every_steps", ge=1)
        _require(self, "read_tasks", ge=1)
        _require(self, "poll_records", ge=1)
        _require(self, "poll_timeout_ms", ge=1)
        _require(self, "block_bytes", ge=1024)
        _require(self, "buffer_bytes", ge=1024)


@dataclasses.dataclass(frozen=True)
class AutoscalingConfig:
    """Ray Serve ``autoscaling_config`` of the recommender deployment: replicas between
    ``min_replicas`` and ``max_replicas``, aiming at ``target_ongoing_requests`` requests in
    flight per replica."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0

    def __post_init__(self) -> None:
        _require(self, "min_replicas", ge=1)
        _require(self, "target_ongoing_requests", gt=0)
        if self.max_replicas < self.min_replicas:
            raise ConfigError("max_replicas", f"must be >= min_replicas {self.min_replicas}, "
                                              f"got {self.max_replicas}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """HTTP serving (``monolith_ray.serve``) and its parameter sync.

    - ``host``, ``port``: where Ray Serve's HTTP proxy listens.
    - ``sparse_sync_interval_s``, ``dense_sync_interval_s``: how often the sync actor moves
      changed embedding rows (default every minute) and the dense weights (default daily)
      from training to serving.
    - ``poll_interval_s``: how often a replica asks the sync actor for newer versions; a
      training update is served at most ``sparse_sync_interval_s + poll_interval_s`` later.
    - ``store_dtype``: serving rows as ``float16`` (half the memory) or ``float32``.
    - ``user_slot``, ``item_slot``: the slots that hold a request's user id and item id.
    - ``candidate_pool``: JSON-lines file of items (``{"item_id": .., "slots": {..}}`` per
      line) that ``/recommend`` draws ``pool_draw`` candidates from when a request names none;
      empty = requests must bring their candidates.
    - ``max_candidates``: most candidates (or pairs) one request may score; ``max_k`` most
      items returned; ``max_body_bytes`` largest request body (413 beyond).
    - ``log_features``: write every served impression to the ``features`` topic (the closed
      loop); needs ``kafka.bootstrap_servers``.
    - ``replica_cpus``, ``max_ongoing_requests``, ``autoscaling``: Ray Serve settings of a
      replica; ``replica_resources``: custom Ray resources a replica needs, e.g.
      ``{serving: 1}`` to place replicas only on nodes that offer ``serving``
      (``cluster.yaml``'s serving workers).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    sparse_sync_interval_s: float = 60.0
    dense_sync_interval_s: float = 86400.0
    poll_interval_s: float = 1.0
    store_dtype: Literal["float16", "float32"] = "float16"
    user_slot: str = "user_id"
    item_slot: str = "item_id"
    candidate_pool: str = ""
    pool_draw: int = 100
    max_candidates: int = 1000
    max_k: int = 100
    max_body_bytes: int = 1 << 20
    log_features: bool = True
    replica_cpus: float = 0.25
    max_ongoing_requests: int = 64
    replica_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    autoscaling: AutoscalingConfig = dataclasses.field(default_factory=AutoscalingConfig)

    def __post_init__(self) -> None:
        _require(self, "port", ge=0, le=65535)
        _require(self, "sparse_sync_interval_s", gt=0)
        _require(self, "dense_sync_interval_s", gt=0)
        _require(self, "poll_interval_s", gt=0)
        _require(self, "pool_draw", ge=1)
        _require(self, "max_candidates", ge=1)
        _require(self, "max_k", ge=1)
        _require(self, "max_body_bytes", ge=1024)
        _require(self, "replica_cpus", ge=0)
        _require(self, "max_ongoing_requests", ge=1)
        for name, amount in self.replica_resources.items():
            if not amount > 0:
                raise ConfigError(f"replica_resources.{name}", f"must be > 0, got {amount!r}")
