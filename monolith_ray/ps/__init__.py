"""Parameter servers: sharded embedding tables (``ShardServer``), id routing (``shard_of``)
and the trainer-side client that batches one call per shard per step (``ShardClient``)."""

from monolith_ray.ps.client import (
    Calls as Calls,
    DirectCalls as DirectCalls,
    Pending as Pending,
    RayCalls as RayCalls,
    ShardClient as ShardClient,
    calls_for as calls_for,
)
from monolith_ray.ps.routing import shard_of as shard_of
from monolith_ray.ps.shard import ShardServer as ShardServer, table_slot as table_slot
