"""The embedding store: cuckoo map, per-slot tables, admission, expiry, row-wise optimizers.

NumPy + Numba only (no Ray, no JAX); every operation takes a whole batch of ids.
"""

from monolith_ray.table.admission import AdmissionFilter
from monolith_ray.table.cuckoo import CuckooMap
from monolith_ray.table.embedding import EmbeddingTable, TableDelta
from monolith_ray.table.initializers import fill_rows, init_rows
from monolith_ray.table.optimizers import RowOptimizer, make_optimizer

__all__ = [
    "AdmissionFilter",
    "CuckooMap",
    "EmbeddingTable",
    "RowOptimizer",
    "TableDelta",
    "fill_rows",
    "init_rows",
    "make_optimizer",
]
