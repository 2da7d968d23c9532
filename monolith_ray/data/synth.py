"""A production-shaped synthetic stream: Criteo-like impressions whose labels come from a hidden
ground-truth model, so the best AUC a trained model can reach is known.

Example ``i`` (an int64 index; event time ``start_time + floor(i / rate_per_s)``) is a pure
function of the :class:`SynthSpec` and ``i``: every draw is a stable hash of (seed, what is
drawn, i) (:func:`monolith_ray.features.mix64`), so a range of indexes gives the same rows
whatever the chunking, and a held-out set is just a later index range. Per example:

- one id per categorical slot (``C1..C26`` by default): a Zipf draw of a popularity rank
  ``r`` in ``[0, cardinality)``, mapped to a raw id by a per-slot bijection of
  ``[0, 2**62)``; in slots of at least ``new_id_min_cardinality`` ids, a ``new_id_fraction``
  of the draws are instead *fresh* ids, born ``new_ids_per_bucket`` a minute of event time
  (each is drawn about ``new_id_repeats`` times, mostly in its first minutes), so never-seen
  ids keep arriving over event time;
- ``n_dense`` non-negative heavy-tailed counts (``I1..I13``): ``floor(expm1(mu + sigma *
  N(0, 1)))`` clipped at 0, with ``(mu, sigma)`` per feature, each missing (null) at
  ``dense_missing_rate``;
- a label ``Bernoulli(sigmoid(logit))`` with the hidden model

      logit = bias + sum_slots id_effect * h(r) * w(slot, id, t)
                   + interaction * sum_{a < b in interaction_slots} <v_a(id_a, t), v_b(id_b, t)>
                   + dense_effect * (sum_j a_j tanh(z_j) / sqrt(n_dense) + tanh(z_0) tanh(z_1))

  where ``w`` and the entries of ``v`` (``interaction_rank`` of them), uniform with mean 0
  and variance 1, are hashed from (seed, slot, id), so nothing of a slot's cardinality is
  stored; ``h(r) = effect_head / (effect_head + r)`` lets rarely seen catalogue ids matter
  less, as no model learns them in one pass (fresh ids have ``h = 1``: learning them quickly
  is what real-time training is for); each term is taken less its mean over the slot's
  popular ids, so the positive rate (about 21%) hardly moves with the seed. ``z_j`` is
  ``log1p(x_j)`` standardised with the feature's own ``(mu, sigma)``, a missing value
  counted as its default 0. With ``drift`` > 0 each ``w`` and ``v`` turns from one hashed
  draw to another, ``cos(drift t) w1 + sin(drift t) w2`` with ``t`` in event hours since
  ``start_time``: what each id means changes slowly and recurs.

The hidden model reads only an example's columns (:func:`probability`), so
:func:`auc_ceiling` of any table of this stream is the AUC of the true probabilities on its
drawn labels: the ceiling a trained model can approach.

Outputs: :func:`examples` (an Arrow table of the example schema), :func:`write_parquet`
(hour-partitioned like ``monolith_ray.data.dump``), :func:`messages` (Kafka message bytes,
without Kafka) and :func:`produce` (to Kafka); :func:`config` gives the ``slots`` and
``dense`` config sections of the stream (``defaults/synth.yaml`` is a whole config with them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monolith_ray.config import KafkaConfig
from monolith_ray.features import mix64
from monolith_ray.files import filesystem_and_path
from monolith_ray.model.metrics import StreamingAUC, auc
from monolith_ray.schemas import LABEL, TIME, WEIGHT, example_schema
from monolith_ray.stream.kafka import DeliveryReports, ensure_topics

__all__ = ["Mode", "SynthSpec", "auc_ceiling", "config", "examples", "messages",
           "probability", "produce", "write_parquet"]

Mode = Literal["examples", "joiner"]
FEATURES, ACTIONS, EXAMPLES = "features", "actions", "examples"

_MASK62 = np.uint64((1 << 62) - 1)
_FRESH_KEY = 1 << 40          # keys of fresh ids; catalogue ranks are below
_BUCKET_S = 60                # fresh ids are born per minute of event time
_MEAN_AGE_BUCKETS = 5.0       # mean age, in minutes, of a fresh id when drawn
_MAX_CARDINALITY = 1 << 40
_CHUNK = 65_536               # rows generated at once
# What a hash draws (with the slot or feature number, it names a stream of draws).
_RANK, _IS_FRESH, _AGE, _FRESH_INDEX, _EFFECT, _EFFECT2, _VECTOR, _VECTOR2, _DENSE, \
    _MISSING, _LABEL, _DELAY, _PERMUTE = range(13)


def _criteo_cardinalities() -> tuple[int, ...]:
    """26 slot cardinalities log-spaced from 30M (C1) down to 10 (C26)."""
    return tuple(int(round(c)) for c in np.geomspace(30_000_000, 10, 26))


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """A synthetic stream, all of it a function of these fields (defaults: Criteo-shaped).

    - ``seed``: every draw and every hidden parameter.
    - ``cardinalities``: catalogue ids per categorical slot, one per slot ``C1, C2, ...``;
      ``C1`` is the user of a message and ``C2`` its item.
    - ``zipf_exponent``: popularity of rank ``r`` ∝ ``(r + 1) ** -zipf_exponent`` (> 1).
    - ``n_dense``: dense features ``I1, I2, ...``; ``dense_missing_rate``: share of nulls.
    - ``start_time``, ``rate_per_s``: event time of example 0 (unix s) and examples per
      event second.
    - ``new_id_fraction``, ``new_id_min_cardinality``, ``new_id_repeats``: share of fresh
      ids among the draws of each slot of at least that many ids, and their mean draws each.
    - ``drift``: radians an event hour the hidden per-id parameters turn; 0 = none.
    - ``click_delay_s``: a click comes 1 .. this many event seconds after its impression (keep
      it within the joiner's ``window_s``).
    - ``bias``, ``id_effect``, ``effect_head``, ``interaction``, ``interaction_slots`` (0-based
      slot numbers), ``interaction_rank``, ``dense_effect``: the hidden model (module doc).
    """

    seed: int = 0
    cardinalities: tuple[int, ...] = dataclasses.field(default_factory=_criteo_cardinalities)
    zipf_exponent: float = 1.1
    n_dense: int = 13
    dense_missing_rate: float = 0.05
    start_time: int = 1_700_000_000
    rate_per_s: float = 5_000.0
    new_id_fraction: float = 0.01
    new_id_min_cardinality: int = 100_000
    new_id_repeats: float = 20.0
    drift: float = 0.0
    click_delay_s: int = 60
    bias: float = -1.85
    id_effect: float = 0.3
    effect_head: int = 300
    interaction: float = 0.35
    interaction_slots: tuple[int, ...] = (0, 1, 11, 15)
    interaction_rank: int = 4
    dense_effect: float = 1.0

    def __post_init__(self) -> None:
        if len(self.cardinalities) < 2 or not all(
                1 <= c <= _MAX_CARDINALITY for c in self.cardinalities):
            raise ValueError(f"cardinalities: two or more slots (user, item), 1 .. 2**40 ids "
                             f"each, got {self.cardinalities}")
        if not self.zipf_exponent > 1:
            raise ValueError(f"zipf_exponent must be > 1, got {self.zipf_exponent}")
        if not 0 <= self.dense_missing_rate <= 1 or not 0 <= self.new_id_fraction <= 1:
            raise ValueError("dense_missing_rate and new_id_fraction must be in [0, 1]")
        if self.n_dense < 0 or self.rate_per_s <= 0 or self.new_id_repeats <= 0:
            raise ValueError("n_dense must be >= 0, rate_per_s and new_id_repeats > 0")
        if self.click_delay_s < 1 or self.effect_head < 1 or self.interaction_rank < 1:
            raise ValueError("click_delay_s, effect_head and interaction_rank must be >= 1")
        if not all(0 <= s < len(self.cardinalities) for s in self.interaction_slots):
            raise ValueError(f"interaction_slots must be slot numbers < "
                             f"{len(self.cardinalities)}, got {self.interaction_slots}")

    @property
    def slot_names(self) -> list[str]:
        """``C1, C2, ...``: the categorical columns."""
        return [f"C{k + 1}" for k in range(len(self.cardinalities))]

    @property
    def dense_names(self) -> list[str]:
        """``I1, I2, ...``: the dense columns."""
        return [f"I{j + 1}" for j in range(self.n_dense)]

    @property
    def schema(self) -> pa.Schema:
        """The example schema of this stream's tables."""
        return example_schema([(name, False) for name in self.slot_names], self.dense_names)

    @property
    def new_ids_per_bucket(self) -> int:
        """Fresh ids born per slot and minute of event time."""
        return max(1, round(self.new_id_fraction * self.rate_per_s * _BUCKET_S
                            / self.new_id_repeats))


# ---------------------------------------------------------------------------------------------
# Hashed draws


def _stream(spec: SynthSpec, what: int, number: int = 0) -> int:
    """The hash seed of one stream of draws: ``what`` (a module constant) of slot or feature
    ``number``."""
    key = np.array([(spec.seed * 1_000_003 + number) * 64 + what], dtype=np.int64)
    return int(mix64(key, 0x5EED)[0] & _MASK62)


def _uniform(keys: np.ndarray, stream: int) -> np.ndarray:
    """A uniform draw in [0, 1) for each key (n,) -> float64 (n,)."""
    return (mix64(keys, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _centred(keys: np.ndarray, stream: int) -> np.ndarray:
    """A uniform draw with mean 0 and variance 1 for each key (n,) -> float64 (n,)."""
    return (_uniform(keys, stream) * 2.0 - 1.0) * math.sqrt(3.0)


def _normal(keys: np.ndarray, stream: int) -> np.ndarray:
    """A standard normal draw for each key (n,) -> float64 (n,) (Box-Muller on one hash)."""
    h = mix64(keys, stream)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * (1.0 / (1 << 32))
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * (1.0 / (1 << 32))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _permutation(spec: SynthSpec, slot: int) -> tuple[np.uint64, np.uint64, np.uint64]:
    """Slot ``slot``'s bijection of [0, 2**62): id = (key * mul + add) mod 2**62 -> (mul, add,
    the inverse of mul)."""
    mul = _stream(spec, _PERMUTE, 2 * slot) | 1
    add = _stream(spec, _PERMUTE, 2 * slot + 1)
    return np.uint64(mul), np.uint64(add), np.uint64(pow(mul, -1, 1 << 62))


def _ids(spec: SynthSpec, slot: int, keys: np.ndarray) -> np.ndarray:
    """Raw ids of keys (ranks or fresh keys) uint64 (n,) -> int64 (n,), all in [0, 2**62)."""
    mul, add, _ = _permutation(spec, slot)
    return ((keys * mul + add) & _MASK62).astype(np.int64)


def _keys(spec: SynthSpec, slot: int, ids: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_ids`: raw ids (n,) -> uint64 keys (n,)."""
    _, add, inverse = _permutation(spec, slot)
    return ((np.asarray(ids).astype(np.uint64) - add) & _MASK62) * inverse & _MASK62


def _dense_params(spec: SynthSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per dense feature: log-scale mean and spread of its counts and its hidden weight, each
    float64 (n_dense,)."""
    rng = np.random.default_rng([spec.seed, 0xDE45E])
    mu = rng.uniform(0.0, 4.0, spec.n_dense)
    sigma = rng.uniform(0.8, 2.0, spec.n_dense)
    weight = rng.normal(0.0, 1.0, spec.n_dense)
    return mu, sigma, weight


# ---------------------------------------------------------------------------------------------
# Examples


def examples(spec: SynthSpec, start: int, n: int) -> pa.Table:
    """Examples ``start .. start + n - 1`` of the stream -> a table of ``spec.schema`` (in
    event-time order; weight 1), the same rows however a range is cut into calls."""
    tables = [table for table, _ in _chunks(spec, start, n)]
    return pa.concat_tables(tables) if tables else spec.schema.empty_table()


def _chunks(spec: SynthSpec, start: int, n: int, size: int = _CHUNK
            ) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Examples ``start .. start + n - 1``, ``size`` at a time -> (table, the hidden model's
    probabilities float64 (rows,)) each."""
    for first in range(start, start + n, size):
        yield _chunk(spec, first, min(size, start + n - first))


def _event_times(spec: SynthSpec, index: np.ndarray) -> np.ndarray:
    """Event times (unix s) of examples (n,) -> int64 (n,)."""
    return spec.start_time + np.floor(index / spec.rate_per_s).astype(np.int64)


def _chunk(spec: SynthSpec, start: int, n: int) -> tuple[pa.Table, np.ndarray]:
    """Examples ``start .. start + n - 1`` -> (table, the hidden model's probabilities)."""
    index = np.arange(start, start + n, dtype=np.int64)
    times = _event_times(spec, index)
    columns: dict[str, Any] = {TIME: times}
    for slot, name in enumerate(spec.slot_names):
        columns[name] = _draw_ids(spec, slot, index, times)
    mu, sigma, _ = _dense_params(spec)
    for j, name in enumerate(spec.dense_names):
        counts = np.floor(np.expm1(mu[j] + sigma[j] * _normal(index, _stream(spec, _DENSE, j))))
        missing = _uniform(index, _stream(spec, _MISSING, j)) < spec.dense_missing_rate
        columns[name] = pa.array(np.clip(counts, 0.0, 1e9).astype(np.float32), mask=missing)
    p = probability(spec, columns)
    label = (_uniform(index, _stream(spec, _LABEL)) < p).astype(np.float32)
    columns[LABEL], columns[WEIGHT] = label, np.ones(n, dtype=np.float32)
    return pa.table({f.name: columns[f.name] for f in spec.schema}, schema=spec.schema), p


def _draw_ids(spec: SynthSpec, slot: int, index: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Slot ``slot``'s raw id of each example (n,) -> int64 (n,)."""
    n_ids, a = spec.cardinalities[slot], spec.zipf_exponent
    # A continuous power law on [1, n_ids + 1), inverted, floored: Zipf-like ranks.
    u = _uniform(index, _stream(spec, _RANK, slot))
    top = (n_ids + 1.0) ** (1.0 - a)
    keys = np.minimum(np.floor((1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - a))) - 1.0, n_ids - 1)
    keys = keys.astype(np.uint64)
    if n_ids >= spec.new_id_min_cardinality and spec.new_id_fraction > 0:
        fresh = _uniform(index, _stream(spec, _IS_FRESH, slot)) < spec.new_id_fraction
        at = index[fresh]
        age = np.floor(-_MEAN_AGE_BUCKETS * np.log1p(-_uniform(at, _stream(spec, _AGE, slot))))
        born = times[fresh] // _BUCKET_S - age.astype(np.int64)
        per_bucket = spec.new_ids_per_bucket
        which = np.floor(_uniform(at, _stream(spec, _FRESH_INDEX, slot)) * per_bucket)
        keys[fresh] = (_FRESH_KEY + born * per_bucket + which.astype(np.int64)).astype(np.uint64)
    return _ids(spec, slot, keys)


# ---------------------------------------------------------------------------------------------
# The hidden model


def probability(spec: SynthSpec, columns: pa.Table | dict[str, Any]) -> np.ndarray:
    """The hidden model's click probability of each example -> float64 (n,), from its
    columns (``time``, the slots and dense features of ``spec``; a table or name -> array)."""
    def column(name: str, fill: float = 0.0) -> np.ndarray:
        value = columns[name]
        if isinstance(value, (pa.Array, pa.ChunkedArray)):
            return value.fill_null(fill).to_numpy() if value.null_count else value.to_numpy()
        return np.asarray(value)

    hours = (column(TIME) - spec.start_time) / 3600.0
    turn = (np.cos(spec.drift * hours), np.sin(spec.drift * hours)) if spec.drift else None
    logit = np.full(len(hours), spec.bias)
    pair_sum = pair_squares = 0.0
    for slot, name in enumerate(spec.slot_names):
        ids = column(name).astype(np.int64)
        keys = _keys(spec, slot, ids)
        shrink = np.where(keys >= np.uint64(_FRESH_KEY), 1.0,
                          spec.effect_head / (spec.effect_head + keys.astype(np.float64)))

        def centred(what: int) -> np.ndarray:
            return _hidden(spec, slot, what, ids, shrink) - _popular_mean(spec, slot, what)

        logit += spec.id_effect * _turned(turn, centred, _EFFECT, _EFFECT2)
        if slot in spec.interaction_slots:
            v = _turned(turn, centred, _VECTOR, _VECTOR2)
            pair_sum = pair_sum + v
            pair_squares = pair_squares + np.einsum("nd,nd->n", v, v)
    if len(spec.interaction_slots) > 1:
        pairs = 0.5 * (np.einsum("nd,nd->n", pair_sum, pair_sum) - pair_squares)
        logit += spec.interaction / math.sqrt(spec.interaction_rank) * pairs
    if spec.n_dense:
        mu, sigma, weight = _dense_params(spec)
        z = np.tanh(np.stack([(np.log1p(column(name)) - mu[j]) / sigma[j]
                              for j, name in enumerate(spec.dense_names)], axis=1))
        nonlinear = z @ weight / math.sqrt(spec.n_dense)
        if spec.n_dense > 1:
            nonlinear = nonlinear + z[:, 0] * z[:, 1]
        logit += spec.dense_effect * nonlinear
    return 1.0 / (1.0 + np.exp(-logit))


def _turned(turn: tuple[np.ndarray, np.ndarray] | None, draw: Any, first: int,
            second: int) -> np.ndarray:
    """``draw(first)``, or with drift (``turn`` = cos, sin of each example's angle) that
    turned towards ``draw(second)``."""
    if turn is None:
        return draw(first)
    cos, sin = turn
    a, b = draw(first), draw(second)
    shape = (-1,) + (1,) * (a.ndim - 1)
    return cos.reshape(shape) * a + sin.reshape(shape) * b


def _hidden(spec: SynthSpec, slot: int, what: int, ids: np.ndarray,
            shrink: np.ndarray) -> np.ndarray:
    """Hidden parameter ``what`` (``_EFFECT*``: (n,), ``_VECTOR*``: (n, interaction_rank))
    of slot ``slot``'s ids (n,), times their ``shrink`` (n,)."""
    if what in (_EFFECT, _EFFECT2):
        return shrink * _centred(ids, _stream(spec, what, slot))
    return shrink[:, None] * _vectors(spec, ids, what, slot)


@functools.lru_cache(maxsize=1024)
def _popular_mean(spec: SynthSpec, slot: int, what: int) -> np.ndarray:
    """The mean of :func:`_hidden` over the slot's draws (its 65,536 most popular ids; the
    rest weigh little): subtracted, so the few most popular ids of a slot do not move the
    positive rate with the seed."""
    n_ids, a = spec.cardinalities[slot], spec.zipf_exponent
    ranks = np.arange(min(n_ids, 1 << 16), dtype=np.float64)
    cdf = (ranks + 1.0) ** (1.0 - a) - (ranks + 2.0) ** (1.0 - a)  # P(rank) times a constant
    ids = _ids(spec, slot, ranks.astype(np.uint64))
    values = _hidden(spec, slot, what, ids, spec.effect_head / (spec.effect_head + ranks))
    return np.tensordot(cdf / cdf.sum(), values, axes=1)


def _vectors(spec: SynthSpec, ids: np.ndarray, what: int, slot: int) -> np.ndarray:
    """Hidden interaction vectors of ids (n,) -> float64 (n, interaction_rank), each entry
    uniform with unit variance (four 16-bit draws a hash)."""
    rank = spec.interaction_rank
    hashes = [mix64(ids, _stream(spec, what, 64 * slot + k)) for k in range((rank + 3) // 4)]
    parts = np.stack([(h >> np.uint64(16 * q)) & np.uint64(0xFFFF) for h in hashes
                      for q in range(4)], axis=1)[:, :rank]
    return (parts.astype(np.float64) * (2.0 / 0xFFFF) - 1.0) * math.sqrt(3.0)


def auc_ceiling(spec: SynthSpec, table: pa.Table) -> float:
    """AUC of the hidden model's probabilities on the drawn labels of ``table`` (rows of this
    stream): what a model trained on the stream can approach but not beat (on average)."""
    return auc(probability(spec, table), table.column(LABEL).to_numpy())


# ---------------------------------------------------------------------------------------------
# Outputs


def write_parquet(spec: SynthSpec, path: str, n: int, start: int = 0,
                  rows_per_write: int = 262_144) -> dict[str, Any]:
    """Write examples ``start .. start + n - 1`` under ``path`` (a local folder or any
    ``pyarrow.fs`` URI) as hive-style ``dt=YYYY-MM-DD/hour=HH/part-*.parquet`` (UTC event
    time, as a dump of the ``examples`` topic), ``rows_per_write`` rows a file at most ->
    ``{"examples", "positives", "auc_ceiling", "files"}``. ``path`` must not exist or be
    empty, as for a dump."""
    fs, root = filesystem_and_path(path)
    if fs.get_file_info(root).type != pafs.FileType.NotFound and fs.get_file_info(
            pafs.FileSelector(root, recursive=False)):
        raise FileExistsError(f"synthetic examples folder {path} is not empty")
    truth = _Truth()
    files = 0
    for k, (table, p) in enumerate(_chunks(spec, start, n, rows_per_write)):
        hours = table.column(TIME).to_numpy() // 3600
        cuts = [0, *np.flatnonzero(np.diff(hours)) + 1, len(hours)]  # rows are in time order
        for lo, hi in zip(cuts, cuts[1:]):
            stamp = time.gmtime(int(hours[lo]) * 3600)
            folder = f"{root}/dt={time.strftime('%Y-%m-%d', stamp)}/hour={stamp.tm_hour:02d}"
            fs.create_dir(folder, recursive=True)
            pq.write_table(table.slice(lo, hi - lo), f"{folder}/part-{k:05d}.parquet",
                           filesystem=fs)
            files += 1
        truth.add(table, p)
    return {"examples": n, **truth.summary(), "files": files}


class _Truth:
    """Positives and the hidden model's AUC over the tables of a run, in constant memory."""

    def __init__(self) -> None:
        self.positives = 0
        self.auc = StreamingAUC(n_bins=100_000)

    def add(self, table: pa.Table, p: np.ndarray) -> None:
        label = table.column(LABEL).to_numpy()
        self.positives += int(label.sum())
        self.auc.update(p, label)

    def summary(self) -> dict[str, Any]:
        return {"positives": self.positives, "auc_ceiling": self.auc.result()}


def messages(spec: SynthSpec, start: int, n: int, mode: Mode = "examples",
             batch: int = 32_768) -> Iterator[list[tuple[str, bytes, bytes]]]:
    """Kafka messages of examples ``start .. start + n - 1``, about ``batch`` impressions a
    list, each message ``(topic, key, value)``: ``topic`` is a ``KafkaTopics`` field name,
    ``key`` the request id (``synth-SEED-INDEX``), ``value`` JSON bytes
    (``monolith_ray.messages``).

    ``mode="examples"``: one ``examples`` message an impression (its features, label and
    weight). ``mode="joiner"``: one ``features`` message an impression and, for a positive
    one, an ``actions`` click ``1 .. click_delay_s`` event seconds later, in the first list
    whose impressions reach that time (so a click never precedes its impression, and lists
    are in event-time order up to one list). A missing dense value is null (its default).
    Arrow builds the JSON texts column by column (no Python object a value): about 230k
    impressions a second, their generation included (2 shared cores)."""
    return (out for out, _, _ in _messages(spec, start, n, mode, batch))


def _messages(spec: SynthSpec, start: int, n: int, mode: Mode, batch: int
              ) -> Iterator[tuple[list[tuple[str, bytes, bytes]], pa.Table, np.ndarray]]:
    """:func:`messages`, each list with the table and probabilities of its impressions."""
    if mode not in ("examples", "joiner"):
        raise ValueError(f"mode must be examples or joiner, got {mode!r}")
    names, dense = spec.slot_names, spec.dense_names
    delay = _stream(spec, _DELAY)
    waiting = np.empty((3, 0), dtype=np.int64)  # clicks to come: time, index, item
    for first in range(start, start + n, batch):
        table, p = _chunk(spec, first, min(batch, start + n - first))
        table = table.combine_chunks()
        index = np.arange(first, first + len(table), dtype=np.int64)
        keys, request_ids = _request_ids(spec, index)
        slots = [(name, _texts(table.column(name))) for name in names]
        fields = [("request_id", request_ids), ("time", _texts(table.column(TIME))),
                  ("user_id", slots[0][1]), ("item_id", slots[1][1]), ("slots", slots),
                  ("dense", [(name, _texts(pc.cast(table.column(name), pa.int64())))
                             for name in dense])]
        if mode == "examples":
            fields += [("label", _texts(table.column(LABEL))),
                       ("weight", _texts(table.column(WEIGHT)))]
        topic = EXAMPLES if mode == "examples" else FEATURES
        out = [(topic, key, value) for key, value in zip(keys, _json_objects(fields))]
        if mode == "joiner":
            times, clicked = table.column(TIME).to_numpy(), table.column(LABEL).to_numpy() > 0
            at = index[clicked]
            late = 1 + np.floor(_uniform(at, delay) * spec.click_delay_s).astype(np.int64)
            item = table.column(names[1]).to_numpy()[clicked]
            waiting = np.concatenate([waiting, np.stack([times[clicked] + late, at, item])], 1)
            last = first + len(table) == start + n
            due = np.ones(waiting.shape[1], bool) if last else waiting[0] <= times[-1]
            t, i, item = waiting[:, due][:, np.lexsort(waiting[1::-1, due])]
            keys, request_ids = _request_ids(spec, i)
            clicks = _json_objects([("request_id", request_ids), ("item_id", _texts(item)),
                                    ("time", _texts(t)), ("action", '"click"')])
            out += [(ACTIONS, key, value) for key, value in zip(keys, clicks)]
            waiting = waiting[:, ~due]
        yield out, table, p


def _request_ids(spec: SynthSpec, index: np.ndarray) -> tuple[list[bytes], pa.Array]:
    """Request ids of examples (n,) -> (each as bytes, a Kafka key; their JSON strings)."""
    ids = pc.binary_join_element_wise(f"synth-{spec.seed}-", _texts(index), "")
    return ids.cast(pa.binary()).to_pylist(), pc.binary_join_element_wise('"', ids, '"', "")


def _texts(values: np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Numbers (n,) -> their JSON texts (n,), ``null`` where a value is missing."""
    return pc.cast(values, pa.string()).fill_null("null")


def _json_objects(fields: list[tuple[str, Any]]) -> list[bytes]:
    """One JSON object a row, built by Arrow: ``fields`` are (key, value) with a value the
    JSON texts of the rows (n,), one JSON text for all, or a nested fields list -> bytes
    (n,)."""
    parts: list[Any] = []

    def add(part: Any) -> None:
        if isinstance(part, str) and parts and isinstance(parts[-1], str):
            parts[-1] += part
        else:
            parts.append(part)

    def object_(fields: list[tuple[str, Any]]) -> None:
        add("{")
        for k, (key, value) in enumerate(fields):
            add(f'{"," if k else ""}"{key}":')
            if isinstance(value, list):
                object_(value)
            else:
                add(value)
        add("}")

    object_(fields)
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary()).to_pylist()


def produce(spec: SynthSpec, kafka: KafkaConfig, n: int, mode: Mode = "examples",
            start: int = 0) -> dict[str, Any]:
    """Write :func:`messages` of examples ``start .. start + n - 1`` to ``kafka``'s topics
    (created if missing), keyed by request id with kafka-python's partitioner, so an
    impression's features and click share a partition number -> ``{"examples",
    "positives", "auc_ceiling", "topics": {topic name: messages}, "failed": messages the
    brokers did not take, "seconds"}``."""
    reports = DeliveryReports(kafka, **{"partitioner": "murmur2_random", "linger.ms": 20,
                                        "queue.buffering.max.kbytes": 262_144})
    names = dataclasses.asdict(kafka.topics)
    ensure_topics(kafka, [names[EXAMPLES]] if mode == "examples"
                  else [names[FEATURES], names[ACTIONS]])
    counts: dict[str, int] = {}
    truth = _Truth()
    began = time.perf_counter()
    for batch, table, p in _messages(spec, start, n, mode, 32_768):
        truth.add(table, p)
        for topic, key, value in batch:
            while True:
                try:
                    reports.producer.produce(names[topic], value, key)
                    break
                except BufferError:  # the local queue is full: let it drain
                    reports.producer.poll(0.05)
            counts[names[topic]] = counts.get(names[topic], 0) + 1
        reports.producer.poll(0)
    reports.producer.flush()
    return {"examples": n, **truth.summary(), "topics": counts, "failed": reports.failed,
            "seconds": time.perf_counter() - began}


def config(spec: SynthSpec) -> dict[str, Any]:
    """The ``slots`` (dim 16, adagrad) and ``dense`` (``log1p_standardize``) config sections
    of ``spec``'s examples, as YAML would give them. With ``defaults/synth.yaml`` (these
    sections, the default model), one pass over 5M examples of ``SynthSpec()`` reached a
    held-out AUC of 0.794 against the ceiling's 0.816 (over 2M: 0.787)."""
    slots = [{"name": name, "slot_id": k + 1, "dim": 16,
              "optimizer": {"kind": "adagrad", "learning_rate": 0.15},
              "initializer": {"kind": "normal", "scale": 0.01}}
             for k, name in enumerate(spec.slot_names)]
    dense = [{"name": name, "transform": "log1p_standardize"} for name in spec.dense_names]
    return {"slots": slots, "dense": dense}
