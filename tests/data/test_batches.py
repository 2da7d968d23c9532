import numpy as np
import pyarrow as pa
import pytest

from monolith_ray.config import SlotConfig
from monolith_ray.data.batches import iter_batches, make_batch
from monolith_ray.features import make_fids
from monolith_ray.schemas import SchemaError, example_schema

SLOTS = (SlotConfig(name="user", slot_id=1, dim=4),
         SlotConfig(name="tags", slot_id=2, dim=4, max_values=3, combiner="mean"))


def examples(**override):
    columns = {
        "time": pa.array([10, 30, 20, 40], pa.int64()),
        "label": pa.array([1, 0, 1, 0], pa.float32()),
        "weight": pa.array([1, 1, 2, 1], pa.float32()),
        "user": pa.array([5, 6, 5, None], pa.int64()),
        "tags": pa.array([[1, 2], [], None, [2, 3, 1]], pa.list_(pa.int64())),
    }
    columns.update(override)
    return pa.table({k: v for k, v in columns.items() if v is not None})


def test_fids_are_unique_and_indices_point_at_each_value():
    batch = make_batch(examples(), SLOTS)
    assert len(batch) == 4 and batch.now == 40.0
    np.testing.assert_array_equal(batch.fids["user"], np.unique(make_fids(1, np.array([5, 6]))))
    np.testing.assert_array_equal(batch.fids["tags"], np.unique(make_fids(2, np.array([1, 2, 3]))))
    user = batch.idx["user"]
    assert user.shape == (4, 1) and user.dtype == np.int32
    np.testing.assert_array_equal(batch.fids["user"][user[:3, 0]],
                                  make_fids(1, np.array([5, 6, 5])))
    assert user[3, 0] == -1  # null: no value
    tags = batch.idx["tags"]
    assert tags.shape == (4, 3)
    got = [batch.fids["tags"][row[row >= 0]].tolist() for row in tags]
    want = [make_fids(2, np.array(v, np.int64)).tolist() for v in ([1, 2], [], [], [2, 3, 1])]
    assert got == want
    assert (tags[0, 2], tags[1, 0], tags[2, 0]) == (-1, -1, -1)
    assert batch.labels.dtype == batch.weights.dtype == np.float32
    np.testing.assert_array_equal(batch.weights, [1, 1, 2, 1])


def test_record_batches_work_like_tables():
    table = examples()
    from_table = make_batch(table, SLOTS)
    from_record_batch = make_batch(table.to_batches()[0], SLOTS)
    for name in ("user", "tags"):
        np.testing.assert_array_equal(from_table.idx[name], from_record_batch.idx[name])


@pytest.mark.parametrize("column", ["user", "tags", "label", "time"])
def test_a_missing_column_is_named(column):
    with pytest.raises(SchemaError, match=f"'{column}'.*missing"):
        make_batch(examples(**{column: None}), SLOTS)


def test_a_mistyped_column_is_named():
    with pytest.raises(SchemaError, match="'user'.*int64.*int32"):
        make_batch(examples(user=pa.array([1, 2, 3, 4], pa.int32())), SLOTS)
    with pytest.raises(SchemaError, match="'tags'"):
        make_batch(examples(tags=pa.array([1, 2, 3, 4], pa.int64())), SLOTS)
    with pytest.raises(SchemaError, match="'label'"):
        make_batch(examples(label=pa.array([1, 0, 1, 0], pa.int64())), SLOTS)


def test_too_many_values_are_refused_naming_the_column():
    with pytest.raises(SchemaError, match="'tags'.*4 values.*max_values 3"):
        make_batch(examples(tags=pa.array([[1, 2, 3, 4], [], [], []], pa.list_(pa.int64()))), SLOTS)


def test_padding_adds_examples_that_count_for_nothing():
    batch = make_batch(examples(), SLOTS).padded(6)
    assert len(batch) == 6
    assert (batch.idx["tags"][4:] == -1).all() and (batch.idx["user"][4:] == -1).all()
    np.testing.assert_array_equal(batch.weights[4:], 0)
    assert batch.now == 40.0


def test_iter_batches_slices_in_order():
    table = pa.concat_tables([examples()] * 3)
    sizes = [len(b) for b in iter_batches(table, SLOTS, 5)]
    assert sizes == [5, 5, 2]
    assert example_schema(SLOTS).names == ["time", "label", "weight", "user", "tags"]


def test_batches_of_many_full_slots_match_a_per_slot_reference():
    """Single-valued slots that every example fills: each slot's batch arrays are its sorted
    distinct fids and each example's row among them, as np.unique gives them."""
    rng = np.random.default_rng(3)
    slots = tuple(SlotConfig(name=f"s{k}", slot_id=k + 1, dim=4) for k in range(6))
    n = 300
    columns = {"time": pa.array(np.arange(n), pa.int64()),
               "label": pa.array(np.zeros(n, np.float32)),
               "weight": pa.array(np.ones(n, np.float32))}
    for k, slot in enumerate(slots):
        columns[slot.name] = pa.array(rng.zipf(1.3, n) % (10 ** k + 1), pa.int64())
    batch = make_batch(pa.table(columns), slots)
    for slot in slots:
        fids = make_fids(slot.slot_id, columns[slot.name].to_numpy())
        unique, inverse = np.unique(fids, return_inverse=True)
        np.testing.assert_array_equal(batch.fids[slot.name], unique)
        np.testing.assert_array_equal(batch.idx[slot.name][:, 0], inverse)
