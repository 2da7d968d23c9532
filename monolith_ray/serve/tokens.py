"""Request ids and feedback tokens the service issues, checked without any state.

``/recommend`` names each answer with a fresh random request id and gives every returned item
a token: the first 128 bits of HMAC-SHA256 under ``serve.feedback_key`` of the request id and
the item id. ``/feedback`` must bring the token of the impression it reports, so a client can
report actions only on items this service served it: it cannot guess another user's request
id (96 random bits) nor make a token for an item it was not shown. Any replica checks a token
with the key alone, so feedback may reach another replica or come after a restart, as long as
the key is the same (set ``serve.feedback_key``; empty = a random key per application).
A request id begins with its issue time (8 hex digits of unix seconds, then 96 random bits),
under the tokens too, so feedback can be refused once its impression can no longer join
(``/feedback``: ``joiner.window_s + joiner.allowed_lateness_s`` after the request): a token
replayed later counts nowhere.

Item ids are compared as text, as the joiner keys impressions (``7`` and ``"7"`` are one item).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_HEX = 32
_ISSUED = re.compile(r"[0-9a-f]{32}")


def issued_at(request_id: str) -> int | None:
    """The issue time (unix s) of a request id :meth:`FeedbackTokens.new_request_id` made
    (an arm suffix after its 32 hex digits allowed); None for any other form."""
    head = request_id[:32]
    return int(head[:8], 16) if _ISSUED.fullmatch(head) else None


class FeedbackTokens:
    """Issues request ids and feedback tokens, and checks tokens, under one key."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("feedback key: must not be empty")
        self._key = key.encode("utf-8")

    @staticmethod
    def new_key() -> str:
        """A random key of 256 bits, as hex."""
        return secrets.token_hex(32)

    @staticmethod
    def new_request_id(now: float) -> str:
        """A fresh request id: 32 hex digits, the issue time ``now`` (unix s) in the first 8
        and 96 random bits after. The time is under the items' tokens, so a client cannot
        change it and keep a token (:func:`issued_at` reads it)."""
        return f"{int(now) & 0xFFFFFFFF:08x}{secrets.token_hex(12)}"

    def token(self, request_id: str, item_id: int | str) -> str:
        """The token of the impression (request id, item id) -> ``TOKEN_HEX`` hex digits."""
        message = f"{request_id}\x1f{item_id}".encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:TOKEN_HEX]

    def check(self, request_id: str, item_id: int | str, token: str) -> bool:
        """True iff ``token`` is the token of (request id, item id), compared in constant
        time."""
        return hmac.compare_digest(self.token(request_id, item_id), token)
