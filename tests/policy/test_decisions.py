"""A replica's serving decision from config: greedy by default, the arm's policy and
satiation per user, arms named in request ids for feedback counts, the satiation fit fed by
feedback and expiry."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.config import ConfigError, load_config
from monolith_ray.policy.decisions import Decisions, logits_of

CONFIG = """
slots:
  - {name: user_id, slot_id: 1, dim: 4}
  - {name: item_id, slot_id: 2, dim: 4}
  - {name: genres, slot_id: 3, dim: 4, max_values: 4}
policy:
  satiation: {gammas: [0.5], min_feedback: 0, feedback_window_s: 10}
experiments:
  - name: exp
    arms:
      - {name: greedy}
      - {name: eps, policy: {kind: epsilon, epsilon: 1.0}}
      - {name: sated, satiation: true}
"""
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
ITEMS = [10, 11, 12, 13, 14]


def decisions(text: str = CONFIG) -> Decisions:
    cfg = load_config(text)
    return Decisions(cfg.policy, cfg.experiments, seed=0)


def outside_experiments(policy_lines: str) -> str:
    """CONFIG without its experiments, with ``policy_lines`` (indented YAML) in ``policy``."""
    return CONFIG.split("experiments:")[0].replace("policy:\n", "policy:\n" + policy_lines)


def user_in(d: Decisions, arm: int) -> int:
    return next(u for u in range(1000) if d.arm_of(u) == (0, arm))


def test_default_config_is_greedy_unlogged_without_arms() -> None:
    d = Decisions(load_config().policy)
    decision, states = d.decide(5, ITEMS, None, SCORES[::-1], 3, 0.0)
    assert decision.indices.tolist() == [4, 3, 2] and decision.propensities.tolist() == [1] * 3
    assert (decision.policy, decision.arm, decision.suffix) == ("greedy", None, "")
    assert states is None and not d.logged and d.satiation is None and not d.monte_carlo
    assert d.take_counts() == {}


def test_each_arm_decides_with_its_policy_and_counts_feedback_by_request_id() -> None:
    d = decisions()
    assert d.logged and d.satiation is not None
    greedy, eps = user_in(d, 0), user_in(d, 1)
    first, _ = d.decide(greedy, ITEMS, [None] * 5, SCORES, 2, 0.0)
    assert (first.arm, first.policy, first.suffix) == ("exp/greedy", "greedy", ".0.0")
    second, _ = d.decide(eps, ITEMS, [None] * 5, SCORES, 2, 0.0)
    assert (second.arm, second.policy) == ("exp/eps", "epsilon")
    assert second.propensities.tolist() == pytest.approx([1 / 5, 1 / 4])
    d.feedback("abc" + first.suffix, 10, "click", 1.0)
    d.feedback("abc" + first.suffix, 11, "like", 1.0)
    d.feedback("abc" + second.suffix, 11, "skip", 1.0)
    d.feedback("abc.7.0", 11, "click", 1.0)  # no such experiment: not counted
    assert d.take_counts() == {"exp/greedy": (2, 1, 2), "exp/eps": (2, 0, 0)}
    assert d.take_counts() == {}


def test_a_repeated_report_is_counted_once() -> None:
    """A client retrying /feedback sends the same (request id, item, action) again."""
    d = decisions()
    first, _ = d.decide(user_in(d, 0), ITEMS, [None] * 5, SCORES, 2, 0.0)
    rid = "abc" + first.suffix
    assert d.feedback(rid, 10, "click", 1.0) is True
    assert d.feedback(rid, 10, "click", 2.0) is False
    assert d.feedback(rid, "10", "click", 2.0) is False  # the item as text: one item
    assert d.feedback(rid, 10, "like", 2.0) is True  # another action on it: no 2nd reward
    assert d.feedback(rid, 11, "skip", 2.0) is True  # another item, not a reward
    assert d.feedback(rid, 11, "click", 2.0) is True  # its first positive action
    assert d.take_counts() == {"exp/greedy": (2, 2, 2)}
    assert d.stats()["repeated_feedback"] == 2


@pytest.mark.parametrize("lines,sampled", [
    ("  kind: epsilon\n", False), ("  kind: ucb\n", False),
    ("  evaluate: [greedy, ucb+satiation]\n", False), ("  kind: thompson\n", True),
    ("  evaluate: [thompson+satiation]\n", True)])
def test_monte_carlo_is_whether_any_policy_served_or_evaluated_samples(
        lines: str, sampled: bool) -> None:
    """What sends a replica's decisions to a thread of their own (``serve/app.py``)."""
    assert decisions(outside_experiments(lines)).monte_carlo is sampled
    arm = CONFIG.replace("epsilon: 1.0}", "epsilon: 1.0}}\n      - {name: ts, policy: "
                                          "{kind: thompson}")
    assert decisions(arm).monte_carlo


def test_repeat_memory_is_how_many_reports_a_replica_remembers() -> None:
    d = decisions(CONFIG.replace("policy:\n", "policy:\n  repeat_memory: 2\n"))
    first, _ = d.decide(user_in(d, 0), ITEMS, [None] * 5, SCORES, 2, 0.0)
    rid = "abc" + first.suffix
    for item in (10, 11, 12):
        assert d.feedback(rid, item, "skip", 1.0) is True
    assert d.feedback(rid, 11, "skip", 1.0) is False  # among the last two
    assert d.feedback(rid, 10, "skip", 1.0) is True  # forgotten: counted again
    with pytest.raises(ConfigError, match="repeat_memory"):
        load_config(CONFIG.replace("policy:\n", "policy:\n  repeat_memory: 0\n"))


def test_the_sated_arm_lowers_what_the_user_just_saw() -> None:
    d = decisions()
    d.satiation.params[:, 2] = 10.0  # a known λ: a category shown once is pushed down
    user = user_in(d, 2)
    cats = ["a", "a", "b", "c", "d"]
    first, states = d.decide(user, ITEMS, cats, SCORES, 1, 0.0)
    assert first.indices.tolist() == [0] and states.tolist() == [[0.0]]
    again, states = d.decide(user, ITEMS, cats, SCORES, 1, 1.0)
    assert again.indices.tolist() == [2]  # "a" is sated: item 11 too
    assert states.tolist() == [[0.0]]
    other = user_in(d, 0)  # the greedy arm keeps states but does not apply them
    d.decide(other, ITEMS, cats, SCORES, 1, 0.0)
    assert d.decide(other, ITEMS, cats, SCORES, 1, 1.0)[0].indices.tolist() == [0]


def test_an_evaluated_policy_with_satiation_sees_the_penalty_the_served_one_does_not() -> None:
    """policy.evaluate ``greedy+satiation`` beside a policy that serves without satiation:
    the replica keeps satiation states, the served choice ignores them, and the evaluated
    entry's inclusion is on the penalised values, plain ``greedy``'s on the model's."""
    d = decisions(outside_experiments("  evaluate: [greedy, greedy+satiation]\n"))
    assert d.satiation is not None and d.logged
    d.satiation.params[:, 2] = 10.0  # a known λ: a category shown once is pushed down
    cats = ["a", "a", "b", "c", "d"]
    first, _ = d.decide(7, ITEMS, cats, SCORES, 1, 0.0)
    assert first.indices.tolist() == [0]
    assert first.inclusion["greedy+satiation"].tolist() == [1.0]  # nothing sated yet
    again, states = d.decide(7, ITEMS, cats, SCORES, 1, 1.0)
    assert again.indices.tolist() == [0] and states[0, 0] > 0  # served greedy, unpenalised
    assert again.inclusion["served"].tolist() == again.inclusion["greedy"].tolist() == [1.0]
    assert again.inclusion["greedy+satiation"].tolist() == [0.0]  # "a" is sated there


def test_under_a_sated_arm_a_bare_entry_is_evaluated_on_the_model_scores() -> None:
    """The sated arm chooses on penalised values (``served`` and ``greedy+satiation`` agree);
    a bare ``greedy`` entry sees the model's scores."""
    d = decisions(CONFIG.replace("policy:\n",
                                 "policy:\n  evaluate: [greedy, greedy+satiation]\n"))
    d.satiation.params[:, 2] = 10.0
    user = user_in(d, 2)  # the sated arm
    cats = ["a", "b", "b", "c", "d"]
    d.decide(user, ITEMS, cats, SCORES, 1, 0.0)  # shows item 10 ("a")
    again, _ = d.decide(user, ITEMS, cats, SCORES, 1, 1.0)
    assert again.indices.tolist() == [1]  # "a" is sated: item 11
    assert again.inclusion["served"].tolist() == [1.0]
    assert again.inclusion["greedy+satiation"].tolist() == [1.0]
    assert again.inclusion["greedy"].tolist() == [0.0]  # the model ranks item 10 first


def test_an_uncertain_satiation_entry_reads_the_show_counts() -> None:
    """``ucb+satiation`` beside greedy serving: the replica counts shows, and UCB's bonus
    for the item shown once (scale / sqrt(2)) falls below the unshown runner-up's."""
    d = decisions(outside_experiments("  evaluate: [ucb+satiation]\n  scale: 10.0\n"))
    assert d.shows is not None
    d.decide(3, ITEMS, None, SCORES, 1, 0.0)
    again, _ = d.decide(3, ITEMS, None, SCORES, 1, 1.0)
    assert again.indices.tolist() == [0]  # greedy shows item 10 again
    assert again.inclusion["ucb+satiation"].tolist() == [0.0]  # UCB would show item 11


def test_an_evaluated_satiation_entry_alone_teaches_the_fit() -> None:
    d = decisions(outside_experiments("  evaluate: [greedy+satiation]\n"))
    decision, states = d.decide(3, ITEMS, list("abcde"), SCORES, 2, 0.0)
    assert states is not None
    shown = [ITEMS[i] for i in decision.indices]
    d.held("r1", 0.0, shown, states, SCORES[decision.indices])
    d.feedback("r1", shown[0], "click", 1.0)
    d.feedback("r2", 99, "skip", 20.0)  # past the window: the other is a non-click
    assert d.satiation.observed == 2


def test_evaluate_names_kinds_with_or_without_satiation() -> None:
    slots = CONFIG.split("policy:")[0]
    with pytest.raises(ConfigError, match="evaluate"):
        load_config(slots + "policy: {evaluate: [thompson+sated]}\n")
    assert load_config(slots + "policy: {evaluate: [ucb+satiation]}\n").policy.evaluate == (
        "ucb+satiation",)
    with pytest.raises(ConfigError, match="category_slot"):  # it needs the categories
        load_config(slots + "policy: {evaluate: [greedy+satiation], "
                            "satiation: {category_slot: nope}}\n")


def test_feedback_and_silence_teach_the_satiation_fit() -> None:
    d = decisions()
    user = user_in(d, 2)
    decision, states = d.decide(user, ITEMS, list("abcde"), SCORES, 2, 0.0)
    shown = [ITEMS[i] for i in decision.indices]
    d.held("r1.0.2", 0.0, shown, states, SCORES[decision.indices])
    d.feedback("r1.0.2", shown[0], "click", 1.0)
    assert d.satiation.observed == 1
    d.feedback("r1.0.2", shown[0], "click", 2.0)  # the same click again teaches nothing
    assert d.satiation.observed == 1
    d.feedback("r2", 99, "skip", 20.0)  # past the window: the unclicked one is a non-click
    assert d.satiation.observed == 2
    assert d.stats()["satiation"]["observed"] == 2


def test_logits_of_scores() -> None:
    assert logits_of(np.array([0.5, 0.0, 2.0])).tolist() == pytest.approx(
        [0.0, np.log(1e-6 / (1 - 1e-6)), np.log((1 - 1e-6) / 1e-6)])
    assert logits_of(np.array([0.75, 0.0]), (0.0, 1.5)).tolist() == pytest.approx(
        [0.0, np.log(1e-6 / (1 - 1e-6))])
    assert logits_of(np.array([np.nan, 0.0]))[0] == logits_of(np.array([0.0]))[0]


def test_a_user_is_one_user_to_the_satiation_fit_as_7_or_as_the_string_7() -> None:
    d = decisions()
    user = user_in(d, 2)  # the sated arm (the string spells the same number: the same arm)
    categories = list("abcde")
    d.decide(user, ITEMS, categories, SCORES, 2, 0.0)
    d.decide(str(user), ITEMS, categories, SCORES, 2, 1.0)
    assert len(d.satiation) == 1  # states held for one user
    states = d.satiation.states(user, categories, 2.0)
    # a and b shown at both requests, gamma 0.5: (1 * 0.5 + 1) * 0.5; one request's: 0.5
    assert states[:2, 0].tolist() == pytest.approx([0.75, 0.75])


def test_a_nan_score_ranks_last_below_items_the_penalty_sinks() -> None:
    d = decisions()
    user = user_in(d, 2)  # the sated arm
    categories = ["a", "a", "b", "b", "c"]
    shown, _ = d.decide(user, ITEMS, categories, SCORES, 2, 0.0)
    assert shown.indices.tolist() == [0, 1]  # category a, now sated
    d.satiation.params[:, 2] = 50.0  # lambda: the penalty sinks a's items below any logit
    scores = np.array([0.9, 0.8, 0.7, np.nan, 0.5])
    decision, _ = d.decide(user, ITEMS, categories, scores, 5, 1.0)
    assert decision.indices.tolist() == [2, 4, 0, 1, 3]


def test_a_combined_score_beyond_one_ranks_by_its_value() -> None:
    """``serve.score: click + 0.5 * like - finish`` ranges over [-1, 1.5]: every score
    keeps its order, none ties at the ends of a probability's range."""
    cfg = load_config(outside_experiments("") + "serve: {score: click + 0.5 * like - finish}\n"
                      "tasks: [{name: click}, {name: like}, {name: finish}]\n")
    from monolith_ray.config.tasks import parse_score
    score = parse_score(cfg.serve.score, cfg.task_names)
    assert score.bounds == (-1.0, 1.5)
    d = Decisions(cfg.policy, seed=0, score_bounds=score.bounds)
    scores = np.array([1.05, 1.4, 0.99, -0.9, -0.01, np.nan])
    decision, _ = d.decide(1, [*ITEMS, 15], None, scores, 6, 0.0)
    assert decision.indices.tolist() == [1, 0, 2, 4, 3, 5]  # the NaN last


def test_listing_two_equal_arms_the_other_way_gives_every_user_the_other_arm() -> None:
    """What a crossover of two loops relies on (``benchmarks.policies``' shared loops): the
    same experiment with its two equal arms listed the other way round serves each user
    with the other arm's policy."""
    arms = ["{name: explore, policy: {kind: epsilon, epsilon: 0.2}}",
            "{name: bandit, policy: {kind: thompson, scale: 0.5}}"]

    def served(order: list[str]) -> list[tuple[str | None, str]]:
        d = decisions(outside_experiments("")
                      + f"experiments:\n  - name: ope\n    arms: [{', '.join(order)}]\n")
        out = []
        for user in range(200):
            decision, _ = d.decide(user, ITEMS, None, SCORES, 2, 0.0)
            out.append((decision.arm, decision.policy))
        return out

    first, swapped = served(arms), served(arms[::-1])
    assert {policy for _, policy in first} == {"epsilon", "thompson"}
    assert all(a != b for a, b in zip(first, swapped))
    other = {"ope/explore": "ope/bandit", "ope/bandit": "ope/explore"}
    assert [other[label] for label, _ in first] == [label for label, _ in swapped]
