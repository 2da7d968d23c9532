"""Leaving out of a request's candidates the items its user acted on (``serve.exclude_seen``).

The candidates are pool positions a retrieval search or a random draw gave, which took as
many more as the user has seen items, so that ``limit`` (``retrieval.candidates`` or
``serve.pool_draw``) are left. Costs O(c + s log s) for c candidates and s seen items (at
most the history slot's ``max_len``).
"""

from __future__ import annotations

import numpy as np


def unseen(take: np.ndarray, item_ids: np.ndarray, seen: np.ndarray, k: int, limit: int
           ) -> tuple[np.ndarray, int, int]:
    """Of pool positions ``take`` int64 (c,), best first, those whose item (``item_ids``:
    int64 raw id per pool position) is not in ``seen`` (int64 raw ids); if fewer than ``k``
    are, the first seen ones too, up to k; at most ``limit``, in their order -> (positions,
    seen items left out, seen items kept to fill up to k)."""
    if not seen.size:
        return take[:limit], 0, 0
    keep = ~np.isin(item_ids[take], seen)
    short = min(k, take.size) - int(keep.sum())
    kept = 0
    if short > 0:  # the first seen ones fill up to k
        back = np.flatnonzero(~keep)[:short]
        keep[back] = True
        kept = int(back.size)
    return take[keep][:limit], int((~keep).sum()), kept
