"""Training and tuning on the catalog's own data (issue 18, items 4 and 5): the blend chosen on
validation is never below its best part; the var's chosen blend is what the ranker and the
online learner start from; too few events (none: cold start) install the zero-shot text model,
whose blend serves; a var's events load as the served model reads them."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from recmesh.common.paths import served_artifact, var_paths
from recmesh.events.eventlog import EventLog, LoggedEvent
from recmesh.models.interest.served import ServedInterestModel
from recmesh.models.interest.zeroshot import expected_interest, zero_shot_model
from recmesh.models.ranking.features import FEATURES, RankInputs, compute
from recmesh.models.ranking.scorer import (
    SHIPPED_PARAMS,
    Scorer,
    load_params,
    newest_params,
    save_params,
    start_params_dir,
)
from recmesh.models.ranking.tuning import ValidationSet, calibrated_scale, choose_blend
from recmesh.models.session import session_vector
from recmesh.tools.catalog.snapshot import write_items
from recmesh.tools.eval import datasets
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
COL = {name: i for i, name in enumerate(FEATURES)}


@pytest.fixture
def var(tmp_path, monkeypatch):
    folder = tmp_path / "shop"
    monkeypatch.setenv("RECMESH_VAR", str(folder))
    for name in ("RECMESH_RANKER_PARAMS_DIR", "RECMESH_UPDATER_PARAMS_DIR", "RECMESH_UPDATER_SHIPPED_PARAMS_DIR"):
        monkeypatch.delenv(name, raising=False)
    return folder


# -- choosing the blend ----------------------------------------------------------------------

def planted(users: int = 300, items: int = 200, seed: int = 0) -> ValidationSet:
    """The held-out item is the argmax of interest + session + noise (each part alone is a noisy
    view of it); popularity is noise; category affinity is constant (no categories); the query
    column names the target in half the cases."""
    rng = np.random.default_rng(seed)
    f = np.zeros((users, items, len(FEATURES)), np.float32)
    truth = rng.normal(size=(users, items))
    f[:, :, COL["interest_sim"]] = truth + rng.normal(scale=1.0, size=truth.shape)
    f[:, :, COL["session_sim"]] = 0.1 * (truth + rng.normal(scale=1.0, size=truth.shape))  # another scale
    f[:, :, COL["popularity"]] = rng.uniform(size=(users, items))
    f[:, :, COL["recent_sim_max"]] = rng.normal(size=(users, items))
    exclude = [rng.choice(items, 5, replace=False) for _ in range(users)]
    masked = truth.copy()
    for u, e in enumerate(exclude):
        masked[u, e] = -np.inf
    targets = masked.argmax(axis=1)
    query = rng.normal(scale=0.3, size=(users, items))
    named = rng.uniform(size=users) < 0.5
    query[np.arange(users)[named], targets[named]] += 3.0
    f[:, :, COL["query_sim"]] = query
    return ValidationSet(f, targets, exclude)


def test_the_chosen_blend_beats_every_part_alone_on_a_planted_problem():
    valid = planted()
    choice = choose_blend(valid, query_valid=valid)
    best_part = max(choice.parts.values())
    assert set(choice.parts) == {"interest_sim", "session_sim", "popularity", "recent_sim_max"}  # constant: out
    assert choice.valid_ndcg >= best_part
    assert choice.valid_ndcg > best_part + 0.05  # the two noisy views together, clearly
    w = choice.weights
    assert w[COL["interest_sim"]] > 0 and w[COL["session_sim"]] > 0
    # The two planted views weigh about the same in feature-spread units (session's is 10x smaller).
    ratio = (w[COL["session_sim"]] * 0.1) / w[COL["interest_sim"]]
    assert 0.4 < ratio < 2.5
    assert w[COL["popularity"]] <= 0.1 * w[COL["interest_sim"]]
    # The query weight is chosen on the typed-query scenario and helps there.
    assert w[COL["query_sim"]] > 0 and choice.query["valid_ndcg"] > choice.query["without_query"]
    # The reported NDCG is the weights' NDCG (the calibration scale changes no ranking).
    no_query = w.copy()
    no_query[COL["query_sim"]] = 0
    assert valid.ndcg(no_query) == pytest.approx(choice.valid_ndcg, abs=1e-9)


def test_a_start_version_that_is_best_is_kept():
    valid = planted(seed=1)
    truth_like = np.zeros(len(FEATURES))
    truth_like[COL["interest_sim"]], truth_like[COL["session_sim"]] = 1.0, 10.0  # the planted optimum
    choice = choose_blend(valid, start=truth_like, grid=(0.0,), sweeps=1)  # an ascent that cannot move
    assert choice.candidates["coordinate ascent"] == max(choice.parts.values())
    assert choice.chosen == "start" and choice.valid_ndcg == choice.candidates["start"] > max(choice.parts.values())


def test_ties_do_not_win_and_nothing_to_choose_is_an_error():
    valid = planted(users=50, items=40)
    flat = ValidationSet(np.zeros_like(valid.features), valid.targets, valid.exclude)
    assert flat.ndcg(np.eye(len(FEATURES))[COL["interest_sim"]]) < 0.3  # all tied: mean position, not first
    with pytest.raises(ValueError, match="no ranking feature varies"):
        choose_blend(flat)


def test_the_scale_fits_the_listwise_loss():
    valid = planted(users=200, items=100)
    w = np.zeros(len(FEATURES))
    w[COL["interest_sim"]] = 1e-3  # far too flat a softmax
    assert calibrated_scale(valid, w) > 30


# -- the var's blend is the mesh's start ------------------------------------------------------

def test_the_ranker_and_the_learner_start_from_the_vars_own_blend(var):
    from services.ranker.config import RankerSettings
    from services.updater.config import UpdaterSettings
    from services.updater.learning import _newest_scorer

    assert start_params_dir() == SHIPPED_PARAMS  # nothing chosen in this var yet
    assert RankerSettings().params_dir == SHIPPED_PARAMS == UpdaterSettings().shipped_params_dir
    own = var_paths().own_params
    weights = np.arange(len(FEATURES), dtype=np.float32)
    save_params(Scorer("ranker-tuned-20990101T000000Z", weights), own)
    assert start_params_dir() == own == RankerSettings().params_dir == UpdaterSettings().shipped_params_dir
    settings = UpdaterSettings()
    started = _newest_scorer(settings.params_dir, settings.shipped_params_dir)
    assert started.version == "ranker-tuned-20990101T000000Z" and np.array_equal(started.weights, weights)
    assert load_params(newest_params(RankerSettings().params_dir)).version == started.version


def test_installing_a_blend_replaces_the_last_and_retires_the_online_versions(var, tmp_path):
    from recmesh.tools.eval import release

    paths = var_paths()
    old = Scorer("ranker-tuned-20980101T000000Z", np.ones(len(FEATURES), np.float32))
    save_params(old, paths.own_params)
    save_params(Scorer("ranker-online-20980102T000000-00001", old.weights), paths.ranker_params)
    folder = paths.models / "LLM-Seq-served" / "20990101T000000Z"
    folder.mkdir(parents=True)
    new = Scorer("ranker-tuned-20990101T000000Z", 2 * old.weights)
    release.install_params(new, folder, paths.own_params, data="shop")
    assert [p.name for p in paths.own_params.glob("*.json")] == [f"{new.version}.json"]
    assert (folder / f"{new.version}.json").is_file()  # the copy beside the artifact
    assert not list(paths.ranker_params.glob("*.json"))
    assert (paths.root / "ranker" / "retired" / folder.name / "ranker-online-20980102T000000-00001.json").is_file()
    assert json.loads((paths.own_params / f"{new.version}.json").read_text())["data"] == "shop"


# -- a var's own data --------------------------------------------------------------------------

def item(item_id: str, title: str, categories=(), tags=()) -> common_pb2.Item:
    return common_pb2.Item(item_id=item_id, title=title, categories=list(categories), tags=list(tags))


def event(n: int, user: str, item_id: str, kind: int, value: float = 0.0, seconds: int = 1_700_000_000,
          query: str = "") -> LoggedEvent:
    return LoggedEvent(f"e{n}", user, item_id, kind, query, value, seconds * 1000, "")


def test_a_vars_events_load_as_the_served_model_reads_them(var):
    paths = var_paths()
    write_items(paths.catalog_items, [item("b", "Blue pen", ["Office", "Pens"], ["ink"]), item("a", "A4 paper")])
    log = EventLog(paths.event_log)
    log.append([
        event(1, "u", "b", ET.EVENT_TYPE_VIEW, seconds=10),
        event(2, "u", "", ET.EVENT_TYPE_SEARCH, query="pens", seconds=11),  # no item: skipped
        event(3, "u", "gone", ET.EVENT_TYPE_PURCHASE, seconds=12),  # not in the catalog: skipped
        event(4, "u", "a", ET.EVENT_TYPE_RATE, 2.0, seconds=13),
        event(5, "u", "b", ET.EVENT_TYPE_PURCHASE, seconds=13),  # same second: after the rating
        event(6, "v", "a", ET.EVENT_TYPE_CLICK, seconds=5),
    ])
    log.close()
    d = datasets.from_var()
    assert d.item_ids == ["a", "b"] and d.item_texts == ["A4 paper", "Blue pen. Office, Pens. ink"]
    assert d.item_categories == [[], ["Office", "Pens"]] and d.item_tags == [[], ["ink"]]
    assert [(x.user, x.item, x.timestamp, x.rating) for x in d.interactions] == [
        ("u", "b", 10, 3.0), ("u", "a", 13, 2.0), ("u", "b", 13, 4.5), ("v", "a", 5, 3.5)]
    # The split's stable sort keeps log order on the tie (a before b at second 13).
    s = datasets.split(d, min_interactions=3)
    assert s.train["u"] == [1] and (s.valid["u"], s.test["u"]) == (0, 1)


def test_typed_queries_use_the_most_specific_categories_and_tags():
    from recmesh.tools.eval.tune import specific_categories, typed_queries

    cats = [["Office", "Writing", "Pens"], ["Office", "Writing"], ["Office", "Paper"], ["Comedy", "Drama"],
            ["Drama"], ["Comedy"], []]
    assert specific_categories(cats) == [["Pens"], ["Writing"], ["Paper"], ["Comedy", "Drama"], ["Drama"],
                                         ["Comedy"], []]
    d = datasets.Dataset("t", [], [str(i) for i in range(7)], ["x"] * 7, [f"title {i}" for i in range(7)], cats,
                         [[], [], ["a4"], ["funny"], [], [], []])
    assert typed_queries(d, [0, 2, 3, 6]) == ["Pens", "Paper, a4", "Comedy, Drama, funny", "title 6"]


# -- too few events: the zero-shot text model ----------------------------------------------------

TEXT_DIM = 384


def text_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, TEXT_DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_zero_shot_model_places_items_by_their_text_and_reads_the_history():
    torch.manual_seed(0)
    model = zero_shot_model(TEXT_DIM, 10)
    text = text_vectors(10)
    with torch.no_grad():
        placed = model.text_proj(torch.from_numpy(text)).numpy()
        interest = model.forward_vectors(torch.from_numpy(placed[[2, 5, 7]])[None], torch.zeros(1, 3, dtype=torch.bool),
                                         torch.full((1, 3), 9), torch.full((1, 3), 4))[0, -1].numpy()
    assert np.abs(placed - text).max() < 1e-5
    assert np.abs(interest - expected_interest(text[[2, 5, 7]])).max() < 1e-3


@pytest.mark.parametrize("events", [0, 12], ids=["cold-start", "too-few"])
def test_too_few_events_install_the_zero_shot_model_whose_blend_serves(var, events, capsys, monkeypatch):
    from recmesh.tools.eval import release

    paths = var_paths()
    n_items = 12
    write_items(paths.catalog_items, [item(f"i{n:02d}", f"item {n}") for n in range(n_items)])
    log = EventLog(paths.event_log)
    log.append(event(k, f"u{k % 2}", f"i{k % n_items:02d}", ET.EVENT_TYPE_VIEW, seconds=1_700_000_000 + k)
               for k in range(events))
    log.close()
    placed = []  # placing the catalog (Qdrant, the language model) is the integration tests' (test_own_data)
    monkeypatch.setattr(release, "place_catalog", lambda: placed.append(served_artifact()) or {})

    summary = release.main([])
    assert placed == [paths.own_artifact]  # the catalog placed again, with the model just installed
    err = capsys.readouterr().err
    assert "too few events to train the interest model" in err and "--min-users is 50" in err
    assert summary["zero_shot"] and paths.own_artifact.is_file()
    assert start_params_dir() == paths.own_params
    scorer = load_params(newest_params(paths.own_params))
    assert scorer.version.startswith("ranker-zeroshot-")
    w = dict(zip(FEATURES, scorer.weights, strict=True))
    assert w["session_sim"] > 0 and w["query_sim"] > 0

    # The blend serves on the zero-shot model: after viewing an item, its nearest text neighbours lead.
    served = ServedInterestModel(paths.own_artifact, runtime="torch")
    assert served.dim == served.text_dim == TEXT_DIM and not served.config.use_ids
    text = text_vectors(n_items, seed=1)
    text[3] = text[0] + 0.3 * text[3]
    text[3] /= np.linalg.norm(text[3])  # item 3 reads like item 0
    ids = [f"i{n:02d}" for n in range(n_items)]
    vectors = served.item_vectors(text, ids)
    history = [5, 0]
    interest = served.interest(vectors[history], [ET.EVENT_TYPE_VIEW] * 2, [0.0] * 2, [1000, 2000])
    features = compute(RankInputs(vectors, text, [[] for _ in ids], np.zeros(n_items, np.float32), interest,
                                  session_vector(vectors[history]), None, vectors[history[::-1]], {}))
    scores = scorer.score(features.values)
    scores[history] = -np.inf
    assert int(np.argmax(scores)) == 3
    # A typed query steers it: the query names item 8.
    typed = compute(RankInputs(vectors, text, [[] for _ in ids], np.zeros(n_items, np.float32), interest,
                               session_vector(vectors[history]), text[8], vectors[history[::-1]], {}))
    assert int(np.argmax(scorer.score(typed.values))) == 8


def test_enough_events_train_and_store_the_chosen_blend(var, monkeypatch, capsys):
    """The trained path end to end on a tiny var (text vectors and queries stubbed: no language
    model; the interest model's ONNX export stays out of the user's cache)."""
    from recmesh.tools.eval import mesh, release, run, tune

    paths = var_paths()
    n_items, users = 40, 70
    write_items(paths.catalog_items, [item(f"i{n:02d}", f"item {n}", [f"c{n % 4}"]) for n in range(n_items)])
    rng = np.random.default_rng(0)
    log = EventLog(paths.event_log)
    rows = []
    for u in range(users):  # each user walks a cycle: the next item is predictable
        start = int(rng.integers(n_items))
        rows += [event(8 * u + k, f"u{u}", f"i{(start + k) % n_items:02d}", ET.EVENT_TYPE_PURCHASE,
                       seconds=1_700_000_000 + 60 * k) for k in range(8)]
    log.append(rows)
    log.close()
    monkeypatch.setattr(run, "item_vectors", lambda dataset, cache: text_vectors(len(dataset.item_ids))[:, :32].copy())
    monkeypatch.setattr(tune, "encode_texts", lambda texts, cache, label: text_vectors(len(texts), 2)[:, :32].copy())
    monkeypatch.setattr(mesh, "ServedInterestModel", functools.partial(ServedInterestModel, runtime="torch"))
    placed = []
    monkeypatch.setattr(release, "place_catalog", lambda seeds=None: placed.append(True) or {})

    summary = release.main(["--time-cap", "1", "--holdout", "5", "--text", "frozen"])
    assert placed == [True]
    out = capsys.readouterr().out
    assert "ranking blend chosen on validation" in out and "interest_sim only" in out
    assert not summary.get("zero_shot") and paths.own_artifact.is_file()
    scorer = load_params(newest_params(start_params_dir()))
    assert scorer.version == f"ranker-tuned-{summary['version']}"
    spec = json.loads((paths.own_params / f"{scorer.version}.json").read_text())
    tuning = spec["tuning"]
    assert spec["data"] == "shop" and spec["artifact"] == summary["version"]
    assert tuning["valid_ndcg"] >= max(tuning["parts"].values())
    assert tuning["users"] == users - summary["holdout_users"]  # the held-out users are not tuned on
    # A newcomer's weights, chosen on the four category labels held out in turn, stored with it.
    assert "cold typed-query blend (4 held-out label queries)" in out
    assert scorer.cold is not None and scorer.cold[FEATURES.index("query_sim")] > 0
    assert spec["cold_tuning"]["queries"] == 4 and spec["cold_tuning"]["chosen"]["calibrated"] in (True, False)


def test_a_blend_with_nothing_to_choose_on_keeps_the_zero_shot_model(var, monkeypatch, capsys):
    """Every candidate blend at 0 validation NDCG@10 (a tiny var, --min-users 1): validation
    cannot tell them apart, so the zero-shot model and its blend are installed, not "interest_sim
    only" (training and tuning stubbed: the choice is what is tested)."""
    from recmesh.models.ranking.tuning import BlendChoice
    from recmesh.tools.eval import release, run, tune

    paths = var_paths()
    n_items = 12
    write_items(paths.catalog_items, [item(f"i{n:02d}", f"item {n}") for n in range(n_items)])
    log = EventLog(paths.event_log)
    log.append(event(k, f"u{k % 3}", f"i{k % n_items:02d}", ET.EVENT_TYPE_VIEW, seconds=1_700_000_000 + k)
               for k in range(24))
    log.close()
    monkeypatch.setattr(run, "item_vectors", lambda dataset, cache: text_vectors(len(dataset.item_ids))[:, :32].copy())
    monkeypatch.setattr(release, "train", lambda *a, **k: (None, {"valid_ndcg": 0.0}))
    monkeypatch.setattr(release, "install", lambda model, item_ids, holdout, folder, target: target)
    zeros = {name: 0.0 for name in FEATURES}
    flat = BlendChoice(np.zeros(len(FEATURES), np.float32), 0.0, zeros,
                       {f"{name} only": 0.0 for name in FEATURES}, "interest_sim only")
    monkeypatch.setattr(tune, "tune", lambda *a, **k: (flat, {"users": 3, "sampled": False}))
    monkeypatch.setattr(release, "place_catalog", lambda: {})

    summary = release.main(["--min-users", "1", "--holdout", "0", "--text", "frozen"])
    assert summary["zero_shot"]
    assert "nothing to choose a blend on: every candidate scored 0" in capsys.readouterr().err
    assert load_params(newest_params(paths.own_params)).version.startswith("ranker-zeroshot-")
