"""A shard's optional tables (the retrieval towers'): a snapshot taken before they existed
restores, the optional tables starting empty; any other table missing still fails."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.config import SlotConfig
from monolith_ray.ps.shard import ShardServer

ITEM = SlotConfig("item_id", 2, 4)
TOWER = SlotConfig("tower_item_id", 2, 4)


def test_an_optional_table_the_snapshot_lacks_starts_empty(tmp_path) -> None:
    old = ShardServer([ITEM])
    fids = np.arange(1, 6, dtype=np.int64)
    rows = old.pull({"item_id": fids}, 100)["item_id"]
    old.snapshot(tmp_path / "shard-0")
    new = ShardServer([ITEM, TOWER], optional=["tower_item_id"])
    new.pull({"tower_item_id": fids}, 100)  # rows a restore must not keep
    new.restore(tmp_path / "shard-0")
    np.testing.assert_array_equal(new.lookup({"item_id": fids})["item_id"], rows)
    assert new.stats()["tower_item_id"]["rows"] == 0
    with pytest.raises(FileNotFoundError, match="no snapshot of slot 'tower_item_id'"):
        ShardServer([ITEM, TOWER]).restore(tmp_path / "shard-0")
