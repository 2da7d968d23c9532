"""Parameter servers: sharded embedding tables (``ShardServer``), id routing (``shard_of``)
and the trainer-side client that batches one call per shard per step (``ShardClient``)."""

from monolith_ray.ps.calls import Calls as Calls, DirectCalls as DirectCalls, RayCalls as RayCalls
from monolith_ray.ps.client import (
    Pending as Pending,
    ShardClient as ShardClient,
    calls_for as calls_for,
)
from monolith_ray.ps.routing import shard_of as shard_of
from monolith_ray.ps.shard import ShardServer as ShardServer, table_slot as table_slot
