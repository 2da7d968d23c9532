"""The ``retrieval`` section: two-tower retrieval over the whole catalogue, in front of ranking
(``monolith_ray.retrieval``)::

    retrieval:
      user_slots: [user_id]
      item_slots: [item_id, category]
      candidates: 100          # retrieved per request, then ranked
      dim: 32
      dense_rate: 0.003        # Adam on the towers' MLPs
      optimizer: {kind: adam, learning_rate: 0.01}   # the tower tables' rows

Empty ``user_slots`` (the default): no retrieval, ``/recommend`` without candidates ranks a
random draw of the candidate pool. With them: the trainers train the towers on every batch
beside the ranking model, the shards hold a ``tower_<slot>`` table per slot named here, the
dense server holds the towers' MLPs as its ``tower`` part, the sync carries both to serving,
and each replica keeps an ANN index of the candidate pool's item vectors (the catalogue).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from monolith_ray.config.loader import ConfigError, _require
from monolith_ray.config.slots import InitializerConfig, OptimizerConfig, SlotConfig


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Two-tower retrieval (see the module doc).

    - ``user_slots``, ``item_slots``: the slots each tower reads (disjoint; empty user
      slots: retrieval off). The first item slot tells items apart (in-batch negatives, the
      logQ estimate): the item id; serving checks it is ``serve.item_slot``.
    - ``candidates``: items retrieved per request, then ranked (at most ``serve.max_candidates``).
    - ``dim``, ``hidden``, ``temperature``: the towers' output size, MLP widths, and the
      softmax temperature over cosines (``model.two_tower.TwoTowerSpec``).
    - ``dense_rate``: Adam's rate on the towers' MLPs (the dense server's ``tower`` part).
    - ``optimizer``, ``initializer``: the tower tables' rows (their other settings are the
      ranking slot's: ``slot_id``, ``dim``, expiry ...).
    - ``connectivity``, ``expansion_add``, ``expansion_search``: the HNSW index
      (``retrieval.index.IndexConfig``).
    - ``rebuild_share``: a sparse sync that changes the tower rows of more than this share
      of the catalogue rebuilds the index aside instead of upserting item by item.
    """

    user_slots: tuple[str, ...] = ()
    item_slots: tuple[str, ...] = ()
    candidates: int = 100
    dim: int = 32
    hidden: tuple[int, ...] = (64,)
    temperature: float = 0.05
    dense_rate: float = 3e-3
    optimizer: OptimizerConfig = OptimizerConfig(kind="adam", learning_rate=0.01)
    initializer: InitializerConfig = InitializerConfig(kind="normal", scale=0.1)
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 256
    rebuild_share: float = 0.25

    def __post_init__(self) -> None:
        _require(self, "candidates", ge=1, le=10_000)
        _require(self, "dim", ge=1, le=1024)
        _require(self, "temperature", gt=0)
        _require(self, "dense_rate", gt=0)
        _require(self, "connectivity", ge=2, le=256)
        _require(self, "expansion_add", ge=1, le=4096)
        _require(self, "expansion_search", ge=1, le=4096)
        _require(self, "rebuild_share", ge=0, le=1)
        for i, width in enumerate(self.hidden):
            if not 1 <= width <= 4096:
                raise ConfigError(f"hidden[{i}]", f"must be 1 to 4096, got {width!r}")
        if bool(self.user_slots) != bool(self.item_slots):
            raise ConfigError("item_slots" if self.user_slots else "user_slots",
                              "both towers need slots (or neither, for no retrieval)")
        for key in ("user_slots", "item_slots"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                raise ConfigError(key, f"a slot listed twice: {list(names)}")
        shared = sorted(set(self.user_slots) & set(self.item_slots))
        if shared:
            raise ConfigError("item_slots", f"{shared[0]!r} is also a user slot")

    @property
    def enabled(self) -> bool:
        return bool(self.user_slots)

    def check_slots(self, slots: Sequence[SlotConfig]) -> None:
        """ConfigError naming the key unless every tower slot is a slot."""
        names = {s.name for s in slots}
        for key in ("user_slots", "item_slots"):
            for i, name in enumerate(getattr(self, key)):
                if name not in names:
                    raise ConfigError(f"{key}[{i}]", f"{name!r} is not a slot; slots: "
                                      f"{', '.join(s.name for s in slots)}")
