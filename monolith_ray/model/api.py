"""The model API: what a model is given (:class:`ModelSpec`) and what it must do (:class:`Model`).

A model is pure JAX, two functions:

- ``init(key, spec) -> params``: its dense parameters, a dict of arrays (any nesting).
  The key ``"dense_norm"`` is reserved: the framework adds the dense features' fitted
  standardization there and applies it before the model sees ``dense``.
- ``apply(params, embeddings, dense) -> {task: logits (B,)}`` for every task of
  ``spec.tasks`` (the config's ``tasks``; by default the one task ``"click"``).

``embeddings`` maps each slot's name to its pooled row, ``(B, dim_s + 1)`` float32, in the
order of ``spec.slots`` (the steps build the dict in that order inside the jitted function;
passing a dict *through* ``jax.jit`` would sort its keys). Why the whole row: the tables keep
one row per id, ``dim + 1`` wide, whose column 0 is by convention the id's first-order
(linear) weight and columns 1..dim its embedding vector. Handing the model the whole row
keeps the step free of any model's convention (one array per slot in, one gradient per slot
out, every column trained through whatever the model does with it): DeepFM reads column 0
as its FM linear term, DCN-v2 treats the row as the slot's embedding, and a model of your
own may do either. ``dense`` is ``(B, n_dense)``, already standardized, ``(B, 0)`` when the
config has no dense features.

The embedding rows live on the parameter servers, not in ``params``: the steps
(``monolith_ray.model.steps``) pool them, differentiate the loss with respect to them and
hand those gradients back to the trainer to push.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jax

from monolith_ray.config import DenseFeature, ModelConfig, SlotConfig
from monolith_ray.config.tasks import DEFAULT_TASKS, TaskConfig
from monolith_ray.model.pooling import Combiner

Params = dict[str, Any]

TASKS = ("click",)


@dataclass(frozen=True)
class SlotSpec:
    """One sparse slot as a model sees it: its ``name``, embedding ``dim`` (its pooled row
    is ``dim + 1`` wide: :attr:`width`) and how its values are pooled (``combiner``)."""

    name: str
    dim: int
    combiner: Combiner = "sum"

    @property
    def width(self) -> int:
        return self.dim + 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything a model's ``init`` needs: the slots in input order, the number of dense
    features, the tasks it scores (names, the first is the ``label`` column's) and their
    weights in the loss, and the ``model`` config section (its own options: ``hidden``,
    ``cross_layers``, ...)."""

    slots: tuple[SlotSpec, ...]
    n_dense: int = 0
    tasks: tuple[str, ...] = TASKS
    model: ModelConfig = ModelConfig()
    task_weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.task_weights) != len(self.tasks):
            raise ValueError(f"{len(self.task_weights)} task weights for {len(self.tasks)} "
                             "tasks")


class Model(Protocol):
    """A model: a module or an object with these two pure functions (see the module doc)."""

    def init(self, key: jax.Array, spec: ModelSpec) -> Params: ...

    def apply(self, params: Params, embeddings: Mapping[str, jax.Array],
              dense: jax.Array) -> Mapping[str, jax.Array]: ...


def spec_of(slots: Sequence[SlotConfig], model: ModelConfig = ModelConfig(),
            dense: Sequence[DenseFeature] = (),
            tasks: Sequence[TaskConfig] = DEFAULT_TASKS) -> ModelSpec:
    """The spec of a config's ``slots``, ``model`` section, ``dense`` features and
    ``tasks``."""
    return ModelSpec(slots=tuple(SlotSpec(s.name, s.dim, s.combiner) for s in slots),
                     n_dense=len(dense), model=model, tasks=tuple(t.name for t in tasks),
                     task_weights=tuple(float(t.weight) for t in tasks))
