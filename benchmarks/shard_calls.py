"""Cost of one parameter-server call over each trainer transport.

A shard actor (``ShardServer`` with the slots of ``monolith_ray/defaults/movielens.yaml``) is
called ``CALLS`` times in a row, each call waited for, with a small serving lookup (8 slots ×
``IDS`` ids), over Ray actor calls (``RayCalls``) and over a channel (``ChannelCalls``,
``monolith_ray.ps.channel``), in one run. Per transport: the round trip in ms, and the CPU ms
per call of the caller (this process) and of the shard's process (from ``/proc``, Linux).
Ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from monolith_ray.config import load_config
from monolith_ray.ps.channel import ChannelCalls
from monolith_ray.ps.calls import Calls, RayCalls
from monolith_ray.ps.packed_slots import PackedSlots
from monolith_ray.ps.shard import ShardServer

SLOTS_YAML = Path(__file__).resolve().parents[1] / "monolith_ray/defaults/movielens.yaml"
CALLS = 2000
WARMUP = 200
IDS = 40


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_call(calls: Calls, shard: Any, shard_pid: int, ids: PackedSlots) -> dict[str, float]:
    """Round trip and CPU ms per call of ``CALLS`` sequential lookups."""
    for _ in range(WARMUP):
        calls.gather([calls.submit(shard, "lookup", ids)])
    cpu, shard_cpu, start = time.process_time(), process_cpu_s(shard_pid), time.perf_counter()
    for _ in range(CALLS):
        calls.gather([calls.submit(shard, "lookup", ids)])
    return {"round_trip_ms": 1e3 * (time.perf_counter() - start) / CALLS,
            "caller_cpu_ms": 1e3 * (time.process_time() - cpu) / CALLS,
            "shard_cpu_ms": 1e3 * (process_cpu_s(shard_pid) - shard_cpu) / CALLS}


def main() -> None:
    cfg = load_config(SLOTS_YAML)
    ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        shard = ray.remote(ShardServer).options(num_cpus=0).remote(cfg.slots, cfg.admission)
        pid = ray.get(shard.pid.remote())
        ids = PackedSlots.of({s.name: np.arange(IDS, dtype=np.int64) for s in cfg.slots})
        figures: dict[str, Any] = {}
        for name, calls in (("ray", RayCalls(30.0)), ("channel", ChannelCalls(30.0))):
            figures.update({f"{name}_{k}": round(v, 3)
                            for k, v in per_call(calls, shard, pid, ids).items()})
    finally:
        ray.shutdown()
    figures["round_trip_ratio"] = round(figures["ray_round_trip_ms"]
                                        / figures["channel_round_trip_ms"], 2)
    figures.update({"calls": CALLS, "ids_per_slot": IDS, "slots": len(cfg.slots)})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
