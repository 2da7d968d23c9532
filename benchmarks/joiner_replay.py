"""The joiner's core on a replay, without Kafka: throughput and peak memory against its budget.

:func:`replay` feeds :class:`~monolith_ray.stream.join.Joiner` batches of
``(kind, partition, [(offset, message bytes), ...])`` as ``StreamJoiner.poll`` does: ``add``
each batch, ``advance`` the clock with every partition read so far active (a replay has
unread records on every partition until it ends), ``take_output``, and ``commit_offsets``
every ``commit_interval_s`` of wall clock. It does not drain at the end (on 10 million
impressions that would hold every example still waiting in one list): what waits then is
counted in ``joiner_pending``. Figures:

- ``joiner_examples_per_s``: examples emitted / wall seconds of the whole replay (message
  generation included when the messages are generated on the fly, as by default);
- ``joiner_impressions``: valid features messages read; ``joiner_positives``,
  ``joiner_negatives``, ``joiner_pending`` and ``joiner_spilled``: the joiner's counters;
- ``joiner_peak_rss_mb``: this process's peak resident set during the replay minus its
  resident set just before (the peak is reset first where Linux allows,
  ``/proc/self/clear_refs``; else ``ru_maxrss``); ``joiner_memory_budget_mb``: the budget;
- ``joiner_held_mb``: the joiner's own estimate of what it holds in memory, at its peak;
- ``joiner_seconds``, ``joiner_cpu_seconds``: the replay's wall and CPU seconds (the cores
  may be shared; the CPU time shows what the replay itself took);
- ``commit_ms_max``: the slowest commit computation.

:func:`production_messages` makes the default input: impressions shaped like production ones
(26 categorical slots of ints, Zipf-like ids; no ``dense`` object yet) at ``per_s``
impressions per event-second, a ``click_rate`` of them clicked 1 to 300 event-seconds later
(within the window), the actions interleaved in event-time order. Messages are spliced from a
pool of pre-encoded slot objects, so generating them costs about a microsecond each.

Run: ``python -m benchmarks.joiner_replay [n_impressions]`` (10 million by default) prints
one JSON line. Target: ``joiner_peak_rss_mb <= joiner_memory_budget_mb + 300``.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from monolith_ray.config import DenseFeature, JoinerConfig, SlotConfig
from monolith_ray.stream.join import ACTIONS, FEATURES, Joiner

N_IMPRESSIONS = 10_000_000
N_SLOTS = 26
Batch = tuple[str, int, list[tuple[int, bytes]]]


def production_slots(n: int = N_SLOTS) -> list[SlotConfig]:
    """The slots ``c0`` .. ``c{n-1}`` of :func:`production_messages`' features."""
    return [SlotConfig(name=f"c{i}", slot_id=i + 1, dim=8) for i in range(n)]


def production_messages(n_impressions: int, per_s: int = 5000, click_rate: float = 0.03,
                        partitions: int = 1, start_time: int | None = None, seed: int = 0,
                        pool: int = 4096) -> Iterator[Batch]:
    """Features and actions batches of ``n_impressions`` production-shaped impressions: one
    features batch per partition per event-second (``per_s`` impressions round-robin over
    ``partitions``), then the clicks that second, ``click_rate`` of the impressions clicked
    1-300 s after them. Times start at ``start_time`` (default: far enough in the past that
    the last is not ahead of the wall clock)."""
    rng = np.random.default_rng(seed)
    cards = np.minimum(10 ** rng.uniform(2, 7, N_SLOTS), 10**7).astype(np.int64)
    ids = (rng.zipf(1.3, (pool, N_SLOTS)) - 1) % cards
    bodies = [b'"slots":{' + b",".join(b'"c%d":%d' % (j, v) for j, v in enumerate(row)) + b"}}"
              for row in ids.tolist()]
    n_seconds = -(-n_impressions // per_s)
    t0 = int(time.time()) - n_seconds - 600 if start_time is None else start_time
    offsets = {(FEATURES, p): 0 for p in range(partitions)}
    offsets.update({(ACTIONS, p): 0 for p in range(partitions)})
    clicks: list[tuple[int, int, int, int]] = []  # (time, partition, impression, item)
    n = 0
    for second in range(n_seconds):
        t = t0 + second
        count = min(per_s, n_impressions - n)
        items = rng.integers(0, 1_000_000, count).tolist()
        users = rng.integers(0, 10_000_000, count).tolist()
        body = rng.integers(0, pool, count).tolist()
        clicked = np.flatnonzero(rng.random(count) < click_rate).tolist()
        delays = rng.integers(1, 301, len(clicked)).tolist()
        batches: list[list[tuple[int, bytes]]] = [[] for _ in range(partitions)]
        for i in range(count):
            p = (n + i) % partitions
            batch = batches[p]
            batch.append((offsets[FEATURES, p] + len(batch),
                          b'{"request_id":"r%d","time":%d,"user_id":%d,"item_id":%d,%s'
                          % (n + i, t, users[i], items[i], bodies[body[i]])))
        for p, batch in enumerate(batches):
            offsets[FEATURES, p] += len(batch)
            yield FEATURES, p, batch
        for i, delay in zip(clicked, delays):
            heapq.heappush(clicks, (t + delay, (n + i) % partitions, n + i, items[i]))
        n += count
        last = second == n_seconds - 1
        yield from _due_clicks(clicks, math.inf if last else t, offsets, partitions)



def _due_clicks(clicks: list[tuple[int, int, int, int]], until: float,
                offsets: dict[tuple[str, int], int], partitions: int) -> Iterator[Batch]:
    """Pop the clicks timed at or before ``until`` -> one actions batch per partition."""
    batches: list[list[tuple[int, bytes]]] = [[] for _ in range(partitions)]
    while clicks and clicks[0][0] <= until:
        t, p, rid, item = heapq.heappop(clicks)
        batches[p].append((offsets[ACTIONS, p] + len(batches[p]),
                           b'{"request_id":"r%d","item_id":%d,"time":%d,"action":"click"}'
                           % (rid, item, t)))
    for p, batch in enumerate(batches):
        if batch:
            offsets[ACTIONS, p] += len(batch)
            yield ACTIONS, p, batch


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux) -> whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def replay(messages: Iterable[Batch], budget_mb: int = JoinerConfig.memory_budget_mb,
           cfg: JoinerConfig | None = None, slots: Sequence[SlotConfig] | None = None,
           commit_interval_s: float = 5.0,
           dense: Sequence[DenseFeature] | None = None) -> dict[str, Any]:
    """Feed ``messages`` to a Joiner with ``cfg`` (default: the default config) and memory
    budget ``budget_mb``, as ``StreamJoiner`` would -> the figures of the module docstring.
    ``slots``, ``dense``: the slots and dense features the messages use (default
    :func:`production_slots`, none)."""
    cfg = dataclasses.replace(cfg or JoinerConfig(), memory_budget_mb=budget_mb)
    reset = _reset_peak()
    base_kib = _status_kib("VmRSS") or 0
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    joiner = Joiner(cfg, slots=production_slots() if slots is None else slots, dense=dense)
    seen: list[tuple[str, int]] = []
    examples = held = 0
    commit_max = 0.0
    cpu = time.process_time()
    start = last_commit = time.perf_counter()
    for kind, partition, records in messages:
        if (kind, partition) not in seen:
            seen.append((kind, partition))
        joiner.add(kind, partition, records)
        joiner.advance(seen)
        out, _ = joiner.take_output()
        examples += len(out)
        held = max(held, joiner.held_bytes())
        now = time.perf_counter()
        if now - last_commit >= commit_interval_s:
            joiner.commit_offsets()
            last_commit = time.perf_counter()
            commit_max = max(commit_max, last_commit - now)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak_kib = _status_kib("VmHWM") if reset else None
    if peak_kib is None:
        peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base_maxrss)
    counters = joiner.counters
    joiner.close()
    return {"joiner_examples_per_s": round(examples / seconds, 1),
            "joiner_impressions": counters["features"],
            "joiner_peak_rss_mb": round((peak_kib - base_kib) / 1024, 1),
            "joiner_memory_budget_mb": budget_mb,
            "joiner_held_mb": round(held / 2**20, 1),
            "joiner_positives": counters["positives"], "joiner_negatives": counters["negatives"],
            "joiner_pending": counters["pending"], "joiner_spilled": counters["spilled"],
            "joiner_seconds": round(seconds, 1), "joiner_cpu_seconds": round(cpu, 1),
            "commit_ms_max": round(commit_max * 1e3, 2)}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N_IMPRESSIONS
    print(json.dumps(replay(production_messages(n))), flush=True)


if __name__ == "__main__":
    main()
