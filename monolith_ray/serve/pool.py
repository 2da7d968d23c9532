"""The candidate pool: the items ``/recommend`` draws from when a request names none."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monolith_ray.config import Config, ConfigError
from monolith_ray.schemas import value_text


class CandidatePool:
    """Items ``/recommend`` draws from: ids and each one's slot values."""

    def __init__(self, items: Sequence[tuple[Any, Mapping[str, Any]]] = ()) -> None:
        self.ids = [item_id for item_id, _ in items]
        self.slots = {item_id: dict(slots) for item_id, slots in items}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CandidatePool:
        """Read a JSON-lines file, one ``{"item_id": .., "slots": {..}}`` per line."""
        items = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    items.append((entry["item_id"], entry.get("slots", {})))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}:{n}: not an item line "
                                     f"({{\"item_id\": .., \"slots\": {{..}}}}): {err}") from None
        return cls(items)

    @classmethod
    def configured(cls, cfg: Config) -> CandidatePool:
        """The pool ``serve.candidate_pool`` names (empty if it names none)."""
        path = cfg.serve.candidate_pool
        if not path:
            return cls()
        if not Path(path).is_file():
            raise FileNotFoundError(f"serve.candidate_pool: no file {path}")
        return cls.load(path)

    def __len__(self) -> int:
        return len(self.ids)

    def draw(self, n: int, rng: np.random.Generator) -> list[Any]:
        """``n`` distinct item ids (all of them if the pool is smaller)."""
        if n >= len(self.ids):
            return list(self.ids)
        return [self.ids[i] for i in rng.choice(len(self.ids), n, replace=False)]


def check_pool(cfg: Config, pool: CandidatePool) -> None:
    """ConfigError (``serve.candidate_pool``) if a pool item sets the user slot (a request's
    user id fills it, and an item's would be scored, logged and filed as another user's), or
    two items are one id spelt twice (``7`` and ``"007"``: one row to the model, and a
    request naming either must get one item's features). O(pool items)."""
    seen: dict[str, Any] = {}
    for item_id in pool.ids:
        if cfg.serve.user_slot in pool.slots[item_id]:
            raise ConfigError("serve.candidate_pool", f"item {item_id!r} sets the user slot "
                                                      f"{cfg.serve.user_slot!r}")
        first = seen.setdefault(value_text(item_id), item_id)
        if first != item_id:
            raise ConfigError("serve.candidate_pool", f"items {first!r} and {item_id!r} are one "
                                                      f"id to the model")
