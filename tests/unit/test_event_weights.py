"""The event weights: one table (recmesh/events/weights.py), defaults that keep every positive
event positive, a catalog's override file checked whole at load - a bad one stops a service at
start naming the file and the key."""

import json
import subprocess
import sys

import numpy as np
import pytest

from recmesh.events.weights import DEFAULT, EventWeights, load_event_weights
from recmesh.models.session import session_vector
from recmesh.v1 import common_pb2
from services.gateway.config import GatewaySettings

ET = common_pb2.EventType


def test_defaults_rank_the_types_and_a_rating_by_its_value():
    w = DEFAULT
    positives = [w.weight(t) for t in (ET.EVENT_TYPE_VIEW, ET.EVENT_TYPE_CLICK, ET.EVENT_TYPE_ADD_TO_CART,
                                       ET.EVENT_TYPE_PURCHASE)]
    assert positives == sorted(positives) and positives[0] > 0
    rate = [w.weight(ET.EVENT_TYPE_RATE, stars) for stars in (0.5, 1, 3, 5)]
    assert rate == [0.05, 0.05, 1.0, 2.0]  # a low rating barely counts, and still positively
    assert w.weight(ET.EVENT_TYPE_RATE, 0) == 1.0  # a rating without a value
    assert w.weight(ET.EVENT_TYPE_HIDE) < 0 and w.weight(ET.EVENT_TYPE_DISLIKE) < w.weight(ET.EVENT_TYPE_HIDE)
    assert w.weight(ET.EVENT_TYPE_SEARCH) == 0 and w.weight(ET.EVENT_TYPE_UNSPECIFIED) == 0
    assert w.weights([ET.EVENT_TYPE_VIEW, ET.EVENT_TYPE_DISLIKE], [0, 0]).tolist() == [0.5, -2.0]


def test_a_missing_file_is_the_defaults_and_a_partial_one_overrides_only_its_keys(tmp_path):
    assert load_event_weights(tmp_path / "none.json") is DEFAULT and load_event_weights(None) is DEFAULT
    path = tmp_path / "event_weights.json"
    path.write_text(json.dumps({"view": 0.2, "rate": {"floor": -1.0}, "dislike": -5}))
    w = load_event_weights(path)
    assert (w.view, w.click, w.dislike) == (0.2, DEFAULT.click, -5.0)
    assert w.weight(ET.EVENT_TYPE_RATE, 0.5) == -0.25  # below neutral: a rejection now
    assert w.weight(ET.EVENT_TYPE_RATE, 5) == 2.0
    path.write_text(json.dumps({"rate": 3}))  # a number: the rating's scale
    assert load_event_weights(path).weight(ET.EVENT_TYPE_RATE, 5) == 6.0


@pytest.mark.parametrize("content, named", [
    ({"veiw": 1.0}, "veiw"),  # a typo is no silent default
    ({"view": -1.0}, "view"),  # a positive type weighing against its item
    ({"dislike": 1.0}, "dislike"),  # a rejection teaching the learner the opposite
    ({"hide": 0.5}, "hide"),
    ({"click": True}, "click"),  # not read as 1
    ({"click": "2"}, "click"),
    ({"purchase": float("inf")}, "purchase"),
    ({"rate": {"neutral": 7}}, "rate.neutral"),
    ({"rate": {"per_star": -1}}, "rate.per_star"),
    ({"rate": {"stars": 1}}, "rate.stars"),
    ({"search": 1.0}, "search"),
    ([0.5, 1.0], "JSON object"),
])
def test_a_bad_file_is_refused_naming_it_and_the_key(tmp_path, content, named):
    path = tmp_path / "event_weights.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as error:
        load_event_weights(path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_unreadable_json_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "event_weights.json"
    path.write_text("{view: 1")
    with pytest.raises(ValueError, match="not readable JSON"):
        load_event_weights(path)


def test_a_service_with_a_bad_file_stops_at_start_naming_the_setting_and_the_key(tmp_path):
    path = tmp_path / "event_weights.json"
    path.write_text(json.dumps({"dislike": 2}))
    run = subprocess.run([sys.executable, "-m", "services.updater", "--event-weights-file", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "event_weights_file" in run.stderr and "dislike" in run.stderr
    with pytest.raises(ValueError, match="dislike"):
        GatewaySettings(event_weights_file=path)


def test_the_services_read_the_var_s_catalog_file_by_default(tmp_path, monkeypatch):
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "event_weights.json").write_text(json.dumps({"purchase": 9}))
    monkeypatch.setenv("RECMESH_VAR", str(tmp_path))
    assert GatewaySettings().event_weights().purchase == 9.0


def test_the_session_direction_leans_to_the_stronger_event():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    vectors = np.stack([a, b])  # b is the newest: alone it wins by recency
    assert session_vector(vectors)[1] > session_vector(vectors)[0]
    weights = EventWeights().weights([ET.EVENT_TYPE_PURCHASE, ET.EVENT_TYPE_VIEW], [0, 0])
    leaning = session_vector(vectors, event_weights=weights)
    assert leaning[0] > leaning[1]  # a purchase (3) before a view (0.5) outweighs recency (x2)
