"""The in-process encoder backend (the explicit alternative to Triton)."""

import asyncio

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
