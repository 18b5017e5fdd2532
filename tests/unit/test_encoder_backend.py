"""The in-process encoder backend (the explicit alternative to Triton)."""

import asyncio

import numpy as np

from recmesh.v1 import common_pb2
from services.encoder.backends import InProcessBackend, make_backend
from services.encoder.config import EncoderSettings


def test_backend_choice_is_explicit():
    assert type(make_backend(EncoderSettings())).__name__ == "TritonBackend"
    assert type(make_backend(EncoderSettings(backend="inprocess"))).__name__ == "InProcessBackend"


def test_in_process_backend_encodes_and_blends():
    async def run():
        backend = InProcessBackend(EncoderSettings(backend="inprocess", variant="onnx-fp32"))
        await backend.start()
        try:
            texts = ["animated film for children", "Toy Story (1995). Animation, Children", "Alien (1979). Horror"]
            vectors = await backend.encode_texts(texts, timeout_s=None)
            click = common_pb2.EventType.EVENT_TYPE_CLICK
            interest = await backend.interest(vectors[1:], [click, click], [0, 0], vectors[0], None)
            return backend.version, vectors, interest
        finally:
            await backend.close()

    version, vectors, interest = asyncio.run(run())
    assert version.endswith("onnx-fp32@inprocess")
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # the query reads as the family film
    assert interest @ vectors[0] > 0.6  # the typed query leads the blend
