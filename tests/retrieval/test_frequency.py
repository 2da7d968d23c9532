"""StreamingFrequency: the gap between an item's batches, estimated online."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.retrieval.frequency import StreamingFrequency


def test_items_seen_every_k_batches_converge_to_q_of_one_over_k():
    freq = StreamingFrequency(buckets=1 << 12, alpha=0.05, initial_gap=50)
    for step in range(1, 2001):
        items = [1]  # every batch
        if step % 4 == 0:
            items.append(2)
        if step % 25 == 0:
            items.append(3)
        freq.update(np.array(items * 3, np.int64))  # duplicates in a batch count once
    q = np.exp(freq.log_q(np.array([1, 2, 3], np.int64)))
    np.testing.assert_allclose(q, [1.0, 1 / 4, 1 / 25], rtol=0.05)


def test_an_unseen_item_has_the_initial_gap_and_q_never_exceeds_one():
    freq = StreamingFrequency(buckets=64, alpha=0.5, initial_gap=10)
    assert freq.log_q(np.array([99], np.int64))[0] == pytest.approx(-np.log(10), rel=1e-6)
    freq.update(np.array([5], np.int64))
    freq.update(np.array([5], np.int64))
    assert freq.log_q(np.array([5], np.int64))[0] <= 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        StreamingFrequency(alpha=0.0)


def test_the_step_count_goes_past_2_to_the_31_batches():
    """30 days of batches of 64 at 100k examples a second are 4e9 steps."""
    freq = StreamingFrequency(buckets=64, alpha=0.5, initial_gap=10)
    freq.update(np.array([5], np.int64))
    freq.step = 2**31 + 7  # as after that many batches
    freq.update(np.array([5], np.int64))
    assert freq.last[freq._bucket(np.array([5], np.int64))][0] == 2**31 + 8
