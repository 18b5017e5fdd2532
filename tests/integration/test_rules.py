"""Business rules on the live mesh over the MovieLens catalog (genres as the category; a few items
upserted with a `brand` attribute): boost, bury, promote, pin and exclude on the full path, an
exclusion also on a shed answer and with the ranker killed; stored rules put, listed, applied
at once on the gateway that stored them and within a second on another, audited, kept across an
updater restart, deleted; bad rules answered INVALID_ARGUMENT naming the field.

Stored rules here always name a surface of their own test: the session's other tests, which
name none, never meet them."""

from __future__ import annotations

import json
import math
import signal
import time
import uuid
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recmesh.client import Event, RecmeshClient, boost, exclude, pin, promote
from recmesh.common import limits
from recmesh.common.auth import make_key
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc
from tests.integration.answers import LATE_S, answered, undegraded

pytestmark = pytest.mark.integration

DRAMA = ["318", "1704", "2324", "527", "1193"]  # Shawshank, Good Will Hunting, Life Is Beautiful, Schindler, Cuckoo
Rule, ItemMatch, Pin = common_pb2.Rule, common_pb2.ItemMatch, common_pb2.Pin


def ids(reply) -> list[str]:
    return [i.item_id for i in reply.items]


def count(reply, genre: str) -> int:
    return sum(genre in i.categories for i in reply.items)


@pytest.fixture
def surface() -> str:
    return f"rules-{uuid.uuid4().hex[:8]}"


def test_a_boosted_brand_rises_and_its_score_moves_by_ln_f(client, user):
    """Four Acme and four Zenith space operas, upserted: the same query without and with
    `boost ×20` on brand Acme."""
    items = {f"{user}-{brand.lower()}-{n}": brand for brand in ("Acme", "Zenith") for n in range(4)}
    client.upsert_items([{"item_id": item_id, "title": f"{brand} Star Fleet Saga part {item_id[-1]}",
                          "categories": ["Sci-Fi"], "description": "A space opera: starships, an empire, a rebellion.",
                          "attributes": {"brand": brand}} for item_id, brand in items.items()])
    acme = [item_id for item_id, brand in items.items() if brand == "Acme"]
    query, rule = "space opera starship saga", boost(20.0, name="brand_acme", attributes={"brand": "Acme"})
    try:
        plain = undegraded(lambda: client.recommend(user, query=query, k=100))
        boosted = undegraded(lambda: client.recommend(user, query=query, k=100, rules=[rule]))
    finally:
        client.delete_items(items)

    def best(reply) -> int:
        return min((ids(reply).index(i) for i in acme if i in ids(reply)), default=len(reply.items))

    assert best(boosted) < best(plain), (ids(plain)[:15], ids(boosted)[:15])
    shown = {i.item_id: i for i in boosted.items}
    before = {i.item_id: i for i in plain.items}
    both = [i for i in acme if i in shown and i in before]
    assert both, "no Acme item in both answers: nothing to compare"
    for item_id in both:
        assert shown[item_id].score == pytest.approx(before[item_id].score + math.log(20.0), abs=1e-3)
        assert shown[item_id].reasons[0] == "boosted ×20 by rule:brand_acme"
    assert all(not i.reasons[0].startswith("boosted") for i in boosted.items if i.item_id not in acme)


def test_a_buried_category_falls(client, user):
    plain = undegraded(lambda: client.recommend(user, k=10))
    buried = undegraded(lambda: client.recommend(user, k=10, rules=[boost(0.01, categories=["Drama"])]))
    assert "Drama" in plain.items[0].categories  # Forrest Gump, the most rated film
    assert count(buried, "Drama") <= count(plain, "Drama") - 3, (ids(plain), ids(buried))
    assert "Drama" not in buried.items[0].categories
    assert all(i.reasons[0] == "buried ×0.01 by rule:rules[0]" for i in buried.items if "Drama" in i.categories)


def test_a_pinned_item_sits_in_its_slot_unless_the_request_or_the_user_rules_it_out(client, user):
    client.track_events(Event(user, item, "click") for item in DRAMA)
    rules = [pin("1", 3, name="toy_story"), pin(DRAMA[0], 0, name="seen")]
    reply = undegraded(lambda: client.recommend(user, k=10, rules=rules))
    assert reply.items[3].item_id == "1" and reply.items[3].reasons[0] == "pinned by rule:toy_story"
    assert DRAMA[0] not in ids(reply) and len(reply.items) == 10  # seen: a pin never brings it back
    filtered = undegraded(lambda: client.recommend(user, k=10, rules=rules, exclude_categories=["Animation"]))
    assert "1" not in ids(filtered) and len(filtered.items) == 10


def test_a_promoted_set_fills_its_share(client, user):
    plain = undegraded(lambda: client.recommend(user, k=10))
    assert count(plain, "Documentary") < 3  # what the rule has to change
    rule = promote(0.3, name="docs", categories=["Documentary"])
    reply = undegraded(lambda: client.recommend(user, k=10, rules=[rule]))
    assert len(reply.items) == 10 and count(reply, "Documentary") >= 3, ids(reply)
    brought = [i for i in reply.items if "Documentary" in i.categories and i.item_id not in ids(plain)]
    assert brought and all(i.reasons[0] == "promoted by rule:docs" for i in brought)
    kept = [i for i in ids(reply) if i not in {b.item_id for b in brought}]
    assert kept == [i for i in ids(plain) if i in kept]  # the others keep their order; the lowest gave way


def test_an_excluded_match_never_appears_on_the_full_the_shed_and_the_ranker_down_path(stack, client, user):
    client.track_events(Event(user, item, "click") for item in DRAMA)
    rule = exclude(name="no_comedy", categories=["Comedy"])
    plain = undegraded(lambda: client.recommend(user, k=10))
    assert count(plain, "Comedy") > 0  # the rule has something to leave out
    full = undegraded(lambda: client.recommend(user, k=10, rules=[rule]))
    shed = answered(lambda: client.recommend(user, k=10, rules=[rule], timeout_s=LATE_S))
    assert "shed:late_arrival" in shed.degraded
    stack.signal("ranker", signal.SIGKILL)
    try:
        unranked = client.recommend(user, k=10, rules=[rule], timeout_s=2.0)
    finally:
        stack.restart("ranker")
    assert "fallback:retrieval_order" in unranked.degraded, list(unranked.degraded)
    for reply in (full, shed, unranked):
        assert len(reply.items) == 10 and count(reply, "Comedy") == 0, (list(reply.degraded), ids(reply))


def test_boost_bury_and_pin_hold_with_the_ranker_killed(stack, client, user):
    """With the ranker down every answer is retrieval order (`fallback:retrieval_order`): the
    rules re-order it all the same - a boosted brand rises, a buried category falls, a pinned
    item sits in its slot."""
    items = {f"{user}-{brand.lower()}-{n}": brand for brand in ("Acme", "Zenith") for n in range(4)}
    client.upsert_items([{"item_id": item_id, "title": f"{brand} Star Fleet Saga part {item_id[-1]}",
                          "categories": ["Sci-Fi"], "description": "A space opera: starships, an empire, a rebellion.",
                          "attributes": {"brand": brand}} for item_id, brand in items.items()])
    acme = [item_id for item_id, brand in items.items() if brand == "Acme"]
    query = "space opera starship saga"

    def unranked(**kwargs):
        """An answer of the ranker-down path itself (not shed, browned out or otherwise degraded on a busy host)."""
        for _ in range(5):
            reply = client.recommend(user, timeout_s=3.0, **kwargs)
            if "fallback:retrieval_order" in reply.degraded and not any(
                    d.startswith(("shed:", "brownout:")) for d in reply.degraded):
                return reply
        raise AssertionError(f"no ranker-down answer in 5 tries: {list(reply.degraded)}")

    stack.signal("ranker", signal.SIGKILL)
    try:
        plain = unranked(query=query, k=30)
        boosted = unranked(query=query, k=30, rules=[boost(20.0, name="brand_acme", attributes={"brand": "Acme"})])
        cold = unranked(k=10)
        buried = unranked(k=10, rules=[boost(0.01, categories=["Drama"])])
        pinned = unranked(k=10, rules=[pin("1", 3, name="toy_story")])
    finally:
        stack.restart("ranker")
        client.delete_items(items)

    def best(reply) -> int:
        return min((ids(reply).index(i) for i in acme if i in ids(reply)), default=len(reply.items))

    assert best(boosted) < best(plain), (ids(plain)[:15], ids(boosted)[:15])
    assert count(cold, "Drama") > 0 and count(buried, "Drama") < count(cold, "Drama"), (ids(cold), ids(buried))
    assert pinned.items[3].item_id == "1" and pinned.items[3].reasons[0] == "pinned by rule:toy_story"
    for reply in (boosted, buried, pinned):
        assert len(reply.items) == len(plain.items if reply is boosted else cold.items)


def test_a_stored_rule_applies_at_once_is_listed_and_deleted(client, user, surface):
    name = f"no-comedy-{surface}"
    before = undegraded(lambda: client.recommend(user, k=10, surface=surface))
    assert count(before, "Comedy") > 0
    stored = client.put_rule(exclude(name=name, categories=["Comedy"]), surfaces=[surface])
    try:
        assert stored.rule.name == name and stored.updated_ms > 0
        after = client.recommend(user, k=10, surface=surface)  # the next Recommend, no wait
        shed = answered(lambda: client.recommend(user, k=10, surface=surface, timeout_s=LATE_S))
        elsewhere = undegraded(lambda: client.recommend(user, k=10, surface=f"{surface}-other"))
        assert count(after, "Comedy") == 0 and len(after.items) == 10
        assert count(shed, "Comedy") == 0 and len(shed.items) == 10 and "shed:late_arrival" in shed.degraded
        assert count(elsewhere, "Comedy") > 0
        assert stored in client.list_rules()
    finally:
        assert client.delete_rule(name)
    assert not client.delete_rule(name)
    assert name not in [r.rule.name for r in client.list_rules()]
    assert count(undegraded(lambda: client.recommend(user, k=10, surface=surface)), "Comedy") > 0


def test_stored_rules_survive_an_updater_restart_and_hold_while_it_is_down(stack, client, user, surface):
    name = f"no-drama-{surface}"
    client.put_rule(exclude(name=name, categories=["Drama"]), surfaces=[surface])
    try:
        stack.signal("updater", signal.SIGKILL)
        try:
            down = client.recommend(user, k=10, surface=surface, timeout_s=2.0)  # the gateway's listing holds
        finally:
            stack.restart("updater")
        assert count(down, "Drama") == 0 and len(down.items) == 10, (list(down.degraded), ids(down))
        assert name in [r.rule.name for r in client.list_rules()]  # read back from the updater's store
        assert count(undegraded(lambda: client.recommend(user, k=10, surface=surface)), "Drama") == 0
    finally:
        client.delete_rule(name)


@pytest.fixture(scope="module")
def keyed_gateway(stack):
    """A second gateway replica with API keys: an admin client and a recommend-only one."""
    admin_token, admin_line = make_key(["admin", "recommend"], "ops-alice")
    shop_token, shop_line = make_key(["recommend"], "shop-frontend")
    address = stack.start_replica("gateway", "rules", env={"RECMESH_GATEWAY_API_KEYS": f"{admin_line};{shop_line}"})
    with RecmeshClient(address, timeout_s=2.0, token=admin_token) as admin, \
            RecmeshClient(address, timeout_s=2.0, token=shop_token) as shop:
        yield admin, shop


def audit_lines(stack, name: str) -> list[dict]:
    lines = []
    for line in stack.log_path("updater").read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            record = json.loads(line)
            if record.get("audit") == "rules" and record.get("rule_name") == name:
                lines.append(record)
    return lines


def test_a_rule_put_through_one_gateway_applies_on_another_within_a_second_and_is_audited(
        stack, client, keyed_gateway, user, surface):
    admin, shop = keyed_gateway
    name = f"no-comedy-{surface}"
    rule = exclude(name=name, categories=["Comedy"])
    with pytest.raises(grpc.RpcError) as err:
        shop.put_rule(rule, surfaces=[surface])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert count(undegraded(lambda: client.recommend(user, k=10, surface=surface)), "Comedy") > 0
    admin.put_rule(rule, surfaces=[surface])
    try:
        put_at = time.monotonic()
        while count(client.recommend(user, k=10, surface=surface, timeout_s=2.0), "Comedy") > 0:
            assert time.monotonic() - put_at < 2.0, "the other gateway did not apply the rule in time"
            time.sleep(0.02)
        print(f"applied on the other gateway after {time.monotonic() - put_at:.2f} s")
    finally:
        assert admin.delete_rule(name)
    put, deleted = audit_lines(stack, name)
    assert (put["message"], put["action"], put["client"]) == ("rule put", "create", "ops-alice")
    assert json.loads(put["rule"])["rule"]["match"]["categories"] == ["Comedy"] and put["time"]
    assert (deleted["message"], deleted["client"]) == ("rule deleted", "ops-alice")


BAD_RULES = [
    (Rule(match=ItemMatch(categories=["Drama"])), "rules[0].action"),
    (Rule(exclude=True), "rules[0].match"),
    (Rule(boost=float("nan"), match=ItemMatch(categories=["Drama"])), "rules[0].boost"),
    (Rule(boost=0.0, match=ItemMatch(categories=["Drama"])), "rules[0].boost"),
    (Rule(promote_share=1.5, match=ItemMatch(categories=["Drama"])), "rules[0].promote_share"),
    (Rule(pin=Pin(item_id="1", position=100)), "rules[0].pin.position"),  # max_k is 100
    (Rule(pin=Pin(item_id="1", position=-1)), "rules[0].pin.position"),
    (Rule(pin=Pin(item_id="", position=0)), "rules[0].pin.item_id"),
    (Rule(name="two words", exclude=True, match=ItemMatch(item_ids=["1"])), "rules[0].name"),
]


@pytest.mark.parametrize(("rule", "field"), BAD_RULES, ids=[f for _, f in BAD_RULES])
def test_a_bad_rule_is_invalid_argument_naming_its_field(gateway_channel, rule, field):
    stub = recommendations_pb2_grpc.RecommendationsStub(gateway_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(recommendations_pb2.RecommendRequest(user_id="u1", rules=[rule]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_too_many_rules_in_a_recommend_are_invalid_argument(gateway_channel):
    stub = recommendations_pb2_grpc.RecommendationsStub(gateway_channel)
    rules = [Rule(exclude=True, match=ItemMatch(item_ids=["1"]))] * (limits.RULES_PER_REQUEST + 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(recommendations_pb2.RecommendRequest(user_id="u1", rules=rules), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("rules:"), err.value.details()


@pytest.mark.parametrize(("method", "request_", "field"), [
    ("PutRule", common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(rule=Rule(exclude=True, match=ItemMatch(
        item_ids=["1"])))), "rule.rule.name"),
    ("PutRule", common_pb2.PutRuleRequest(), "rule.rule"),
    ("PutRule", common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(
        rule=Rule(name="n", boost=-1, match=ItemMatch(item_ids=["1"])))), "rule.rule.boost"),
    ("PutRule", common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(
        rule=Rule(name="n", exclude=True, match=ItemMatch(item_ids=["1"])), surfaces=[""])), "rule.surfaces[0]"),
    ("DeleteRule", common_pb2.DeleteRuleRequest(), "name"),
    ("DeleteRule", common_pb2.DeleteRuleRequest(name="a/b"), "name"),
])
def test_a_bad_rule_change_is_invalid_argument_naming_its_field(gateway_channel, method, request_, field):
    stub = recommendations_pb2_grpc.RecommendationsStub(gateway_channel)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_a_full_rule_store_refuses_a_new_name_and_still_replaces(client, surface):
    names = [f"{surface}-{n}" for n in range(limits.STORED_RULES - len(client.list_rules()))]
    try:
        for name in names:
            client.put_rule(exclude(name=name, item_ids=["1"]), surfaces=[surface])
        with pytest.raises(grpc.RpcError) as err:
            client.put_rule(exclude(name=f"{surface}-one-more", item_ids=["1"]), surfaces=[surface])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details().startswith("rule.rule.name:")
        assert client.put_rule(exclude(name=names[0], item_ids=["2"]), surfaces=[surface]).rule.match.item_ids == ["2"]
    finally:
        for name in names:
            client.delete_rule(name)


# --- hostile rules ----------------------------------------------------------------------------------

FUZZ_SURFACE = "rules-fuzz"  # every fuzzed stored rule names it (none names no surface): deleted after
text = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "1", "260", "Drama", "a" * 129, "\x00", "🎬" * 40]))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1.0, 0.5, 1e308]))
tests = st.one_of(
    st.builds(common_pb2.AttributeFilter, name=text, exclude=st.booleans(),
              any_of=st.builds(common_pb2.StringSet, values=st.lists(text, max_size=3))),
    st.builds(common_pb2.AttributeFilter, name=text, range=st.builds(common_pb2.NumberRange, min=numbers, max=numbers)),
    st.builds(common_pb2.AttributeFilter, name=text, equals=st.booleans()),
    st.builds(common_pb2.AttributeFilter, name=text))
matches = st.builds(ItemMatch, item_ids=st.lists(text, max_size=4), categories=st.lists(text, max_size=3),
                    attributes=st.lists(tests, max_size=2))
fuzz_rules = st.one_of(*(st.builds(Rule, name=text, match=matches, **action) for action in (
    {"boost": numbers}, {"promote_share": numbers}, {"exclude": st.booleans()}, {},
    {"pin": st.builds(Pin, item_id=text, position=st.integers(-2**31, 2**31 - 1))})))


def test_no_rule_crashes_recommend_put_or_delete(stub_rules, client):
    outcomes: Counter = Counter()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(rules=st.lists(fuzz_rules, max_size=4), stored=fuzz_rules, surfaces=st.lists(text, max_size=2),
           timeout=st.sampled_from([0.002, 0.05, 2.0, 2.0]))
    def case(rules, stored, surfaces, timeout):
        for method, request in (
                ("Recommend", recommendations_pb2.RecommendRequest(user_id="fuzz-rules", k=5, rules=rules,
                                                                   context=common_pb2.Context(surface=FUZZ_SURFACE))),
                ("PutRule", common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(
                    rule=stored, surfaces=[FUZZ_SURFACE, *surfaces]))),
                ("DeleteRule", common_pb2.DeleteRuleRequest(name=stored.name if len(outcomes) % 3 else "x"))):
            try:
                getattr(stub_rules, method)(request, timeout=timeout)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
                    f"{method} -> {code.name}: {exc.details()}"
            outcomes[(method, code.name)] += 1

    try:
        case()
    finally:
        for stored in client.list_rules():
            if FUZZ_SURFACE in stored.surfaces:
                client.delete_rule(stored.rule.name)
    print(f"\nrules fuzz: {dict(outcomes)}")
    assert outcomes[("Recommend", "OK")] and outcomes[("Recommend", "INVALID_ARGUMENT")]
    assert outcomes[("PutRule", "INVALID_ARGUMENT")]
    assert len(undegraded(lambda: client.recommend("fuzz-rules", k=5, surface=FUZZ_SURFACE)).items) == 5


@pytest.fixture
def stub_rules(gateway_channel):
    return recommendations_pb2_grpc.RecommendationsStub(gateway_channel)
