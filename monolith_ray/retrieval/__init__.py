"""Retrieval over the whole catalogue: a two-tower model (``monolith_ray.model.two_tower``)
trained against tower tables in the parameter servers (``tables``, ``train``), a streaming item
frequency for its logQ correction (``frequency``), an ANN index of item vectors (``index``)
and the serving-side :class:`Retriever` that holds both (``retriever``; no Ray)."""

from monolith_ray.retrieval.frequency import StreamingFrequency as StreamingFrequency
from monolith_ray.retrieval.index import IndexConfig as IndexConfig, ItemIndex as ItemIndex
from monolith_ray.retrieval.retriever import Retriever as Retriever
from monolith_ray.retrieval.tables import (
    pooled_rows as pooled_rows,
    table_name as table_name,
    tower_slots as tower_slots,
)
from monolith_ray.retrieval.train import (
    TowerTrainer as TowerTrainer,
    positive_pairs as positive_pairs,
)

__all__ = ["IndexConfig", "ItemIndex", "Retriever", "StreamingFrequency", "TowerTrainer",
           "pooled_rows", "positive_pairs", "table_name", "tower_slots"]
