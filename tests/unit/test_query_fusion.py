"""Typed queries fused inside the interest model: the model's shapes and cold-start vector, the
served runner against the torch model (with and without query and history), old artifacts
unchanged, the synthesised training queries, and training that learns to use a query."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recmesh.common.paths import SHIPPED_ARTIFACT
from recmesh.models.interest.query_fusion import QueryBank, category_phrases, item_labels
from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel, encode_sequences
from recmesh.models.interest.served import ServedInterestModel, export_served
from recmesh.tools.eval import datasets
from recmesh.tools.eval.train import TrainConfig, search_phrases, train
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
N_ITEMS, TEXT_DIM, D, MAX_LEN = 30, 12, 16, 8


def fused_model(seed: int = 0) -> tuple[SequenceInterestModel, np.ndarray]:
    torch.manual_seed(seed)
    text = np.random.default_rng(seed).normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    config = ModelConfig(N_ITEMS, text_dim=TEXT_DIM, d=D, max_len=MAX_LEN, query_dim=TEXT_DIM)
    model = SequenceInterestModel(config, text).eval()
    with torch.no_grad():  # trained-looking weights, not the tiny initial ones
        model.ids.weight.normal_()
        model.cold.normal_()
    return model, text


def history(length: int) -> tuple[list[int], list[float], list[int]]:
    return ([(7 * i) % N_ITEMS for i in range(length)], [float(1 + i % 5) for i in range(length)],
            [1_000_000 + 41 * i * i for i in range(length)])


def test_fusion_shapes_and_the_cold_vector():
    model, _ = fused_model()
    query = torch.randn(3, TEXT_DIM)
    items, strength, gaps = encode_sequences([history(3)[0], [], history(9)[0]], [history(3)[1], [], history(9)[1]],
                                             [history(3)[2], [], history(9)[2]], MAX_LEN)
    with torch.no_grad():
        plain = model.interest(items, strength, gaps)
        fused = model.interest(items, strength, gaps, query)
        hidden = model(items, strength, gaps)[:, -1]
        term = model.query_proj(query)
        assert plain.shape == fused.shape == (3, D)
        assert model.scores(items, strength, gaps, query).shape == (3, N_ITEMS)
        # An empty history (all padding) is the cold vector; a real one the last hidden state.
        assert torch.allclose(plain[1], model.cold) and torch.allclose(plain[[0, 2]], hidden[[0, 2]])
        assert torch.allclose(fused, plain + term, atol=1e-6)
        # No history at all: cold (+ the query), row by row as has_query says.
        cold = model.fuse(None, query, torch.tensor([True, False, True]))
        assert torch.allclose(cold[1], model.cold) and torch.allclose(cold[0], model.cold + term[0], atol=1e-6)
    with pytest.raises(ValueError, match="query_dim"):
        model.fuse(None, torch.randn(1, TEXT_DIM + 1))


def test_without_fusion_the_model_is_what_it_was():
    text = np.random.default_rng(0).normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    torch.manual_seed(0)
    old = SequenceInterestModel(ModelConfig(N_ITEMS, text_dim=TEXT_DIM, d=D, max_len=MAX_LEN), text)
    torch.manual_seed(0)
    new = SequenceInterestModel(ModelConfig(N_ITEMS, text_dim=TEXT_DIM, d=D, max_len=MAX_LEN, query_dim=TEXT_DIM), text)
    shared = old.state_dict()
    # The fusion parts come after every other: the rest is initialised exactly as without them.
    assert all(torch.equal(shared[k], new.state_dict()[k]) for k in shared if k != "text")
    assert not hasattr(old, "query_proj") and not hasattr(old, "cold")
    tensors = encode_sequences([history(4)[0]], [history(4)[1]], [history(4)[2]], MAX_LEN)
    with torch.no_grad():
        assert torch.equal(old.eval().interest(*tensors), old(*tensors)[:, -1])
    with pytest.raises(ValueError, match="no query fusion"):
        old.interest(*tensors, query=torch.randn(1, TEXT_DIM))


def test_an_old_artifact_ignores_the_query_and_answers_no_empty_history(tmp_path):
    served = ServedInterestModel(SHIPPED_ARTIFACT, cache_dir=tmp_path)
    assert not served.fuses_queries and served.query_dim == 0
    vectors = np.random.default_rng(1).normal(size=(4, served.dim)).astype(np.float32)
    args = ([ET.EVENT_TYPE_RATE] * 4, [4.0, 3.0, 5.0, 2.0], [0, 60_000, 120_000, 3_600_000])
    query = np.random.default_rng(2).normal(size=served.text_dim).astype(np.float32)
    assert np.array_equal(served.interest(vectors, *args), served.interest(vectors, *args, query=query))
    assert served.interest(vectors[:0], [], [], [], query=query) is None


@pytest.fixture(scope="module")
def served_pair(tmp_path_factory):
    """The fused model, its catalog texts and ids, and its served artifact (one ONNX export for
    the module: the cache beside it)."""
    model, text = fused_model()
    ids = [f"item-{i}" for i in range(N_ITEMS)]
    path = tmp_path_factory.mktemp("fused") / "interest_model.pt"
    export_served(model, ids, [], "20260101T000000Z", path)
    return model, text, ids, path


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
@pytest.mark.parametrize("length", [0, 3, 11])  # none, shorter and longer than max_len
@pytest.mark.parametrize("with_query", [False, True])
def test_the_served_runner_is_the_torch_model(served_pair, runtime, length, with_query):
    model, text, ids, path = served_pair
    served = ServedInterestModel(path, runtime=runtime, cache_dir=path.parent)
    assert served.fuses_queries and served.query_dim == TEXT_DIM
    items, ratings, seconds = history(length)
    query = np.random.default_rng(3).normal(size=TEXT_DIM).astype(np.float32) if with_query else None
    with torch.no_grad():
        offline = model.interest(*encode_sequences([items], [ratings], [seconds], MAX_LEN),
                                 None if query is None else torch.from_numpy(query)[None])[0].numpy()
    vectors = served.item_vectors(text, ids)[items]
    interest = served.interest(vectors, [ET.EVENT_TYPE_RATE] * length, ratings, [s * 1000 for s in seconds], query)
    assert interest.shape == (D,)
    assert np.allclose(interest, offline, atol=1e-5)


def test_the_served_runner_names_a_query_of_another_dim(served_pair, tmp_path):
    _, _, _, path = served_pair
    served = ServedInterestModel(path, runtime="torch", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="query: dim 5"):
        served.interest(np.zeros((0, D), np.float32), [], [], [], np.zeros(5, np.float32))


def test_phrases_come_from_the_items_own_labels():
    categories = [["Office", "Calculators", "Scientific"], ["Office", "Calculators", "Basic"], ["Office", "Pens"],
                  ["Toys"]]
    # "Office" labels 3 of 4 items: too broad to tell them apart; each path keeps it.
    assert category_phrases(categories)[0] == ["Calculators", "Scientific", "Office > Calculators > Scientific"]
    labels = item_labels(categories, [["rpn"], [], ["blue ink", "Blue Ink"], []],
                         [{"brand": "HP", "sku": "a1", "in_stock": True}, {"brand": "hp", "sku": "a2"},
                          {"brand": "Bic", "sku": "a3"}, {}],
                         [["financial calculator"], [], [], []])
    assert labels[0] == ["Calculators", "Scientific", "Office > Calculators > Scientific", "rpn", "HP",
                         "financial calculator"]
    assert labels[2] == ["Pens", "Office > Pens", "blue ink", "Bic"]  # tags once, case-insensitive; no sku (an id)
    assert labels[3] == ["Toys"]
    with pytest.raises(ValueError, match="tags has 1 rows for 4 items"):
        item_labels(categories, [["x"]])


def one_hot_bank() -> QueryBank:
    """Item i's phrases are i..i+count-1 (one-hot vectors: a query's support shows which were
    drawn); item 4 has no labels."""
    labels = [[f"p{j}" for j in range(i, i + 4)] for i in range(4)] + [[]]
    return QueryBank.build(labels, lambda texts: np.eye(len(texts), dtype=np.float32))


def test_synthesised_queries_are_seeded_and_use_only_the_targets_labels():
    bank = one_hot_bank()
    targets = np.array([0, 1, 4, 3, 2, 0, 0, 0] * 8)
    first, has = bank.sample(targets, np.random.default_rng(7))
    again, _ = bank.sample(targets, np.random.default_rng(7))
    other, _ = bank.sample(targets, np.random.default_rng(8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert has.tolist() == [t != 4 for t in targets] and not first[targets == 4].any()  # no labels: no query
    own = bank.members[targets]
    for row, query in zip(own, first, strict=True):
        support = set(np.flatnonzero(query))
        if row[0] < 0:
            continue
        assert support <= set(row[row >= 0]) and 1 <= len(support) <= 3
        assert np.isclose(np.linalg.norm(query), 1.0)
    sizes = {len(np.flatnonzero(q)) for q in first[has]}
    assert sizes == {1, 2, 3}  # 1 to 3 phrases, each size drawn


def test_search_texts_that_led_to_an_item(tmp_path, monkeypatch):
    from recmesh.events.eventlog import EventLog

    monkeypatch.setenv("RECMESH_VAR", str(tmp_path))
    from recmesh.common.paths import var_paths

    path = var_paths(tmp_path).event_log
    path.parent.mkdir(parents=True, exist_ok=True)
    log = EventLog(path)
    minute = 60_000
    events = [
        common_pb2.Event(event_id="1", user_id="u", type=ET.EVENT_TYPE_SEARCH, query="heist  movie", timestamp_ms=0),
        common_pb2.Event(event_id="2", user_id="u", item_id="a", type=ET.EVENT_TYPE_CLICK, timestamp_ms=minute),
        common_pb2.Event(event_id="3", user_id="u", item_id="b", type=ET.EVENT_TYPE_CLICK, timestamp_ms=99 * minute),
        common_pb2.Event(event_id="4", user_id="v", item_id="b", type=ET.EVENT_TYPE_CLICK, query="caper",
                         timestamp_ms=minute),
    ]
    log.append(events)
    log.close()
    assert search_phrases(tmp_path, ["a", "b", "c"]) == [["heist movie"], ["caper"], []]


def test_training_learns_to_use_the_query():
    # Everyone walks the items in order; each item's only phrase is its own one-hot vector: the
    # cold vector + the query must learn to name the item the query describes.
    n = 12
    rows = [datasets.Interaction(f"u{u}", f"i{(u + t) % n}", t) for u in range(24) for t in range(8)]
    data = datasets.Dataset("cycle", rows, [f"i{k}" for k in range(n)], [f"item {k}" for k in range(n)])
    s = datasets.split(data)
    bank = QueryBank.build([[f"p{k}"] for k in range(n)], lambda texts: np.eye(len(texts), dtype=np.float32))
    config = ModelConfig(n, d=16, layers=1, heads=1, max_len=6, dropout=0.0, query_dim=n)
    with pytest.raises(ValueError, match="no QueryBank"):
        train(s, config, None, TrainConfig(epochs=1), "cycle")
    cfg = TrainConfig(epochs=6, batch=36, lr=3e-2, patience=6, threads=1, samples="windows", cold_loss=1.0,
                      cold_share=1.0)
    model, report = train(s, config, None, cfg, "cycle", bank)
    assert report["query_fusion"]["labelled_items"] == n
    first, last = report["history"][0], report["history"][-1]
    assert last["loss_query"] < 0.5 * first["loss_query"] and last["loss_cold"] < 0.5 * first["loss_cold"]
    # The epoch kept is the best on validation without queries (here an early one): even so the
    # cold vector + a query names the queried item far above chance (1 / 12).
    with torch.no_grad():
        named = (model.fuse(None, torch.eye(n)) @ model.item_table()[1:].T).argmax(1)
    assert (named == torch.arange(n)).float().mean() >= 0.5
