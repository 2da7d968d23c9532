"""OffsetCoverage: accounted offsets merge into ranges, and the resume position never jumps a
gap another trainer has not filled yet."""

from __future__ import annotations

import pyarrow as pa

from monolith_ray.data.offsets import OffsetCoverage


def rows(partition: int, offsets: list[int], froms: list[int]) -> pa.Table:
    return pa.table({"_partition": pa.array([partition] * len(offsets), pa.int32()),
                     "_offset": pa.array(offsets, pa.int64()),
                     "_from_offset": pa.array(froms, pa.int64())})


def test_rows_account_for_themselves_and_the_skipped_offsets_before_them() -> None:
    # Offsets 3 and 4 were skipped (malformed): row 5 accounts for them.
    coverage = OffsetCoverage.of_table(rows(0, [0, 1, 2, 5, 6], [0, 1, 2, 3, 6]))
    assert coverage.ranges() == {0: [(0, 7)]}
    assert coverage.resume({0: 0}) == {0: 7} and coverage.count() == 7


def test_resume_waits_for_a_block_another_trainer_still_holds() -> None:
    a, b = OffsetCoverage(), OffsetCoverage()
    b.update(OffsetCoverage.of_table(rows(0, list(range(100, 200)), list(range(100, 200)))))
    merged = OffsetCoverage()
    merged.update(b)
    assert merged.resume({0: 0, 1: 40}) == {0: 0, 1: 40}  # 0-99 still in flight at A
    a.update(OffsetCoverage.of_table(rows(0, list(range(0, 100)), list(range(0, 100)))))
    merged.update(a)
    assert merged.ranges() == {0: [(0, 200)]} and merged.resume({0: 0}) == {0: 200}


def test_ranges_merge_in_any_order_and_cross_processes_as_plain_data() -> None:
    coverage = OffsetCoverage({1: [(10, 20), (30, 40)]})
    coverage.add(1, 20, 30)
    coverage.add(1, 50, 50)
    coverage.add(2, 5, 9)
    assert coverage.ranges() == {1: [(10, 40)], 2: [(5, 9)]}
    assert OffsetCoverage(coverage.ranges()) == coverage
    assert coverage.resume({1: 10, 2: 0, 3: 7}) == {1: 40, 2: 0, 3: 7}
