"""The ``serve`` section: HTTP serving, its parameter sync and its Ray Serve deployment."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from monolith_ray.config.loader import ConfigError, _require, _require_resources
from monolith_ray.validation import MAX_CANDIDATES


MAX_INTERVAL_S = 30 * 86400.0  # the longest sync or poll interval, s
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts only this machine reaches
_API_KEY = re.compile(r"[\x21-\x7e]{16,256}")

@dataclasses.dataclass(frozen=True)
class AutoscalingConfig:
    """Ray Serve ``autoscaling_config`` of the recommender deployment: replicas between
    ``min_replicas`` and ``max_replicas``, aiming at ``target_ongoing_requests`` requests in
    flight per replica."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0

    def __post_init__(self) -> None:
        _require(self, "min_replicas", ge=1)
        _require(self, "target_ongoing_requests", gt=0)
        if self.max_replicas < self.min_replicas:
            raise ConfigError("max_replicas", f"must be >= min_replicas {self.min_replicas}, "
                                              f"got {self.max_replicas}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """HTTP serving (``monolith_ray.serve``) and its parameter sync.

    - ``host``, ``port``: where Ray Serve's HTTP proxy listens.
    - ``sparse_sync_interval_s``, ``dense_sync_interval_s``: how often the sync actor moves
      changed embedding rows (default every minute) and the dense weights (default daily)
      from training to serving.
    - ``poll_interval_s``: how often a replica asks the sync actor for newer versions; a
      training update is served at most ``sparse_sync_interval_s + poll_interval_s`` later.
    - ``store_dtype``: serving rows as ``float16`` (half the memory) or ``float32``.
    - ``sync_log_mb``: the sync's change log, in MB (changed ids, 8 bytes each, and with
      ``store: sharded`` their rows, and some 160 bytes an array and 1 kB a version; with
      ``retrieval`` the tower tables' changes too) kept for replicas to catch up from; a replica further behind receives the whole state
      (sharded: starts its cache over).
    - ``user_slot``, ``item_slot``: the slots that hold a request's user id and item id.
    - ``candidate_pool``: JSON-lines file of items (``{"item_id": .., "slots": {..}}`` per
      line) that ``/recommend`` draws ``pool_draw`` candidates from when a request names none;
      empty = requests must bring their candidates. A non-empty one must exist when
      ``monolith-ray serve`` starts.
    - ``max_candidates``: most candidates (or pairs) one request may score; ``max_k`` most
      items returned (``max_candidates`` at most 10,000); ``max_body_bytes`` largest request
      body (413 beyond); ``body_timeout_s`` the longest a body may take to arrive whole (408
      beyond), so a client sending a byte now and then cannot hold a replica's request slot.
    - ``api_keys``: the keys a client names in ``Authorization: Bearer <key>``; with any
      set, every request without one of them gets 401 before its body is read. Required
      when ``host`` is not a loopback address (a listener others can reach authenticates);
      empty on loopback = open to this machine only. Each 16 to 256 printable ASCII
      characters; several, so a key can be rotated without a moment of refusals. Secrets:
      left out of the config's repr.
    - ``log_features``: write every served impression to the ``features`` topic (the closed
      loop); needs ``kafka.bootstrap_servers``.
    - ``feedback_key``: HMAC key of the request ids and feedback tokens the service issues;
      empty = a random key made when the application is built, so tokens do not survive a
      restart of the app. A secret: left out of the config's repr.
    - ``exclude_seen``: a history slot of the item slot (``history.slots``, e.g. a user's
      ``recent_items``): the items it holds for the user are left out of the candidates
      ``/recommend`` retrieves or draws from the pool (not of a list the client gives), so
      an item the user acted on is not recommended again (the slot's label range decides
      what counts: the positives by default); empty = none left out.
    - ``user_affinity``: route each request that carries an ``x-session-id`` header (set it to
      the user id) to the replica a consistent hash of it gives (Ray Serve's
      ``ConsistentHashRouter``; the next two on its ring when that one is full), so the
      per-replica state of a user — satiation, the bandit's show counts — sees all their
      requests; a request without the header goes to a random replica. Off: Ray Serve's
      power-of-two-choices routing.
    - ``replica_cpus``, ``max_ongoing_requests``, ``autoscaling``: Ray Serve settings of a
      replica; ``replica_resources``: custom Ray resources a replica needs, e.g.
      ``{serving: 1}`` to place replicas only on nodes that offer ``serving``
      (``cluster.yaml``'s serving workers).
    - ``sync_resources``: custom Ray resources the parameter-sync actor needs. With
      ``store: replica`` it keeps a copy of every table (``monolith_ray.serve.sync``), so it
      belongs where that memory is, e.g. ``{sync: 1}`` for ``cluster.yaml``'s head, not
      beside the shards it copies.
    - ``store``: where a replica's embedding rows come from. ``replica`` (default, for
      small models): every replica and the sync actor hold the whole table. ``sharded``:
      serving shards (``serve.serving_shard``, one per training shard, placed by
      ``shard_resources``) hold the rows; each replica keeps a cache of ``cache_rows`` rows
      under ``cache_policy`` (``tinylfu`` or ``lru``, ``serve.cache``) and fetches misses, one
      call a shard a request, waiting at most ``shard_timeout_s`` (then a miss reads the
      default row); the sync keeps no copy, only its change log with the rows. With
      retrieval, the users' tower rows have a cache of their own of ``tower_cache_rows``
      rows (0, the default: a quarter of ``cache_rows``), as the tower tables share their
      slots' fids.
    - ``max_full_loads``: replicas given a whole table at the same time (``store:
      replica``); the others wait and keep serving what they hold.
    - ``score``: what ``/recommend`` ranks by and ``/predict`` returns as ``scores``: an
      expression over the tasks' probabilities, e.g. ``click + 0.5 * like`` (task names,
      numbers, ``+ - *``, parentheses: ``config.tasks.parse_score``); empty = the first
      task's probability.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    sparse_sync_interval_s: float = 60.0
    dense_sync_interval_s: float = 86400.0
    poll_interval_s: float = 1.0
    store_dtype: Literal["float16", "float32"] = "float16"
    sync_log_mb: float = 256.0
    user_slot: str = "user_id"
    item_slot: str = "item_id"
    candidate_pool: str = ""
    pool_draw: int = 100
    max_candidates: int = 1000
    max_k: int = 100
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0
    log_features: bool = True
    feedback_key: str = dataclasses.field(default="", repr=False)
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    replica_cpus: float = 0.25
    max_ongoing_requests: int = 64
    user_affinity: bool = False
    exclude_seen: str = ""
    replica_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    sync_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    autoscaling: AutoscalingConfig = dataclasses.field(default_factory=AutoscalingConfig)
    store: Literal["replica", "sharded"] = "replica"
    cache_rows: int = 1_000_000
    tower_cache_rows: int = 0
    cache_policy: Literal["tinylfu", "lru"] = "tinylfu"
    shard_timeout_s: float = 0.25
    shard_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    max_full_loads: int = 1
    score: str = ""

    def __post_init__(self) -> None:
        _require(self, "port", ge=0, le=65535)
        # At most 30 days: a wait of 1.0e+300 s raises OverflowError, which would end the
        # replica's thread that pulls updates.
        _require(self, "sparse_sync_interval_s", gt=0, le=MAX_INTERVAL_S)
        _require(self, "dense_sync_interval_s", gt=0, le=MAX_INTERVAL_S)
        _require(self, "poll_interval_s", gt=0, le=MAX_INTERVAL_S)
        _require(self, "sync_log_mb", gt=0)
        _require(self, "pool_draw", ge=1)
        _require(self, "max_candidates", ge=1, le=MAX_CANDIDATES)
        _require(self, "max_k", ge=1)
        _require(self, "max_body_bytes", ge=1024)
        _require(self, "body_timeout_s", gt=0, le=3600)
        for i, key in enumerate(self.api_keys):
            if not _API_KEY.fullmatch(key):
                raise ConfigError(f"api_keys[{i}]", f"must be 16 to 256 printable ASCII "
                                                    f"characters, no spaces (got {len(key)})")
        if not self.api_keys and self.host not in LOOPBACK:
            raise ConfigError("api_keys", f"required when host ({self.host}) is not a loopback "
                                          f"address: others could call the API unauthenticated")
        _require(self, "replica_cpus", ge=0)
        _require(self, "max_ongoing_requests", ge=1)
        _require_resources(self, "replica_resources")
        _require_resources(self, "sync_resources")
        _require_resources(self, "shard_resources")
        _require(self, "cache_rows", ge=1)
        _require(self, "tower_cache_rows", ge=0)
        _require(self, "shard_timeout_s", gt=0)
        _require(self, "max_full_loads", ge=1)
