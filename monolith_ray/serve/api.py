"""The HTTP API's schema: the FastAPI application, its request and response models, its
error answers and its body-size limit. The deployment (``serve/app.py``) adds the endpoints.

Every value a request carries is bounded here or by ``monolith_ray.validation`` (the checks
the Kafka messages and the Arrow columns use): ids and string values are 1 to 256 characters
that UTF-8 can encode, ints fit int64, a feature map holds at most 256 names of at most 64
characters, a request id 1 to 128 printable characters; the config-dependent bounds (slot
names and ``max_values``, ``serve.max_k``, ``serve.max_candidates``, ``limits.*``) are checked
by the endpoints; lists are cut at ``validation.MAX_CANDIDATES`` here, before a longer one is
validated item by item. Any failure is a 4xx with ``{"error": "<field>: <problem>"}``, never a
5xx, save a 503 when the model's scores of a request are not finite.
"""

# No ``from __future__ import annotations``: FastAPI reads these models' annotations as
# objects through Serve's ingress wrappers.
import asyncio
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
)
from starlette.exceptions import HTTPException

from monolith_ray import validation
from monolith_ray.messages import ACTIONS
from monolith_ray.serve.tokens import TOKEN_HEX

MAX_SLOT_NAME_CHARS = 64


def _encodable(value: str) -> str:
    if not validation.text_ok(value):
        raise ValueError("not encodable as UTF-8 (a lone surrogate?)")
    return value


Text = Annotated[StrictStr, Field(min_length=1, max_length=validation.MAX_TEXT_CHARS),
                 AfterValidator(_encodable)]
Int64 = Annotated[StrictInt, Field(ge=validation.INT64_MIN, le=validation.INT64_MAX)]
Scalar = Int64 | Text
SlotValue = Scalar | Annotated[list[Scalar], Field(max_length=validation.MAX_VALUES)] | None
SlotName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_SLOT_NAME_CHARS),
                     AfterValidator(_encodable)]
Features = Annotated[dict[SlotName, SlotValue], Field(max_length=validation.MAX_SLOTS)]
DenseValue = Annotated[float, Field(strict=True, allow_inf_nan=False)] | StrictInt | None
Dense = Annotated[dict[SlotName, DenseValue], Field(max_length=validation.MAX_DENSE)]
RequestId = Annotated[StrictStr, Field(pattern=r"^[\x21-\x7e]{1,128}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_Strict):
    id: Scalar = Field(description="The user's id (the value of the user slot).")
    features: Features = Field(default_factory=dict,
                               description="Other slots of the user, by slot name.")
    dense: Dense = Field(default_factory=dict,
                         description="Dense features of the user (config dense), by name; "
                                     "an item's own values take precedence; missing or null: "
                                     "the feature's default.")


class ItemIn(_Strict):
    id: Scalar = Field(description="The item's id (the value of the item slot).")
    features: Features = Field(
        default_factory=dict,
        description="Slots of the item; a pool item's own features fill the ones left out.")
    dense: Dense = Field(default_factory=dict,
                         description="Dense features of the item (config dense), by name; "
                                     "missing or null: the user's, else the default.")


class RecommendIn(_Strict):
    user: UserIn
    context: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form, logged with the impressions; at most limits.max_context_depth "
                    "deep and limits.max_context_bytes encoded.")
    candidates: list[ItemIn | Scalar] | None = Field(
        default=None, max_length=validation.MAX_CANDIDATES,
        description="Items to rank (ids or items with features), at most "
                    "serve.max_candidates; default: drawn from the pool.")
    k: int = Field(default=10, ge=1, description="Items to return, at most serve.max_k.")


class PairIn(_Strict):
    user: UserIn
    item: ItemIn | Scalar


class PredictIn(_Strict):
    pairs: list[PairIn] = Field(min_length=1, max_length=validation.MAX_CANDIDATES,
                                description="At most serve.max_candidates.")


class FeedbackIn(_Strict):
    request_id: RequestId = Field(description="The request id /recommend answered with.")
    item_id: Scalar
    token: Annotated[StrictStr, Field(pattern=f"^[0-9a-f]{{{TOKEN_HEX}}}$")] = Field(
        description="The item's token from the /recommend answer.")
    action: Literal[ACTIONS]  # type: ignore[valid-type]
    time: StrictInt | None = Field(
        default=None, ge=0, description="Event time, unix s, at most limits.max_event_skew_s "
                                        "ahead of the service's clock; default now.")


class ModelVersion(BaseModel):
    dense: int
    sparse: int
    snapshot: str | None = Field(
        None, description="The snapshot of a pinned model (an experiment arm's model: "
                          "snapshot:...); absent for the live model.")


class ScoredItem(BaseModel):
    item_id: Scalar
    score: float = Field(description="What items are ranked by: serve.score of the tasks' "
                                     "probabilities.")
    probs: dict[str, float] = Field(description="Each task's probability.")
    token: str = Field(description="Send it with /feedback on this item.")
    policy: str = Field(description="The policy that chose it (config policy or the arm's).")
    arm: str | None = Field(description="The request's experiment arm, experiment/arm; null "
                                        "outside experiments.")
    propensity: float = Field(description="The probability the policy showed this item in "
                                          "this slot given the earlier slots (Thompson: a "
                                          "Monte Carlo estimate).")
    inclusion: dict[str, float] | None = Field(
        None, description="With policy.evaluate: the probability this item is in the list "
                          "under the policy that served (\"served\") and under each "
                          "policy.evaluate entry: <kind> on the model's scores, "
                          "<kind>+satiation on the scores after the satiation penalty; "
                          "item marginals for slate IPS, "
                          "Thompson's by Monte Carlo; null otherwise.")


class RecommendOut(BaseModel):
    request_id: str
    items: list[ScoredItem]
    model_version: ModelVersion


class PredictOut(BaseModel):
    scores: list[float] = Field(description="serve.score of each pair.")
    probs: dict[str, list[float]] = Field(description="Each task's probability of each pair.")
    model_version: ModelVersion


class ArmOut(BaseModel):
    name: str
    arm: str = Field(description="experiment/arm, as items and logs name it.")
    share: float = Field(description="Its share of the experiment's users (weight / total).")
    policy: str
    satiation: bool
    model: str = Field(description="live, or snapshot:<folder> of a pinned model version.")
    impressions: int
    clicks: int = Field(description="click actions.")
    ctr: float
    ctr_low: float = Field(description="Wilson 95% interval of the CTR.")
    ctr_high: float
    rewards: int = Field(description="Positive actions (click, like, share, finish).")
    reward: float = Field(description="Mean reward per impression.")
    reward_low: float = Field(description="Normal-approximation 95% interval.")
    reward_high: float | None


class ExperimentOut(BaseModel):
    name: str
    arms: list[ArmOut]


class ExperimentsOut(BaseModel):
    experiments: list[ExperimentOut] = Field(
        description="Counts of every replica, at most about a second old.")


class FeedbackOut(BaseModel):
    accepted: bool
    request_id: str
    repeat: bool = Field(description="this replica received the same (request_id, "
                         "item_id, action) lately: logged again for the joiner, which "
                         "deduplicates, and not counted again in /experiments")


class ErrorOut(BaseModel):
    error: str = Field(description="<field>: <problem>")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A body that cannot be parsed."},
    401: {"model": ErrorOut, "description": "No key of serve.api_keys (when set)."},
    408: {"model": ErrorOut, "description": "Body not received whole within "
                                            "serve.body_timeout_s."},
    413: {"model": ErrorOut, "description": "Body over serve.max_body_bytes."},
    422: {"model": ErrorOut, "description": "A field that is malformed or out of bounds."},
    503: {"model": ErrorOut, "description": "The model's scores of the request are not finite "
                                            "(NaN or inf); nothing is logged."},
}
"""The error answers every POST endpoint documents."""
GET_ERRORS = {status: ERRORS[status] for status in (401, 408, 413)}
"""The error answers a GET endpoint documents: the middleware's, before any route."""


class BadRequest(ValueError):
    """Input the model cannot take; the text names the field."""


class Unavailable(RuntimeError):
    """The service cannot answer this request now, through no fault of the input (e.g. the
    model's scores of it are not finite); 503, the text says why."""


class _API(FastAPI):
    """FastAPI with the int64 bounds written exactly in its schema: FastAPI's schema models
    hold bounds as floats, and 2**63 - 1 as a float is 2**63, one past the bound. A method of
    the app, not a function of this module's ``api``: Serve may hand a replica a copy of the
    app, and the schema must list the copy's routes."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = _exact_bounds(super().openapi())
        return self.openapi_schema


def _exact_bounds(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _exact_bounds(v) for k, v in node.items()}
        for key in ("minimum", "maximum"):
            if out.get(key) == float(validation.INT64_MIN):
                out[key] = validation.INT64_MIN
            elif out.get(key) == float(1 << 63):
                out[key] = validation.INT64_MAX
        return out
    if isinstance(node, list):
        return [_exact_bounds(v) for v in node]
    return node


api = _API(
    title="monolith_ray",
    description="Real-time recommendations: top-k items, scores, feedback.",
    version="0.1.0",
)


def _error(text: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer; the text made safe to encode (a lone surrogate in a field name or a
    value must not turn a 4xx into a 5xx) and cut to 2,000 characters."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]
    return JSONResponse({"error": safe}, status_code=status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """FastAPI's own errors (a body it cannot parse, e.g. JSON nested deeper than its decoder
    follows; an unknown path or method) in the same ``{"error": ..}`` form."""
    where = "body: " if err.status_code == 400 else ""
    return _error(f"{where}{err.detail}", err.status_code, getattr(err, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = []
    for e in err.errors()[:10]:
        where = ".".join(str(part) for part in e["loc"][1:]) or "body"
        problems.append(f"{where}: {e['msg']}")
    return _error("; ".join(problems), 422)


@api.exception_handler(BadRequest)
async def _bad_request(request: Request, err: BadRequest) -> JSONResponse:
    return _error(str(err), 422)


@api.exception_handler(Unavailable)
async def _unavailable(request: Request, err: Unavailable) -> JSONResponse:
    return _error(str(err), 503)


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes (declared or streamed) gets 413, one not
    received whole within ``timeout_s`` 408 (a client sending a byte now and then would
    otherwise hold one of the replica's ``max_ongoing_requests`` for as long as it liked).
    Both are the replica's (``serve.max_body_bytes``, ``serve.body_timeout_s``), set when it
    starts."""

    limit = 1 << 20
    timeout_s = 10.0

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, int(declared), self.limit)
        try:
            async with asyncio.timeout(self.timeout_s):
                got = await self._read(receive)
        except TimeoutError:
            return await _refuse(send, 408, f"body: not received whole within "
                                            f"{self.timeout_s:g} s (serve.body_timeout_s)")
        if isinstance(got, int):
            return await _too_large(send, got, self.limit)
        return await self.app(scope, _replay([got], receive), send)

    async def _read(self, receive: Any) -> dict | int:
        """The whole body as one ``http.request`` message (read here, at most limit + one
        chunk, so an oversized one gets 413 whether or not it declared its length), or the
        first other message (a disconnect), or the bytes seen once past the limit."""
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return seen
            more = message.get("more_body", False)
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


class ApiKeys:
    """ASGI middleware: with ``serve.api_keys`` set, a request whose ``Authorization`` header
    is not ``Bearer <one of them>`` gets 401 before its body is read (it runs before
    :class:`BodyLimit`). Keys are held as SHA-256 digests, a given key compared with every
    one in constant time each. Set when the replica starts; empty = every request passes."""

    digests: tuple[bytes, ...] = ()

    def __init__(self, app: Any) -> None:
        self.app = app

    @classmethod
    def hold(cls, keys: Sequence[str]) -> None:
        """Take ``keys`` (the replica's ``serve.api_keys``) as the ones requests must name."""
        cls.digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.digests:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, key = given.partition(b" ")
        digest = hashlib.sha256(key).digest()
        if scheme.lower() != b"bearer" or not any(
                [hmac.compare_digest(digest, d) for d in self.digests]):
            return await _refuse(send, 401, "authorization: a Bearer key of serve.api_keys "
                                            "is required", [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


def _replay(messages: list[dict], receive: Any) -> Any:
    """An ASGI ``receive`` giving ``messages`` first, then what ``receive`` gives."""
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _too_large(send: Any, size: int, limit: int) -> None:
    await _refuse(send, 413, f"body: {size} bytes or more, over the limit of {limit} "
                             f"(serve.max_body_bytes)")


async def _refuse(send: Any, status: int, text: str,
                  headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``status`` with ``{"error": text}`` before the app sees the request."""
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


api.add_middleware(BodyLimit)
api.add_middleware(ApiKeys)  # added last: runs first
