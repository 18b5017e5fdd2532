"""Fine-tuning the language model on behaviour (recmesh.models.text_tuning): the pairs mined
from a hand-built catalog and split (kinds, counts, proportional to interactions, nothing from
the held-out interactions), a short training run that lowers the contrastive loss, the merged
model saved and loaded by the ONNX runtime with the torch model's vectors, the text-vector key
that follows the weights, and the var's resolver that serves a tuned model."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from recmesh.common.paths import (
    SHIPPED_ARTIFACT,
    bundled_text_model,
    served_text_model,
    text_model_name,
    var_paths,
)
from recmesh.models.text_tuning import (
    MiningConfig,
    Pair,
    TuneConfig,
    item_labels,
    mine_pairs,
    negatives_mask,
    rank_metrics,
    save_merged,
    train_adapter,
    tune_text_model,
)
from recmesh.tools.eval import datasets

MIN = 60  # seconds


@dataclass
class Catalog:
    """A dataset in recmesh.tools.eval.datasets' shape: 30 items in 3 genres."""

    item_ids: list[str]
    item_texts: list[str]
    item_categories: list[list[str]]
    item_tags: list[list[str]]
    searches: list[datasets.Search] = field(default_factory=list)


GENRES = ["space opera", "heist", "war drama"]


def catalog() -> Catalog:
    ids = [f"m{i}" for i in range(30)]
    genres = [GENRES[i % 3] for i in range(30)]
    texts = [f"film {i} about {g}" for i, g in enumerate(genres)]
    return Catalog(ids, texts, [[g] for g in genres], [[f"tag{i % 5}"] for i in range(30)])


def split_of(sequences: dict[str, list[tuple[int, int]]]) -> datasets.Split:
    """A leave-one-out split of per-user (item, timestamp) sequences, as datasets.split makes it."""
    train, valid, test, stamps, ratings = {}, {}, {}, {}, {}
    for user, events in sequences.items():
        items = [i for i, _ in events]
        train[user], valid[user], test[user] = items[:-2], items[-2], items[-1]
        stamps[user] = [t for _, t in events[:-1]]
        ratings[user] = [4.0] * (len(events) - 1)
    return datasets.Split(train, valid, test, 30, stamps, ratings)


def sequences() -> dict[str, list[tuple[int, int]]]:
    """Four users; items 27, 28, 29 only ever at a validation or test position; item 0 has 3x
    the training interactions of item 3."""
    return {
        "u1": [(0, 0), (3, 100), (0, 200), (6, 300), (27, 400), (28, 500)],
        "u2": [(0, 0), (1, 4000), (2, 8000), (29, 9000), (28, 9500)],
        "u3": [(4, 0), (5, 100), (7, 200), (8, 300), (27, 400), (29, 500)],
        "u4": [(9, 0), (9, 50), (10, 100), (11, 200), (29, 300), (27, 400)],
    }


# -- pair mining --------------------------------------------------------------------------------

def test_labels_are_tags_categories_the_joined_path_and_short_text_attributes():
    cats = [["Office", "Paper", "Notebooks"], ["Office", "Paper"], ["Drama", "War"], ["War"]]
    labels = item_labels(cats, [["spiral"], [], [], []], [{"brand": "Acme", "price": 3.5}, {}, {}, {"brand": "x" * 99}])
    assert labels[0] == ["spiral", "Office", "Paper", "Notebooks", "Office > Paper > Notebooks", "Acme"]
    assert labels[1] == ["Office", "Paper", "Office > Paper"]
    assert labels[2] == ["Drama", "War"]  # a flat genre list is no path (War is on an item without Drama)
    assert labels[3] == ["War"]  # a description-length text attribute is no label


def test_pairs_of_each_kind_from_the_training_part_only():
    data = catalog()
    data.searches = [
        datasets.Search("u2", "space opera", 3000),  # -> item 1 at 4000 (within 30 min)
        datasets.Search("u2", "heist", 100),  # next interaction 3900 s later: no pair
        datasets.Search("u2", "war", 8500),  # -> the validation item (29) at 9000: a validation pair
        datasets.Search("u1", "anything", 450),  # the next is the test item (28): never read
        datasets.Search("nobody", "heist", 0),
    ]
    s = split_of(sequences())
    mined = mine_pairs(data, s, MiningConfig(combine_labels=0.0, max_label_valid_items=0))
    train = Counter(p.kind for p in mined.train)
    transitions = [(a, b) for items in s.train.values() for a, b in zip(items, items[1:], strict=False) if a != b]
    assert train["next_item"] == len(transitions) == 10
    assert train["label"] == sum(len(items) for items in s.train.values()) == 15
    assert [(p.query, p.item) for p in mined.train if p.kind == "search"] == [("space opera", 1)]
    assert ("search", "war", 29) in [(p.kind, p.query, p.item) for p in mined.valid]
    for pair in mined.train:  # items seen only at validation / test positions are in no training pair
        assert pair.item not in (27, 28, 29) and pair.source_item not in (27, 28, 29)
        assert all(f"film {i} " not in pair.query + " " for i in (27, 28, 29))
    nexts = {(p.source_item, p.item) for p in mined.train if p.kind == "next_item"}
    assert nexts == set(transitions)


def test_label_pairs_follow_interaction_counts_and_skip_the_label_validation_items():
    data = catalog()
    s = split_of(sequences())
    mined = mine_pairs(data, s, MiningConfig(combine_labels=0.0))
    labels = Counter(p.item for p in mined.train if p.kind == "label")
    assert labels[0] == 3 and labels[3] == 1 and labels[9] == 2  # one per training interaction
    valid_label_items = {p.item for p in mined.valid if p.kind == "label"}
    assert valid_label_items == mined.held_out_items == {27, 29}
    assert not valid_label_items & set(labels)
    for pair in (p for p in mined.train if p.kind == "label"):
        assert pair.query in {data.item_categories[pair.item][0], data.item_tags[pair.item][0]}
    valid_next = {(p.source_item, p.item) for p in mined.valid if p.kind == "next_item"}
    assert valid_next == {(6, 27), (2, 29), (8, 27), (11, 29)}


def test_mining_is_seeded():
    data, s = catalog(), split_of(sequences())
    assert mine_pairs(data, s, MiningConfig(seed=3)).train == mine_pairs(data, s, MiningConfig(seed=3)).train


def test_in_batch_negatives_leave_out_the_same_item_the_same_query_and_the_item_itself():
    texts = ["a", "b", "c"]
    pairs = [Pair("label", "war", 0), Pair("label", "war", 1), Pair("next_item", "a", 2, 0), Pair("label", "x", 0)]
    mask = negatives_mask(pairs, texts)
    assert mask[0, 1] and mask[1, 0]  # the same query
    assert mask[0, 3] and mask[3, 0]  # the same item
    assert mask[2, 0] and mask[2, 3]  # "a" is item 0's text
    assert not mask[1, 2] and not mask.diagonal().any()


def test_rank_metrics_over_the_whole_catalog_leave_out_the_query_item():
    catalog_vectors = np.eye(4, dtype=np.float32)
    queries = np.array([[0.9, 0.1, 0, 0], [1, 0, 0, 0.5]], np.float32)
    pairs = [Pair("label", "q", 0), Pair("next_item", "t", 3, 0)]
    metrics = rank_metrics(queries, catalog_vectors, pairs)
    assert metrics["label"] == {"recall@10": 1.0, "NDCG@10": 1.0, "pairs": 1}
    assert metrics["next_item"]["NDCG@10"] == 1.0  # item 0 scores higher but is the query's own item
    assert metrics["all"]["pairs"] == 2


# -- training, merging, serving -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A small random BERT with MiniLM's tokenizer: what the adapter is trained on here (the
    bundled model's recipe at a size that trains in seconds)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_text_model()), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tuned(tiny_base, tmp_path_factory):
    data, s = catalog(), split_of(sequences())
    mined = mine_pairs(data, s)
    config = TuneConfig(batch_size=8, max_epochs=6, lr=5e-3, warmup_steps=1, max_seq_len=16, time_cap_s=MIN)
    trained = train_adapter(tiny_base, data.item_texts, mined.train, config, probe=mined.train[:16],
                            progress=False)
    folder = save_merged(trained, tiny_base, tmp_path_factory.mktemp("tuned") / "20990101T000000Z")
    return trained, folder, data


def test_a_few_steps_lower_the_contrastive_loss(tuned):
    trained, _, _ = tuned
    history = trained.history
    assert history["steps"] == 6 * 3 and history["stopped_by"] == "epochs"  # 25 pairs: 3 batches of 8 an epoch
    assert history["probe_loss_after"] < history["probe_loss_before"] - 0.1, history
    assert history["loss_curve"][-1]["loss"] < history["loss_curve"][0]["loss"]


def test_the_merged_model_loads_in_onnx_runtime_with_the_torch_vectors(tuned, tmp_path):
    import torch

    from recmesh.models.text import load_text_model

    trained, folder, data = tuned
    saved = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= saved
    assert not any("lora" in key for key in _tensor_names(folder / "model.safetensors"))
    onnx = load_text_model("onnx-fp32", folder, "tuned", cache_dir=tmp_path)
    reference = load_text_model("torch-fp32", folder, "tuned")
    np.testing.assert_allclose(onnx.encode(data.item_texts), reference.encode(data.item_texts), atol=1e-4)
    with torch.inference_mode():  # ... and the model that was trained, its adapter merged in memory
        in_memory = trained.encoder(data.item_texts[:5]).numpy()
    np.testing.assert_allclose(reference.encode(data.item_texts[:5]), in_memory, atol=1e-4)


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return list(f.keys())


def test_text_vector_key_follows_the_whole_weights(tiny_base, tuned, tmp_path):
    from recmesh.models.text import model_key
    from recmesh.tools.catalog.importer import TextModelSpec

    _, folder, _ = tuned
    assert (tiny_base / "config.json").read_bytes() != b""
    assert TextModelSpec(tiny_base).key() != TextModelSpec(folder).key()
    late = tmp_path / "late"  # the same config and the same first MiB: only the file's tail differs
    shutil.copytree(tiny_base, late)
    weights = bytearray((late / "model.safetensors").read_bytes())
    assert len(weights) > 2 << 20
    weights[-3] ^= 0xFF
    (late / "model.safetensors").write_bytes(bytes(weights))
    assert model_key(late) != model_key(tiny_base)
    assert TextModelSpec(late).key() != TextModelSpec(tiny_base).key()


def test_a_tuned_run_reports_and_decides_against_the_frozen_model(tiny_base, tmp_path):
    data, s = catalog(), split_of(sequences())
    config = TuneConfig(batch_size=8, max_epochs=2, lr=5e-3, warmup_steps=1, max_seq_len=16, time_cap_s=MIN)
    result = tune_text_model(data, s, tiny_base, tmp_path / "models", config, base_name="tiny")
    report = json.loads((result.folder / "report.json").read_text())
    assert result.folder.parent == tmp_path / "models" / "text" and report["version"] == result.folder.name
    assert report["kept"] == result.kept == (report["validation"]["tuned_macro_ndcg@10"]
                                             > report["validation"]["reference_macro_ndcg@10"])
    assert report["pairs"]["train"]["next_item"] == 10 and report["training"]["steps"] > 0
    assert report["lora"]["r"] == config.lora_r and report["seed"] == 0 and report["base_model"] == "tiny"
    assert set(report["validation"]["reference"]) == {"label", "next_item", "all"}
    assert report["validation"]["reference_model"] == "tiny"
    assert result.catalog_vectors.shape == (30, 32)
    assert text_model_name(result.folder) == f"tiny-tuned-{result.folder.name}"


# -- the var serves its tuned model -------------------------------------------------------------

def test_the_var_serves_its_own_text_model_once_installed(tuned, tmp_path, monkeypatch):
    from recmesh.tools.eval.release import install_text_model, uninstall_text_model
    from recmesh.tools.tritonserver import TritonServer

    _, folder, _ = tuned
    (folder / "report.json").write_text(json.dumps({"version": folder.name, "base_model": "tiny"}))
    var = tmp_path / "shop"
    monkeypatch.setenv("RECMESH_VAR", str(var))
    assert served_text_model() == bundled_text_model()
    assert TritonServer(var_paths(var).triton, interest_model=SHIPPED_ARTIFACT).served_text_model() is None
    target = install_text_model(folder, var_paths(var).own_text_model)
    assert served_text_model(var) == served_text_model() == target
    repository = TritonServer(var_paths(var).triton, interest_model=SHIPPED_ARTIFACT).repository()
    config = (repository / "text_encoder" / "config.pbtxt").read_text()
    assert f'string_value: "{target.absolute()}"' in config
    assert f'string_value: "tiny-tuned-{folder.name}"' in config
    gpu = TritonServer(var_paths(var).triton, interest_model=SHIPPED_ARTIFACT, profile="gpu").repository()
    config = (gpu / "text_encoder" / "config.pbtxt").read_text()
    assert f'string_value: "{target.absolute()}"' in config and 'string_value: "torch-fp16"' in config
    assert uninstall_text_model(target) and served_text_model(var) == bundled_text_model()


def test_the_in_process_encoder_loads_the_vars_text_model_unless_one_is_set(tuned, tmp_path, monkeypatch):
    import asyncio

    from recmesh.models.text import load_text_model
    from recmesh.tools.eval.release import install_text_model
    from services.encoder.backends import InProcessBackend
    from services.encoder.config import EncoderSettings

    _, folder, data = tuned
    (folder / "report.json").write_text(json.dumps({"version": folder.name, "base_model": "tiny"}))
    var = tmp_path / "shop"
    monkeypatch.setenv("RECMESH_VAR", str(var))
    monkeypatch.delenv("RECMESH_ENCODER_MODEL_DIR", raising=False)
    target = install_text_model(folder, var_paths(var).own_text_model)

    async def encode(settings):
        backend = InProcessBackend(settings)
        await backend.start()
        try:
            return backend.version, await backend.encode_texts(data.item_texts[:3], None)
        finally:
            await backend.close()

    version, vectors = asyncio.run(encode(EncoderSettings(interest_model=SHIPPED_ARTIFACT)))
    assert version.startswith(f"tiny-tuned-{folder.name}/onnx-fp32+")
    np.testing.assert_allclose(vectors, load_text_model("onnx-fp32", target, "t").encode(data.item_texts[:3]),
                               atol=1e-6)
    version, _ = asyncio.run(encode(EncoderSettings(interest_model=SHIPPED_ARTIFACT,
                                                    model_dir=bundled_text_model())))
    assert version.startswith("all-MiniLM-L6-v2/onnx-fp32+")


# -- keeping it learning: `recmesh tune-text` ---------------------------------------------------

def shop_var(var: Path) -> None:
    """A var with an imported catalog of 6 items and a log: 3 users, a search each, 4 item
    events each, a day apart."""
    from recmesh.events.eventlog import EventLog, LoggedEvent
    from recmesh.tools.catalog.snapshot import write_items
    from recmesh.v1 import common_pb2

    paths = var_paths(var)
    write_items(paths.catalog_items, [common_pb2.Item(item_id=f"i{n}", title=f"item {n}", categories=[f"c{n % 2}"])
                                      for n in range(6)])
    search, view = common_pb2.EventType.EVENT_TYPE_SEARCH, common_pb2.EventType.EVENT_TYPE_VIEW
    day, rows = 86400, []
    for u in range(3):
        rows.append(LoggedEvent(f"s{u}", f"u{u}", "", search, "blue pens", 0.0, (day - 60) * 1000, ""))
        rows += [LoggedEvent(f"e{u}{k}", f"u{u}", f"i{(u + k) % 6}", view, "", 0.0, (day * (k + 1)) * 1000, "")
                 for k in range(4)]
    log = EventLog(paths.event_log)
    log.append(rows)
    log.close()


def test_a_vars_searches_are_kept_for_the_text_models_pairs(tmp_path):
    shop_var(tmp_path / "shop")
    dataset = datasets.from_var(tmp_path / "shop")
    assert [(s.user, s.query, s.timestamp) for s in dataset.searches] == [(f"u{u}", "blue pens", 86340)
                                                                          for u in range(3)]
    assert len(dataset.interactions) == 12  # a search is no item event


def test_the_fresh_window_is_the_newest_events_and_training_what_came_before(tmp_path):
    from recmesh.tools.eval.release import fresh_split

    shop_var(tmp_path / "shop")
    dataset = datasets.from_var(tmp_path / "shop")
    split, cut = fresh_split(dataset, fresh_share=0.25)
    assert cut == 4 * 86400  # the newest quarter of 12 events: day 4
    index = dataset.item_index()
    assert split.train == {f"u{u}": [index[f"i{(u + k) % 6}"] for k in range(3)] for u in range(3)}
    assert split.valid == {f"u{u}": index[f"i{(u + 3) % 6}"] for u in range(3)}
    assert split.timestamps["u0"] == [86400, 2 * 86400, 3 * 86400, 4 * 86400]
    mined = mine_pairs(dataset, split)
    assert Counter(p.kind for p in mined.train)["search"] == 3  # each search, then the first view a minute later
    short, _ = fresh_split(dataset, fresh_share=0.25, train_days=1.5)
    assert short.train == {} and short.valid == {}  # one training event a user is too few
    with pytest.raises(ValueError, match="--fresh-share"):
        fresh_split(dataset, fresh_share=1.0)


@pytest.mark.parametrize("better", [True, False])
def test_a_retrained_text_model_is_published_only_when_it_beats_the_served_one(better, tuned, tmp_path, monkeypatch):
    from recmesh.models import text_tuning
    from recmesh.tools.eval import release, run

    _, folder, data = tuned
    var = tmp_path / "shop"
    monkeypatch.setenv("RECMESH_VAR", str(var))
    shop_var(var)
    version = tmp_path / "models" / "text" / "20990102T000000Z"
    shutil.copytree(folder, version)
    (version / "report.json").write_text(json.dumps({"version": version.name, "base_model": "tiny"}))
    seen = {}

    def tune(dataset, split, base_dir, models_dir, config, **kw):
        seen.update(kw)
        report = {"validation": {"reference_macro_ndcg@10": 0.2, "tuned_macro_ndcg@10": 0.3 if better else 0.1,
                                 "reference": {"all": {"recall@10": 0.2}}, "tuned": {"all": {"recall@10": 0.3}}},
                  "training": {"steps": 3, "train_seconds": 1.0}, "pairs": {}}
        return text_tuning.TuneResult(version, report, better, np.zeros((len(dataset.item_ids), 32), np.float32))

    placed = []
    monkeypatch.setattr(text_tuning, "tune_text_model", tune)
    monkeypatch.setattr(run, "item_vectors", lambda dataset, cache, model_dir=None: None)
    monkeypatch.setattr(release, "place_catalog", lambda seeds=None: placed.append(len(seeds)) or {})
    decisions = release.tune_text_main(["--time-cap", "1"])
    assert seen["reference_dir"] == bundled_text_model() and seen["reference_name"] == "all-MiniLM-L6-v2"
    assert [d["published"] for d in decisions] == [better]
    assert served_text_model(var) == (var_paths(var).own_text_model if better else bundled_text_model())
    assert placed == ([6] if better else [])  # the catalog re-encoded only when published
    history = (var_paths(var).models / "text" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["published"] for line in history] == [better]
    assert (version / "model.safetensors").is_file() == better  # an unpublished version keeps its report only
    assert (version / "report.json").is_file()
