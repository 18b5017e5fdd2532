"""Query fusion through the live mesh: a gateway whose encoder serves an interest model with query
fusion answers a cold user (no history) from the interest source, with or without a typed query,
and the answer obeys the request's filters and exclusions.

The model is the session's served one with a fusion head whose query term is 0 and whose cold
vector is Toy Story's catalog vector: its interest is Toy Story's direction for any query. Both
gateways here rank with a ranker replica whose blend weighs the interest 10x the query (the
shipped blend weighs the query 10x the interest), so what the interest source brings shows: Toy
Story in the answer to "space opera" can only have come from it - the typed words alone do not
retrieve it (the gateway over the session's encoder, whose model has no fusion, shows that)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from recmesh.client import Event
from recmesh.common.vectors import from_matrix
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel
from recmesh.models.interest.served import export_served
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import Scorer, save_params
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from tests.integration.answers import undegraded

pytestmark = pytest.mark.integration

TOY_STORY = "1"


@pytest.fixture(scope="module")
def gateways(stack, tmp_path_factory):
    """(fused, plain): gateway replicas over an in-process encoder replica serving the fused model
    and over the session's encoder, both ranking with the interest-heavy ranker replica (the
    retrieval and updater are the session's)."""
    with grpc.insecure_channel(stack.address("retrieval")) as channel:
        found = retrieval_pb2_grpc.RetrievalStub(channel).GetItems(
            retrieval_pb2.GetItemsRequest(item_ids=[TOY_STORY], with_vectors=True, catalog_vectors_only=True),
            timeout=10)
    toy_story = from_matrix(found.vectors)[0].copy()
    blob = torch.load(stack.interest_model, map_location="cpu", weights_only=True)
    config = ModelConfig(**{**blob["config"], "query_dim": blob["config"]["text_dim"]})
    model = SequenceInterestModel(config, None)
    missing = model.load_state_dict(blob["state"], strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in model.state_dict() if k.startswith(("query_proj", "cold")))
    with torch.no_grad():
        model.query_proj[2].weight.zero_()
        model.query_proj[2].bias.zero_()
        model.cold.copy_(torch.from_numpy(toy_story))
    path = tmp_path_factory.mktemp("fused") / "interest_model.pt"
    export_served(model.eval(), blob["item_ids"], blob["holdout_users"], f"{blob['version']}-fused", path)
    weights = dict.fromkeys(FEATURES, 0.0) | {"interest_sim": 10.0, "query_sim": 1.0, "popularity": 0.01}
    params = tmp_path_factory.mktemp("params")
    save_params(Scorer("ranker-interest-heavy", np.array([weights[f] for f in FEATURES], np.float32)), params)
    # No updater stream (port 9: nothing listens): the ranker keeps the blend it starts with.
    stack.start_replica("ranker", "interest", env={"RECMESH_RANKER_PARAMS_DIR": str(params),
                                                   "RECMESH_RANKER_UPDATER_ADDR": "127.0.0.1:9"})
    stack.start_replica("encoder", "fused", env={"RECMESH_ENCODER_BACKEND": "inprocess",
                                                 "RECMESH_ENCODER_INTEREST_MODEL": str(path)})
    fused = stack.start_replica("gateway", "fused", upstreams={"encoder": "encoder-fused", "ranker": "ranker-interest"})
    plain = stack.start_replica("gateway", "plain", upstreams={"ranker": "ranker-interest"})
    with grpc.insecure_channel(fused) as fused_channel, grpc.insecure_channel(plain) as plain_channel:
        stubs = (recommendations_pb2_grpc.RecommendationsStub(fused_channel),
                 recommendations_pb2_grpc.RecommendationsStub(plain_channel))
        # The new replicas' first calls (a query encoded by a fresh in-process model) may miss
        # the encoder's cap on a busy host: warmed up here, patiently, once.
        for stub in stubs:
            warm = recommendations_pb2.RecommendRequest(user_id="warm-up", k=10, query="warm up")
            undegraded(lambda stub=stub, warm=warm: stub.Recommend(warm, timeout=10), tries=60, pause_s=0.25)
        yield stubs


def recommend(stub, user: str, query: str = "", k: int = 10, **filters) -> recommendations_pb2.RecommendResponse:
    """A full-path answer (tests/integration/answers.py)."""
    request = recommendations_pb2.RecommendRequest(user_id=user, k=k, query=query,
                                                   filters=common_pb2.Filters(**filters))
    return undegraded(lambda: stub.Recommend(request, timeout=10))


def ids(reply) -> list[str]:
    return [item.item_id for item in reply.items]


def test_a_cold_user_with_a_query_gets_the_interest_source(gateways, user):
    fused_gateway, plain_gateway = gateways
    plain = recommend(plain_gateway, user, "space opera")
    fused = recommend(fused_gateway, user, "space opera")
    assert TOY_STORY not in ids(plain) and len(plain.items) == 10  # the typed words alone do not bring it
    assert TOY_STORY in ids(fused) and len(fused.items) == 10
    assert fused.versions["encoder"].endswith("-fused@inprocess")
    # No query: the cold-start interest (without fusion, the popular items).
    assert TOY_STORY in ids(recommend(fused_gateway, f"{user}-b"))
    assert recommend(plain_gateway, f"{user}-b").items[0].title == "Forrest Gump (1994)"


def test_the_fused_answer_obeys_filters_and_exclusions(gateways, client, user):
    fused_gateway, _ = gateways
    excluded = recommend(fused_gateway, user, "space opera", exclude_item_ids=[TOY_STORY])
    assert TOY_STORY not in ids(excluded) and len(excluded.items) == 10
    comedies = recommend(fused_gateway, user, "space opera", include_categories=["Comedy"],
                         exclude_categories=["Animation"])
    assert len(comedies.items) == 10
    assert all("Comedy" in it.categories and "Animation" not in it.categories for it in comedies.items)
    # What the user has seen is left out too.
    seen = [ids(excluded)[0], ids(comedies)[0]]
    client.track_events(Event(user, item, "click") for item in seen)
    after = recommend(fused_gateway, user, "space opera")
    assert not set(seen) & set(ids(after)) and len(after.items) == 10


@pytest.fixture(scope="module")
def cold_gateway(stack, gateways, tmp_path_factory):
    """A gateway over the fused encoder replica ranking with the interest-heavy blend plus cold
    weights that read the typed words alone (recmesh.tools.eval.cold_queries' kind of version)."""
    blend = dict.fromkeys(FEATURES, 0.0) | {"interest_sim": 10.0, "query_sim": 1.0, "popularity": 0.01}
    cold = dict.fromkeys(FEATURES, 0.0) | {"query_sim": 1.0}
    params = tmp_path_factory.mktemp("cold-params")
    save_params(Scorer("ranker-interest-heavy-cold", np.array([blend[f] for f in FEATURES], np.float32),
                       cold=np.array([cold[f] for f in FEATURES], np.float32)), params)
    stack.start_replica("ranker", "cold", env={"RECMESH_RANKER_PARAMS_DIR": str(params),
                                               "RECMESH_RANKER_UPDATER_ADDR": "127.0.0.1:9"})
    address = stack.start_replica("gateway", "cold", upstreams={"encoder": "encoder-fused", "ranker": "ranker-cold"})
    with grpc.insecure_channel(address) as channel:
        stub = recommendations_pb2_grpc.RecommendationsStub(channel)
        warm = recommendations_pb2.RecommendRequest(user_id="warm-up", k=10, query="warm up")
        undegraded(lambda: stub.Recommend(warm, timeout=10), tries=60, pause_s=0.25)
        yield stub


def test_cold_weights_rank_a_newcomer_by_the_typed_words_and_leave_users_with_history_alone(
        gateways, cold_gateway, client, user):
    fused_gateway, _ = gateways
    # A newcomer: the cold weights read the query alone, so the interest source's Toy Story,
    # which the typed words do not match, is ranked out of the page the blend put it on.
    blended = recommend(fused_gateway, user, "space opera")
    cold = recommend(cold_gateway, user, "space opera")
    assert TOY_STORY in ids(blended) and TOY_STORY not in ids(cold) and len(cold.items) == 10
    assert cold.versions["ranker"] == "ranker-interest-heavy-cold"
    scores = [item.score for item in cold.items]
    assert scores == sorted(scores, reverse=True)
    # With a history the same version scores with its blend: the same answer as the blend alone.
    client.track_events(Event(f"{user}-h", item, "rate", value=5.0) for item in ("260", "1196", "1210"))
    assert ids(recommend(cold_gateway, f"{user}-h", "space opera")) == \
        ids(recommend(fused_gateway, f"{user}-h", "space opera"))
