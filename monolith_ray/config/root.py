"""The whole config: :class:`Config`, one field per section, and :func:`load_config`.

A new section is one more module beside this one (a frozen dataclass whose
``__post_init__`` checks its values) and one more field here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monolith_ray.config.data import DataConfig
from monolith_ray.config.dense import MAX_DENSE, DenseFeature
from monolith_ray.config.history import HistoryConfig
from monolith_ray.config.joiner import JoinerConfig
from monolith_ray.config.kafka import KafkaConfig
from monolith_ray.config.limits import LimitsConfig
from monolith_ray.config.loader import ConfigError, from_dict, load_yaml
from monolith_ray.config.model import ModelConfig
from monolith_ray.config.online import OnlineConfig
from monolith_ray.config.policy import (
    ExperimentConfig,
    PolicyConfig,
    check_experiments,
    uses_satiation,
)
from monolith_ray.config.retrieval import RetrievalConfig
from monolith_ray.config.serve import ServeConfig
from monolith_ray.config.slots import AdmissionConfig, SlotConfig
from monolith_ray.config.supervision import SupervisionConfig
from monolith_ray.config.tasks import DEFAULT_TASKS, TaskConfig, check_tasks, parse_score
from monolith_ray.config.train import TrainConfig
from monolith_ray.schemas import label_column

DEFAULT_CONFIG = Path(__file__).parents[1] / "defaults" / "movielens.yaml"


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole job's configuration: one section per field (each documented in its own
    module's dataclass)."""

    slots: tuple[SlotConfig, ...]
    dense: tuple[DenseFeature, ...] = ()
    admission: AdmissionConfig = dataclasses.field(default_factory=AdmissionConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    kafka: KafkaConfig = dataclasses.field(default_factory=KafkaConfig)
    joiner: JoinerConfig = dataclasses.field(default_factory=JoinerConfig)
    online: OnlineConfig = dataclasses.field(default_factory=OnlineConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    supervision: SupervisionConfig = dataclasses.field(default_factory=SupervisionConfig)
    history: HistoryConfig = dataclasses.field(default_factory=HistoryConfig)
    tasks: tuple[TaskConfig, ...] = DEFAULT_TASKS
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    experiments: tuple[ExperimentConfig, ...] = ()
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)

    def __post_init__(self) -> None:
        if not self.slots:
            raise ConfigError("slots", "must list at least one slot")
        for attr in ("name", "slot_id"):
            first_index: dict[Any, int] = {}
            for i, slot in enumerate(self.slots):
                value = getattr(slot, attr)
                j = first_index.setdefault(value, i)
                if j != i:
                    raise ConfigError(
                        f"slots[{i}].{attr}", f"duplicate {value!r}, already used by slots[{j}]"
                    )
        if len(self.dense) > MAX_DENSE:
            raise ConfigError("dense", f"{len(self.dense)} features, more than {MAX_DENSE}")
        try:
            check_tasks(self.tasks)
        except ConfigError as err:
            raise err.under("tasks") from None
        taken = {label_column(self.task_names, i): f"the label column of tasks[{i}]"
                 for i in range(1, len(self.tasks))}
        for i, slot in enumerate(self.slots):
            if slot.name in taken:
                raise ConfigError(f"slots[{i}].name", f"{slot.name!r} is already "
                                                      f"{taken[slot.name]}")
        taken.update((name, "a base column") for name in ("time", "label", "weight"))
        taken.update((s.name, "a slot") for s in self.slots)
        for i, feature in enumerate(self.dense):
            if feature.name in taken or feature.name.startswith("_"):
                raise ConfigError(f"dense[{i}].name", f"{feature.name!r} is already "
                                  f"{taken.get(feature.name, 'a reserved column name')}")
            taken[feature.name] = "a dense feature"
        try:
            self.history.check_slots(self.slots)
        except ConfigError as err:
            raise err.under("history") from None
        if self.serve.exclude_seen:
            fitting = [h.name for h in self.history.slots if h.source == self.serve.item_slot]
            if self.serve.exclude_seen not in fitting:
                raise ConfigError("serve.exclude_seen", f"{self.serve.exclude_seen!r} is not a "
                                  f"history slot of serve.item_slot "
                                  f"({self.serve.item_slot!r}); those: "
                                  f"{', '.join(fitting) or 'none'}")
        if self.history.slots and self.history.shards > self.kafka.partitions:
            raise ConfigError("history.shards", f"{self.history.shards} history shards for "
                              f"kafka.partitions {self.kafka.partitions}: each shard holds the "
                              f"users of whole examples partitions, so at most that many")
        try:
            parse_score(self.serve.score, self.task_names)
        except ConfigError as err:
            raise err.under("serve.score") from None
        try:
            check_experiments(self.experiments)
        except ConfigError as err:
            raise err.under("experiments") from None
        category = self.policy.satiation.category_slot
        if (uses_satiation(self.policy, self.experiments)
                and category not in {s.name for s in self.slots}):
            raise ConfigError("policy.satiation.category_slot", f"{category!r} is not a slot; "
                              f"slots: {', '.join(s.name for s in self.slots)}")

        try:
            self.retrieval.check_slots(self.slots)
        except ConfigError as err:
            raise err.under("retrieval") from None
        if self.retrieval.enabled:
            at = {s.name: i for i, s in enumerate(self.slots)}
            for tower in self.table_slots[len(self.slots):]:
                if tower.name in at:
                    raise ConfigError(f"slots[{at[tower.name]}].name", f"{tower.name!r} is "
                                      f"the name of a retrieval tower's table")

    @property
    def table_slots(self) -> tuple[SlotConfig, ...]:
        """Every table the parameter servers hold: the slots, then with ``retrieval`` a
        ``tower_<slot>`` table per tower slot (``retrieval.tables.tower_slots``)."""
        if not self.retrieval.enabled:
            return self.slots
        from monolith_ray.retrieval.tables import tower_slots

        names = (*self.retrieval.user_slots, *self.retrieval.item_slots)
        return (*self.slots, *tower_slots(self.slots, names,
                                          optimizer=self.retrieval.optimizer,
                                          initializer=self.retrieval.initializer))

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks' names in config order (the first is the ``label`` column's)."""
        return tuple(t.name for t in self.tasks)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """The config in ``data`` (as parsed from YAML); see :func:`from_dict`."""
        return from_dict(cls, data)

    def check_serving(self) -> None:
        """ConfigError unless ``serve.user_slot`` and ``serve.item_slot`` name slots: checked
        when serving starts, as configs that only train may name their slots otherwise."""
        names = [s.name for s in self.slots]
        for attr in ("user_slot", "item_slot"):
            if getattr(self.serve, attr) not in names:
                raise ConfigError(f"serve.{attr}", f"{getattr(self.serve, attr)!r} is not a "
                                                   f"slot; slots: {', '.join(names)}")
        if self.retrieval.enabled:
            if self.retrieval.item_slots[0] != self.serve.item_slot:
                raise ConfigError("retrieval.item_slots[0]", f"must be serve.item_slot "
                                  f"({self.serve.item_slot!r}): the towers tell items apart "
                                  f"by their first item slot, got "
                                  f"{self.retrieval.item_slots[0]!r}")
            if self.retrieval.candidates > self.serve.max_candidates:
                raise ConfigError("retrieval.candidates",
                                  f"at most serve.max_candidates "
                                  f"({self.serve.max_candidates}), got "
                                  f"{self.retrieval.candidates}")

    def slot(self, name: str) -> SlotConfig:
        """The slot called ``name``; KeyError listing the slot names if there is none."""
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(f"no slot named {name!r}; slots: {', '.join(s.name for s in self.slots)}")


def load_config(source: str | os.PathLike[str] = DEFAULT_CONFIG,
                overrides: Sequence[str] = ()) -> Config:
    """The :class:`Config` in a YAML file or YAML text, with ``key.path=value`` overrides
    (see :func:`~monolith_ray.config.loader.load_yaml`). The default is the embedded
    MovieLens-100K config."""
    return Config.from_dict(load_yaml(source, overrides))
