"""Task labels from actions: which tasks an action makes positive, and the label fields an
example carries (``config.tasks``).

The joiner keeps an impression's labels as bits, bit t for task t, set by the actions joined
to it within the window. One task (the default ``click``, positive on any positive action):
an example ends ``,"label":1.0,"weight":1.0}`` or ``,"label":0.0,"weight":<1/r>}`` as it
always has. Several: ``label`` is the first task's and ``labels`` holds every task's, e.g.
``,"label":1.0,"labels":{"click":1.0,"like":0.0},"weight":1.0}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monolith_ray.config.tasks import DEFAULT_TASKS, TaskConfig
from monolith_ray.messages import encode


class TaskLabels:
    """The label rules of ``tasks``: :attr:`bits` (action -> the bits of the tasks it makes
    positive; an action of no task is absent), :attr:`full` (every task positive: nothing an
    action could add) and :meth:`tail`, the bytes that close an example's JSON object. An
    example of no positive task is a negative and weighs ``negative_weight`` (``1 / r`` of
    negative sampling), any other 1."""

    def __init__(self, tasks: Sequence[TaskConfig] = DEFAULT_TASKS,
                 negative_weight: float = 1.0) -> None:
        self.names = tuple(t.name for t in tasks)
        self.full = (1 << len(self.names)) - 1
        self.bits: dict[str, int] = {}
        for t, task in enumerate(tasks):
            for action in task.actions:
                self.bits[action] = self.bits.get(action, 0) | (1 << t)
        self._negative_weight = encode(negative_weight)
        self._tails: dict[int, bytes] = {}

    def tail(self, labels: int) -> bytes:
        """``,"label":..[,"labels":{..}],"weight":..}`` of an example whose tasks ``labels``
        (bits) are positive (made once per combination)."""
        tail = self._tails.get(labels)
        if tail is None:
            first = b'"label":%s' % (b"1.0" if labels & 1 else b"0.0")
            weight = b"1.0" if labels else self._negative_weight
            if len(self.names) == 1:
                tail = b",%s,\"weight\":%s}" % (first, weight)
            else:
                every = encode({n: float(labels >> t & 1) for t, n in enumerate(self.names)})
                tail = b',%s,"labels":%s,"weight":%s}' % (first, every, weight)
            self._tails[labels] = tail
        return tail
