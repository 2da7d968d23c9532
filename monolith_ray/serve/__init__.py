"""Serving: the HTTP API on Ray Serve and the parameter sync that keeps it fresh.

- ``store``: ``SparseStore``, serving's compact copy of the embedding rows.
- ``sync``: ``ParameterSync``, the actor moving rows (every minute) and dense weights
  (daily) from the training servers to the replicas.
- ``model``: ``ServingModel``, a replica's DeepFM at the synced versions.
- ``app``: the FastAPI ingress deployment (``/recommend``, ``/predict``, ``/feedback``,
  ``/healthz``) and ``build_app``.
"""
