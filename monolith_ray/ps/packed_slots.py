"""PackedSlots: the per slot arrays of one shard call (ids, rows or gradients) as one 1-D
array and its layout. Every array that crosses a process costs a fixed serialization
overhead, so a call that carries one array for all its slots pays it once, not once per
slot; ``ps.wire`` sends it as one record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import NamedTuple

import numpy as np


class PackedSlots(NamedTuple):
    """Per slot arrays of one dtype as one 1-D array: slot ``names[i]`` holds ``counts[i]``
    items of shape ``shapes[i]`` (``()`` for ids, ``(D+1,)`` for rows and gradients), the
    slots one after another in ``data``, each slot's items in order."""

    names: tuple[str, ...]
    counts: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    data: np.ndarray

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], dtype: np.dtype | type | None = None
           ) -> PackedSlots:
        """Pack per slot arrays (n_s, ...), cast to ``dtype`` if given (same-kind casts)."""
        arrays = {name: np.asarray(a) for name, a in arrays.items()}
        return cls(tuple(arrays), tuple(a.shape[0] for a in arrays.values()),
                   tuple(a.shape[1:] for a in arrays.values()),
                   _concat([a.ravel() for a in arrays.values()], dtype))

    def unpack(self) -> dict[str, np.ndarray]:
        """Per slot its array (counts[i], *shapes[i]): views into ``data``."""
        sizes = [count * prod(shape) for count, shape in zip(self.counts, self.shapes)]
        if sum(sizes) != self.data.size:
            raise ValueError(f"packed arrays of {self.names} need {sum(sizes)} values, "
                             f"data has {self.data.size}")
        out, start = {}, 0
        for name, count, shape, size in zip(self.names, self.counts, self.shapes, sizes):
            out[name] = self.data[start:start + size].reshape(count, *shape)
            start += size
        return out


def _concat(parts: Sequence[np.ndarray], dtype: np.dtype | type | None = None) -> np.ndarray:
    """``np.concatenate(parts)`` (same-kind casts to ``dtype`` if given), also of no parts."""
    if not parts:
        return np.empty(0, dtype=dtype or np.float64)
    return np.concatenate(parts, dtype=dtype)
