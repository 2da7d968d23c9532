"""Offline MovieLens-100K experiments, shared by ``benchmarks/`` and ``notebooks/``: the
collision experiment (collisionless tables against hashed ids, ``collisions``) and the
sync-interval experiment (a batch model against online models served at several sync
intervals, ``sync_interval``), both on in-process shards (``training``)."""

from monolith_ray.experiments.collisions import (
    TARGET_COLLISION as TARGET_COLLISION,
    buckets_for as buckets_for,
    collision_rate as collision_rate,
    compare as compare,
    fit_and_score as fit_and_score,
    hashed as hashed,
    hashed_splits as hashed_splits,
    prequential_test as prequential_test,
)
from monolith_ray.experiments.sync_interval import (
    DENSE_SYNC_S as DENSE_SYNC_S,
    SYNC_EVERY as SYNC_EVERY,
    WINDOWS as WINDOWS,
    Replica as Replica,
    SyncedReplica as SyncedReplica,
    batch_model as batch_model,
    go_online as go_online,
    replay as replay,
    stream_of as stream_of,
)
from monolith_ray.experiments.training import (
    Setting as Setting,
    compilation_cache as compilation_cache,
    describe as describe,
    load_splits as load_splits,
    setting_of as setting_of,
    train as train,
)
