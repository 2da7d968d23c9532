"""The ``policy`` and ``experiments`` sections: how ``/recommend`` picks the k items it shows
from the ranked candidates (``monolith_ray.policy``), and A/B experiments over that choice::

    policy:
      kind: epsilon            # greedy | epsilon | thompson | ucb
      epsilon: 0.1
      satiation: {enabled: true, category_slot: genres, gammas: [0.5, 0.7, 0.9]}
    experiments:
      - name: explore
        arms:
          - {name: control, weight: 1}
          - {name: eps, weight: 1, policy: {kind: epsilon, epsilon: 0.2}}
          - {name: sated, weight: 1, satiation: true}
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from monolith_ray.config.loader import ConfigError, _require, require_unique_names


@dataclasses.dataclass(frozen=True)
class PolicyChoice:
    """One policy (``policy.policies``).

    - ``kind``: ``greedy`` (the top k), ``epsilon`` (per slot a uniform pick among the rest
      with probability ``epsilon``), ``thompson`` (per slot the best of the values plus
      Normal(0, sigma_i), propensities by Monte Carlo with ``draws`` draws a slot: about
      k · draws · n normals a request of n candidates, some 250 ms at k 100, n 1,000 and
      128 draws on a 2-core machine, as much again for each Thompson inclusion: the
      serving policy's own when ``evaluate`` is set, and each Thompson entry of it; on the
      replica's policy thread, one request after another), ``ucb``
      (the top k of values plus sigma_i).
    - ``scale``: c in sigma_i = c / sqrt(1 + impressions of item i to the requesting user
      by the replica), logit units (``thompson``, ``ucb``).
    """

    kind: Literal["greedy", "epsilon", "thompson", "ucb"] = "greedy"
    epsilon: float = 0.1
    scale: float = 1.0
    draws: int = 128

    def __post_init__(self) -> None:
        _require(self, "epsilon", ge=0, le=1)
        _require(self, "scale", ge=0, le=1000)
        _require(self, "draws", ge=1, le=10_000)


@dataclasses.dataclass(frozen=True)
class SatiationConfig:
    """Satiation-aware re-ranking (``policy.satiation``): the logit of an item whose category
    the user was shown in recent requests is lowered by lambda * s.

    - ``enabled``: apply it to requests outside experiments (an arm sets its own).
    - ``category_slot``: the item slot naming an item's category (its first value counts),
      e.g. ``genres``.
    - ``gammas``: the decay per request step to choose from (each in [0, 1)).
    - ``max_users``, ``max_categories``: the most users a replica holds states for, and
      categories per user; ``ttl_s``: a user silent this long (event time) starts over.
    - ``learning_rate``, ``min_feedback``: the online fit's Adagrad step, and the
      impressions it sees before any penalty applies; ``memory``: the impressions over
      which its sums (Adagrad's squared gradients, each γ's log-likelihood) forget, so the
      fit keeps learning over weeks of uptime.
    - ``feedback_window_s``: how long a shown item waits for a click before it counts as
      not clicked; ``max_pending``: impressions held meanwhile per replica (about 370 bytes
      each at 5 a request, 780 at 1, 310 at 20: the default 500,000 is some 185 MB at 5;
      past it the oldest are non-clicks early, ``/healthz`` ``pushed_out``: size it as the
      replica's impressions a second times ``feedback_window_s``; before, it counted
      requests).
    """

    enabled: bool = False
    category_slot: str = "genres"
    gammas: tuple[float, ...] = (0.5, 0.7, 0.9)
    max_users: int = 20_000
    max_categories: int = 32
    ttl_s: float = 86_400.0
    learning_rate: float = 0.1
    min_feedback: int = 100
    memory: float = 1_000_000
    feedback_window_s: float = 600.0
    max_pending: int = 500_000

    def __post_init__(self) -> None:
        if not self.gammas or len(self.gammas) > 16:
            raise ConfigError("gammas", f"1 to 16 values, got {len(self.gammas)}")
        for i, gamma in enumerate(self.gammas):
            if not 0 <= gamma < 1:
                raise ConfigError(f"gammas[{i}]", f"must be >= 0 and < 1, got {gamma!r}")
        _require(self, "max_users", ge=1)
        _require(self, "max_categories", ge=1, le=10_000)
        _require(self, "ttl_s", gt=0)
        _require(self, "learning_rate", gt=0)
        _require(self, "min_feedback", ge=0)
        _require(self, "memory", ge=1)
        _require(self, "feedback_window_s", gt=0)
        _require(self, "max_pending", ge=1)


@dataclasses.dataclass(frozen=True)
class PolicyConfig(PolicyChoice):
    """The policy of requests outside experiments, the satiation re-ranking,
    ``show_count_buckets``: the int64 counters of impressions per user x item pair a replica
    keeps for sigma_i (8 bytes each; pairs sharing a counter share a count), and ``evaluate``:
    policies (kinds with this section's parameters) whose probability of showing each shown
    item every answer carries beside the serving policy's (``inclusion``, keyed by the
    entry), so logs of one policy estimate another's reward (slate IPS over item marginals).
    ``<kind>`` is evaluated on the model's values, ``<kind>+satiation`` on the values after the
    satiation penalty (the replica then keeps satiation states and fits them, and logs each
    impression's policy, arm and propensity, whatever serves), each with the show counts the
    served choice was made with. ``repeat_memory``: the ``/feedback`` reports a replica
    remembers to count a client's retry once (``policy.repeats``: about 155 bytes each, the
    default 200,000 some 31 MB; size it as the replica's reports a second times a client's
    retry horizon in seconds, positive reports counting twice)."""

    show_count_buckets: int = 1 << 20
    repeat_memory: int = 200_000
    satiation: SatiationConfig = dataclasses.field(default_factory=SatiationConfig)
    evaluate: tuple[Literal["greedy", "epsilon", "thompson", "ucb", "greedy+satiation",
                            "epsilon+satiation", "thompson+satiation", "ucb+satiation"],
                    ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, "show_count_buckets", ge=1, le=1 << 28)
        _require(self, "repeat_memory", ge=1, le=10_000_000)  # at most some 1.6 GB
        if len(self.evaluate) > 4 or len(set(self.evaluate)) != len(self.evaluate):
            raise ConfigError("evaluate", f"at most 4 distinct entries, got "
                                          f"{list(self.evaluate)}")


SNAPSHOT_MODEL = "snapshot:"
# What the draw of a user's experiment (``policy.experiments.experiment_of``) hashes beside
# the user id: no experiment may have this name, or its arms would be drawn by the same hash
# (its users all in one arm).
EXPERIMENT_DRAW = "experiment"
SATIATED = "+satiation"  # an evaluated policy on the values after the satiation penalty


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    """One arm: its ``name``, ``weight`` (its share of the experiment's users is weight /
    sum of weights), ``policy`` (none = the section ``policy``'s), ``satiation``
    (whether its requests are re-ranked for satiation; none = ``policy.satiation.enabled``)
    and ``model``: ``live`` (the model the sync keeps current) or ``snapshot:<location>`` (a
    snapshot folder, or a root whose newest complete snapshot is taken when serving starts:
    a model version pinned for this arm, e.g. yesterday's against the live one)."""

    name: str
    weight: float = 1.0
    policy: PolicyChoice | None = None
    satiation: bool | None = None
    model: str = "live"

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 64:
            raise ConfigError("name", f"1 to 64 characters, got {self.name!r}")
        _require(self, "weight", gt=0, le=1e6)
        if self.model != "live" and not (self.model.startswith(SNAPSHOT_MODEL)
                                         and len(self.model) > len(SNAPSHOT_MODEL)):
            raise ConfigError("model", f"'live' or 'snapshot:<location>', got {self.model!r}")

    @property
    def snapshot(self) -> str | None:
        """The snapshot location of a pinned model, None for the live one."""
        return self.model[len(SNAPSHOT_MODEL):] if self.model != "live" else None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """An A/B experiment: its ``name`` (the assignment hashes it with the user id: renaming
    reshuffles) and its ``arms``. Experiments are mutually exclusive: each user is in one."""

    name: str
    arms: tuple[ArmConfig, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 64 or not self.name.isprintable():
            raise ConfigError("name", f"1 to 64 printable characters, got {self.name!r}")
        if self.name == EXPERIMENT_DRAW:
            raise ConfigError("name", f"{EXPERIMENT_DRAW!r} is reserved: the draw of each "
                                      "user's experiment hashes it, and would draw this "
                                      "one's arms too")
        if not 1 <= len(self.arms) <= 32:
            raise ConfigError("arms", f"1 to 32 arms, got {len(self.arms)}")
        require_unique_names(self.arms, "arms", "arms")


def check_experiments(experiments: tuple[ExperimentConfig, ...]) -> None:
    """ConfigError (key relative to the ``experiments`` list) for duplicate names or more
    than 16 experiments."""
    if len(experiments) > 16:
        raise ConfigError("", f"at most 16 experiments, got {len(experiments)}")
    require_unique_names(experiments, "", "experiments")


def uses_satiation(policy: PolicyConfig, experiments: tuple[ExperimentConfig, ...]) -> bool:
    """Whether any request may be re-ranked for satiation, or a policy it evaluates is."""
    return policy.satiation.enabled or any(
        arm.satiation for e in experiments for arm in e.arms) or any(
        name.endswith(SATIATED) for name in policy.evaluate)
