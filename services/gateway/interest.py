"""Stage 3 of Recommend: the encoder turns the user's history into an interest vector and the
typed query into a text vector. The gateway keeps each user's last interest: reused while the
history it came from is exactly the same, and standing in when the encoder is late, down or
browned out. Each is kept with the interest model it was asked of (an experiment's variant names
one, common.proto VariantOverrides.interest_model_version; "" the encoder's default), one per model
asked: it is reused or stands in only for a call asking the same model - one model's interest is
never another's.

A user with no history: with a typed query the encoder is asked as for anyone (an interest model
with query fusion answers an interest for the query, cold + query); without one, the interest
model's cold-start interest (what people consume), the same for every such user under one model
version - asked once per interest model asked for, and kept while the encoder's replies name that
version. A model without
query fusion has none: such users get the popular items, as before."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from recmesh.common.errors import InvalidArgument
from recmesh.common.lru import LruCache
from recmesh.common.vectors import first_row, to_matrix
from recmesh.models.session import History
from recmesh.v1 import encoder_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.results import NOTHING_ENCODED, Encoded
from services.gateway.upstreams import Upstreams

log = logging.getLogger("recmesh.gateway")


@dataclass(frozen=True)
class KnownInterest:
    """The encoder's interest vector for one exact encoder input (the history's events and
    their item vectors), under one model version."""

    model: str  # the interest model asked for ("": the default)
    fingerprint: bytes
    vector: np.ndarray
    model_version: str
    at: float  # time.monotonic()
    event_count: int | None  # the user's, when it was computed

    def stands_in_for(self, history: History, now: float, max_age_s: float) -> bool:
        """Whether this interest may stand in for the user's now (encoder late, down or browned
        out): not older than max_age_s, and not from before a deletion - a user deleted through
        another gateway replica and started afresh has fewer events than when it was computed."""
        if now - self.at >= max_age_s:
            return False
        return history.event_count is None or self.event_count is None or history.event_count >= self.event_count


@dataclass(frozen=True)
class ColdInterest:
    """The encoder's answer for an empty history without a query under one model version:
    the cold-start interest, or None when the model has none."""

    vector: np.ndarray | None
    model_version: str


@dataclass(frozen=True)
class EncoderReply:
    """An EncodeInterest reply, its matrices decoded and checked: interest (d,) and query vector
    (t,), each None when the encoder sent none."""

    interest: np.ndarray | None
    query_vector: np.ndarray | None
    model_version: str


class InterestStage:
    """Encodes a user's interest and query; holds each user's last interest (KnownInterest) and
    the model's cold-start interest (ColdInterest)."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams):
        self._s = settings
        self._up = upstreams
        # Per user, by the interest model asked for: a user whose variant names another model (or
        # who also asks SimilarItems, under the default) keeps each model's own.
        self._known: LruCache[str, dict[str, KnownInterest]] = LruCache(settings.interest_cache_users)
        # By the interest model asked for ("": the default); a handful at most (the variants).
        self._cold: dict[str, ColdInterest] = {}

    def forget(self, user_id: str) -> None:
        """The user was deleted: their last interest is gone."""
        self._known.forget(user_id)

    async def encode(self, budget: Budget, user_id: str, history: History, query: str,
                     skip_encoder: bool = False, model: str = "") -> Encoded:
        """The interest and the query's vector. Browned out (skip_encoder), the encoder is asked
        for the query's vector only (the interest the user had last stands in, or none: the
        session direction still steers). The encoder failing or late (stage "encoder") is no
        error: the last interest stands in (`fallback:cached_interest`), else none
        (`fallback:session` with history, `fallback:popular` without). A user with no history
        and no query gets the model's cold-start interest (module docstring), or nothing when
        the model has none. `model`: the interest model to ask (an experiment's variant's; "": the
        encoder's default); only the user's last interest under that model is reused or stands in.
        A malformed reply counts as a failed encoder call."""
        if not history.entries and not query:
            return await self._cold_start(budget, skip_encoder, model)
        request = encoder_pb2.EncodeInterestRequest(history=history.entries, item_vectors=to_matrix(history.vectors),
                                                    interest_model_version=model)
        fingerprint = hashlib.blake2b(request.SerializeToString(deterministic=True), digest_size=16).digest()
        # A guest without an id (user_id "") has no interest of their own to keep or reuse.
        known = (self._known.get(user_id) or {}).get(model) if user_id else None
        if known is not None and not known.stands_in_for(history, time.monotonic(), self._s.interest_standin_s):
            self._drop(user_id, model)
            known = None
        # The interest is a function of exactly this input: the same input gives it again.
        reuse = (known is not None and bool(history.entries) and known.fingerprint == fingerprint
                 and time.monotonic() - known.at < self._s.interest_reuse_s)
        if reuse or skip_encoder:
            return await self._query_only(budget, user_id, known, query, model)
        request.query = query
        reply = await self._call(budget, request)
        self._note_version(reply, model)
        if reply is None:
            if known is not None:  # the reply names the model version the stand-in came from
                budget.trace.degrade("fallback:cached_interest")
                return Encoded(known.vector, None, known.model_version)
            # The session direction (computed by the pipeline) still steers when there is history.
            budget.trace.degrade("fallback:session" if history.entries else "fallback:popular")
            return NOTHING_ENCODED
        interest = reply.interest
        if interest is not None and history.entries and user_id:
            kept = self._known.get(user_id) or {}
            self._known.put(user_id, {**kept, model: KnownInterest(model, fingerprint, interest, reply.model_version,
                                                                   time.monotonic(), history.event_count)})
        return Encoded(interest, reply.query_vector, reply.model_version)

    async def _query_only(self, budget: Budget, user_id: str, known: KnownInterest | None, query: str,
                          model: str) -> Encoded:
        """The known interest (or none), and the query's vector from the encoder when there is a query."""
        interest = known.vector if known is not None else None
        version = known.model_version if known is not None else None
        if not query:
            return Encoded(interest, None, version)
        # Only the query's vector; naming the model, so that its reply names the known one's version.
        reply = await self._call(budget, encoder_pb2.EncodeInterestRequest(query=query, interest_model_version=model))
        self._note_version(reply, model)
        if reply is None:
            return Encoded(interest, None, version)
        if known is not None and reply.model_version != known.model_version:
            self._drop(user_id, model)  # a new artifact by that name: the next call recomputes the interest
        return Encoded(interest, reply.query_vector, version)

    def _drop(self, user_id: str, model: str) -> None:
        """The user's last interest under `model` is gone (their others stay)."""
        kept = {m: k for m, k in (self._known.get(user_id) or {}).items() if m != model}
        if kept:
            self._known.put(user_id, kept)
        else:
            self._known.forget(user_id)

    async def _cold_start(self, budget: Budget, skip_encoder: bool, model: str) -> Encoded:
        """The cold-start interest of interest model `model` ("": the default) for a user with no
        history and no query: the one known for it, else asked for (not when browned out). None
        of it (a model without one, or the encoder failing: `fallback:popular`) means the popular
        items answer."""
        cold = self._cold.get(model)
        if cold is None and not skip_encoder:
            reply = await self._call(budget, encoder_pb2.EncodeInterestRequest(interest_model_version=model))
            self._note_version(reply, model)
            if reply is None:
                budget.trace.degrade("fallback:popular")
                return NOTHING_ENCODED
            cold = self._cold[model] = ColdInterest(reply.interest, reply.model_version)
        if cold is None or cold.vector is None:
            return NOTHING_ENCODED  # popularity is the right answer here, not a degradation
        return Encoded(cold.vector, None, cold.model_version)

    def _note_version(self, reply: EncoderReply | None, model: str) -> None:
        """A reply for interest model `model` under another model version than its cold-start
        interest's (the encoder now serves another artifact by that name): forget it."""
        cold = self._cold.get(model)
        if reply is not None and cold is not None and reply.model_version != cold.model_version:
            del self._cold[model]

    async def _call(self, budget: Budget, request: encoder_pb2.EncodeInterestRequest) -> EncoderReply | None:
        """The encoder's reply, decoded once, or None: failed, late, or malformed (a matrix that
        does not decode: the encoder's fault, so a failed stage - `encoder:bad_reply` - never
        the client's INVALID_ARGUMENT)."""
        reply = await budget.call(
            "encoder", self._s.encoder_cap_ms * MS, lambda t: self._up.encoder.EncodeInterest(request, timeout=t)
        )
        if reply is None:
            return None
        try:
            return EncoderReply(first_row(reply.interest, "interest"), first_row(reply.query_vector, "query_vector"),
                                reply.model_version)
        except InvalidArgument as exc:
            log.error("encoder reply malformed", extra={"reason": str(exc)})
            budget.trace.degrade("encoder:bad_reply")
            return None
