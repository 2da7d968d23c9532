"""Serving: the HTTP API on Ray Serve and the parameter sync that keeps it fresh.

- ``store``: ``SparseStore``, serving's compact copy of the embedding rows.
- ``sync``: ``ParameterSync``, the actor moving rows (every minute) and dense weights
  (daily) from the training servers to the replicas.
- ``model``: ``ServingModel``, a replica's DeepFM at the synced versions.
- ``api``: the HTTP schema: request and response models with their bounds, error answers,
  the body-size limit.
- ``tokens``: ``FeedbackTokens``, the request ids and HMAC feedback tokens the service issues.
- ``pool``: ``CandidatePool``, the items ``/recommend`` draws from.
- ``feature_log``: ``FeatureLog``, impressions and feedback to Kafka.
- ``app``: the FastAPI ingress deployment (``/recommend``, ``/predict``, ``/feedback``,
  ``/healthz``) and ``build_app``.
"""
