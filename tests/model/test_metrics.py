import math

import numpy as np
import pytest

from monolith_ray.model import StreamingAUC, StreamingLogLoss, auc


def _data(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    probs = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * labels - 0.8)))
    return probs.astype(np.float32), labels


def _brute_auc(probs, labels):
    pos, neg = probs[labels > 0.5], probs[labels <= 0.5]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg))


def test_exact_auc_handles_ties():
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    assert auc([0.1, 0.9], [0, 1]) == 1.0
    assert auc([0.1, 0.9], [1, 0]) == 0.0
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 5, size=300) / 4.0
    labels = rng.integers(0, 2, size=300)
    assert auc(probs, labels) == pytest.approx(_brute_auc(probs, labels), abs=1e-12)


def test_exact_auc_one_class_is_nan():
    assert math.isnan(auc([0.2, 0.3], [1, 1]))


def test_streaming_auc_matches_exact():
    probs, labels = _data()
    metric = StreamingAUC()
    for start in range(0, len(probs), 4096):
        metric.update(probs[start : start + 4096], labels[start : start + 4096])
    assert abs(metric.result() - auc(probs, labels)) < 1e-3


def test_streaming_auc_merge_of_halves_equals_whole():
    probs, labels = _data()
    rng = np.random.default_rng(2)
    weights = rng.random(len(probs))
    whole, first, second = StreamingAUC(), StreamingAUC(), StreamingAUC()
    whole.update(probs, labels, weights)
    half = len(probs) // 2
    first.update(probs[:half], labels[:half], weights[:half])
    second.update(probs[half:], labels[half:], weights[half:])
    assert first.merge(second).result() == pytest.approx(whole.result(), abs=1e-12)


def test_streaming_auc_weights_act_as_repeats():
    probs, labels = _data(2000)
    weights = np.random.default_rng(3).integers(0, 4, size=len(probs))
    weighted, repeated = StreamingAUC(), StreamingAUC()
    weighted.update(probs, labels, weights)
    repeated.update(np.repeat(probs, weights), np.repeat(labels, weights))
    assert weighted.result() == pytest.approx(repeated.result(), abs=1e-12)


def test_streaming_auc_empty_and_mismatched():
    assert math.isnan(StreamingAUC().result())
    with pytest.raises(ValueError):
        StreamingAUC().update([0.1, 0.2], [1])
    with pytest.raises(ValueError):
        StreamingAUC(100).merge(StreamingAUC(200))


def test_streaming_logloss_matches_formula_and_merges():
    probs, labels = _data(5000)
    weights = np.random.default_rng(4).random(len(probs))
    p = probs.astype(np.float64)
    per_example = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    expected = (weights * per_example).sum() / weights.sum()
    whole, first, second = StreamingLogLoss(), StreamingLogLoss(), StreamingLogLoss()
    whole.update(probs, labels, weights)
    first.update(probs[:1000], labels[:1000], weights[:1000])
    second.update(probs[1000:], labels[1000:], weights[1000:])
    assert whole.result() == pytest.approx(expected, rel=1e-9)
    assert first.merge(second).result() == pytest.approx(expected, rel=1e-9)


def test_streaming_logloss_clips_and_empty_is_nan():
    assert math.isnan(StreamingLogLoss().result())
    metric = StreamingLogLoss()
    metric.update([0.0, 1.0], [1, 0])
    assert math.isfinite(metric.result())
