import subprocess
import sys

import numpy as np
import pytest

from monolith_ray.features import make_fids, mix64
from monolith_ray.ps.routing import shard_of


def test_shard_indices_are_in_range_and_int64():
    fids = make_fids(3, np.arange(1000))
    shards = shard_of(fids, 5)
    assert shards.dtype == np.int64 and shards.shape == (1000,)
    assert shards.min() >= 0 and shards.max() < 5


def test_routing_is_balanced():
    fids = make_fids(1, np.arange(100_000))
    counts = np.bincount(shard_of(fids, 4), minlength=4)
    assert np.all(np.abs(counts / 100_000 - 0.25) < 0.01)


def test_routing_is_independent_of_the_table_hash():
    # The cuckoo map buckets fids by mix64(fid) (seed 0); routing on the same hash would give
    # each shard only the buckets agreeing in those bits.
    fids = make_fids(1, np.arange(100_000))
    agree = (mix64(fids) % np.uint64(2)).astype(np.int64) == shard_of(fids, 2)
    assert abs(agree.mean() - 0.5) < 0.01


def test_routing_is_the_same_in_another_process():
    fids = make_fids(2, np.arange(50))
    code = ("import numpy as np; from monolith_ray.features import make_fids; "
            "from monolith_ray.ps.routing import shard_of; "
            "print(shard_of(make_fids(2, np.arange(50)), 7).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(shard_of(fids, 7).tolist())


def test_one_shard_takes_everything_and_bad_input_is_refused():
    assert not shard_of(np.arange(10, dtype=np.int64), 1).any()
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(np.arange(3, dtype=np.int64), 0)
    with pytest.raises(TypeError, match="int64"):
        shard_of(np.ones(3), 2)
