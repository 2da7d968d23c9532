"""Impression streams for the ``features`` and ``actions`` topics: a MovieLens-100K replay and
a synthetic user simulator with drifting preferences and, optionally, satiation.

Both yield :class:`Event` s in event-time order: one ``features`` message per impression and,
for a positive outcome, an ``actions`` message "click" ``click_delay_s`` later (event time).
:func:`publish` writes events to Kafka, keyed by request id, so the default partitioner puts a
request's feature and its action in the same partition number of both topics (the joiner's
co-partitioning; it needs both topics to have the same partition count). ``speedup`` paces
the writes: event seconds per wall second (``None`` = as fast as possible); pacing changes
only when messages arrive, never their event times, so the joined examples are the same.

MovieLens slots carry the raw values of the Parquet examples (``monolith_ray.data.movielens``):
user and item ids as ints, the other fields as the files' text (genres as a list), so
:func:`monolith_ray.schemas.value_ids` of a message's slot equals the Parquet column.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer

from monolith_ray.config import KafkaConfig
from monolith_ray.data import movielens
from monolith_ray.features import mix64
from monolith_ray.messages import encode

__all__ = [
    "Event",
    "SatiatedUsers",
    "UserSimulator",
    "movielens_events",
    "publish",
    "replay_movielens",
    "satiation_step",
    "simulate_stream",
    "simulated_events",
]

FEATURES, ACTIONS = "features", "actions"
DEFAULT_CLICK_DELAY_S = 5


class Event(NamedTuple):
    """One message to publish: ``topic`` is ``"features"`` or ``"actions"`` (the
    ``KafkaTopics`` field, not the topic name), ``key`` the request id."""

    time: int
    topic: str
    key: str
    message: dict[str, Any]


def movielens_events(src: Path | str, *, fraction: tuple[float, float] = (0.0, 1.0),
                     time_range: tuple[int | None, int | None] = (None, None),
                     click_delay_s: int = DEFAULT_CLICK_DELAY_S) -> Iterator[Event]:
    """Every MovieLens rating in ``src`` (a folder with ``ml-100k.{inter,user,item}``) as an
    impression, in event-time order (ties by user, then item, as the Parquet examples).

    A rating >= 4 also clicks ``click_delay_s`` later. Request ids are ``ml-USER-ITEM`` (a user
    rates an item once). ``fraction=(lo, hi)`` keeps the ratings ``[int(n*lo), int(n*hi))``
    of the time-ordered ``n`` (``(0.8, 1.0)`` = the last 20%, the valid + test splits);
    ``time_range=(start, stop)`` keeps ``start <= time < stop`` (None = unbounded).
    """
    inter = movielens.read_atomic(Path(src) / f"{movielens.NAME}.inter")
    event_time = pc.cast(pc.cast(inter["timestamp"], pa.float64()), pa.int64()).to_numpy()
    user = inter["user_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    item = inter["item_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    rating = pc.cast(inter["rating"], pa.float64()).to_numpy()
    order = np.lexsort((item, user, event_time))
    n = len(order)
    lo, hi = fraction
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"fraction must satisfy 0 <= lo <= hi <= 1, got {fraction}")
    order = order[int(n * lo):int(n * hi)]
    start, stop = time_range
    keep = np.ones(len(order), dtype=bool)
    if start is not None:
        keep &= event_time[order] >= start
    if stop is not None:
        keep &= event_time[order] < stop
    order = order[keep]
    user_slots, item_slots = movielens.user_slots(src), movielens.item_slots(src)

    def impressions() -> Iterator[tuple[dict[str, Any], bool]]:
        for row in order.tolist():
            u, i = int(user[row]), int(item[row])
            slots = {"user_id": u, "item_id": i, **user_slots[u], **item_slots[i]}
            feature = {"request_id": f"ml-{u}-{i}", "time": int(event_time[row]),
                       "user_id": u, "item_id": i, "slots": slots}
            yield feature, bool(rating[row] >= movielens.POSITIVE_RATING)

    return _in_time_order(impressions(), click_delay_s)


class UserSimulator:
    """Users and items with latent vectors; each user's preference drifts with event time, and
    each user tires of a category of items as it is shown (satiation, off by default).

    User u at time t has vector ``cos(w t + phi_u) a_u + sin(w t + phi_u) b_u`` (``a_u``,
    ``b_u`` drawn once, ``w = 2 pi / drift_period_s``): it turns a full circle every period,
    so what a user likes changes smoothly and recurs. Click probability is
    ``sigmoid(scale * u(t) . v_i + item_bias_i + bias - lambda_c * s)``, where ``s`` is the
    user's satiation with the item's category ``c`` (0 unless given).

    Each item has one of ``n_categories`` categories: the nearest (by cosine) of as many random
    directions in the latent space, so a category groups items that the same users like.
    Satiation follows rebounding bandits (Leqi et al., NeurIPS 2021, arXiv 2011.06741): the
    hidden truths are ``satiation_gamma`` (n_categories,), the share of satiation kept per
    request, drawn uniformly from ``satiation_memory``, and ``satiation_lambda``
    (n_categories,), the logit lost per unit of satiation, ``satiation`` times a uniform draw
    from [0.5, 1.5]. The state itself depends on what was shown, so it lives in
    :class:`SatiatedUsers`; this class stays a function of the seed and the arguments only,
    so answers do not depend on call order or process. Categories and satiation are drawn from
    a random stream of their own: the other draws, hence every answer without satiation, are
    those of a simulator without them.
    """

    def __init__(self, n_users: int = 1000, n_items: int = 500, dim: int = 8,
                 drift_period_s: float = 7 * 86400.0, scale: float = 2.0, bias: float = -1.5,
                 seed: int = 0, n_categories: int = 8, satiation: float = 0.0,
                 satiation_memory: tuple[float, float] = (0.5, 0.9)) -> None:
        lo, hi = satiation_memory
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"satiation_memory must satisfy 0 <= lo <= hi < 1, got "
                             f"{satiation_memory}")
        if satiation < 0 or n_categories < 1:
            raise ValueError(f"need satiation >= 0 and n_categories >= 1, got {satiation}, "
                             f"{n_categories}")
        rng = np.random.default_rng(seed)
        self.n_users, self.n_items, self.seed = n_users, n_items, seed
        self.drift_period_s, self.scale, self.bias = drift_period_s, scale, bias
        norm = 1.0 / np.sqrt(dim)
        self._a = rng.normal(0.0, norm, (n_users, dim))
        self._b = rng.normal(0.0, norm, (n_users, dim))
        self._phase = rng.uniform(0.0, 2.0 * np.pi, n_users)
        self._items = rng.normal(0.0, 1.0, (n_items, dim))
        self._item_bias = rng.normal(0.0, 0.5, n_items)
        hidden = np.random.default_rng([seed, 1])
        directions = hidden.normal(0.0, 1.0, (n_categories, dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.n_categories = n_categories
        self.categories: np.ndarray = np.argmax(self._items @ directions.T, axis=1)
        self.satiation_gamma: np.ndarray = hidden.uniform(lo, hi, n_categories)
        self.satiation_lambda: np.ndarray = satiation * hidden.uniform(0.5, 1.5, n_categories)

    def user_vectors(self, user_ids: np.ndarray, time: np.ndarray | int) -> np.ndarray:
        """Latent vectors of users (n,) at event times (n,) or one time -> float64 (n, dim)."""
        u = np.asarray(user_ids, dtype=np.int64)
        angle = 2.0 * np.pi * np.asarray(time, dtype=np.float64) / self.drift_period_s
        angle = angle + self._phase[u]
        return np.cos(angle)[:, None] * self._a[u] + np.sin(angle)[:, None] * self._b[u]

    def click_probability(self, user_ids: np.ndarray, item_ids: np.ndarray,
                          time: np.ndarray | int,
                          satiation: np.ndarray | None = None) -> np.ndarray:
        """P(click) of each (user, item) pair (n,) at event time(s) -> float64 (n,).

        ``satiation`` (n,): each user's satiation with the item's category (None: none)."""
        i = np.asarray(item_ids, dtype=np.int64)
        score = np.einsum("nd,nd->n", self.user_vectors(user_ids, time), self._items[i])
        logit = self.scale * score + self._item_bias[i] + self.bias
        if satiation is not None:
            logit = logit - self.satiation_lambda[self.categories[i]] * satiation
        return 1.0 / (1.0 + np.exp(-logit))

    def respond(self, user_ids: np.ndarray, item_ids: np.ndarray,
                time: np.ndarray | int, satiation: np.ndarray | None = None,
                draw: np.ndarray | None = None) -> np.ndarray:
        """Whether each user clicks the item shown at event time(s) -> bool (n,);
        ``satiation`` as in :meth:`click_probability`.

        The coin of a (user, item, time) is a fixed hash of the three and the seed, so the same
        question always gets the same answer. ``draw`` (n,) ints, if given, key the coin in
        place of the time (the probability still reads the time): :class:`SatiatedUsers`
        passes each user's request count, so the same user's n-th request shown the same item
        meets the same coin whenever it is served (common random numbers across runs)."""
        u = np.asarray(user_ids, dtype=np.int64)
        i = np.asarray(item_ids, dtype=np.int64)
        t = np.broadcast_to(np.asarray(time, dtype=np.int64), u.shape)
        key = t if draw is None else np.broadcast_to(np.asarray(draw, dtype=np.int64), u.shape)
        h = mix64(mix64(mix64(u, self.seed).view(np.int64) ^ i, self.seed).view(np.int64) ^ key,
                  self.seed)
        coin = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        return coin < self.click_probability(u, i, t, satiation)


class SatiatedUsers:
    """The satiation state of every user of ``sim`` per category: float64 (n_users,
    n_categories), all 0 at the start.

    Time is each user's own requests, not event time: at a request of user u, the items
    shown are answered with u's current state, then ``s[u, c] <- gamma_c * s[u, c] +
    1[an item of category c was shown]`` for every category c. So a category rests (decays by
    gamma) at each request of the user that does not show it, and the truth does not depend
    on how fast requests arrive or how many other users are served in between (a benchmark
    paced by the wall clock sees the same dynamics as an offline run).

    The click coins are keyed by the user's request count (``steps``), not the event time:
    two runs that serve the same users in the same order meet the same coin for the same
    user, request and item however their clocks differ (common random numbers, so policies
    compared on the same sequence of users differ by their choices, not by their luck).
    """

    def __init__(self, sim: UserSimulator) -> None:
        self.sim = sim
        self.state = np.zeros((sim.n_users, sim.n_categories))
        self.steps = np.zeros(sim.n_users, dtype=np.int64)  # requests of each user so far

    def satiation(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Each user's current satiation with the item's category, pairs (n,) -> float64 (n,)."""
        u = np.asarray(user_ids, dtype=np.int64)
        i = np.asarray(item_ids, dtype=np.int64)
        return self.state[u, self.sim.categories[i]]

    def click_probability(self, user_ids: np.ndarray, item_ids: np.ndarray,
                          time: np.ndarray | int) -> np.ndarray:
        """The true P(click) of each (user, item) pair (n,) if shown now -> float64 (n,)."""
        return self.sim.click_probability(user_ids, item_ids, time,
                                          self.satiation(user_ids, item_ids))

    def show(self, user_ids: np.ndarray, item_ids: np.ndarray,
             time: np.ndarray | int) -> np.ndarray:
        """One request each of distinct users (B,), shown items (B, k) at event time(s) (B,)
        -> whether each item is clicked, bool (B, k), each coin keyed by (user, item, the
        user's request count); then each user's state takes a step."""
        u = np.asarray(user_ids, dtype=np.int64)
        items = np.asarray(item_ids, dtype=np.int64).reshape(len(u), -1)
        if len(np.unique(u)) != len(u):
            raise ValueError("show takes one request per user at a time")
        k = items.shape[1]
        t = np.repeat(np.broadcast_to(np.asarray(time, dtype=np.int64), u.shape), k)
        users = np.repeat(u, k)
        clicked = self.sim.respond(users, items.ravel(), t,
                                   self.satiation(users, items.ravel()),
                                   draw=self.steps[users]).reshape(items.shape)
        satiation_step(self.state, self.sim.satiation_gamma, u, self.sim.categories[items])
        self.steps[u] += 1
        return clicked


def satiation_step(state: np.ndarray, gamma: np.ndarray | float, user_ids: np.ndarray,
                   shown_categories: np.ndarray) -> None:
    """One request each of distinct users (B,) shown items of categories (B, k): in place,
    ``state[u, c] <- gamma_c * state[u, c] + 1[c among u's row]`` for state (n_users,
    n_categories) and gamma (n_categories,) or one for all."""
    u = np.asarray(user_ids, dtype=np.int64)
    shown_categories = np.asarray(shown_categories, dtype=np.int64).reshape(len(u), -1)
    shown = np.zeros((len(u), state.shape[1]))
    shown[np.repeat(np.arange(len(u)), shown_categories.shape[1]), shown_categories.ravel()] = 1
    state[u] = gamma * state[u] + shown


def simulated_events(sim: UserSimulator, n_requests: int, *, start_time: int = 1_700_000_000,
                     requests_per_s: float = 10.0, items_per_request: int = 1, seed: int = 0,
                     click_delay_s: int = DEFAULT_CLICK_DELAY_S, sim_time_offset_s: int = 0,
                     with_category: bool = False) -> Iterator[Event]:
    """``n_requests`` requests of a random user, each shown ``items_per_request`` random
    distinct items, ``requests_per_s`` of them per event-time second from ``start_time``;
    clicks as :meth:`UserSimulator.respond` says at the simulator's time, event time plus
    ``sim_time_offset_s`` (a stream written at today's event times by users of another
    clock), with each user's satiation from the requests before (:class:`SatiatedUsers`) if
    ``sim`` has any. Slots: ``user_id`` and ``item_id``, and ``category`` (the item's
    simulated category) with ``with_category``."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, sim.n_users, n_requests)
    times = start_time + (np.arange(n_requests) / requests_per_s).astype(np.int64)
    at = times + sim_time_offset_s
    if items_per_request == 1:
        items = rng.integers(0, sim.n_items, (n_requests, 1))
    else:
        items = np.stack([rng.choice(sim.n_items, items_per_request, replace=False)
                          for _ in range(n_requests)])
    if np.any(sim.satiation_lambda):
        satiated = SatiatedUsers(sim)
        clicked = np.concatenate([satiated.show(users[r:r + 1], items[r:r + 1], at[r])
                                  for r in range(n_requests)])
    else:
        clicked = sim.respond(np.repeat(users, items_per_request), items.ravel(),
                              np.repeat(at, items_per_request)).reshape(items.shape)
    categories = sim.categories.tolist()

    def impressions() -> Iterator[tuple[dict[str, Any], bool]]:
        for r, (u, t) in enumerate(zip(users.tolist(), times.tolist())):
            for i, c in zip(items[r].tolist(), clicked[r].tolist()):
                slots = {"user_id": u, "item_id": i}
                if with_category:
                    slots["category"] = categories[i]
                feature = {"request_id": f"sim-{seed}-{r}", "time": t, "user_id": u,
                           "item_id": i, "slots": slots}
                yield feature, c

    return _in_time_order(impressions(), click_delay_s)


def _in_time_order(impressions: Iterable[tuple[dict[str, Any], bool]],
                   click_delay_s: int) -> Iterator[Event]:
    """Impressions in time order (feature message, clicked) -> their feature events and the
    click events ``click_delay_s`` later, merged in event-time order (a click before a
    feature of the same second)."""
    clicks: list[tuple[int, int, Event]] = []
    for seq, (feature, clicked) in enumerate(impressions):
        now = feature["time"]
        while clicks and clicks[0][0] <= now:
            yield heapq.heappop(clicks)[2]
        rid = feature["request_id"]
        yield Event(now, FEATURES, rid, feature)
        if clicked:
            t = now + click_delay_s
            action = {"request_id": rid, "item_id": feature["item_id"], "time": t,
                      "action": "click"}
            heapq.heappush(clicks, (t, seq, Event(t, ACTIONS, rid, action)))
    while clicks:
        yield heapq.heappop(clicks)[2]


def publish(cfg: KafkaConfig, events: Iterable[Event], *, speedup: float | None = None,
            producer: KafkaProducer | None = None) -> dict[str, float]:
    """Write ``events`` to ``cfg.topics``' features and actions topics, keyed by request id ->
    counts of each and the wall seconds taken.

    With ``speedup``, the event at time t is written no earlier than ``(t - t0) / speedup``
    wall seconds after the first (event time t0). ``producer`` (default: a new one, closed
    at the end) is flushed before returning.
    """
    if speedup is not None and speedup <= 0:
        raise ValueError(f"speedup must be > 0 or None, got {speedup}")
    own = producer is None
    if producer is None:
        producer = KafkaProducer(**cfg.client_kwargs(), linger_ms=5, batch_size=256 * 1024)
    topics = {FEATURES: cfg.topics.features, ACTIONS: cfg.topics.actions}
    counts = {FEATURES: 0, ACTIONS: 0}
    start = time.perf_counter()
    first: int | None = None
    try:
        for event in events:
            if speedup is not None:
                first = event.time if first is None else first
                delay = start + (event.time - first) / speedup - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topics[event.topic], key=event.key.encode("utf-8"),
                          value=encode(event.message))
            counts[event.topic] += 1
        producer.flush()
    finally:
        if own:
            producer.close()
    return {**counts, "seconds": time.perf_counter() - start}


def replay_movielens(cfg: KafkaConfig, src: Path | str, *, speedup: float | None = None,
                     fraction: tuple[float, float] = (0.0, 1.0),
                     time_range: tuple[int | None, int | None] = (None, None),
                     click_delay_s: int = DEFAULT_CLICK_DELAY_S) -> dict[str, float]:
    """Publish :func:`movielens_events` to Kafka (see :func:`publish`) -> counts, seconds."""
    events = movielens_events(src, fraction=fraction, time_range=time_range,
                              click_delay_s=click_delay_s)
    return publish(cfg, events, speedup=speedup)


def simulate_stream(cfg: KafkaConfig, sim: UserSimulator, n_requests: int, *,
                    speedup: float | None = None, **kwargs: Any) -> dict[str, float]:
    """Publish :func:`simulated_events` (``kwargs`` go to it) to Kafka -> counts, seconds."""
    return publish(cfg, simulated_events(sim, n_requests, **kwargs), speedup=speedup)

