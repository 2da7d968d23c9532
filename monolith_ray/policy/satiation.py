"""Satiation-aware re-ranking after rebounding bandits (Leqi et al., NeurIPS 2021,
arXiv 2011.06741): people tire of what they were just shown, and recover when it rests.

Per user × item category a satiation state ``s ← γ·s + 1[shown]``, decayed per **request
step of that user** (each ``/recommend`` for the user is one step, whatever the wall or
event time between them; a category shown twice in one request adds 2). Steps, not seconds:
the paper's state moves per pull, and a user's pace of requests is their pace of attention.
The ranking value (a logit) of an item of category ``c`` is lowered by ``λ·s_c`` before the
policy chooses.

``γ`` and ``λ`` are estimated online from feedback: for each ``γ`` of a small grid a state
is kept, and for each a logistic model ``P(click) = σ(a + b·z − λ·s)`` (``z``: the model's
logit at the show, ``s``: that γ's state at the show) is fitted by Adagrad, one update per
observed impression. Every impression is scored by each γ's model *before* it learns from it
(prequential), and the γ with the highest running log-likelihood is the one used, with its
``λ`` (kept ≥ 0). Until ``min_feedback`` impressions have been observed the penalty is 0.
Both the log-likelihoods and Adagrad's sums of squared gradients forget at the rate
``1/memory`` an impression (discounted sums): a plain sum only grows, so after weeks of
feedback the step would shrink towards 0 and the choice of γ would freeze, and neither could
follow users whose tiring changes. With ``memory`` impressions (1,000,000 by default: some
3 h at 100 impressions a second) the step never falls below about ``learning_rate /
sqrt(memory · E[g²])``.

Bounds: at most ``max_users`` users (least recently used dropped first), each with at most
``max_categories`` categories (a new one replaces the least sated); a user silent for
``ttl_s`` seconds of event time starts over. Memory per user: ``max_categories`` entries of
``G`` float64 states plus an int step each: 7.5 KB measured (``tracemalloc``) at C = 32,
G = 3, about 235 bytes a category with Python's dict and array overhead; ~150 MB at the
default 20,000 users, all full.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["PendingShows", "SatiationModel"]


@dataclasses.dataclass
class _User:
    step: int
    time: float
    states: dict[Hashable, tuple[int, np.ndarray]]  # category -> (step it was at, (G,))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class SatiationModel:
    """Satiation states per user × category over a grid of ``gammas``, and the online fit of
    ``γ`` and ``λ`` (see the module docstring)."""

    def __init__(self, gammas: Sequence[float] = (0.5, 0.7, 0.9), max_users: int = 20_000,
                 max_categories: int = 32, ttl_s: float = 86_400.0,
                 learning_rate: float = 0.1, min_feedback: int = 100,
                 memory: float = 1_000_000) -> None:
        self.gammas = np.asarray(gammas, dtype=np.float64)
        if self.gammas.ndim != 1 or not len(self.gammas) or not np.all(
                (self.gammas >= 0) & (self.gammas < 1)):
            raise ValueError(f"gammas: a non-empty list in [0, 1), got {list(gammas)}")
        if max_users < 1 or max_categories < 1 or not ttl_s > 0 or not memory >= 1:
            raise ValueError("max_users, max_categories, memory must be >= 1 and ttl_s > 0")
        self.keep = 1.0 - 1.0 / memory  # what the sums keep of themselves an impression
        self.max_users, self.max_categories, self.ttl_s = max_users, max_categories, ttl_s
        self.learning_rate, self.min_feedback = learning_rate, min_feedback
        self._users: collections.OrderedDict[Hashable, _User] = collections.OrderedDict()
        g = len(self.gammas)
        self.params = np.zeros((g, 3))  # per γ: a, b, λ
        self.params[:, 1] = 1.0
        self._grad_sq = np.zeros((g, 3))  # discounted sums of squared gradients
        self.loglik = np.zeros(g)
        self.observed = 0

    def __len__(self) -> int:
        return len(self._users)

    @property
    def best(self) -> int:
        """Index of the γ with the highest running log-likelihood."""
        return int(np.argmax(self.loglik))

    @property
    def gamma(self) -> float:
        return float(self.gammas[self.best])

    @property
    def lam(self) -> float:
        """The penalty weight in use: 0 until ``min_feedback`` impressions are observed."""
        return float(self.params[self.best, 2]) if self.observed >= self.min_feedback else 0.0

    def categories_of(self, user: Hashable) -> int:
        """Categories held for ``user`` (0 if unknown)."""
        record = self._users.get(user)
        return 0 if record is None else len(record.states)

    def _user(self, user: Hashable, now: float) -> _User:
        record = self._users.get(user)
        if record is None or now - record.time > self.ttl_s:
            record = _User(0, now, {})
        self._users[user] = record
        self._users.move_to_end(user)
        record.time = max(record.time, now)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
        return record

    def _state(self, record: _User, category: Hashable) -> np.ndarray:
        held = record.states.get(category)
        if held is None:
            return np.zeros(len(self.gammas))
        step, state = held
        return state * self.gammas ** (record.step - step)

    def states(self, user: Hashable, categories: Sequence[Hashable | None],
               now: float) -> np.ndarray:
        """One request of ``user`` at event time ``now``: its step advances by one and the
        states of each candidate's category at this step are returned -> float64 (n, G)
        (zeros for a category of None or never shown)."""
        record = self._user(user, now)
        record.step += 1
        out = np.zeros((len(categories), len(self.gammas)))
        seen: dict[Hashable, np.ndarray] = {}
        for i, category in enumerate(categories):
            if category is not None:
                if category not in seen:
                    seen[category] = self._state(record, category)
                out[i] = seen[category]
        return out

    def penalties(self, states: np.ndarray) -> np.ndarray:
        """``λ·s`` of the γ in use for states (n, G) -> float64 (n,), in logit units."""
        return self.lam * np.asarray(states)[:, self.best]

    def show(self, user: Hashable, categories: Sequence[Hashable | None], now: float) -> None:
        """Record that ``user`` was shown items of ``categories`` at its current step."""
        record = self._user(user, now)
        for category in categories:
            if category is None:
                continue
            state = self._state(record, category) + 1.0
            if category not in record.states and len(record.states) >= self.max_categories:
                current = {c: self._state(record, c)[self.best] for c in record.states}
                del record.states[min(current, key=current.__getitem__)]
            record.states[category] = (record.step, state)

    def evict_expired(self, now: float) -> int:
        """Drop users silent for more than ``ttl_s`` at event time ``now``, least recently
        used first, up to the first that is not -> how many. Users are kept in the order of
        their requests, so this costs O(dropped): serving calls it on every request."""
        dropped = 0
        while self._users:
            user, record = next(iter(self._users.items()))
            if now - record.time <= self.ttl_s:
                break
            del self._users[user]
            dropped += 1
        return dropped

    def observe(self, states: np.ndarray, logits: np.ndarray, clicked: np.ndarray) -> None:
        """Learn from impressions: ``states`` (m, G) at their show, the model's ``logits``
        (m,) then, ``clicked`` (m,) 0/1. Each is scored by every γ's model, then learnt."""
        states = np.atleast_2d(np.asarray(states, dtype=np.float64))
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        clicked = np.asarray(clicked, dtype=np.float64).reshape(-1)
        for s, z, y in zip(states, logits, clicked):
            a, b, lam = self.params.T
            p = np.clip(_sigmoid(a + b * z - lam * s), 1e-9, 1 - 1e-9)
            self.loglik *= self.keep
            self.loglik += y * np.log(p) + (1 - y) * np.log1p(-p)
            grad = (p - y)[:, None] * np.stack([np.ones_like(s), np.full_like(s, z), -s], 1)
            self._grad_sq *= self.keep
            self._grad_sq += grad * grad
            # the 1e-8 outside the decayed sum: a gradient 0 for long (a state of 0: γ = 0,
            # no category) would decay the sum to 0, and 0 / 0 is NaN
            self.params -= self.learning_rate * grad / np.sqrt(self._grad_sq + 1e-8)
            np.maximum(self.params[:, 2], 0.0, out=self.params[:, 2])
        self.observed += len(clicked)


class PendingShows:
    """Impressions waiting for feedback, to learn satiation from: per request id its time
    and, per item (compared as text), the states (G,) and model logit at its show. An item
    clicked is taken out (``click``); one without a click after ``window_s`` (s of the
    replica's clock: ``now`` is never a client's time) is a non-click (``expired``). At most
    ``max_impressions`` impressions are held (at G = 3, measured with ``tracemalloc``: about
    370 bytes each at 5 a request, 780 at 1, 310 at 20; the default 500,000 is some 185 MB
    at 5): past it the oldest requests' are non-clicks at once, counted in ``pushed_out``.
    Size it as impressions a second times ``window_s`` for the window, not the cap, to
    decide."""

    def __init__(self, window_s: float = 600.0, max_impressions: int = 500_000) -> None:
        self.window_s, self.max_impressions = window_s, max_impressions
        self._held: collections.OrderedDict[str, tuple[float, dict[str, tuple[np.ndarray,
                                                                                float]]]]
        self._held = collections.OrderedDict()
        self._due: list[tuple[np.ndarray, float]] = []
        self.impressions = 0  # held now
        self.pushed_out = 0  # impressions made non-clicks by the cap, before their window

    def __len__(self) -> int:
        return len(self._held)

    def add(self, request_id: str, now: float, items: Sequence[int | str],
            states: np.ndarray, logits: np.ndarray) -> None:
        """Hold a request's shown ``items`` with their states (k, G) and logits (k,)."""
        shown = {str(i): (s, float(z)) for i, s, z in zip(items, states, logits)}
        old = self._held.pop(request_id, None)  # a request id is held once
        if old is not None:
            self._due.extend(old[1].values())
            self.impressions -= len(old[1])
        self._held[request_id] = (now, shown)
        self.impressions += len(shown)
        while self.impressions > self.max_impressions and self._held:
            gone = self._held.popitem(last=False)[1][1]
            self._due.extend(gone.values())
            self.impressions -= len(gone)
            self.pushed_out += len(gone)

    def click(self, request_id: str, item: int | str) -> tuple[np.ndarray, float] | None:
        """The (states, logit) of a clicked impression, taken out; None if not held (another
        replica served it, it expired, or it was clicked before)."""
        held = self._held.get(request_id)
        taken = None if held is None else held[1].pop(str(item), None)
        self.impressions -= taken is not None
        return taken

    def expired(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Impressions past their window at ``now`` (and any pushed out), taken out ->
        (states (m, G), logits (m,)), non-clicks."""
        due, self._due = self._due, []
        while self._held:
            rid, (t, items) = next(iter(self._held.items()))
            if now - t <= self.window_s:
                break
            del self._held[rid]
            due.extend(items.values())
            self.impressions -= len(items)
        if not due:
            return np.zeros((0, 0)), np.zeros(0)
        return np.stack([s for s, _ in due]), np.array([z for _, z in due])
