"""A replica's serving decision, as config says (``policy``, ``experiments``): for each
request the arm of its user, satiation re-ranking and the arm's policy; feedback to the
satiation fit; per-arm counts to report. Pure (no Ray): ``serve/app.py`` calls it.

An arm is named in the request id the service issues: ``<random id>.<experiment>.<arm>``
(indices into the config's lists). The feedback token is an HMAC of the request id, so a
client cannot move feedback to another arm, and any replica can count a click for the arm
that served it without shared state.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from monolith_ray.config.policy import (
    SATIATED,
    ExperimentConfig,
    PolicyChoice,
    PolicyConfig,
    uses_satiation,
)
from monolith_ray.messages import POSITIVE_ACTIONS
from monolith_ray.policy.experiments import ArmCounts, arm_of, experiment_of, report
from monolith_ray.policy.policies import Policy, ShowCounts, make_policy
from monolith_ray.policy.repeats import RecentKeys
from monolith_ray.policy.satiation import PendingShows, SatiationModel
from monolith_ray.schemas import value_ids, value_text

__all__ = ["Decision", "Decisions", "first_values", "logits_of"]

_UNCERTAIN = ("thompson", "ucb")


def logits_of(scores: np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Ranking scores (``serve.score``, within ``bounds``: ``Score.bounds``, (0, 1) for a
    task's probability) -> logits, float64 (n,): the score mapped linearly onto [0, 1] by its
    bounds (the same order; ``click + 0.5 * like`` is divided by 1.5), clipped to
    [1e-6, 1 - 1e-6], then the logit. A NaN score (a diverged model) ranks last."""
    low, high = bounds
    s = np.asarray(scores, dtype=np.float64)
    p = (s - low) / (high - low) if high > low else np.full_like(s, 0.5)
    p = np.clip(np.where(np.isnan(s), 0.0, p), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def _last(values: np.ndarray, nan: np.ndarray) -> np.ndarray:
    """``values`` with the entries ``nan`` marks below every other (after a penalty that
    may have moved the others below the floor of :func:`logits_of`)."""
    if not nan.any() or nan.all():
        return values
    out = values.copy()
    out[nan] = values[~nan].min() - 1.0
    return out


def first_values(values: Sequence[Any]) -> list[Any]:
    """Each slot value's first value (an item's category: the first of its genres), None
    for an empty list or None."""
    return [(v[0] if v else None) if isinstance(v, list) else v for v in values]


@dataclasses.dataclass(frozen=True)
class _Arm:
    label: str | None  # "experiment/arm", None outside experiments
    policy: Policy
    satiation: bool
    model: str = "live"  # "live" or "snapshot:<location>" (ArmConfig.model)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a request showed: ``indices`` int64 (k,) into its candidates in slot order,
    their ``propensities`` (k,), the ``policy`` name, the ``arm`` label (or None), the
    request-id ``suffix`` that names the arm and, with ``policy.evaluate``, ``inclusion``:
    each shown item's probability of being in the list, float64 (k,), under the policy that
    served (``"served"``) and under each ``policy.evaluate`` entry."""

    indices: np.ndarray
    propensities: np.ndarray
    policy: str
    arm: str | None
    suffix: str
    inclusion: dict[str, np.ndarray] | None = None


def _policy(choice: PolicyChoice) -> Policy:
    return make_policy(choice.kind, epsilon=choice.epsilon, scale=choice.scale,
                       draws=choice.draws)


class Decisions:
    """The serving decision of one replica. Not thread-safe: call :meth:`decide`,
    :meth:`held` and :meth:`feedback` from one thread (the replica's policy thread, or its
    event loop). Safe from any thread: :meth:`take_counts` (locked), :meth:`arm_of`,
    :meth:`model_of`, :meth:`report` and the attributes fixed at construction; and
    :meth:`stats`, a best-effort reading (its figures may be of different moments)."""

    def __init__(self, policy: PolicyConfig, experiments: Sequence[ExperimentConfig] = (),
                 seed: int | None = None, score_bounds: tuple[float, float] = (0.0, 1.0)
                 ) -> None:
        """``score_bounds``: the range of the scores :meth:`decide` is given
        (``Score.bounds``), by which they are made logits (:func:`logits_of`)."""
        self.experiments = tuple(experiments)
        self.score_bounds = score_bounds
        default = _Arm(None, _policy(policy), policy.satiation.enabled)
        self._default = default
        self._arms = [[_Arm(f"{e.name}/{a.name}",
                            default.policy if a.policy is None else _policy(a.policy),
                            default.satiation if a.satiation is None else a.satiation,
                            a.model)
                       for a in e.arms] for e in self.experiments]
        self._weights = [[a.weight for a in e.arms] for e in self.experiments]
        self.logged = bool(self.experiments) or policy.kind != "greedy" or uses_satiation(
            policy, self.experiments)
        sat = policy.satiation
        self.satiation = (SatiationModel(sat.gammas, sat.max_users, sat.max_categories,
                                         sat.ttl_s, sat.learning_rate, sat.min_feedback,
                                         sat.memory)
                          if uses_satiation(policy, self.experiments) else None)
        self.pending = PendingShows(sat.feedback_window_s, sat.max_pending)
        # entry -> (its policy, whether it sees the satiation penalty)
        self._evaluated = {name: (_policy(dataclasses.replace(
            policy, kind=name.removesuffix(SATIATED))), name.endswith(SATIATED))
            for name in policy.evaluate}
        self._evaluates_satiation = any(sated for _, sated in self._evaluated.values())
        kinds = {policy.kind, *(a.policy.kind for e in self.experiments for a in e.arms
                                if a.policy is not None),
                 *(p.name for p, _ in self._evaluated.values())}
        uncertain = bool(kinds.intersection(_UNCERTAIN))
        # Thompson's Monte Carlo: k · draws · n normals a decision (config/policy.py)
        self.monte_carlo = "thompson" in kinds
        self.shows = ShowCounts(policy.show_count_buckets) if uncertain else None
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._counts: dict[str, ArmCounts] = {}
        # reports received lately, to count a client's retry once
        self.recent = RecentKeys(policy.repeat_memory)
        self.repeated = 0  # reports recognised as repeats (not counted), since the start

    def report(self, counts: Mapping[str, tuple[int, int, int]]) -> list[dict[str, Any]]:
        """``GET /experiments``' body: per experiment its name and arms, each arm what serves
        it (``name``, ``arm`` label, ``share`` of the experiment's users, ``policy`` name,
        ``satiation``) and its ``counts`` (label -> impressions, clicks, rewards; none: 0)
        with their intervals (``experiments.report``)."""
        return [{"name": e.name, "arms": [
            {"name": a.name, "arm": arm.label, "share": w / sum(weights),
             "policy": arm.policy.name, "satiation": arm.satiation, "model": arm.model,
             **report(ArmCounts(*counts.get(arm.label, (0, 0, 0))))}
            for a, arm, w in zip(e.arms, arms, weights)]}
            for e, arms, weights in zip(self.experiments, self._arms, self._weights)]

    def arm_of(self, user_id: int | str) -> tuple[int, int] | None:
        """(experiment, arm) indices of a user, None without experiments."""
        if not self.experiments:
            return None
        e = experiment_of(len(self.experiments), user_id)
        return e, arm_of(self.experiments[e].name, self._weights[e], user_id)

    def model_of(self, user_id: int | str) -> str:
        """The model a user's requests are scored with: its arm's ``model`` (``live``
        outside experiments)."""
        at = self.arm_of(user_id)
        return "live" if at is None else self._arms[at[0]][at[1]].model

    def _from_suffix(self, request_id: str) -> _Arm | None:
        parts = request_id.split(".")
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            return None
        e, a = int(parts[1]), int(parts[2])
        if e >= len(self._arms) or a >= len(self._arms[e]):
            return None
        return self._arms[e][a]

    def decide(self, user_id: int | str, items: Sequence[int | str],
               categories: Sequence[Hashable | None] | None, scores: np.ndarray, k: int,
               now: float) -> tuple[Decision, np.ndarray | None]:
        """Choose ``k`` of the ``items`` for a user: satiation penalty (if the arm has it)
        on the logits of ``scores`` (n,), then the arm's policy. Records the shows. ->
        (the decision, the shown items' satiation states (k, G) or None)."""
        at = self.arm_of(user_id)
        arm = self._default if at is None else self._arms[at[0]][at[1]]
        raw = penalised = logits_of(scores, self.score_bounds)
        states = None
        if self.satiation is not None and categories is not None:
            # one user whether the id comes as 7 or "7" (the model's and ShowCounts' ids)
            user = int(value_ids([user_id])[0])
            states = self.satiation.states(user, categories, now)
            if arm.satiation or self._evaluates_satiation:  # O(n G) a request
                penalised = _last(raw - self.satiation.penalties(states),
                                  np.isnan(np.asarray(scores, dtype=np.float64)))
        values = penalised if arm.satiation else raw
        pairs = shows = None
        if self.shows is not None:  # each pair hashed once, read now and counted below
            pairs = self.shows.slots(user_id, items)
            shows = self.shows.get(pairs)
        choice = arm.policy.choose(values, k, self._rng, shows)
        inclusion = None
        if self._evaluated:  # with the show counts this choice was made with
            inclusion = {"served": arm.policy.inclusion(values, k, self._rng, shows,
                                                        of=choice.indices)}
            for name, (policy, sated) in self._evaluated.items():
                inclusion[name] = policy.inclusion(penalised if sated else raw, k, self._rng,
                                                   shows, of=choice.indices)
        chosen = choice.indices.tolist()
        if pairs is not None:
            self.shows.add(pairs[choice.indices])
        if states is not None:
            self.satiation.show(user, [categories[i] for i in chosen], now)
        if arm.label is not None:
            with self._lock:
                self._counts.setdefault(arm.label, ArmCounts()).impressions += len(chosen)
        suffix = "" if at is None else f".{at[0]}.{at[1]}"
        decision = Decision(choice.indices, choice.propensities, arm.policy.name, arm.label,
                            suffix, inclusion)
        return decision, None if states is None else states[choice.indices]

    def held(self, request_id: str, now: float, items: Sequence[int | str],
             states: np.ndarray, scores: np.ndarray) -> None:
        """Hold a request's shown items (their satiation states (k, G) and model
        ``scores`` (k,)) for the satiation fit until feedback or their window ends."""
        self.pending.add(request_id, now, items, states, logits_of(scores, self.score_bounds))
        self._learn_expired(now)
        if self.satiation is not None:
            self.satiation.evict_expired(now)

    def feedback(self, request_id: str, item_id: int | str, action: str, now: float) -> bool:
        """Count an action for the arm named in ``request_id``; a positive action teaches
        the satiation fit if this replica holds the impression. ``now``: the replica's clock
        (s), never the client's event time, which may run ahead by
        ``limits.max_event_skew_s`` and would end every held impression's window early.
        -> False, counting nothing, for a report this replica received lately (the same
        request id, item as the model reads it, and action: :class:`RecentKeys`). An
        impression's reward is counted once, at its first positive action (a ``like`` after
        a ``click`` adds none), as the joiner labels it."""
        item = value_text(item_id)  # 7, "7" and "007": one item, as the model reads it
        with self._lock:
            if not self.recent.first(request_id, item, action):
                self.repeated += 1
                return False
            rewarded = action in POSITIVE_ACTIONS and self.recent.first(request_id, item, "+")
        arm = self._from_suffix(request_id)
        if arm is not None and arm.label is not None:
            with self._lock:
                counts = self._counts.setdefault(arm.label, ArmCounts())
                counts.clicks += action == "click"
                counts.rewards += rewarded
        if self.satiation is not None:
            if action in POSITIVE_ACTIONS:
                held = self.pending.click(request_id, item_id)
                if held is not None:
                    self.satiation.observe(held[0][None], np.array([held[1]]), np.ones(1))
            self._learn_expired(now)
        return True

    def _learn_expired(self, now: float) -> None:
        states, logits = self.pending.expired(now)
        if len(logits) and self.satiation is not None:
            self.satiation.observe(states, logits, np.zeros(len(logits)))

    def take_counts(self) -> dict[str, tuple[int, int, int]]:
        """The per-arm counts since the last call (arm label -> impressions, clicks,
        rewards), reset."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return {label: (c.impressions, c.clicks, c.rewards) for label, c in counts.items()}

    def stats(self) -> dict[str, Any]:
        """This replica's satiation fit and holdings, and the repeated feedback it did not
        count, for ``/healthz``."""
        sat = self.satiation
        repeats = {"repeated_feedback": self.repeated}
        if sat is None:
            return {"satiation": None, **repeats}
        return {**repeats, "satiation": {
            "gamma": sat.gamma, "lambda": sat.lam, "observed": sat.observed, "users": len(sat),
            "pending_requests": len(self.pending),
            "pending_impressions": self.pending.impressions,
            "pushed_out": self.pending.pushed_out}}
