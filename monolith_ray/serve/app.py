"""The HTTP API: a Ray Serve deployment with a FastAPI ingress.

- ``POST /recommend``: a user (id and features), optional context, optional candidates (else
  ``serve.pool_draw`` drawn from the candidate pool) and ``k`` -> the top ``k`` items with
  their scores, the request id and the model version (dense, sparse) used. Every returned
  item is an impression: its features go to the ``features`` topic under the request id, so
  feedback on it joins into a training example (serve -> feedback -> join -> train -> sync).
- ``POST /predict``: (user, item) pairs -> their click probabilities.
- ``POST /feedback``: request id, item id, action -> the ``actions`` topic.
- ``GET /healthz``: the replica's versions, rows held, process id.
- ``GET /openapi.json``, ``GET /docs``: the schema, FastAPI's.

Bad input never reaches the model: a malformed body, a field of the wrong type, an unknown
feature name, too many candidates or a too large ``k`` get 422, a body over
``serve.max_body_bytes`` 413, each with ``{"error": "<field>: <problem>"}``. Unknown users and
items are scored with the default (zero) embedding, never refused.

Endpoints are ``async``: scoring is a few milliseconds of CPU, run on the replica's event loop
without a thread hop; replicas, not threads, give parallelism. Each replica holds its own copy
of the parameters (``ServingModel``) and pulls newer versions
from the ``ParameterSync`` actor every ``serve.poll_interval_s`` on a thread; a replica loads
the latest versions in its constructor, before Serve routes it any request.
"""

# No ``from __future__ import annotations`` here: Serve's ingress hands FastAPI the endpoint
# methods through wrappers whose globals are not this module's, so annotations must be
# objects, not strings, for FastAPI to see the request models.
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from ray import serve

from monolith_ray.config import Config
from monolith_ray.messages import ACTIONS, MessageError, encode
from monolith_ray.serve.model import ServingModel, SlotRows

logger = logging.getLogger(__name__)

Scalar = StrictInt | StrictStr
SlotValue = Scalar | list[Scalar] | None


# ---------------------------------------------------------------------- request and response


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_Strict):
    id: Scalar = Field(description="The user's id (the value of the user slot).")
    features: dict[str, SlotValue] = Field(
        default_factory=dict, description="Other slots of the user, by slot name.")


class ItemIn(_Strict):
    id: Scalar = Field(description="The item's id (the value of the item slot).")
    features: dict[str, SlotValue] = Field(
        default_factory=dict,
        description="Slots of the item; a pool item's own features fill the ones left out.")


class RecommendIn(_Strict):
    user: UserIn
    context: dict[str, Any] = Field(default_factory=dict,
                                    description="Free-form; logged with the impressions.")
    candidates: list[ItemIn | Scalar] | None = Field(
        default=None, description="Items to rank (ids or items with features); default: "
                                  "drawn from the candidate pool.")
    k: int = Field(default=10, ge=1, description="Items to return.")
    request_id: StrictStr | None = Field(default=None, min_length=1, max_length=128,
                                         description="Default: a new UUID.")


class PairIn(_Strict):
    user: UserIn
    item: ItemIn | Scalar


class PredictIn(_Strict):
    pairs: list[PairIn] = Field(min_length=1)


class FeedbackIn(_Strict):
    request_id: StrictStr = Field(min_length=1, max_length=128)
    item_id: Scalar
    action: Literal[ACTIONS]  # type: ignore[valid-type]
    time: StrictInt | None = Field(default=None, ge=0,
                                   description="Event time, unix s; default now.")


class ModelVersion(BaseModel):
    dense: int
    sparse: int


class ScoredItem(BaseModel):
    item_id: Scalar
    score: float


class RecommendOut(BaseModel):
    request_id: str
    items: list[ScoredItem]
    model_version: ModelVersion


class PredictOut(BaseModel):
    scores: list[float]
    model_version: ModelVersion


class FeedbackOut(BaseModel):
    accepted: bool
    request_id: str


# ---------------------------------------------------------------------- candidate pool


class CandidatePool:
    """Items ``/recommend`` draws from: ids and each one's slot values."""

    def __init__(self, items: Sequence[tuple[Any, Mapping[str, Any]]] = ()) -> None:
        self.ids = [item_id for item_id, _ in items]
        self.slots = {item_id: dict(slots) for item_id, slots in items}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CandidatePool":
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
    def configured(cls, cfg: Config) -> "CandidatePool":
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


# ---------------------------------------------------------------------- the deployment


class BadRequest(ValueError):
    """Input the model cannot take; the text names the field."""


api = FastAPI(
    title="monolith_ray",
    description="Real-time recommendations: top-k items, scores, feedback.",
    version="0.1.0",
)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = []
    for e in err.errors():
        where = ".".join(str(part) for part in e["loc"][1:]) or "body"
        problems.append(f"{where}: {e['msg']}")
    return JSONResponse({"error": "; ".join(problems)}, status_code=422)


@api.exception_handler(BadRequest)
async def _bad_request(request: Request, err: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=422)


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes (declared or streamed) gets 413. The
    limit is the replica's ``serve.max_body_bytes``, set when the replica starts."""

    limit = 1 << 20

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, int(declared), self.limit)
        # Read the whole body here (at most limit + one chunk), so an oversized one gets 413
        # whether or not it declared its length, then hand the app what was read.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _too_large(send, seen, self.limit)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[dict], receive: Any) -> Any:
    """An ASGI ``receive`` giving ``messages`` first, then what ``receive`` gives."""
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _too_large(send: Any, size: int, limit: int) -> None:
    body = json.dumps({"error": f"body: {size} bytes or more, over the limit of {limit} "
                                f"(serve.max_body_bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


api.add_middleware(_BodyLimit)


class FeatureLog:
    """Writes impressions and feedback to Kafka with librdkafka, keyed by request id (placed
    as kafka-python places keys, so features and actions of a request share a partition)."""

    def __init__(self, cfg: Config) -> None:
        from monolith_ray.stream.kafka import DeliveryReports

        self.topics = cfg.kafka.topics
        self.dropped = 0
        self._reports = DeliveryReports(cfg.kafka, partitioner="murmur2_random")
        self._producer = self._reports.producer

    @property
    def failed(self) -> int:
        """Messages dropped before sending or not delivered."""
        return self.dropped + self._reports.failed

    def send(self, topic: str, key: str, message: Mapping[str, Any]) -> None:
        """Queue one message; a full queue or a client error is counted in ``failed`` and
        logged, never raised: an answer is not refused because Kafka is slow."""
        from confluent_kafka import KafkaException

        try:
            self._producer.produce(topic, key=key.encode("utf-8"), value=encode(message))
        except (BufferError, KafkaException) as err:
            self.dropped += 1
            logger.warning("a message to %s was dropped: %s", topic, err)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for messages in flight -> how many are still undelivered."""
        return self._producer.flush(timeout_s)


@serve.deployment
@serve.ingress(api)
class Recommender:
    """One replica: the model at the synced versions, the candidate pool, the Kafka log."""

    def __init__(self, cfg: Config, sync: Any, pool: CandidatePool | None = None) -> None:
        self.cfg, self.sync = cfg, sync
        self.serve_cfg = cfg.serve
        _BodyLimit.limit = cfg.serve.max_body_bytes
        self.slot_names = {s.name for s in cfg.slots}
        self.pool = pool if pool is not None else CandidatePool.configured(cfg)
        self.pool_rows = SlotRows.of(
            [{**self.pool.slots[item_id], cfg.serve.item_slot: item_id}
             for item_id in self.pool.ids],
            cfg.slots)
        self.model = ServingModel(cfg)
        self.model.warm_up(max(self.serve_cfg.max_candidates, self.serve_cfg.pool_draw))
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()
        self.served = {"recommend": 0, "predict": 0, "feedback": 0, "impressions": 0}
        self.updated_at = 0.0
        self._pull_updates()  # the latest versions before any request
        self.log = FeatureLog(cfg) if self.serve_cfg.log_features else None
        self._stop = threading.Event()
        threading.Thread(target=self._poll_updates, name="sync-poll", daemon=True).start()

    # -- endpoints

    @api.post("/recommend", response_model=RecommendOut)
    async def recommend(self, body: RecommendIn) -> JSONResponse:
        """Rank candidates for a user -> the top k with scores."""
        cfg = self.serve_cfg
        if body.k > cfg.max_k:
            raise BadRequest(f"k: at most {cfg.max_k} (serve.max_k), got {body.k}")
        user = self._user_slots(body.user, "user")
        try:
            encode(body.context)
        except ValueError as err:
            raise BadRequest(f"context: {err}") from None
        if body.candidates is None:
            if not len(self.pool):
                raise BadRequest("candidates: none given, and no candidate pool is configured "
                                 "(serve.candidate_pool)")
            with self._lock:
                take = self._rng.choice(len(self.pool), min(cfg.pool_draw, len(self.pool)),
                                        replace=False)
            ids = [self.pool.ids[i] for i in take.tolist()]
            item_slots = None  # the pool's own, built below for the logged items only
            items, which = self.pool_rows, take
        else:
            if not body.candidates:
                raise BadRequest("candidates: empty list")
            if len(body.candidates) > cfg.max_candidates:
                raise BadRequest(f"candidates: at most {cfg.max_candidates} "
                                 f"(serve.max_candidates), got {len(body.candidates)}")
            given = [self._item(c, f"candidates[{i}]") for i, c in enumerate(body.candidates)]
            # An item listed twice (e.g. by two retrieval sources) is ranked, returned and
            # logged once, as its first listing.
            first = {item_id: i for i, (item_id, _) in reversed(list(enumerate(given)))}
            given = [given[i] for i in sorted(first.values())]
            ids = [item_id for item_id, _ in given]
            item_slots = [slots for _, slots in given]
            items, which = self._slot_rows(item_slots), None
        now = int(time.time())
        scores, version = self._score(items, self._slot_rows([user]), which, now)
        top = np.argsort(-scores, kind="stable")[:body.k].tolist()
        request_id = body.request_id or uuid.uuid4().hex
        if self.log is not None:
            for i in top:
                slots = self._item(ids[i], "")[1] if item_slots is None else item_slots[i]
                self.log.send(self.cfg.kafka.topics.features, request_id, {
                    "request_id": request_id, "time": now, "user_id": body.user.id,
                    "item_id": ids[i], "slots": {**user, **slots}, "context": body.context})
            self.log.poll()
        self.served["recommend"] += 1
        self.served["impressions"] += len(top)
        # A Response skips FastAPI's second validation of what is built here to the schema.
        return JSONResponse({"request_id": request_id, "model_version": version,
                             "items": [{"item_id": ids[i], "score": float(scores[i])}
                                       for i in top]})

    @api.post("/predict", response_model=PredictOut)
    async def predict(self, body: PredictIn) -> JSONResponse:
        """Click probabilities of (user, item) pairs, in order."""
        if len(body.pairs) > self.serve_cfg.max_candidates:
            raise BadRequest(f"pairs: at most {self.serve_cfg.max_candidates} "
                             f"(serve.max_candidates), got {len(body.pairs)}")
        rows = [{**self._user_slots(p.user, f"pairs[{i}].user"),
                 **self._item(p.item, f"pairs[{i}].item")[1]}
                for i, p in enumerate(body.pairs)]
        scores, version = self._score(self._slot_rows(rows), None, None, int(time.time()))
        self.served["predict"] += 1
        return JSONResponse({"scores": scores.tolist(), "model_version": version})

    @api.post("/feedback", response_model=FeedbackOut)
    async def feedback(self, body: FeedbackIn) -> FeedbackOut:
        """A user's action on a served item -> the ``actions`` topic."""
        if self.log is None:
            raise BadRequest("feedback: this deployment does not log to Kafka "
                             "(serve.log_features is false)")
        action = {"request_id": body.request_id, "item_id": body.item_id,
                  "time": int(time.time()) if body.time is None else body.time,
                  "action": body.action}
        self.log.send(self.cfg.kafka.topics.actions, body.request_id, action)
        self.log.poll()
        self.served["feedback"] += 1
        return FeedbackOut(accepted=True, request_id=body.request_id)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness and what this replica serves with."""
        with self._lock:
            versions, rows = self.model.versions, self.model.store.rows_per_slot()
            nbytes = self.model.store.nbytes
        return {"status": "ok", "pid": os.getpid(),
                "replica": serve.get_replica_context().replica_id.unique_id,
                "model_version": versions, "rows": rows, "store_bytes": nbytes,
                "store_dtype": self.serve_cfg.store_dtype,
                "updated_s_ago": round(time.time() - self.updated_at, 3),
                "served": dict(self.served),
                "kafka_failed": 0 if self.log is None else self.log.failed}

    # -- internals

    def _slot_rows(self, rows: Sequence[Mapping[str, Any]]) -> SlotRows:
        try:
            return SlotRows.of(rows, self.cfg.slots)
        except MessageError as err:
            raise BadRequest(f"features: {err}") from None

    def _score(self, items: SlotRows, user: SlotRows | None, which: np.ndarray | None,
               now: int) -> tuple[np.ndarray, dict[str, int]]:
        with self._lock:
            return self.model.score(items, user, which, now), self.model.versions

    def _user_slots(self, user: UserIn, where: str) -> dict[str, Any]:
        self._check_features(user.features, f"{where}.features")
        return {**user.features, self.serve_cfg.user_slot: user.id}

    def _item(self, item: ItemIn | Any, where: str) -> tuple[Any, dict[str, Any]]:
        if not isinstance(item, ItemIn):
            return item, {**self.pool.slots.get(item, {}), self.serve_cfg.item_slot: item}
        self._check_features(item.features, f"{where}.features")
        return item.id, {**self.pool.slots.get(item.id, {}), **item.features,
                         self.serve_cfg.item_slot: item.id}

    def _check_features(self, features: Mapping[str, Any], where: str) -> None:
        unknown = sorted(set(features) - self.slot_names)
        if unknown:
            raise BadRequest(f"{where}.{unknown[0]}: not a slot of the model; slots: "
                             f"{', '.join(sorted(self.slot_names))}")

    def _pull_updates(self) -> None:
        versions = self.model.versions
        updates = ray.get(self.sync.updates.remote(versions["sparse"], versions["dense"],
                                                   self.model.sync_epoch))
        if updates.sparse is not None or updates.dense is not None:
            with self._lock:
                self.model.apply(updates)
        self.updated_at = time.time()

    def _poll_updates(self) -> None:
        while not self._stop.wait(self.serve_cfg.poll_interval_s):
            try:
                self._pull_updates()
            except Exception as err:  # noqa: BLE001 - serving must outlive a sync outage
                logger.warning("could not pull parameter updates: %s", err)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        log = getattr(self, "log", None)
        if log is not None:
            log.flush()



def recommender_deployment(cfg: Config) -> Any:
    """The recommender deployment with ``cfg.serve``'s replica settings (CPUs, custom
    resources, concurrency, autoscaling); ConfigError if the serving slots are not slots."""
    cfg.check_serving()
    scaling = cfg.serve.autoscaling
    return Recommender.options(
        max_ongoing_requests=cfg.serve.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.serve.replica_cpus,
                           "resources": dict(cfg.serve.replica_resources)},
        autoscaling_config={"min_replicas": scaling.min_replicas,
                            "max_replicas": scaling.max_replicas,
                            "target_ongoing_requests": scaling.target_ongoing_requests},
    )


def build_app(cfg: Config, sync: Any, pool: CandidatePool | None = None) -> Any:
    """The Serve application of the recommender, reading parameters from the ``sync`` actor
    (a ``ParameterSync`` handle); candidates from ``pool``, else ``serve.candidate_pool``."""
    return recommender_deployment(cfg).bind(cfg, sync, pool)
