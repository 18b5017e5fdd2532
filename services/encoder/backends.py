"""Where the encoder's models run: on a Triton Inference Server (default) or in this process
(an explicit choice, e.g. for development without Triton; never a silent fallback)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc
import numpy as np

from recmesh.common.errors import DependencyFailed, Unavailable
from recmesh.common.server import FAST_RECONNECT
from services.encoder.config import EncoderSettings
from services.encoder.interest import InterestRule
from services.encoder.textmodel import TextModel, load_text_model


class EncoderBackend(Protocol):
    version: str
    dim: int

    async def start(self) -> None: ...

    async def encode_texts(self, texts: list[str], timeout_s: float | None) -> np.ndarray: ...

    async def interest(self, item_vectors: np.ndarray, event_types: list[int], values: list[float],
                       query_vector: np.ndarray | None, timeout_s: float | None) -> np.ndarray | None: ...

    async def close(self) -> None: ...


class InProcessBackend:
    """The text model runs in a worker thread of this process."""

    def __init__(self, settings: EncoderSettings):
        self._s = settings
        self._model: TextModel | None = None
        self._rule = InterestRule(settings.query_weight, settings.recency_half_life_events)
        # One worker: the model uses one thread; more workers would only contend.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self.version, self.dim = "", 0

    async def start(self) -> None:
        s = self._s
        self._model = await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: load_text_model(s.variant, s.model_dir, s.model_name, s.threads,
                                                s.max_batch, s.max_seq_len)
        )
        self.version, self.dim = f"{self._model.version}@inprocess", self._model.dim

    async def encode_texts(self, texts: list[str], timeout_s: float | None) -> np.ndarray:
        if self._model is None:
            raise Unavailable("encoder is warming up")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._model.encode, texts)

    async def interest(self, item_vectors, event_types, values, query_vector, timeout_s):
        return self._rule.combine(item_vectors, event_types, values, query_vector)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


def _status(exc) -> grpc.StatusCode:
    """Triton's failure as a gRPC status for our caller; never OK (an error is an error)."""
    name = str(exc.status() or "").removeprefix("StatusCode.")
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL if code == grpc.StatusCode.OK else code


class TritonBackend:
    """Models on Triton via tritonclient.grpc.aio; the caller's remaining time is Triton's timeout."""

    # Below this there is no point in a retry: it could not come back in time.
    MIN_RETRY_S = 0.005

    def __init__(self, settings: EncoderSettings):
        self._s = settings
        self._client = None
        self._max_batch = 64
        self.version, self.dim = "", 0

    async def start(self) -> None:
        import tritonclient.grpc.aio as triton

        client = triton.InferenceServerClient(self._s.triton_url, channel_args=FAST_RECONNECT)
        deadline = time.monotonic() + self._s.triton_wait_s
        while True:  # Triton may still be loading models: wait, bounded, then fail loudly
            try:
                if await client.is_model_ready(self._s.triton_text_model) and \
                        await client.is_model_ready(self._s.triton_interest_model):
                    break
            except Exception as exc:  # tritonclient raises its own exception type for transport errors
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Triton at {self._s.triton_url} not ready: {exc}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"Triton models not ready at {self._s.triton_url}")
            await asyncio.sleep(0.2)
        meta = await client.get_model_config(self._s.triton_text_model, as_json=True)
        config = meta["config"]
        self.dim = int(config["output"][0]["dims"][-1])
        self._max_batch = int(config.get("max_batch_size", 0)) or 64
        variant = config.get("parameters", {}).get("variant", {}).get("string_value", "?")
        name = config.get("parameters", {}).get("model_name", {}).get("string_value", "?")
        self.version = f"{name}/{variant}@triton"
        self._client = client  # last: calls are served only once version, dim and batch size are known

    async def _infer(self, model: str, inputs, output: str, timeout_s: float | None) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        if self._client is None:
            raise Unavailable("encoder is warming up")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for attempt in (1, 2):
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                result = await self._client.infer(model, inputs, client_timeout=remaining)
                return result.as_numpy(output)
            except InferenceServerException as exc:
                code = _status(exc)
                budget_left = deadline is None or deadline - time.monotonic() > self.MIN_RETRY_S
                if code == grpc.StatusCode.UNAVAILABLE and attempt == 1 and budget_left:
                    continue  # one retry: a Triton restart or a dropped connection
                raise DependencyFailed(code, f"triton {model}: {exc.message()}") from None
        raise AssertionError("unreachable")

    async def encode_texts(self, texts: list[str], timeout_s: float | None) -> np.ndarray:
        from tritonclient.grpc import InferInput

        async def chunk(part: list[str]) -> np.ndarray:
            text = InferInput("TEXT", [len(part), 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()] for t in part], dtype=object))
            return await self._infer(self._s.triton_text_model, [text], "EMBEDDING", timeout_s)

        # Requests above the model's max_batch_size are refused: send chunks, all at once
        # (Triton's dynamic batcher and instances take it from there).
        step = self._max_batch
        parts = await asyncio.gather(*(chunk(texts[i : i + step]) for i in range(0, len(texts), step)))
        return np.concatenate(parts)

    async def interest(self, item_vectors, event_types, values, query_vector, timeout_s):
        from tritonclient.grpc import InferInput

        arrays = [
            ("ITEM_VECTORS", np.ascontiguousarray(item_vectors, dtype=np.float32), "FP32"),
            ("EVENT_TYPES", np.asarray(event_types, dtype=np.int32), "INT32"),
            ("EVENT_VALUES", np.asarray(values, dtype=np.float32), "FP32"),
        ]
        if query_vector is not None:
            arrays.append(("QUERY_VECTOR", np.asarray(query_vector, dtype=np.float32), "FP32"))
        inputs = []
        for name, array, dtype in arrays:
            tensor = InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        vector = await self._infer(self._s.triton_interest_model, inputs, "INTEREST", timeout_s)
        return vector if np.linalg.norm(vector) > 0 else None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def make_backend(settings: EncoderSettings) -> EncoderBackend:
    return TritonBackend(settings) if settings.backend == "triton" else InProcessBackend(settings)
