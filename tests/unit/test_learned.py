"""The served interest model computes what the trained one computes: from the catalog's item
vectors (its item-table rows) it gives the offline model's interest vector, for short and long
histories; new items still get a vector from their text."""

import numpy as np
import pytest
import torch

from recmesh.models.interest.sequence_model import ModelConfig, SequenceInterestModel, encode_sequences
from recmesh.models.interest.served import ServedInterestModel, event_ratings, export_served
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
N_ITEMS, TEXT_DIM = 30, 12


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    text = np.random.default_rng(0).normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    model = SequenceInterestModel(ModelConfig(N_ITEMS, text_dim=TEXT_DIM, d=16, max_len=8), text).eval()
    with torch.no_grad():  # trained-looking ID rows, not the tiny initial ones
        model.ids.weight.normal_()
    ids = [f"item-{i}" for i in range(N_ITEMS)]
    path = tmp_path / "interest_model.pt"
    export_served(model, ids, ["held-out-user"], "20260101T000000Z", path)
    return model, text, ids, ServedInterestModel(path, cache_dir=tmp_path)


def test_catalog_vectors_are_the_item_table(trained):
    model, text, ids, served = trained
    with torch.no_grad():
        table = model.item_table()[1:].numpy()
    assert np.allclose(served.item_vectors(text, ids), table, atol=1e-5)
    # A new item: placed by its text alone (no ID row).
    with torch.no_grad():
        text_only = model.text_proj(torch.from_numpy(text[:1])).numpy()
    assert np.allclose(served.item_vectors(text[:1], ["brand-new"]), text_only, atol=1e-5)
    assert served.holdout_users == ["held-out-user"] and served.version == "llm-seq/20260101T000000Z"


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
@pytest.mark.parametrize("length", [1, 3, 8, 13])  # shorter than, equal to and longer than max_len
def test_served_interest_is_the_offline_hidden_state(trained, tmp_path, length, runtime):
    model, text, ids, served = trained
    served = ServedInterestModel(tmp_path / "interest_model.pt", runtime=runtime, cache_dir=tmp_path)
    assert served.runtime == runtime
    items = [(5 * i) % N_ITEMS for i in range(length)]
    ratings = [float(1 + i % 5) for i in range(length)]
    seconds = [1_000_000 + 37 * i * i for i in range(length)]
    with torch.no_grad():
        offline = model(*encode_sequences([items], [ratings], [seconds], 8))[0, -1].numpy()
    vectors = served.item_vectors(text, ids)[items]
    interest = served.interest(vectors, [ET.EVENT_TYPE_RATE] * length, ratings, [s * 1000 + 999 for s in seconds])
    assert np.allclose(interest, offline, atol=1e-4)


def test_no_history_no_interest(trained):
    _, text, ids, served = trained
    assert served.interest(served.item_vectors(text, ids)[:0], [], [], []) is None


def test_events_enter_as_the_rating_they_resemble():
    types = [ET.EVENT_TYPE_RATE, ET.EVENT_TYPE_RATE, ET.EVENT_TYPE_VIEW, ET.EVENT_TYPE_PURCHASE]
    assert event_ratings(types, [4.5, 0.0, 0.0, 0.0]) == [4.5, 3.5, 3.0, 4.5]


def test_export_stamps_the_triton_config(tmp_path, trained):
    model, _, ids, _ = trained
    (tmp_path / "interest_encoder" / "1").mkdir(parents=True)
    config = tmp_path / "interest_encoder" / "config.pbtxt"
    config.write_text('parameters: { key: "version", value: { string_value: "old" } }\n')
    export_served(model, ids, [], "v2", tmp_path / "interest_encoder" / "1" / "interest_model.pt")
    assert '"v2"' in config.read_text() and '"old"' not in config.read_text()
