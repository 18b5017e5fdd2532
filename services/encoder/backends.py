"""Where the encoder's models run: on a Triton Inference Server (default) or in this process
(an explicit choice, e.g. for development without Triton; never a silent fallback)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from recmesh.common.channels import FAST_RECONNECT
from recmesh.common.errors import DependencyFailed, Unavailable
from recmesh.common.paths import interest_variant_artifacts, served_text_model, text_model_name
from recmesh.models.interest.versions import parse_versions
from recmesh.models.text import TextModel, load_text_model
from services.encoder.config import EncoderSettings


@dataclass(frozen=True)
class InterestModelInfo:
    """One interest model a backend serves (known after start)."""

    name: str  # the artifact's version: what an experiment's variant names
    version: str  # the encoder's model version with this interest model (EncodeInterestResponse.model_version)
    item_space: str | None  # served.item_space; None: not known (a Triton repository not assembled)
    # Fuses a typed query into the interest (its language-model vector, given to interest()) and
    # answers for an empty history; False: it reads neither.
    fuses_queries: bool
    default: bool = False

    def catalog_compatible(self, catalog_space: str | None) -> bool:
        """Its interests are scored in the catalog's space (the default model's item space)."""
        return self.default or (self.item_space is not None and self.item_space == catalog_space)


class EncoderBackend(Protocol):
    version: str  # with the default interest model
    text_dim: int  # the language model's vectors
    dim: int  # the catalog's space: item and interest vectors
    # The interest models served, by name, the default first; known after start.
    interest_models: dict[str, InterestModelInfo]

    async def start(self) -> None: ...

    async def encode_texts(self, texts: list[str], timeout_s: float | None) -> np.ndarray: ...

    async def encode_items(self, text_vectors: np.ndarray, item_ids: list[str],
                           timeout_s: float | None) -> np.ndarray: ...

    async def interest(self, item_vectors: np.ndarray, event_types: list[int], values: list[float],
                       timestamps_ms: list[int], timeout_s: float | None,
                       query: np.ndarray | None = None, model: str = "") -> np.ndarray | None:
        """The interest under interest model `model` (a name in interest_models; "": the default)."""

    async def close(self) -> None: ...


class InProcessBackend:
    """The text model and the interest model run in a worker thread of this process."""

    def __init__(self, settings: EncoderSettings):
        self._s = settings
        self._model: TextModel | None = None
        self._interest = None  # the default interest model (its item tower encodes items)
        self._interests: dict = {}  # every interest model by name, the default's included
        # One worker: each model uses one thread; more workers would only contend.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self.version, self.text_dim, self.dim = "", 0, 0
        self.interest_models: dict[str, InterestModelInfo] = {}

    async def start(self) -> None:
        from recmesh.models.interest.served import ServedInterestModel, servable_variants

        s = self._s

        model_dir, model_name = s.model_dir, s.model_name
        if "model_dir" not in s.model_fields_set:  # not set: the var's own text model if `recmesh train` tuned one
            model_dir = served_text_model()
            model_name = text_model_name(model_dir)

        def load():
            text = load_text_model(s.variant, model_dir, model_name, s.threads, s.max_batch, s.max_seq_len)
            interests = [ServedInterestModel(path, s.threads)
                         for path in (s.interest_model,
                                      *servable_variants(interest_variant_artifacts(s.interest_variants)))]
            return text, interests

        self._model, interests = await asyncio.get_running_loop().run_in_executor(self._pool, load)
        self._interests = {}
        for i, model in enumerate(interests):
            if model.name in self._interests:
                raise ValueError(f"interest model version {model.name!r} is served twice "
                                 f"(RECMESH_ENCODER_INTEREST_MODEL and RECMESH_ENCODER_INTEREST_VARIANTS)")
            self._interests[model.name] = model
            self.interest_models[model.name] = InterestModelInfo(
                model.name, f"{self._model.version}+{model.version}@inprocess", model.item_space,
                model.fuses_queries, default=i == 0)
        self._interest = interests[0]
        self.text_dim, self.dim = self._model.dim, self._interest.dim
        self.version = f"{self._model.version}+{self._interest.version}@inprocess"

    async def _run(self, fn, *args):
        if self._interest is None:
            raise Unavailable("encoder is warming up")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def encode_texts(self, texts, timeout_s):
        return await self._run(lambda: self._model.encode(texts))

    async def encode_items(self, text_vectors, item_ids, timeout_s):
        return await self._run(self._interest.item_vectors, text_vectors, item_ids)

    async def interest(self, item_vectors, event_types, values, timestamps_ms, timeout_s, query=None, model=""):
        served = self._interests[model] if model else self._interest
        return await self._run(served.interest, item_vectors, event_types, values, timestamps_ms, query)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


def _status(exc) -> grpc.StatusCode:
    """Triton's failure as a gRPC status for our caller; never OK (an error is an error)."""
    name = str(exc.status() or "").removeprefix("StatusCode.")
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL if code == grpc.StatusCode.OK else code


class TritonBackend:
    """Models on Triton via tritonclient.grpc.aio. The caller's remaining time bounds the wait
    here; the call itself is never cancelled (see EncoderSettings.triton_call_cap_s): a call
    that comes back late finishes in the background. The work in flight is bounded in rows
    (triton_max_in_flight_rows), and a large request sends its chunks a few at a time, none
    after its caller has gone (triton_chunks_in_flight)."""

    # Below this there is no point in a retry: it could not come back in time.
    MIN_RETRY_S = 0.005

    def __init__(self, settings: EncoderSettings):
        self._s = settings
        self._client = None
        self._max_batch = 64
        self.version, self.text_dim, self.dim = "", 0, 0
        self.interest_models: dict[str, InterestModelInfo] = {}
        self._folders: dict[str, str] = {}  # interest model name -> interest_encoder's version folder
        self._abandoned: set[asyncio.Future] = set()  # calls whose caller stopped waiting, still running
        self._in_flight_rows = 0  # rows of the calls sent and not finished, late ones included

    async def start(self) -> None:
        import tritonclient.grpc.aio as triton

        client = triton.InferenceServerClient(self._s.triton_url, channel_args=FAST_RECONNECT)
        models = (self._s.triton_text_model, self._s.triton_interest_model, self._s.triton_item_model)
        deadline = time.monotonic() + self._s.triton_wait_s
        while True:  # Triton may still be loading models: wait, bounded, then fail loudly
            try:
                if all([await client.is_model_ready(m) for m in models]):
                    break
            except Exception as exc:  # tritonclient raises its own exception type for transport errors
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Triton at {self._s.triton_url} not ready: {exc}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"Triton models {', '.join(models)} not ready at {self._s.triton_url}")
            await asyncio.sleep(0.2)
        text = (await client.get_model_config(self._s.triton_text_model, as_json=True))["config"]
        self.text_dim = int(text["output"][0]["dims"][-1])
        self._max_batch = int(text.get("max_batch_size", 0)) or 64
        params = text.get("parameters", {})
        variant = params.get("variant", {}).get("string_value", "?")
        name = params.get("model_name", {}).get("string_value", "?")
        interest = (await client.get_model_config(self._s.triton_interest_model, as_json=True))["config"]
        interest_params = interest.get("parameters", {})
        interest_version = interest_params.get("version", {}).get("string_value", "?")
        folders = parse_versions(interest_params.get("versions", {}).get("string_value", ""), interest_version)
        for number in folders:  # every version folder loaded (version_policy all): bounded wait, as above
            while not await client.is_model_ready(self._s.triton_interest_model, str(number)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Triton {self._s.triton_interest_model} version {number} not ready")
                await asyncio.sleep(0.2)
        # The catalog's dim: what item_encoder gives a probe item.
        probe = await self._infer_with(client, self._s.triton_item_model, _inputs(
            ("TEXT_VECTOR", np.zeros((1, self.text_dim), np.float32), "FP32"),
            ("ITEM_ID", np.array([[b"probe"]], dtype=object), "BYTES")), "ITEM_VECTOR", None)
        self.dim = int(probe.shape[-1])
        # Whether each interest model fuses queries: only such a model answers an empty history.
        self.interest_models, self._folders = {}, {}
        for number, (model_name, space) in sorted(folders.items()):
            cold = await self._infer_with(client, self._s.triton_interest_model,
                                          _interest_inputs(np.zeros((0, self.dim), np.float32), [], [], [], None),
                                          "INTEREST", None, str(number))
            self.interest_models[model_name] = InterestModelInfo(
                model_name, f"{name}/{variant}+llm-seq/{model_name}@triton", space, bool(cold.size),
                default=number == 1)
            self._folders[model_name] = str(number)
        self.version = f"{name}/{variant}+llm-seq/{interest_version}@triton"
        self._client = client  # last: calls are served only once version, dims and batch size are known

    async def _infer(self, model: str, inputs, output: str, timeout_s: float | None,
                     model_version: str = "", rows: int = 1) -> np.ndarray:
        if self._client is None:
            raise Unavailable("encoder is warming up")
        return await self._infer_with(self._client, model, inputs, output, timeout_s, model_version, rows)

    async def _infer_with(self, client, model: str, inputs, output: str, timeout_s: float | None,
                          model_version: str = "", rows: int = 1) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for attempt in (1, 2):
            if self._in_flight_rows and self._in_flight_rows + rows > self._s.triton_max_in_flight_rows:
                raise DependencyFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"triton {model}: {self._in_flight_rows} rows in flight "
                                       f"({len(self._abandoned)} calls given up on), at most "
                                       f"{self._s.triton_max_in_flight_rows}")
            call = self._send(client.infer(model, inputs, model_version=model_version,
                                           client_timeout=self._s.triton_call_cap_s), rows)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # shield: neither our timeout nor our caller's cancellation cancels the call.
                result = await asyncio.wait_for(asyncio.shield(call), remaining)
                return result.as_numpy(output)
            except (TimeoutError, asyncio.CancelledError) as exc:
                self._abandon(call)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise DependencyFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"triton {model}: no answer in {timeout_s * 1000:.1f} ms") from None
            except InferenceServerException as exc:
                code = _status(exc)
                budget_left = deadline is None or deadline - time.monotonic() > self.MIN_RETRY_S
                if code == grpc.StatusCode.UNAVAILABLE and attempt == 1 and budget_left:
                    continue  # one retry: a Triton restart or a dropped connection
                raise DependencyFailed(code, f"triton {model}: {exc.message()}") from None
        raise AssertionError("unreachable")

    def _send(self, infer, rows: int) -> asyncio.Future:
        """The call as a task, its rows counted in flight until it finishes, however it ends;
        then it leaves the calls given up on, and its outcome is read (no 'never retrieved')."""
        call = asyncio.ensure_future(infer)
        self._in_flight_rows += rows

        def finished(done: asyncio.Future) -> None:
            self._in_flight_rows -= rows
            self._abandoned.discard(done)
            if not done.cancelled():
                done.exception()

        call.add_done_callback(finished)
        return call

    def _abandon(self, call: asyncio.Future) -> None:
        """Leaves a call nobody waits for to finish (counted until then: close() waits for it)."""
        if not call.done():
            self._abandoned.add(call)

    async def _chunked(self, model: str, n: int, inputs_for, output: str, timeout_s: float | None) -> np.ndarray:
        """Requests above the model's max_batch_size are refused: send chunks, at most
        triton_chunks_in_flight at once (Triton's dynamic batcher and instances take it from
        there), each with the request's remaining time; after a chunk fails, the chunks not yet
        sent never are."""
        step = self._max_batch
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        async def send(part: slice) -> np.ndarray:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DependencyFailed(grpc.StatusCode.DEADLINE_EXCEEDED, f"triton {model}: no time left")
            return await self._infer(model, inputs_for(part), output, remaining, rows=part.stop - part.start)

        if n <= step:  # one chunk (a typed query, most calls): no slots, no tasks
            return await send(slice(0, n))
        slots = asyncio.Semaphore(self._s.triton_chunks_in_flight)

        async def chunk(start: int) -> np.ndarray:
            async with slots:
                return await send(slice(start, min(start + step, n)))

        tasks = [asyncio.ensure_future(chunk(start)) for start in range(0, n, step)]
        try:
            return np.concatenate(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # a chunk waiting for its slot is dropped; one sent is left to finish
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def encode_texts(self, texts: list[str], timeout_s: float | None) -> np.ndarray:
        raw = np.array([[t.encode()] for t in texts], dtype=object)
        return await self._chunked(self._s.triton_text_model, len(texts),
                                   lambda part: _inputs(("TEXT", raw[part], "BYTES")), "EMBEDDING", timeout_s)

    async def encode_items(self, text_vectors, item_ids, timeout_s):
        vectors = np.ascontiguousarray(text_vectors, dtype=np.float32)
        ids = np.array([[i.encode()] for i in item_ids], dtype=object)
        return await self._chunked(
            self._s.triton_item_model, len(item_ids),
            lambda part: _inputs(("TEXT_VECTOR", vectors[part], "FP32"), ("ITEM_ID", ids[part], "BYTES")),
            "ITEM_VECTOR", timeout_s)

    async def interest(self, item_vectors, event_types, values, timestamps_ms, timeout_s, query=None, model=""):
        inputs = _interest_inputs(item_vectors, event_types, values, timestamps_ms, query)
        # Always a named version folder: Triton's own default would be the highest number.
        folder = self._folders[model] if model else "1"
        interest = await self._infer(self._s.triton_interest_model, inputs, "INTEREST", timeout_s, folder)
        return interest if interest.size else None

    async def close(self, grace_s: float = 5.0) -> None:
        """Waits up to grace_s for late calls (closing the channel would cancel them), then closes."""
        if self._abandoned:
            await asyncio.wait(list(self._abandoned), timeout=grace_s)
        if self._client is not None:
            await self._client.close()


def _interest_inputs(item_vectors, event_types, values, timestamps_ms, query: np.ndarray | None) -> list:
    """interest_encoder's inputs; QUERY_VECTOR (optional there) only with a query."""
    arrays = [
        ("ITEM_VECTORS", np.ascontiguousarray(item_vectors, dtype=np.float32), "FP32"),
        ("EVENT_TYPES", np.asarray(event_types, dtype=np.int32), "INT32"),
        ("EVENT_VALUES", np.asarray(values, dtype=np.float32), "FP32"),
        ("TIMESTAMPS_MS", np.asarray(timestamps_ms, dtype=np.int64), "INT64"),
    ]
    if query is not None:
        arrays.append(("QUERY_VECTOR", np.ascontiguousarray(query, dtype=np.float32).reshape(-1), "FP32"))
    return _inputs(*arrays)


def _inputs(*arrays: tuple[str, np.ndarray, str]) -> list:
    from tritonclient.grpc import InferInput

    tensors = []
    for name, array, dtype in arrays:
        tensor = InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def make_backend(settings: EncoderSettings) -> EncoderBackend:
    return TritonBackend(settings) if settings.backend == "triton" else InProcessBackend(settings)
