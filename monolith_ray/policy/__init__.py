"""The serving decision after ranking (pure NumPy, no Ray): which of the ranked candidates to
show, in which order and with which probability (``policies``), lowered for what the user
is sated with (``satiation``), which policy a user gets (``experiments``), and how a policy
would have done judged from another's logs (``ope``)."""

from monolith_ray.policy.experiments import (
    ArmCounts,
    arm_of,
    experiment_of,
    normal_interval,
    report,
    unit_hash,
    wilson,
)
from monolith_ray.policy.ope import Estimate, ips, pooled, snips
from monolith_ray.policy.policies import (
    POLICIES,
    UCB,
    Choice,
    EpsilonGreedy,
    Greedy,
    Policy,
    ShowCounts,
    Thompson,
    make_policy,
)
from monolith_ray.policy.satiation import PendingShows, SatiationModel

__all__ = ["POLICIES", "UCB", "ArmCounts", "Choice", "EpsilonGreedy", "Estimate", "Greedy",
           "PendingShows", "Policy", "SatiationModel", "ShowCounts", "Thompson", "arm_of",
           "experiment_of", "ips", "make_policy", "normal_interval", "pooled", "report",
           "snips", "unit_hash", "wilson"]
