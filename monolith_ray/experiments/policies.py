"""Closed-loop policy experiments on simulated users, and off-policy evaluation from their logs.

Each round, ``users_per_round`` distinct users of a :class:`UserSimulator` (drifting tastes,
satiation) ask for ``k`` items out of ``n_candidates`` drawn at random from the catalogue. A
model scores the candidates (:class:`ItemModel`: a Bayesian linear regression per item of
clicks on the user's features, learned from the clicks so far, so exploring is how it learns
items it has not shown), a policy picks the slate, the users answer with their hidden
satiation (:class:`SatiatedUsers`), and the model learns from the round's clicks.

Policies: the slate policies here (:class:`Greedy`, :class:`EpsilonGreedy`, :class:`Thompson`
over the model's posterior) know each candidate's probability of being in the slate (its
marginal), which :func:`off_policy` needs; :class:`Serving` runs any of serving's own
(``monolith_ray.policy``: per-slot choices on logits, uncertainty from impression counts) in
the same loop. :class:`SatiationAware` wraps either, ranking by the scores after each user's
satiation as a :class:`Belief` has it: the hidden truth (:class:`SatiationEstimate`) or
serving's online fit (:class:`SatiationFit`).

The users and candidates of each round come from a random stream of the seed alone, and a
click is a fixed hash of (user, item, time), so runs of different policies with the same seed
see the same requests (common random numbers). Users go to arms as serving assigns them
(``monolith_ray.policy.arm_of``, equal weights).

Every impression is logged with its policy, arm and propensity, with each request's
candidates and scores, so :func:`off_policy` can replay the log and estimate what another
policy would have earned (IPS, self-normalized IPS of ``monolith_ray.policy.ope``) on the
same requests. The log also keeps the hidden truth (every candidate's true click
probability) for measuring the estimates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from monolith_ray.policy import Estimate, SatiationModel, arm_of, ips, snips
from monolith_ray.policy import Policy as ServingPolicy
from monolith_ray.stream.producers import SatiatedUsers, UserSimulator, satiation_step

__all__ = [
    "Belief",
    "EpsilonGreedy",
    "Greedy",
    "ItemModel",
    "Log",
    "OffPolicy",
    "Policy",
    "Run",
    "SatiationAware",
    "SatiationEstimate",
    "SatiationFit",
    "Scores",
    "Serving",
    "Slate",
    "Thompson",
    "compare",
    "off_policy",
    "run",
]

START_TIME = 1_700_000_000


class Scores(NamedTuple):
    """What a policy knows of a round's requests (B,) and their candidates (C,), each (B, C):
    the model's click probability ``mean`` and its posterior ``std``, ``satiated``, the
    mean after the users' estimated satiation (= mean for a policy that ignores it), and
    ``shows``, each candidate's impressions to the request's user so far (int64)."""

    mean: np.ndarray
    std: np.ndarray
    satiated: np.ndarray
    shows: np.ndarray


class Slate(NamedTuple):
    """A policy's answer: ``chosen`` (B, k) candidate positions in slot order,
    ``propensity`` (B, k) what the log records of each, and ``marginal`` (B, C) the
    probability that each candidate is in the slate (sums to k per request; the chosen
    items' ``propensity``), or None for a policy that does not know it (:class:`Serving`)."""

    chosen: np.ndarray
    propensity: np.ndarray
    marginal: np.ndarray | None


def _slate(chosen: np.ndarray, marginal: np.ndarray) -> Slate:
    return Slate(chosen, np.take_along_axis(marginal, chosen, axis=1), marginal)


class Policy(Protocol):
    """Picks ``k`` of each request's candidates; ``name`` labels its impressions."""

    name: str

    def __call__(self, scores: Scores, k: int, rng: np.random.Generator) -> Slate:
        ...


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest of each row of (B, C) -> (B, k), largest first."""
    part = np.argpartition(-values, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(values, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _indicator(chosen: np.ndarray, n_candidates: int) -> np.ndarray:
    """Chosen positions (B, k) -> float64 (B, C), 1 where chosen."""
    out = np.zeros((len(chosen), n_candidates))
    np.put_along_axis(out, chosen, 1.0, axis=1)
    return out


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The k best by the model's mean."""

    name: str = "greedy"

    def __call__(self, scores: Scores, k: int, rng: np.random.Generator) -> Slate:
        chosen = _top(scores.mean, k)
        return _slate(chosen, _indicator(chosen, scores.mean.shape[1]))


@dataclasses.dataclass(frozen=True)
class EpsilonGreedy:
    """With probability ``epsilon`` per request, k candidates uniformly at random; otherwise
    the greedy slate. Every candidate has propensity >= epsilon k / C, so its logs support
    the evaluation of any policy."""

    epsilon: float = 0.1
    name: str = "epsilon_greedy"

    def __call__(self, scores: Scores, k: int, rng: np.random.Generator) -> Slate:
        n, c = scores.mean.shape
        greedy = _top(scores.mean, k)
        random = np.argsort(rng.random((n, c)), axis=1)[:, :k]
        explore = rng.random(n) < self.epsilon
        chosen = np.where(explore[:, None], random, greedy)
        marginal = (1.0 - self.epsilon) * _indicator(greedy, c) + self.epsilon * k / c
        return _slate(chosen, marginal)


@dataclasses.dataclass(frozen=True)
class Thompson:
    """The k best of one draw from the model's posterior (normal, ``mean`` and ``scale``
    times ``std``: below 1, it explores less than the posterior says).

    The marginals are estimated from ``draws`` draws, the slate's own among them, so the
    chosen items' propensities are never 0; an unbiased estimate of the marginal keeps IPS
    unbiased."""

    draws: int = 32
    scale: float = 1.0
    name: str = "thompson"

    def __call__(self, scores: Scores, k: int, rng: np.random.Generator) -> Slate:
        n, c = scores.mean.shape
        noise = rng.standard_normal((self.draws, n, c))
        sample = scores.mean + self.scale * scores.std * noise
        tops = _top(sample.reshape(-1, c), k).reshape(self.draws, n, k)
        counts = np.zeros((n, c))
        rows = np.broadcast_to(np.arange(n)[None, :, None], tops.shape)
        np.add.at(counts, (rows.ravel(), tops.ravel()), 1.0)
        return _slate(tops[0], counts / self.draws)


@dataclasses.dataclass(frozen=True)
class SatiationAware:
    """``base`` run on the satiated scores: each candidate's mean after the user's
    satiation with its category, as the run's :class:`Belief` has it."""

    base: Policy

    @property
    def name(self) -> str:
        return f"satiation_{self.base.name}"

    def __call__(self, scores: Scores, k: int, rng: np.random.Generator) -> Slate:
        return self.base(scores._replace(mean=scores.satiated), k, rng)


@dataclasses.dataclass(frozen=True)
class Serving:
    """One of serving's policies (``monolith_ray.policy``, e.g. ``Thompson(scale=1.0)``),
    called per request as serving calls it: on the logits of the means (clipped to
    [1e-6, 1 - 1e-6] first) with the candidates' impression counts. Logs its per-slot
    propensities (the item's probability in its slot given the earlier slots), not item
    marginals: such a log is not one :func:`off_policy` reads."""

    policy: ServingPolicy

    @property
    def name(self) -> str:
        return self.policy.name

    def __call__(self, scores: Scores, k: int, rng: np.random.Generator) -> Slate:
        p = np.clip(scores.mean, 1e-6, 1 - 1e-6)
        logits = np.log(p) - np.log1p(-p)
        choices = [self.policy.choose(row, k, rng, shows)
                   for row, shows in zip(logits, scores.shows)]
        return Slate(np.stack([c.indices for c in choices]),
                     np.stack([c.propensities for c in choices]), None)


def _lowered(mean: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Click probabilities (B, C) after ``penalty`` (B, C) of logit: the mean less the drop
    from p to ``sigmoid(logit(p) - penalty)``, p the mean clipped to a probability (the
    model's means are linear and may leave [0, 1]); unchanged where the penalty is 0."""
    p = np.clip(mean, 1e-4, 1 - 1e-4)
    drop = p - 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) - penalty)))
    return mean - np.where(penalty > 0, drop, 0.0)


class Belief(Protocol):
    """What a satiation-aware policy believes of users' satiation, asked once per round:
    ``satiated`` for the round's requests, then ``show`` with what they were shown."""

    def satiated(self, user_ids: np.ndarray, candidates: np.ndarray, mean: np.ndarray,
                 time: int) -> np.ndarray:
        """Distinct users (B,), candidates (B, C) and their click probabilities (B, C) at
        event time -> after each user's satiation with each candidate's category, (B, C)."""
        ...

    def show(self, user_ids: np.ndarray, item_ids: np.ndarray, clicks: np.ndarray,
             time: int) -> None:
        """The same requests were shown items (B, k) and clicked (B, k)."""
        ...


class SatiationEstimate:
    """A belief with known ``gamma`` and ``lam`` (per category or one for all): each user's
    satiation per category, stepped like the simulator's (:func:`satiation_step`, once per
    request of the user), lowering the logit by ``lam_c * s``. :meth:`of` gives the
    simulator's hidden values (an oracle); other values measure what a wrong belief costs."""

    def __init__(self, n_users: int, categories: np.ndarray, gamma: np.ndarray | float,
                 lam: np.ndarray | float) -> None:
        self.categories = np.asarray(categories, dtype=np.int64)
        n_categories = int(self.categories.max()) + 1
        self.gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (n_categories,))
        self.lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (n_categories,))
        self.state = np.zeros((n_users, n_categories))

    @classmethod
    def of(cls, sim: UserSimulator) -> SatiationEstimate:
        """The simulator's own gamma and lambda."""
        return cls(sim.n_users, sim.categories, sim.satiation_gamma, sim.satiation_lambda)

    def satiated(self, user_ids: np.ndarray, candidates: np.ndarray, mean: np.ndarray,
                 time: int = 0) -> np.ndarray:
        c = self.categories[candidates]
        return _lowered(mean, self.lam[c] * self.state[np.asarray(user_ids)[:, None], c])

    def show(self, user_ids: np.ndarray, item_ids: np.ndarray,
             clicks: np.ndarray | None = None, time: int = 0) -> None:
        satiation_step(self.state, self.gamma, user_ids, self.categories[item_ids])


class SatiationFit:
    """Serving's online satiation fit (``monolith_ray.policy.SatiationModel``: states over a
    grid of gamma, and gamma and lambda fitted from the clicks) as a belief, called as
    serving calls it: per request the user's step advances and the candidates' states are
    read, each logit is lowered by the fit's penalty, and what was shown is recorded and its
    clicks observed (with the states and the model's logits at the show)."""

    def __init__(self, categories: np.ndarray, model: SatiationModel | None = None) -> None:
        self.categories = np.asarray(categories, dtype=np.int64)
        self.model = SatiationModel() if model is None else model
        self._shown: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def of(cls, sim: UserSimulator) -> SatiationFit:
        """A fit with serving's defaults over the simulator's item categories."""
        return cls(sim.categories)

    def satiated(self, user_ids: np.ndarray, candidates: np.ndarray, mean: np.ndarray,
                 time: int) -> np.ndarray:
        penalty = np.zeros(mean.shape)
        p = np.clip(mean, 1e-4, 1 - 1e-4)
        logits = np.log(p / (1 - p))
        self._shown = {}
        for row, (u, items) in enumerate(zip(np.asarray(user_ids).tolist(), candidates)):
            states = self.model.states(u, self.categories[items].tolist(), time)
            penalty[row] = self.model.penalties(states)
            self._shown[u] = (items, states, logits[row])
        return _lowered(mean, penalty)

    def show(self, user_ids: np.ndarray, item_ids: np.ndarray, clicks: np.ndarray,
             time: int) -> None:
        for u, items, clicked in zip(np.asarray(user_ids).tolist(), item_ids, clicks):
            candidates, states, logits = self._shown[u]
            at = np.argmax(candidates[:, None] == items[None, :], axis=0)
            self.model.show(u, self.categories[items].tolist(), time)
            self.model.observe(states[at], logits[at], clicked.astype(np.float64))


class ItemModel:
    """A Bayesian linear regression per item of clicks less ``base`` on the user's features
    at request time, ``x = [u(t), 1]`` (the simulator's drifting user vector: features the
    recommender knows), with prior N(0, I / prior) and noise ``noise``. An item it never
    showed scores ``base`` (a typical click rate) with the prior's spread, below the items
    it learned a user likes, so a greedy policy seldom learns it: exploring is a real
    trade-off."""

    def __init__(self, sim: UserSimulator, prior: float = 1.0, noise: float = 0.5,
                 base: float = 0.2) -> None:
        self.sim, self.noise, self.base = sim, noise, base
        dim = sim.user_vectors(np.zeros(1, dtype=np.int64), 0).shape[1] + 1
        self._precision = np.tile(np.eye(dim) * prior, (sim.n_items, 1, 1))
        self._cov = np.tile(np.eye(dim) / prior, (sim.n_items, 1, 1))
        self._b = np.zeros((sim.n_items, dim))
        self._theta = np.zeros((sim.n_items, dim))

    def features(self, user_ids: np.ndarray, time: int) -> np.ndarray:
        """Users (B,) at event time -> float64 (B, dim + 1)."""
        v = self.sim.user_vectors(user_ids, time)
        return np.hstack([v, np.ones((len(v), 1))])

    def score(self, user_ids: np.ndarray, candidates: np.ndarray,
              time: int) -> tuple[np.ndarray, np.ndarray]:
        """Users (B,) and their candidates (B, C) -> posterior mean and std (B, C)."""
        x = self.features(user_ids, time)
        mean = self.base + np.einsum("bd,bcd->bc", x, self._theta[candidates])
        var = np.einsum("bd,bcde,be->bc", x, self._cov[candidates], x)
        return mean, self.noise * np.sqrt(np.maximum(var, 0.0))

    def update(self, user_ids: np.ndarray, item_ids: np.ndarray, clicks: np.ndarray,
               time: int) -> None:
        """Learn from users (B,) shown items (B, k) with clicks (B, k)."""
        k = item_ids.shape[1]
        x = np.repeat(self.features(user_ids, time), k, axis=0)
        items = item_ids.ravel()
        np.add.at(self._precision, items, x[:, :, None] * x[:, None, :])
        np.add.at(self._b, items, x * (clicks.ravel()[:, None] - self.base))
        touched = np.unique(items)
        self._cov[touched] = np.linalg.inv(self._precision[touched])
        self._theta[touched] = np.einsum("nde,ne->nd", self._cov[touched], self._b[touched])


@dataclasses.dataclass
class Log:
    """A run's impressions, one row each (n,): ``request`` (index into the per-request
    arrays), ``user``, ``item``, ``position`` in the slate, ``propensity``, ``click``,
    ``truth`` (the hidden click probability when shown), ``policy`` and ``arm`` (names).

    Per request (R,): ``request_round``, ``request_user``, ``request_time``, and (R, C) its
    ``candidates`` with the policy's view of them, ``mean`` and ``std``, and the hidden
    ``candidate_truth`` (each candidate's true click probability had it been shown).
    ``marginal``: whether every propensity is an item marginal (see :class:`Slate`)."""

    request: np.ndarray
    user: np.ndarray
    item: np.ndarray
    position: np.ndarray
    propensity: np.ndarray
    click: np.ndarray
    truth: np.ndarray
    policy: np.ndarray
    arm: np.ndarray
    request_round: np.ndarray
    request_user: np.ndarray
    request_time: np.ndarray
    candidates: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    candidate_truth: np.ndarray
    marginal: bool

    @property
    def k(self) -> int:
        """Items per request."""
        return len(self.request) // len(self.request_user)


@dataclasses.dataclass
class Run:
    """A closed-loop run: per round and arm (rounds, n_arms), ``clicks``, ``impressions`` and
    ``expected`` (the sum of the true click probabilities of the items shown: the reward
    without the coins' noise), and the :class:`Log`."""

    arms: tuple[str, ...]
    clicks: np.ndarray
    impressions: np.ndarray
    expected: np.ndarray
    log: Log

    @property
    def cumulative(self) -> np.ndarray:
        """Cumulative clicks per round and arm (rounds, n_arms)."""
        return np.cumsum(self.clicks, axis=0)

    def reward(self, arm: str | None = None) -> float:
        """Clicks per request of one arm (None: all)."""
        return self._per_request(self.clicks, arm)

    def expected_reward(self, arm: str | None = None) -> float:
        """Expected clicks per request (hidden truth) of one arm (None: all)."""
        return self._per_request(self.expected, arm)

    def _per_request(self, values: np.ndarray, arm: str | None) -> float:
        a = slice(None) if arm is None else self.arms.index(arm)
        return float(values[:, a].sum() / (self.impressions[:, a].sum() / self.log.k))


def run(sim: UserSimulator, arms: Mapping[str, Policy] | Policy, *, rounds: int = 200,
        users_per_round: int = 50, n_candidates: int = 50, k: int = 5, seed: int = 0,
        round_s: float = 60.0, experiment: str = "policies",
        belief: Callable[[UserSimulator], Belief] = SatiationEstimate.of) -> Run:
    """Serve ``rounds`` rounds of ``users_per_round`` distinct random users, each shown ``k``
    of ``n_candidates`` random items, round r at event time ``START_TIME + r * round_s``;
    the model learns from each round's clicks before the next. ``arms``: one policy, or arm
    name -> policy with users split evenly by serving's ``arm_of(experiment, ...)``.
    ``belief`` makes the satiation-aware policies' fresh :class:`Belief` (default: the
    simulator's hidden gamma and lambda, an oracle). The model is a fresh
    :class:`ItemModel`. Deterministic for a seed."""
    arms = {getattr(arms, "name"): arms} if not isinstance(arms, Mapping) else dict(arms)
    names = tuple(arms)
    model = ItemModel(sim)
    estimate = belief(sim)
    users_state = SatiatedUsers(sim)
    arm_of_user = np.array([arm_of(experiment, [1.0] * len(names), u)
                            for u in range(sim.n_users)])
    policy_of = np.array([arms[name].name for name in names])
    shows = np.zeros((sim.n_users, sim.n_items), dtype=np.int64)  # per pair, as serving
    marginal = True
    requests = np.random.default_rng([seed, 0])
    choices = np.random.default_rng([seed, 1])
    clicks = np.zeros((rounds, len(names)), dtype=np.int64)
    impressions = np.zeros((rounds, len(names)), dtype=np.int64)
    expected = np.zeros((rounds, len(names)))
    rows: dict[str, list[np.ndarray]] = {name: [] for name in (
        "user", "item", "propensity", "click", "truth", "policy", "arm", "request_user",
        "request_time", "candidates", "mean", "std", "candidate_truth")}
    for r in range(rounds):
        t = int(START_TIME + r * round_s)
        users = requests.choice(sim.n_users, users_per_round, replace=False)
        candidates = np.argsort(requests.random((users_per_round, sim.n_items)),
                                axis=1)[:, :n_candidates]
        mean, std = model.score(users, candidates, t)
        satiated = estimate.satiated(users, candidates, mean, t)
        truth = users_state.click_probability(np.repeat(users, n_candidates),
                                              candidates.ravel(), t).reshape(candidates.shape)
        arm = arm_of_user[users]
        chosen = np.zeros((users_per_round, k), dtype=np.int64)
        propensity = np.zeros((users_per_round, k))
        for a, name in enumerate(names):
            mine = np.flatnonzero(arm == a)
            if len(mine):
                slate = arms[name](Scores(mean[mine], std[mine], satiated[mine],
                                          shows[users[mine, None], candidates[mine]]),
                                   k, choices)
                chosen[mine], propensity[mine] = slate.chosen, slate.propensity
                marginal &= slate.marginal is not None
        items = np.take_along_axis(candidates, chosen, axis=1)
        np.add.at(shows, (np.repeat(users, k), items.ravel()), 1)
        clicked = users_state.show(users, items, t)
        shown_truth = np.take_along_axis(truth, chosen, axis=1)
        np.add.at(clicks[r], arm, clicked.sum(axis=1))
        np.add.at(impressions[r], arm, k)
        np.add.at(expected[r], arm, shown_truth.sum(axis=1))
        model.update(users, items, clicked, t)
        estimate.show(users, items, clicked, t)
        for key, value in (("user", np.repeat(users, k)), ("item", items.ravel()),
                           ("propensity", propensity.ravel()), ("click", clicked.ravel()),
                           ("truth", shown_truth.ravel()),
                           ("policy", np.repeat(policy_of[arm], k)),
                           ("arm", np.repeat(np.array(names)[arm], k)),
                           ("request_user", users), ("request_time", np.full(len(users), t)),
                           ("candidates", candidates), ("mean", mean), ("std", std),
                           ("candidate_truth", truth)):
            rows[key].append(value)
    n_requests = rounds * users_per_round
    log = Log(request=np.repeat(np.arange(n_requests), k),
              position=np.tile(np.arange(k), n_requests),
              request_round=np.repeat(np.arange(rounds), users_per_round), marginal=marginal,
              **{key: np.concatenate(value) for key, value in rows.items()})
    return Run(names, clicks, impressions, expected, log)


class OffPolicy(NamedTuple):
    """A target policy's value (clicks per request) on a log's requests: ``ips`` and
    ``snips`` estimated from the logged clicks (``monolith_ray.policy.ope``'s estimates per
    impression, times k), and ``truth``, the expected value the target would have had on the
    same requests (from the hidden truth; what the estimates aim at)."""

    ips: Estimate
    snips: Estimate
    truth: float


def off_policy(log: Log, target: Policy, *, estimate: Belief | None = None,
               seed: int = 0, z: float = 1.96) -> OffPolicy:
    """Replay ``log`` request by request and estimate what ``target`` would have earned.

    For each request, the target's marginals pi_t over the logged candidates are computed
    from the logged scores (and, for a satiation-aware target, ``estimate``, a fresh
    :class:`Belief`, replayed through the logged impressions and clicks); the log's
    propensities must be marginals too (``log.marginal``). Each shown item weighs
    ``w = pi_t / propensity``, and ``monolith_ray.policy.ope`` estimates the clicks per
    impression, IPS ``mean(w * click)`` and SNIPS ``sum(w * click) / sum(w)``; times k, per
    request. Both aim at the target's value when an item's click does not depend on the
    other items of its slate, as in the simulator. Their intervals treat impressions as
    independent. Satiation makes the value depend on what was shown before, so they estimate
    the target's value on the logged histories, which is ``truth``, not its closed-loop
    reward."""
    if not log.marginal:
        raise ValueError("off_policy needs a log of item marginals (the slate policies here, "
                         "not Serving)")
    rng = np.random.default_rng(seed)
    k, n_requests = log.k, len(log.request_user)
    pi, truth = np.zeros((n_requests, k)), np.zeros(n_requests)
    shown = log.item.reshape(n_requests, k)
    positions = np.argmax(log.candidates[:, :, None] == shown[:, None, :], axis=1)
    for r in np.unique(log.request_round):
        req = np.flatnonzero(log.request_round == r)
        users = log.request_user[req]
        mean = log.mean[req]
        t = int(log.request_time[req[0]])
        satiated = mean if estimate is None else estimate.satiated(
            users, log.candidates[req], mean, t)
        shows = np.zeros(mean.shape, dtype=np.int64)
        slate = target(Scores(mean, log.std[req], satiated, shows), k, rng)
        if slate.marginal is None:
            raise ValueError(f"{target.name} gives no marginals to evaluate it by")
        pi[req] = np.take_along_axis(slate.marginal, positions[req], axis=1)
        truth[req] = (slate.marginal * log.candidate_truth[req]).sum(axis=1)
        if estimate is not None:
            estimate.show(users, shown[req], log.click.reshape(n_requests, k)[req], t)
    per_request = []
    for estimator in (ips, snips):
        e = estimator(log.click.astype(np.float64), log.propensity, pi.ravel(), z=z)
        per_request.append(dataclasses.replace(e, value=k * e.value, low=k * e.low,
                                               high=k * e.high))
    return OffPolicy(*per_request, float(truth.mean()))


def compare(sim: UserSimulator, logging: Policy, targets: Mapping[str, Policy], *,
            seed: int = 0, **kwargs: Any) -> dict[str, dict[str, float]]:
    """Log ``logging`` for a run, estimate each target from that log (:func:`off_policy`),
    and run each target on-policy with the same seed and settings (``kwargs`` go to
    :func:`run`) -> per target: ips, ips_low, ips_high, snips, snips_low, snips_high,
    truth (on the logged requests), on_policy (clicks per request of its own run) and
    on_policy_expected (the same from the hidden truth); and "logging": the logging policy's
    on_policy and on_policy_expected."""
    logged = run(sim, logging, seed=seed, **kwargs)
    belief = kwargs.get("belief", SatiationEstimate.of)
    out = {"logging": {"on_policy": logged.reward(),
                       "on_policy_expected": logged.expected_reward()}}
    for name, target in targets.items():
        est = off_policy(logged.log, target, estimate=belief(sim), seed=seed)
        own = run(sim, target, seed=seed, **kwargs)
        out[name] = {"ips": est.ips.value, "ips_low": est.ips.low, "ips_high": est.ips.high,
                     "snips": est.snips.value, "snips_low": est.snips.low,
                     "snips_high": est.snips.high, "truth": est.truth,
                     "on_policy": own.reward(), "on_policy_expected": own.expected_reward()}
    return out
