"""The ``tasks`` section and the ``serve.score`` expression."""

import re

import numpy as np
import pytest

from monolith_ray.config import DEFAULT_CONFIG, ConfigError, load_config
from monolith_ray.config.tasks import TaskConfig, parse_score
from monolith_ray.messages import POSITIVE_ACTIONS

TASKS = """
tasks:
  - {name: click, actions: [click]}
  - {name: like, actions: [like, share], weight: 0.5}
  - {name: finish, actions: [finish]}
"""


def config(extra="", overrides=()):
    """The shipped config with ``extra`` YAML appended."""
    return load_config(DEFAULT_CONFIG.read_text() + extra, overrides)


def test_no_tasks_section_is_one_click_task_positive_on_any_positive_action():
    cfg = config()
    assert cfg.task_names == ("click",)
    assert cfg.tasks == (TaskConfig("click", POSITIVE_ACTIONS, 1.0),)
    assert cfg.serve.score == ""


def test_tasks_load_with_their_actions_and_weights():
    cfg = config(TASKS, ["serve.score=click + 0.5 * like"])
    assert cfg.task_names == ("click", "like", "finish")
    assert cfg.tasks[1].actions == ("like", "share") and cfg.tasks[1].weight == 0.5


@pytest.mark.parametrize("extra, key", [
    ("tasks: []", "tasks"),
    ("tasks: [{name: click}, {name: click}]", "tasks[1].name"),
    ("tasks: [{name: Click}]", "tasks[0].name"),
    ("tasks: [{name: click, actions: [poke]}]", "tasks[0].actions[0]"),
    ("tasks: [{name: click, actions: []}]", "tasks[0].actions"),
    ("tasks: [{name: click, weight: -1}]", "tasks[0].weight"),
])
def test_bad_tasks_name_their_key(extra, key):
    with pytest.raises(ConfigError) as err:
        config("\n" + extra + "\n")
    assert err.value.key == key


def test_a_task_label_column_may_not_be_a_slot():
    yaml = ("slots: [{name: label_like, slot_id: 1, dim: 4}]\n"
            "tasks: [{name: click}, {name: like}]\n")
    with pytest.raises(ConfigError, match="label column of tasks") as err:
        load_config(yaml)
    assert err.value.key == "slots[0].name"


def test_score_expressions_evaluate_over_task_probabilities():
    probs = {"click": np.array([0.2, 0.8]), "like": np.array([0.5, 0.1]),
             "finish": np.array([1.0, 0.0])}
    tasks = tuple(probs)
    cases = {"click + 0.5 * like": [0.45, 0.85], "": [0.2, 0.8], "click": [0.2, 0.8],
             "click * finish": [0.2, 0.0], "-like + 2": [1.5, 1.9],
             "(click + like) * 2 - finish": [0.4, 1.8], "1.5e0*like": [0.75, 0.15],
             "click - like - finish": [-1.3, 0.7]}
    for text, expected in cases.items():
        score = parse_score(text, tasks)
        np.testing.assert_allclose(score(probs), expected, rtol=1e-6, err_msg=text)
        assert score(probs).dtype == np.float32
    assert parse_score("click + 0.5 * like", tasks).tasks == {"click", "like"}


def test_score_bounds_hold_every_value_the_score_can_take():
    """``Score.bounds``: where the serving decision maps a score onto [0, 1] for its logits."""
    tasks = ("click", "like", "finish")
    cases = {"": (0, 1), "click + 0.5 * like": (0, 1.5), "-like + 2": (1, 2),
             "click * finish": (0, 1), "(click + like) * 2 - finish": (-1, 4),
             "click - like - finish": (-2, 1), "-(click - 2) * -3": (-6, -3)}
    rng = np.random.default_rng(0)
    probs = {t: rng.random(1000) for t in tasks}
    corners = {t: np.array([0.0, 1.0] * 4)[[i >> j & 1 for i in range(8)]]
               for j, t in enumerate(tasks)}  # every task at 0 or 1
    for text, (low, high) in cases.items():
        score = parse_score(text, tasks)
        assert score.bounds == (low, high), text
        for sample in (probs, corners):
            values = score(sample)
            assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, text


@pytest.mark.parametrize("text, reason", [
    ("click + dislike", "'dislike' is not a task"),
    ("__import__('os')", "is not a task"),
    ("click ** 2", "expected a task name"),
    ("click / 2", "unexpected '/'"),
    ("click +", "got the end"),
    ("(click", "expected ')'"),
    ("click like", "expected + - * or the end"),
    ("click; 1", "unexpected ';'"),
    ("x" * 300, "longer than"),
    ("0.5 + 1", "finite range wider than one value"),
    ("click * 0", "finite range wider than one value"),
    ("1e999 * click", "finite range wider than one value"),
    ("1e308 * click - 1e308 * like", "finite range wider than one value"),
])
def test_bad_scores_are_config_errors_naming_serve_score(text, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)) as err:
        config(TASKS, [f"serve.score={text}"])
    assert err.value.key == "serve.score"
