"""Serving: the HTTP API on Ray Serve and the parameter sync that keeps it fresh.

- ``store``: ``SparseStore``, serving's compact copy of the embedding rows.
- ``sync``: ``ParameterSync``, the actor moving rows (every minute) and dense weights
  (daily) from the training servers to the replicas (or to the serving shards).
- ``serving_shard``: ``ServingShard``, with ``serve.store: sharded`` the serving copy of one
  training shard's rows; ``cache``: ``RowCache``, a replica's bounded hot-row cache;
  ``sharded_rows``: ``ShardedRows``, the cache over the serving shards.
- ``model``: ``ServingModel``, a replica's model (``model.kind``) at the synced versions.
- ``api``: the HTTP schema: request and response models with their bounds, error answers,
  the body-size limit.
- ``tokens``: ``FeedbackTokens``, the request ids and HMAC feedback tokens the service issues.
- ``pool``: ``CandidatePool``, the items ``/recommend`` draws from.
- ``feature_log``: ``FeatureLog``, impressions and feedback to Kafka.
- ``app``: the FastAPI ingress deployment (``/recommend``, ``/predict``, ``/feedback``,
  ``/healthz``) and ``build_app``.
"""
