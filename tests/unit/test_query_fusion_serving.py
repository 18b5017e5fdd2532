"""Query fusion served: Triton's interest_encoder takes the query's vector (optional input), the
encoder encodes the query first and feeds it, and the gateway asks a cold user's interest and
uses the interest source - every answer path's rules still holding. An interest model without
fusion (the shipped one) answers as before."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch

from recmesh.common.vectors import first_row, to_matrix
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.models.interest.served import ServedInterestModel, export_served
from recmesh.v1 import common_pb2, encoder_pb2
from services.encoder.backends import InterestModelInfo
from services.encoder.config import EncoderSettings
from services.encoder.server import EncoderServicer
from services.gateway.shedding import RUNGS
from tests.unit.test_answer_paths import (
    ACME_5_TO_9,
    ACME_5_TO_9_IDS,
    BROWNOUT,
    DIM,
    DOCUMENTARIES,
    SHED,
    Context,
    Mesh,
    gateway,
    ids,
    recommend,
    track,
)
from tests.unit.test_triton_models import MODELS, FakeTensor, _config, load_model, pb_utils  # noqa: F401

ET = common_pb2.EventType
TEXT_DIM = 384  # the interest_encoder's check compares a query with the language model's dim


@pytest.fixture(scope="module")
def fused_repository(tmp_path_factory):
    """A copy of the interest_encoder model folder serving a small fused model (query_dim = the
    language model's dim), its version stamped into the copied config."""
    folder = tmp_path_factory.mktemp("repo") / "interest_encoder"
    shutil.copytree(MODELS / "interest_encoder", folder, ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    torch.manual_seed(0)
    model = SequenceInterestModel(ModelConfig(5, text_dim=TEXT_DIM, d=8, max_len=4, query_dim=TEXT_DIM)).eval()
    with torch.no_grad():
        model.cold.normal_()
    export_served(model, [f"i{k}" for k in range(5)], [], "fused-test", folder / "1" / "interest_model.pt")
    return folder


def load_from(folder):
    from google.protobuf import text_format
    from google.protobuf.json_format import MessageToDict
    from tritonclient.grpc import model_config_pb2

    config = MessageToDict(text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()),
                           preserving_proto_field_name=True)
    model = load_model("interest_encoder")
    model.initialize({"model_config": json.dumps(config), "model_repository": str(folder), "model_version": "1"})
    return model


def request(vectors, query=None) -> dict:
    n = len(vectors)
    out = {"ITEM_VECTORS": FakeTensor("", vectors), "EVENT_TYPES": FakeTensor("", np.full(n, 5, np.int32)),
           "EVENT_VALUES": FakeTensor("", np.full(n, 4.0, np.float32)),
           "TIMESTAMPS_MS": FakeTensor("", np.arange(n, dtype=np.int64) * 60_000)}
    if query is not None:
        out["QUERY_VECTOR"] = FakeTensor("", query)
    return out


def test_triton_fuses_the_query_and_answers_an_empty_history(pb_utils, fused_repository):  # noqa: F811
    model = load_from(fused_repository)
    served = model.model
    assert served.fuses_queries
    vectors = np.random.default_rng(0).normal(size=(3, served.dim)).astype(np.float32)
    query = np.random.default_rng(1).normal(size=TEXT_DIM).astype(np.float32)
    with_query, without, cold_query, cold, empty_query, bad = model.execute([
        request(vectors, query), request(vectors), request(vectors[:0], query), request(vectors[:0]),
        request(vectors, query[:0]), request(vectors, query[:7])])
    stamps = [0, 60_000, 120_000]
    assert np.allclose(with_query.output_tensors[0].as_numpy(),
                       served.interest(vectors, [5] * 3, [4.0] * 3, stamps, query), atol=1e-6)
    assert np.allclose(without.output_tensors[0].as_numpy(), served.interest(vectors, [5] * 3, [4.0] * 3, stamps))
    assert not np.allclose(with_query.output_tensors[0].as_numpy(), without.output_tensors[0].as_numpy())
    assert np.allclose(cold_query.output_tensors[0].as_numpy(), served.interest(vectors[:0], [], [], [], query))
    assert np.allclose(cold.output_tensors[0].as_numpy(), served.model.cold.detach().numpy())
    assert np.array_equal(empty_query.output_tensors[0].as_numpy(), without.output_tensors[0].as_numpy())
    assert bad.error and "QUERY_VECTOR" in bad.error


def test_triton_with_an_old_artifact_ignores_the_query(pb_utils):  # noqa: F811
    model = load_from(MODELS / "interest_encoder")
    assert not model.model.fuses_queries
    vectors = np.random.default_rng(0).normal(size=(3, model.model.dim)).astype(np.float32)
    query = np.random.default_rng(1).normal(size=model.model.text_dim).astype(np.float32)
    with_query, without, cold = model.execute([request(vectors, query), request(vectors), request(vectors[:0], query)])
    assert np.array_equal(with_query.output_tensors[0].as_numpy(), without.output_tensors[0].as_numpy())
    assert cold.error is None and cold.output_tensors[0].as_numpy().size == 0


class RecordingBackend:
    """The encoder's backend over a ServedInterestModel, recording what interest() is given."""

    def __init__(self, served: ServedInterestModel):
        self.served, self.version = served, "test"
        self.text_dim, self.dim = served.text_dim, served.dim
        self.interest_models = {served.name: InterestModelInfo(served.name, "test", served.item_space,
                                                               served.fuses_queries, default=True)}
        self.asked: list = []

    async def encode_texts(self, texts, timeout_s):
        return np.stack([np.random.default_rng(len(t)).normal(size=self.text_dim).astype(np.float32) for t in texts])

    async def interest(self, item_vectors, event_types, values, timestamps_ms, timeout_s, query=None, model=""):
        self.asked.append(query)
        return self.served.interest(item_vectors, event_types, values, timestamps_ms, query)


def encode_interest(backend, query: str, rows: int):
    servicer = EncoderServicer(EncoderSettings(), backend)
    history = [encoder_pb2.HistoryEntry(item_id=f"i{k}", type=ET.EVENT_TYPE_VIEW, timestamp_ms=k) for k in range(rows)]
    vectors = np.ones((rows, backend.dim), np.float32)
    req = encoder_pb2.EncodeInterestRequest(history=history, item_vectors=to_matrix(vectors), query=query)
    return asyncio.run(servicer.EncodeInterest(req, Context(5.0)))


def test_the_encoder_encodes_the_query_first_and_feeds_it(fused_repository, tmp_path):
    backend = RecordingBackend(ServedInterestModel(fused_repository / "1" / "interest_model.pt", cache_dir=tmp_path))
    typed, cold, cold_typed = (encode_interest(backend, q, n) for q, n in (("space opera", 2), ("", 0),
                                                                          ("heist movie", 0)))
    query_vector = first_row(typed.query_vector, "query_vector")
    assert np.array_equal(backend.asked[0], query_vector)  # the interest was given the query's vector
    assert backend.asked[1] is None and backend.asked[2] is not None
    assert first_row(cold.interest, "interest") is not None  # an empty history: the cold vector
    assert not np.allclose(first_row(cold.interest, "interest"), first_row(cold_typed.interest, "interest"))


def test_the_encoder_with_an_old_artifact_asks_no_interest_for_an_empty_history(tmp_path):
    from recmesh.common.paths import SHIPPED_ARTIFACT

    backend = RecordingBackend(ServedInterestModel(SHIPPED_ARTIFACT, cache_dir=tmp_path))
    reply = encode_interest(backend, "space opera", 0)
    assert backend.asked == [] and reply.interest.rows == 0 and reply.query_vector.rows == 1


class FusedMesh(Mesh):
    """The upstreams with an encoder whose interest model fuses queries: an interest for every
    request, an empty history included."""

    def __init__(self, version: str = "fused-1"):
        super().__init__()
        self.version = version

    async def EncodeInterest(self, request, timeout):
        self._call("EncodeInterest", request, timeout)
        q = np.ones((1, DIM), np.float32) if request.query else None
        return encoder_pb2.EncodeInterestResponse(interest=to_matrix(np.full((1, DIM), 0.5, np.float32)),
                                                  query_vector=to_matrix(q), model_version=self.version)


def searched_with_interest(mesh) -> list[bool]:
    return [request.interest.rows == 1 for request, _ in mesh.called("Search")]


def test_a_cold_user_gets_the_interest_source_and_one_ask_per_model(monkeypatch):
    async def scenario():
        mesh = FusedMesh()
        g = await gateway(monkeypatch, mesh)
        first = await recommend(g, "cold-a", 3)
        second = await recommend(g, "cold-b", 3)  # the same cold-start interest: not asked again
        asked = len(mesh.called("EncodeInterest"))
        typed = await recommend(g, "cold-c", 3, query="space opera")  # a query: asked, with it
        mesh.version = "fused-2"
        await recommend(g, "cold-d", 3, query="heist movie")  # a reply under a new model
        await recommend(g, "cold-e", 3)  # the cold-start interest is asked again
        return mesh, first, second, asked, typed

    mesh, first, second, asked, typed = asyncio.run(scenario())
    assert asked == 1 and len(mesh.called("EncodeInterest")) == 4
    assert searched_with_interest(mesh) == [True] * 5
    assert [r.query for r, _ in mesh.called("EncodeInterest")] == ["", "space opera", "heist movie", ""]
    assert not first.degraded and not typed.degraded and first.versions["encoder"] == "fused-1"
    assert ids(first) == ids(second) == ["p0", "p1", "p2"]


def test_without_fusion_a_cold_user_gets_the_popular_items_as_before(monkeypatch):
    async def scenario():
        mesh = Mesh()  # its encoder answers no interest for an empty history
        g = await gateway(monkeypatch, mesh)
        replies = [await recommend(g, f"cold-{k}", 3) for k in range(3)]
        return mesh, replies

    mesh, replies = asyncio.run(scenario())
    assert len(mesh.called("EncodeInterest")) == 1 and not mesh.called("Search")  # asked once, then known
    assert all(ids(r) == ["p0", "p1", "p2"] and not r.degraded for r in replies)


def test_the_encoder_down_for_a_cold_user_falls_back_to_popular(monkeypatch):
    async def scenario():
        mesh = FusedMesh()
        g = await gateway(monkeypatch, mesh)
        mesh.down = {"EncodeInterest"}
        down = await recommend(g, "cold", 3)
        mesh.down = set()
        back = await recommend(g, "cold", 3)
        return mesh, down, back

    mesh, down, back = asyncio.run(scenario())
    assert list(down.degraded) == ["encoder:unavailable", "fallback:popular"] and ids(down) == ["p0", "p1", "p2"]
    assert not back.degraded and searched_with_interest(mesh) == [True]


@pytest.mark.parametrize("how", ["full", "full+query", *BROWNOUT, *SHED, "fallback:anonymous",
                                 "fallback:popular_candidates", "fallback:retrieval_order"])
def test_a_cold_users_fused_interest_obeys_filters_and_exclusions_on_every_path(monkeypatch, how):
    how, _, typed = how.partition("+")
    down = {"fallback:anonymous": {"GetUserState"}, "fallback:popular_candidates": {"Search"},
            "fallback:retrieval_order": {"Rank"}}.get(how, set())
    path = how if how in RUNGS or how in SHED else "full"

    async def scenario():
        mesh = FusedMesh()
        g = await gateway(monkeypatch, mesh)
        await track(g, "u", ACME_5_TO_9_IDS[:3])  # seen, not in the model's history (the mesh's users are cold)
        mesh.down = down
        brand = await recommend(g, "u", 10, path, query="a printer" if typed else "", attributes=ACME_5_TO_9,
                                exclude_item_ids=[ACME_5_TO_9_IDS[4]])
        documentaries = await recommend(g, "u", 5, path, include_categories=["Documentary"])
        return mesh, brand, documentaries

    mesh, brand, documentaries = asyncio.run(scenario())
    if how != "full":
        assert how in brand.degraded
    expected = [i for i in ACME_5_TO_9_IDS[3:] if i != ACME_5_TO_9_IDS[4]][:10]
    assert ids(brand) == expected
    assert ids(documentaries) == DOCUMENTARIES[:5]
    if how in ("full", "fallback:retrieval_order"):  # the full path searched with the cold interest
        assert searched_with_interest(mesh) and all(searched_with_interest(mesh))
