"""The ``tasks`` section (what the model predicts, and which actions make each positive) and
the serving score over them (``serve.score``).

A task is a name, the action names that make an impression positive for it, and its loss
weight. With no ``tasks`` section there is one task, ``click``, positive on any positive
action (``messages.POSITIVE_ACTIONS``): the single label the joiner has always written.

``serve.score`` is an expression over task probabilities, e.g. ``click + 0.5 * like``: task
names, numbers, ``+``, ``-``, ``*`` and parentheses, parsed here by a small recursive-descent
parser (never ``eval``) into a :class:`Score` that evaluates over NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from monolith_ray.config.loader import ConfigError, _require, require_unique_names
from monolith_ray.messages import ACTIONS, POSITIVE_ACTIONS

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One task: ``name`` (lower-case letters, digits, ``_``; at most 32), ``actions``: the
    action names (of ``messages.ACTIONS``) that make an impression positive for it within the
    joiner's window, ``weight``: its weight in the loss (0 trains nothing for it)."""

    name: str
    actions: tuple[str, ...] = POSITIVE_ACTIONS
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError("name", f"{self.name!r}: must be lower-case letters, digits and "
                                      "'_', starting with a letter, at most 32 characters")
        if not self.actions:
            raise ConfigError("actions", "must list at least one action")
        for i, action in enumerate(self.actions):
            if action not in ACTIONS:
                raise ConfigError(f"actions[{i}]", f"{action!r} is not an action "
                                                   f"({', '.join(ACTIONS)})")
        _require(self, "weight", ge=0)


DEFAULT_TASKS = (TaskConfig("click"),)


def check_tasks(tasks: Sequence[TaskConfig]) -> None:
    """ConfigError (keyed under the list) for an empty list or a repeated name."""
    if not tasks:
        raise ConfigError("", "must list at least one task")
    require_unique_names(tasks, "", "tasks")


class Score:
    """A parsed ``serve.score``: :meth:`__call__` maps ``{task: probabilities (n,)}`` to the
    score (n,) float32. ``tasks``: the task names it reads; ``bounds``: (low, high), the
    range the score can take with every task's probability in [0, 1] (interval arithmetic
    over the expression: ``click + 0.5 * like`` is (0, 1.5); a sound bound, not always the
    tightest, e.g. ``click - click`` is (-1, 1))."""

    def __init__(self, text: str, tree: tuple, tasks: frozenset[str]) -> None:
        self.text, self._tree, self.tasks = text, tree, tasks
        self.bounds = _bounds(tree)

    def __call__(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(_evaluate(self._tree, probs), dtype=np.float32)

    def __repr__(self) -> str:
        return f"Score({self.text!r})"


_TOKEN = re.compile(r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[-+*()])|(?P<space>\s+)"
                    r"|(?P<bad>.)", re.DOTALL)
MAX_SCORE_CHARS = 256


def parse_score(text: str, tasks: Sequence[str]) -> Score:
    """The :class:`Score` of ``text`` over the task names ``tasks``; an empty text is the
    first task's probability. ConfigError (key empty: the caller places it) naming the
    position of anything else than task names, numbers, ``+ - *`` and parentheses, or an
    unknown task."""
    if not text.strip():
        return Score(tasks[0], ("task", tasks[0]), frozenset(tasks[:1]))
    if len(text) > MAX_SCORE_CHARS:
        raise ConfigError("", f"longer than {MAX_SCORE_CHARS} characters")
    tokens = _tokens(text, set(tasks))
    parser = _Parser(text, tokens)
    tree = parser.sum()
    if parser.at < len(tokens):
        raise parser.error("expected + - * or the end")
    score = Score(text, tree, frozenset(_names(tree)))
    low, high = score.bounds
    if not (math.isfinite(high - low) and high > low):
        raise ConfigError("", f"{text!r}: takes values in [{low}, {high}], which must be a "
                              f"finite range wider than one value, or every item scores alike")
    return score


def _tokens(text: str, tasks: set[str]) -> list[tuple[str, object, int]]:
    """(kind: num | name | op, value, position) of each token."""
    out: list[tuple[str, object, int]] = []
    for m in _TOKEN.finditer(text):
        kind, value = m.lastgroup, m.group()
        if kind == "bad":
            raise ConfigError("", f"{text!r}: unexpected {value!r} at character {m.start() + 1}")
        if kind == "name" and value not in tasks:
            raise ConfigError("", f"{text!r}: {value!r} is not a task; tasks: "
                                  f"{', '.join(sorted(tasks))}")
        if kind != "space":
            out.append((kind, float(value) if kind == "num" else value, m.start()))
    return out


class _Parser:
    """sum := product (('+' | '-') product)*; product := unary ('*' unary)*;
    unary := '-' unary | number | task | '(' sum ')'. Nesting is bounded by the text's
    length (``MAX_SCORE_CHARS``)."""

    def __init__(self, text: str, tokens: list[tuple[str, object, int]]) -> None:
        self.text, self.tokens, self.at = text, tokens, 0

    def error(self, expected: str) -> ConfigError:
        if self.at < len(self.tokens):
            _, value, pos = self.tokens[self.at]
            return ConfigError("", f"{self.text!r}: {expected}, got {value!r} at character "
                                   f"{pos + 1}")
        return ConfigError("", f"{self.text!r}: {expected}, got the end")

    def _op(self, ops: str) -> str | None:
        if self.at < len(self.tokens) and self.tokens[self.at][0] == "op" \
                and self.tokens[self.at][1] in ops:
            self.at += 1
            return str(self.tokens[self.at - 1][1])
        return None

    def sum(self) -> tuple:
        tree = self.product()
        while (op := self._op("+-")) is not None:
            tree = (op, tree, self.product())
        return tree

    def product(self) -> tuple:
        tree = self.unary()
        while self._op("*") is not None:
            tree = ("*", tree, self.unary())
        return tree

    def unary(self) -> tuple:
        if self._op("-") is not None:
            return ("neg", self.unary())
        if self._op("(") is not None:
            tree = self.sum()
            if self._op(")") is None:
                raise self.error("expected ')'")
            return tree
        if self.at < len(self.tokens) and self.tokens[self.at][0] in ("num", "name"):
            kind, value, _ = self.tokens[self.at]
            self.at += 1
            return ("const", value) if kind == "num" else ("task", value)
        raise self.error("expected a task name, a number, '-' or '('")


def _evaluate(tree: tuple, probs: Mapping[str, np.ndarray]) -> np.ndarray | float:
    kind = tree[0]
    if kind == "const":
        return tree[1]
    if kind == "task":
        return probs[tree[1]]
    if kind == "neg":
        return -_evaluate(tree[1], probs)
    left, right = _evaluate(tree[1], probs), _evaluate(tree[2], probs)
    return left + right if kind == "+" else left - right if kind == "-" else left * right


def _bounds(tree: tuple) -> tuple[float, float]:
    """(low, high) of the expression ``tree`` with every task in [0, 1]."""
    kind = tree[0]
    if kind == "const":
        return float(tree[1]), float(tree[1])
    if kind == "task":
        return 0.0, 1.0
    if kind == "neg":
        low, high = _bounds(tree[1])
        return -high, -low
    (a, b), (c, d) = _bounds(tree[1]), _bounds(tree[2])
    if kind == "+":
        return a + c, b + d
    if kind == "-":
        return a - d, b - c
    products = (a * c, a * d, b * c, b * d)
    return min(products), max(products)


def _names(tree: tuple) -> list[str]:
    if tree[0] == "task":
        return [tree[1]]
    if tree[0] == "const":
        return []
    return [name for child in tree[1:] for name in _names(child)]
