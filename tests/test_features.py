"""Feature ids: slot in the high bits, a stable 48-bit hash of the value in the low bits."""

import os
import subprocess
import sys

import numpy as np
import pytest

from monolith_ray.features import (MAX_SLOT_ID, VALUE_BITS, VALUE_MASK, hash_str, make_fids,
                                   mix64, slot_of)


def test_fids_carry_their_slot_and_are_non_negative():
    values = np.array([0, 1, -1, 2**62, -(2**63), 2**63 - 1], dtype=np.int64)
    for slot in (0, 1, 7, MAX_SLOT_ID):
        fids = make_fids(slot, values)
        assert fids.dtype == np.int64
        assert (fids >= 0).all()
        assert (slot_of(fids) == slot).all()
        assert ((fids & VALUE_MASK) == (mix64(values) & np.uint64(VALUE_MASK)).astype(np.int64)).all()


def test_same_value_in_two_slots_gives_two_ids():
    v = np.arange(1000, dtype=np.int64)
    assert not np.intersect1d(make_fids(1, v), make_fids(2, v)).size


def test_mix64_is_a_bijection_on_a_sample():
    v = np.arange(-50_000, 50_000, dtype=np.int64)
    assert np.unique(mix64(v)).size == v.size
    assert np.unique(mix64(v, seed=1)).size == v.size
    assert (mix64(v) != mix64(v, seed=1)).mean() > 0.99


def test_low_48_bits_collide_rarely():
    v = np.arange(1_000_000, dtype=np.int64)
    # Birthday bound for 1M values in 2**48: about 0.002 expected collisions.
    assert np.unique(make_fids(3, v)).size >= v.size - 1


def test_hash_str_is_blake2b_of_utf8_bytes():
    import hashlib
    h = hash_str(["M", "F", "électricien", ""])
    assert (h >= 0).all() and (h <= VALUE_MASK).all()
    expect = int.from_bytes(hashlib.blake2b("électricien".encode(), digest_size=8).digest(),
                            "little") & VALUE_MASK
    assert h[2] == expect
    assert h[0] != h[1]


def test_hashes_are_stable_across_processes():
    code = ("import numpy as np; from monolith_ray.features import make_fids, hash_str;"
            "print(make_fids(5, np.arange(4)).tolist(), hash_str(['a', 'b']).tolist())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1
    here = f"{make_fids(5, np.arange(4)).tolist()} {hash_str(['a', 'b']).tolist()}\n"
    assert outs == {here}


@pytest.mark.parametrize("slot", [-1, MAX_SLOT_ID + 1, 2**VALUE_BITS])
def test_out_of_range_slot_is_rejected(slot):
    with pytest.raises(ValueError, match="slot_id"):
        make_fids(slot, np.arange(3))
