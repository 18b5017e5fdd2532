"""SimilarItems on the live mesh over the MovieLens catalog: a new item's neighbours by its text,
a warm item's by behaviour and text, a free text's; never the anchor; the request's filters and
the user's exclusions on the full path, with retrieval stopped (the popular fallback) and shed
at the door; bad input named."""

from __future__ import annotations

import json
import random
import signal
import time

import grpc
import pytest

from recmesh.client import Event
from tests.integration.answers import LATE_S, answered, undegraded

pytestmark = pytest.mark.integration

STAR_WARS = "260"  # Action|Adventure|Sci-Fi
WARM = ["260", "1", "318", "2571", "4993", "1258", "2858", "356"]


def ids(reply) -> list[str]:
    return [item.item_id for item in reply.items]


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0


@pytest.fixture(scope="module")
def catalog_genres(stack) -> dict[str, list[str]]:
    with open(stack.var / "catalog" / "items.jsonl", encoding="utf-8") as f:
        return {item["item_id"]: item["categories"] for item in map(json.loads, f)}


def test_a_new_items_similar_items_are_found_by_its_text_and_are_on_topic(client, user):
    new = f"starfall-{user}"
    client.upsert_items([{
        "item_id": new, "title": "Starfall: Beyond the Rim", "categories": ["Sci-Fi", "Adventure"],
        "description": "A rebel pilot and a smuggler race across the galaxy in their starship to stop the "
                       "empire's planet-destroying battle station: laser duels, alien worlds, space battles.",
        "tags": ["space opera", "starships"]}])
    reply = undegraded(lambda: client.similar_items(new, k=10))
    assert len(reply.items) == 10 and new not in ids(reply)
    on_topic = [item for item in reply.items if {"Sci-Fi", "Adventure"} & set(item.categories)]
    assert len(on_topic) >= 8, [(item.title, list(item.categories)) for item in reply.items]
    # No events: its catalog vector holds no behaviour, and no reason claims any.
    assert not any(r.startswith("people who liked") for item in reply.items for r in item.reasons)
    assert any("similar description" in item.reasons for item in reply.items)
    # Deleted through the gateway: gone at once, also from the gateway's anchor cache.
    client.delete_items([new])
    with pytest.raises(grpc.RpcError) as gone:
        client.similar_items(new)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND and gone.value.details().startswith("item_id:")


def test_a_warm_items_similar_items_share_its_genres_far_more_than_random_ones(client, catalog_genres):
    rng = random.Random(21)
    answered, random_overlap, shares = [], [], []
    for anchor in WARM:
        reply = undegraded(lambda anchor=anchor: client.similar_items(anchor, k=10))
        assert len(reply.items) == 10 and anchor not in ids(reply)
        genres = catalog_genres[anchor]
        answered += [jaccard(genres, item.categories) for item in reply.items]
        shares += [bool(set(genres) & set(item.categories)) for item in reply.items]
        random_overlap += [jaccard(genres, catalog_genres[i]) for i in rng.sample(sorted(catalog_genres), 100)]
        # Behaviour took part (a warm item), and the reasons say what is shared, by name.
        assert any(r.startswith("people who liked") for item in reply.items for r in item.reasons)
        assert any(r.startswith("shares ") for item in reply.items for r in item.reasons)
    mean = sum(answered) / len(answered)
    baseline = sum(random_overlap) / len(random_overlap)
    assert mean > 2 * baseline and sum(shares) / len(shares) >= 0.8, (mean, baseline, sum(shares) / len(shares))


def test_a_free_text_is_matched_like_a_typed_query(client):
    reply = undegraded(lambda: client.similar_items(text="a space adventure with starships, aliens and a rebel "
                                                         "princess fighting an evil empire", k=10))
    assert len(reply.items) == 10 and "encoder" in reply.versions
    assert sum("Sci-Fi" in item.categories for item in reply.items) >= 7, [item.title for item in reply.items]


def test_filters_and_the_users_exclusions_hold_and_their_interest_reorders(client, user):
    first = undegraded(lambda: client.similar_items(STAR_WARS, k=10))
    seen = ids(first)[:3]
    client.track_events(Event(user, item, "click") for item in seen)
    mine = undegraded(lambda: client.similar_items(STAR_WARS, k=10, user_id=user))
    assert len(mine.items) == 10 and not set(seen) & set(ids(mine)) and STAR_WARS not in ids(mine)
    assert any("fits your interests" in item.reasons for item in mine.items)
    back = undegraded(lambda: client.similar_items(STAR_WARS, k=10, user_id=user, exclude_seen=False))
    assert set(seen) & set(ids(back)) and STAR_WARS not in ids(back)
    hidden = (set(seen) & set(ids(back))).pop()
    client.track_events([Event(user, hidden, "hide")])  # hidden: never again, whatever exclude_seen says
    after = undegraded(lambda: client.similar_items(STAR_WARS, k=10, user_id=user, exclude_seen=False))
    assert hidden not in ids(after) and len(after.items) == 10
    filtered = undegraded(lambda: client.similar_items(
        STAR_WARS, k=10, user_id=user, include_categories=["Sci-Fi"], exclude_categories=["Action"],
        exclude_item_ids=[ids(mine)[0]]))
    assert len(filtered.items) == 10
    for item in filtered.items:
        assert "Sci-Fi" in item.categories and "Action" not in item.categories, (item.title, list(item.categories))
    assert not {STAR_WARS, ids(mine)[0], *seen} & set(ids(filtered))


def test_with_retrieval_stopped_the_popular_fallback_keeps_the_anchor_filters_and_exclusions(stack, client, user):
    undegraded(lambda: client.similar_items(STAR_WARS, k=10))  # the gateway holds the anchor now
    stack.signal("retrieval", signal.SIGSTOP)
    try:
        first = client.similar_items(STAR_WARS, k=10, exclude_categories=["Comedy"])
        seen = ids(first)[:3]
        client.track_events(Event(user, item, "click") for item in seen)  # the updater is up
        started = time.perf_counter()
        reply = client.similar_items(STAR_WARS, k=10, user_id=user, exclude_categories=["Comedy"])
        elapsed = time.perf_counter() - started
    finally:
        stack.signal("retrieval", signal.SIGCONT)
    for answer in (first, reply):
        assert "fallback:popular_candidates" in answer.degraded, list(answer.degraded)
        assert len(answer.items) == 10 and STAR_WARS not in ids(answer)
        assert not any("Comedy" in item.categories for item in answer.items)
    assert elapsed < 0.15, f"answered in {elapsed * 1000:.0f} ms"
    assert not set(seen) & set(ids(reply))
    # The anchor's genres first: the pool's Action / Adventure / Sci-Fi items lead.
    assert all({"Action", "Adventure", "Sci-Fi"} & set(item.categories) for item in reply.items[:5])


def test_a_shed_answer_keeps_the_anchor_filters_and_exclusions(client, user):
    def shed(**kwargs):
        return answered(lambda: client.similar_items(STAR_WARS, k=10, timeout_s=LATE_S, **kwargs))

    undegraded(lambda: client.similar_items(STAR_WARS, k=10))  # the gateway holds the anchor
    first = shed(include_categories=["Sci-Fi"])
    client.track_events(Event(user, item, "click") for item in ids(first)[:2])
    reply = shed(user_id=user, include_categories=["Sci-Fi"])
    for answer in (first, reply):
        assert answer.degraded[0] == "shed:late_arrival" and STAR_WARS not in ids(answer)
        assert answer.items and all("Sci-Fi" in item.categories for item in answer.items)
    assert not set(ids(first)[:2]) & set(ids(reply))


@pytest.mark.parametrize("kwargs, code, field", [
    ({}, grpc.StatusCode.INVALID_ARGUMENT, "anchor"),
    ({"item_id": "no-such-item"}, grpc.StatusCode.NOT_FOUND, "item_id"),
    ({"item_id": "", "k": 5}, grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
    ({"item_id": STAR_WARS, "k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k"),
    ({"item_id": STAR_WARS, "k": 101}, grpc.StatusCode.INVALID_ARGUMENT, "k"),
    ({"text": "space " * 300}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
    ({"text": "\u200b\u200b"}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
    ({"item_id": STAR_WARS, "exclude_categories": [""]}, grpc.StatusCode.INVALID_ARGUMENT,
     "filters.exclude_categories[0]"),
    ({"item_id": STAR_WARS, "attributes": {"price": (50, 10)}}, grpc.StatusCode.INVALID_ARGUMENT,
     "filters.attributes[0].range"),
])
def test_bad_input_is_named(client, kwargs, code, field):
    with pytest.raises(grpc.RpcError) as raised:
        client.similar_items(**kwargs)
    assert raised.value.code() == code and raised.value.details().startswith(f"{field}:"), raised.value.details()


def test_business_rules_of_the_request_and_of_its_surface_apply(client, user):
    from recmesh.client import exclude, pin

    top = ids(undegraded(lambda: client.similar_items(STAR_WARS, k=10)))
    reply = undegraded(lambda: client.similar_items(STAR_WARS, k=10, rules=[
        exclude(name="not_first", item_ids=[top[0]]), pin(top[5], 0, name="feature"), pin(STAR_WARS, 1)]))
    assert len(reply.items) == 10 and ids(reply)[0] == top[5]
    assert top[0] not in ids(reply) and STAR_WARS not in ids(reply)  # a pin never brings the anchor in
    surface, name = f"pdp-{user}", f"no_scifi_{user}"
    client.put_rule(exclude(name=name, categories=["Sci-Fi"]), surfaces=[surface])
    try:
        stored = undegraded(lambda: client.similar_items(STAR_WARS, k=10, surface=surface))
        elsewhere = undegraded(lambda: client.similar_items(STAR_WARS, k=10, surface="home"))
    finally:
        client.delete_rule(name)
    assert len(stored.items) == 10 and not any("Sci-Fi" in item.categories for item in stored.items)
    assert any("Sci-Fi" in item.categories for item in elsewhere.items)
