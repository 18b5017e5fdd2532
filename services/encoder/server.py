"""recmesh.v1.Encoder over an EncoderBackend (Triton or in-process)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from recmesh.common import limits
from recmesh.common.catalog import item_text
from recmesh.common.errors import FailedPrecondition, InvalidArgument, Unavailable, rpc_method
from recmesh.common.lru import LruCache
from recmesh.common.metrics import set_version
from recmesh.common.server import Service
from recmesh.common.validation import check_item, check_query, visible_text
from recmesh.common.vectors import from_matrix, to_matrix
from recmesh.models.ranking.scorer import check_version_name
from recmesh.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.backends import EncoderBackend, InterestModelInfo, make_backend
from services.encoder.config import EncoderSettings

# Kept back from the caller's deadline for our own reply.
REPLY_MARGIN_S = 0.001


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - REPLY_MARGIN_S)


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, settings: EncoderSettings, backend: EncoderBackend):
        self._settings = settings
        self._backend = backend
        # People retype and page through the same query.
        self._queries: LruCache[str, np.ndarray] = LruCache(settings.query_cache_size)

    async def warmup(self) -> None:
        await self._backend.start()
        # First calls pay for lazy init and allocator growth: pay it before SERVING.
        for size in (1, 8, 1):
            vectors = await self._backend.encode_texts(["warm-up text for the encoder"] * size, None)
        items = await self._backend.encode_items(vectors, ["warm-up"], None)
        for name, model in self._backend.interest_models.items():
            await self._backend.interest(np.repeat(items, 10, axis=0), [0] * 10, [0.0] * 10, list(range(10)), None,
                                         model=name)
            if model.fuses_queries:
                await self._backend.interest(items[:0], [], [], [], None, vectors[0], model=name)
        set_version("encoder", "models", self._backend.version)

    def _catalog_space(self) -> str | None:
        """The catalog's item space: the default interest model's (its item tower encodes items)."""
        return next((m.item_space for m in self._backend.interest_models.values() if m.default), None)

    def _interest_model(self, name: str) -> InterestModelInfo:
        """The interest model a request names ("": the default). InvalidArgument for a malformed
        name; FailedPrecondition for one not served or trained for another catalog space."""
        models = self._backend.interest_models
        if not models:
            raise Unavailable("encoder is warming up")
        if not name:
            return next(m for m in models.values() if m.default)
        check_version_name(name, "interest_model_version")
        model = models.get(name)
        if model is None:
            raise FailedPrecondition(f"interest_model_version: no interest model {name!r} served "
                                     f"(served: {', '.join(models)})")
        if not model.catalog_compatible(self._catalog_space()):
            raise FailedPrecondition(f"interest_model_version: {name!r} was trained for item space "
                                     f"{model.item_space}, the catalog's is {self._catalog_space()}")
        return model

    def _check_texts(self, texts, field: str) -> list[str]:
        """The texts' visible text, as the language model is given it; a text with nothing
        visible is empty."""
        if len(texts) > self._settings.max_texts:
            raise InvalidArgument(field, f"at most {self._settings.max_texts} texts per call")
        visible = []
        for i, text in enumerate(texts):
            if len(text) > self._settings.max_text_chars:
                raise InvalidArgument(f"{field}[{i}]", f"longer than {self._settings.max_text_chars} characters")
            visible.append(visible_text(text))
            if not visible[-1]:
                raise InvalidArgument(f"{field}[{i}]", "must not be empty")
        return visible

    @rpc_method
    async def EncodeTexts(self, request, context):
        texts = self._check_texts(request.texts, "texts")
        vectors = await self._backend.encode_texts(texts, _timeout(context)) if texts else np.zeros((0, 0))
        return encoder_pb2.EncodeTextsResponse(vectors=to_matrix(vectors), model_version=self._backend.version)

    async def _query_vector(self, query: str, timeout_s: float | None) -> np.ndarray | None:
        if not query:
            return None
        vector = self._queries.get(query)
        if vector is None:
            vector = (await self._backend.encode_texts([query], timeout_s))[0]
            self._queries.put(query, vector)
        return vector

    async def _interest(self, model: InterestModelInfo, history, items: np.ndarray, timeout_s: float | None,
                        query_vec: np.ndarray | None = None) -> np.ndarray | None:
        """The interest under `model` (None: none); a model that fuses queries answers an empty
        history too."""
        if not history and not model.fuses_queries:
            return None
        return await self._backend.interest(items, [h.type for h in history], [h.value for h in history],
                                            [h.timestamp_ms for h in history], timeout_s, query_vec,
                                            model="" if model.default else model.name)

    @rpc_method
    async def EncodeItems(self, request, context):
        if len(request.items) > limits.ITEMS_PER_CALL:
            raise InvalidArgument("items", f"at most {limits.ITEMS_PER_CALL} per call, got {len(request.items)}")
        if not request.items:
            return encoder_pb2.EncodeItemsResponse(model_version=self._backend.version)
        for i, item in enumerate(request.items):
            check_item(item, f"items[{i}]")  # the gateway's check: what it accepts is encoded
        # Cut to what the model is given; the fields themselves are stored whole by retrieval.
        texts = [item_text(item, self._settings.max_text_chars) for item in request.items]
        text_vectors = await self._backend.encode_texts(texts, _timeout(context))
        vectors = await self._backend.encode_items(text_vectors, [it.item_id for it in request.items],
                                                   _timeout(context))
        return encoder_pb2.EncodeItemsResponse(vectors=to_matrix(vectors), text_vectors=to_matrix(text_vectors),
                                               model_version=self._backend.version)

    @rpc_method
    async def EncodeInterest(self, request, context):
        model = self._interest_model(request.interest_model_version)
        dim = self._backend.dim
        items = from_matrix(request.item_vectors, "item_vectors")
        if items.shape[0] != len(request.history):
            raise InvalidArgument("item_vectors", f"{items.shape[0]} rows for {len(request.history)} history entries")
        if items.shape[0] and items.shape[1] != dim:
            raise InvalidArgument("item_vectors", f"dim {items.shape[1]}, the catalog's dim is {dim}")
        history = list(request.history)[-self._settings.max_history :]
        items = items[len(items) - len(history) :]

        # Visible text only: a query of invisible characters is no query, not a steer. The cut
        # keeps within what the model is given (it reads max_seq_len tokens).
        query = check_query(request.query, "query")[: self._settings.max_text_chars]
        if model.fuses_queries:  # the interest takes the query's vector: encode it first
            query_vec = await self._query_vector(query, _timeout(context))
            interest = await self._interest(model, history, items, _timeout(context), query_vec)
        else:  # independent: the query's vector and the interest are computed at the same time
            query_vec, interest = await asyncio.gather(self._query_vector(query, _timeout(context)),
                                                       self._interest(model, history, items, _timeout(context)))
        # A model's fault is not the caller's: a NaN or Inf out (broken weights) is refused here,
        # so the gateway answers from its fallbacks instead of reading it as bad input.
        for name, out in (("interest", interest), ("query_vector", query_vec)):
            if out is not None and not np.all(np.isfinite(out)):
                raise FailedPrecondition(f"interest_model_version: the interest model {model.version!r} answered a "
                                         f"{name} that is not finite (NaN or Inf); its weights are broken")
        return encoder_pb2.EncodeInterestResponse(
            interest=to_matrix(interest), query_vector=to_matrix(query_vec), model_version=model.version
        )

    @rpc_method
    async def ListInterestModels(self, request, context):
        space = self._catalog_space()
        return encoder_pb2.ListInterestModelsResponse(models=[
            encoder_pb2.InterestModel(version=m.name, default=m.default, item_space=m.item_space or "",
                                      catalog_compatible=m.catalog_compatible(space), fuses_queries=m.fuses_queries)
            for m in self._backend.interest_models.values()])


def build_service(settings: EncoderSettings) -> Service:
    backend = make_backend(settings)
    servicer = EncoderServicer(settings, backend)

    def register(server: grpc.aio.Server) -> list[str]:
        encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, server)
        return [encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name]

    return Service("encoder", register, servicer.warmup, backend.close)
