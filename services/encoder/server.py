"""recmesh.v1.Encoder over a TextModel."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from recmesh.common.errors import InvalidArgument, Unavailable, rpc_method
from recmesh.common.lru import LruCache
from recmesh.common.server import Service
from recmesh.common.vectors import from_matrix, to_matrix
from recmesh.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.config import EncoderSettings
from services.encoder.interest import InterestRule
from services.encoder.textmodel import TextModel, TorchTextModel


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, settings: EncoderSettings, model: TextModel | None = None):
        self._model = model
        self._settings = settings
        self._rule = InterestRule(settings.query_weight, settings.recency_half_life_events)
        # People retype and page through the same query.
        self._queries: LruCache[str, np.ndarray] = LruCache(settings.query_cache_size)
        # torch runs off the event loop; one worker because the model uses one thread.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")

    async def load(self) -> None:
        """Load the model (slow) off the event loop, so health answers NOT_SERVING meanwhile."""
        s = self._settings
        self._model = await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: TorchTextModel(s.model_dir, s.model_name, s.torch_threads, s.max_batch, s.max_seq_len)
        )
        # First calls pay for lazy init and allocator growth: pay it before SERVING.
        for size in (1, 8, 1):
            await self.encode(["warm-up text for the encoder"] * size)

    async def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            raise Unavailable("encoder is warming up")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._model.encode, texts)

    def _check_texts(self, texts, field: str) -> list[str]:
        if len(texts) > self._settings.max_texts:
            raise InvalidArgument(field, f"at most {self._settings.max_texts} texts per call")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"{field}[{i}]", "must not be empty")
            if len(text) > self._settings.max_text_chars:
                raise InvalidArgument(f"{field}[{i}]", f"longer than {self._settings.max_text_chars} characters")
        return list(texts)

    @rpc_method
    async def EncodeTexts(self, request, context):
        texts = self._check_texts(request.texts, "texts")
        vectors = await self.encode(texts)
        return encoder_pb2.EncodeTextsResponse(vectors=to_matrix(vectors), model_version=self._model.version)

    @rpc_method
    async def EncodeInterest(self, request, context):
        items = from_matrix(request.item_vectors, "item_vectors")
        if items.shape[0] != len(request.history):
            raise InvalidArgument("item_vectors", f"{items.shape[0]} rows for {len(request.history)} history entries")
        if items.shape[0] and items.shape[1] != self._model.dim:
            raise InvalidArgument("item_vectors", f"dim {items.shape[1]}, model dim is {self._model.dim}")
        history = list(request.history)[-self._settings.max_history :]
        items = items[len(items) - len(history) :]

        query_vec = None
        query = request.query.strip()
        if query:
            self._check_texts([query], "query")
            query_vec = self._queries.get(query)
            if query_vec is None:
                query_vec = (await self.encode([query]))[0]
                self._queries.put(query, query_vec)

        interest = self._rule.combine(
            items, [h.type for h in history], [h.value for h in history], query_vec
        )
        return encoder_pb2.EncodeInterestResponse(
            interest=to_matrix(interest),
            query_vector=to_matrix(query_vec),
            model_version=f"{self._model.version}+zero-shot-interest",
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def build_service(settings: EncoderSettings) -> Service:
    servicer = EncoderServicer(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, server)
        return [encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name]

    async def shutdown() -> None:
        servicer.close()

    return Service("encoder", register, servicer.load, shutdown)
