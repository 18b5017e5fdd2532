"""The in-process encoder backend (the explicit alternative to Triton)."""

import asyncio
import time

import numpy as np

from recmesh.v1 import common_pb2
from services.encoder.backends import InProcessBackend, make_backend
from services.encoder.config import EncoderSettings


def test_backend_choice_is_explicit():
    assert type(make_backend(EncoderSettings())).__name__ == "TritonBackend"
    assert type(make_backend(EncoderSettings(backend="inprocess"))).__name__ == "InProcessBackend"


def test_in_process_backend_encodes_items_and_interest():
    async def run():
        backend = InProcessBackend(EncoderSettings(backend="inprocess", variant="onnx-fp32"))
        await backend.start()
        try:
            texts = ["animated film for children", "Toy Story (1995). Animation, Children", "Alien (1979). Horror"]
            vectors = await backend.encode_texts(texts, timeout_s=None)
            items = await backend.encode_items(vectors[1:], ["1", "1214"], None)  # MovieLens ids: known items
            new = await backend.encode_items(vectors[1:2], ["not-in-training"], None)
            rate = common_pb2.EventType.EVENT_TYPE_RATE
            interest = await backend.interest(items, [rate, rate], [4.0, 5.0], [0, 1000], None)
            none = await backend.interest(items[:0], [], [], [], None)
            return backend, vectors, items, new, interest, none
        finally:
            await backend.close()

    backend, vectors, items, new, interest, none = asyncio.run(run())
    assert "onnx-fp32" in backend.version and "llm-seq/" in backend.version and backend.version.endswith("@inprocess")
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # the query reads as the family film
    assert items.shape == (2, backend.dim) and new.shape == (1, backend.dim)
    assert not np.allclose(new[0], items[0])  # a known item carries its learned ID embedding
    assert interest.shape == (backend.dim,) and np.isfinite(interest).all() and none is None


class _SlowTriton:
    """A Triton client whose calls take `delay_s`: records each call's gRPC deadline and rows,
    whether it was cancelled (Triton 2.51 can crash on a cancelled gRPC call; see TritonBackend)
    and the most rows it held at once."""

    def __init__(self, delay_s: float):
        self.delay_s, self.deadlines, self.rows, self.cancelled, self.finished = delay_s, [], [], 0, 0
        self.active = self.most_active = 0

    async def infer(self, model, inputs, model_version="", client_timeout=None):
        rows = inputs[0].shape()[0]
        self.deadlines.append(client_timeout)
        self.rows.append(rows)
        self.active += rows
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= rows
        self.finished += 1
        return _Rows(rows)

    async def close(self):
        pass


class _Rows:
    def __init__(self, rows: int):
        self.n = rows

    def as_numpy(self, output):
        return np.zeros((self.n, 4), np.float32)


def _triton_backend(client, **settings):
    from services.encoder.backends import TritonBackend

    backend = TritonBackend(EncoderSettings(**settings))
    backend._client = client
    return backend


def test_a_late_triton_call_is_deadline_exceeded_at_once_and_never_cancelled():
    import grpc

    from recmesh.common.errors import DependencyFailed

    async def run():
        client = _SlowTriton(0.2)
        backend = _triton_backend(client, triton_call_cap_s=7.0)
        started = time.perf_counter()
        try:
            await backend.encode_texts(["late"], timeout_s=0.01)
        except DependencyFailed as exc:
            code, waited = exc.code, time.perf_counter() - started
        # The caller gives up too (the gateway cancelling the encoder's RPC): still not cancelled.
        waiting = asyncio.ensure_future(backend.encode_texts(["abandoned"], timeout_s=5.0))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert len(backend._abandoned) == 2
        await backend.close()  # waits for the late calls instead of cancelling them
        return client, code, waited, backend

    client, code, waited, backend = asyncio.run(run())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and waited < 0.15
    assert client.deadlines == [7.0, 7.0]  # the cap, never the caller's few milliseconds
    assert client.cancelled == 0 and client.finished == 2 and not backend._abandoned
    assert backend._in_flight_rows == 0


def test_rows_in_flight_late_ones_included_are_bounded_however_many_callers():
    import grpc

    from recmesh.common.errors import DependencyFailed

    async def run():
        client = _SlowTriton(0.3)
        backend = _triton_backend(client, triton_max_in_flight_rows=64)

        async def call(n: int):
            try:
                await backend.encode_texts(["late"] * n, timeout_s=0.005)
            except DependencyFailed as exc:
                return exc.code

        first = await call(40)  # late: its 40 rows still run
        refused = await call(30)  # 70 > 64: refused without reaching Triton
        burst = await asyncio.gather(*(call(10) for _ in range(50)))  # 50 callers at once
        await backend.close()
        return client, first, refused, burst

    client, first, refused, burst = asyncio.run(run())
    assert first == grpc.StatusCode.DEADLINE_EXCEEDED and refused == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.rows == [40, 10, 10]  # 40 + 2 x 10 rows fit; the rest were refused (or out of time) unsent
    assert set(burst) == {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert client.most_active <= 64 and client.cancelled == 0


def test_a_large_request_given_up_on_leaves_at_most_its_chunks_in_flight_running():
    async def run():
        client = _SlowTriton(0.2)
        backend = _triton_backend(client, triton_chunks_in_flight=2, triton_max_in_flight_rows=4096)
        backend._max_batch = 64
        answered = await backend.encode_texts(["quick"] * 100, timeout_s=5.0)  # 2 chunks, both answered
        client.rows.clear()
        try:
            await backend.encode_texts(["late"] * 1024, timeout_s=0.01)  # 16 chunks
        except Exception as exc:  # noqa: BLE001 - the code is asserted below
            late = exc
        await asyncio.sleep(0.3)
        await backend.close()
        return client, answered, late

    client, answered, late = asyncio.run(run())
    assert answered.shape == (100, 4)
    assert late.code.name == "DEADLINE_EXCEEDED"
    assert client.rows == [64, 64]  # the other 14 chunks were never sent


def test_triton_settings_out_of_range_fail_fast_naming_the_setting(monkeypatch):
    import pytest
    from pydantic import ValidationError

    for name, value in (("TRITON_CALL_CAP_S", "inf"), ("TRITON_CALL_CAP_S", "1e10"), ("TRITON_CALL_CAP_S", "0.02"),
                        ("TRITON_MAX_IN_FLIGHT_ROWS", "10"), ("TRITON_CHUNKS_IN_FLIGHT", "0")):
        monkeypatch.setenv(f"RECMESH_ENCODER_{name}", value)
        with pytest.raises(ValidationError, match=name.lower()):
            EncoderSettings()
        monkeypatch.delenv(f"RECMESH_ENCODER_{name}")
