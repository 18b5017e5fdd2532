"""Business rules: their checks (every field named), the rules step without I/O (exclude, boost,
promote, pin, in that order; diversity over boosted scores), and the gateway's copy of the
stored rules (read-your-writes, a stale listing not taken)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recmesh.common import limits
from recmesh.common.errors import InvalidArgument
from recmesh.common.rules import check_rule_name, check_rules, check_stored_rule
from recmesh.v1 import common_pb2, ranker_pb2, retrieval_pb2
from services.gateway.rules import (
    NO_RULES,
    CompiledRule,
    RuleSet,
    apply_rules,
    compile_rules,
    fetched,
    from_ranking,
    in_order,
    request_labels,
    slots,
)
from services.gateway.stored_rules import StoredRules

Rule, ItemMatch, Pin = common_pb2.Rule, common_pb2.ItemMatch, common_pb2.Pin


def brand(*values: str) -> common_pb2.AttributeFilter:
    return common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=values))


# --- checks --------------------------------------------------------------------------------------

BAD = [
    (Rule(match=ItemMatch(categories=["Drama"])), "rules[0].action"),
    (Rule(boost=2.0), "rules[0].match"),
    (Rule(promote_share=0.5, match=ItemMatch()), "rules[0].match"),
    (Rule(exclude=True), "rules[0].match"),
    (Rule(boost=0.0, match=ItemMatch(categories=["Drama"])), "rules[0].boost"),
    (Rule(boost=-2.0, match=ItemMatch(categories=["Drama"])), "rules[0].boost"),
    (Rule(boost=math.nan, match=ItemMatch(categories=["Drama"])), "rules[0].boost"),
    (Rule(boost=math.inf, match=ItemMatch(categories=["Drama"])), "rules[0].boost"),
    (Rule(promote_share=0.0, match=ItemMatch(categories=["Drama"])), "rules[0].promote_share"),
    (Rule(promote_share=1.5, match=ItemMatch(categories=["Drama"])), "rules[0].promote_share"),
    (Rule(promote_share=math.nan, match=ItemMatch(categories=["Drama"])), "rules[0].promote_share"),
    (Rule(exclude=False, match=ItemMatch(categories=["Drama"])), "rules[0].exclude"),
    (Rule(pin=Pin(item_id="1", position=-1)), "rules[0].pin.position"),
    (Rule(pin=Pin(item_id="1", position=100)), "rules[0].pin.position"),
    (Rule(pin=Pin(item_id="", position=0)), "rules[0].pin.item_id"),
    (Rule(pin=Pin(item_id="\u200b", position=0)), "rules[0].pin.item_id"),
    (Rule(pin=Pin(item_id="x" * 129, position=0)), "rules[0].pin.item_id"),
    (Rule(pin=Pin(item_id="1"), match=ItemMatch(item_ids=["2"])), "rules[0].match"),
    (Rule(name="has space", exclude=True, match=ItemMatch(item_ids=["1"])), "rules[0].name"),
    (Rule(name="x" * 129, exclude=True, match=ItemMatch(item_ids=["1"])), "rules[0].name"),
    (Rule(exclude=True, match=ItemMatch(item_ids=[""])), "rules[0].match.item_ids[0]"),
    (Rule(exclude=True, match=ItemMatch(item_ids=[str(i) for i in range(101)])), "rules[0].match.item_ids"),
    (Rule(exclude=True, match=ItemMatch(categories=[" "])), "rules[0].match.categories[0]"),
    (Rule(exclude=True, match=ItemMatch(attributes=[common_pb2.AttributeFilter(name="brand")])),
     "rules[0].match.attributes[0]"),
    (Rule(exclude=True, match=ItemMatch(attributes=[brand()])), "rules[0].match.attributes[0].any_of.values"),
    (Rule(exclude=True, match=ItemMatch(attributes=[common_pb2.AttributeFilter(
        name="a.b", equals=True)])), "rules[0].match.attributes[0].name"),
]


@pytest.mark.parametrize(("rule", "field"), BAD, ids=[f for _, f in BAD])
def test_a_bad_rule_is_refused_naming_its_field(rule, field):
    with pytest.raises(InvalidArgument) as err:
        check_rules([rule], "rules", max_position=100)
    assert err.value.field == field


def test_good_rules_pass_and_too_many_are_refused():
    good = [Rule(name="brand_acme", boost=2.0, match=ItemMatch(attributes=[brand("Acme")])),
            Rule(boost=0.5, match=ItemMatch(categories=["Horror"])),
            Rule(promote_share=1.0, match=ItemMatch(item_ids=["1", "2"])),
            Rule(name="a.b:c-d_1", exclude=True, match=ItemMatch(categories=["Drama"], attributes=[brand("X")])),
            Rule(pin=Pin(item_id="318", position=99))]
    check_rules(good, "rules", max_position=100)
    with pytest.raises(InvalidArgument) as err:
        check_rules([good[0]] * (limits.RULES_PER_REQUEST + 1), "rules")
    assert err.value.field == "rules"


def test_a_stored_rule_needs_a_name_a_rule_and_sane_surfaces():
    rule = Rule(exclude=True, match=ItemMatch(item_ids=["1"]))
    for stored, field in [(common_pb2.StoredRule(rule=rule), "rule.rule.name"),
                          (common_pb2.StoredRule(), "rule.rule"),
                          (common_pb2.StoredRule(rule=Rule(name="n", exclude=True, match=ItemMatch(item_ids=["1"])),
                                                 surfaces=[""]), "rule.surfaces[0]"),
                          (common_pb2.StoredRule(rule=Rule(name="n", exclude=True, match=ItemMatch(item_ids=["1"])),
                                                 surfaces=["s"] * 33), "rule.surfaces")]:
        with pytest.raises(InvalidArgument) as err:
            check_stored_rule(stored, "rule")
        assert err.value.field == field
    with pytest.raises(InvalidArgument) as err:
        check_rule_name("", "name")
    assert err.value.field == "name"


# --- the step --------------------------------------------------------------------------------------

def item(i: int, category: str = "Drama", brand_: str | None = None, popularity: float = 0.0):
    attributes = {"brand": common_pb2.AttributeValue(text=brand_)} if brand_ else {}
    return retrieval_pb2.Candidate(item_id=f"i{i}", title=f"T{i}", categories=[category], attributes=attributes,
                                   popularity=popularity)


def ranked(scores: list[float], **kinds) -> list:
    """Entries as the ranker orders them: item i scored scores[i] (given best first)."""
    candidates = [item(i, **{k: v(i) for k, v in kinds.items()}) for i in range(len(scores))]
    ranking = ranker_pb2.RankResponse(items=[ranker_pb2.RankedItem(item_id=c.item_id, score=s, reasons=["r"])
                                             for c, s in zip(candidates, scores, strict=True)])
    return from_ranking(ranking, candidates)


def rules(*rules: Rule) -> RuleSet:
    return RuleSet(compile_rules(rules, request_labels(rules)))


def ids(entries) -> list[str]:
    return [e.item_id for e in entries]


def acme_every_third(i: int) -> str | None:
    return "Acme" if i % 3 == 2 else None


def test_no_rules_is_the_first_k():
    entries = ranked([3.0, 2.0, 1.0])
    assert ids(apply_rules(entries, NO_RULES, 2)) == ["i0", "i1"]


def test_a_boost_moves_the_logit_by_ln_f_re_sorts_and_says_so():
    entries = ranked([2.0, 1.5, 1.0, 0.5, -1.0, -2.0], brand_=acme_every_third)  # Acme: i2, i5
    out = apply_rules(entries, rules(Rule(name="brand_acme", boost=2.0, match=ItemMatch(attributes=[brand("Acme")]))),
                      4)
    # i2: 1.0 + ln 2 = 1.69 passes i1 (1.5); i5: -2 + 0.69 = -1.31 stays below.
    assert ids(out) == ["i0", "i2", "i1", "i3"]
    assert out[1].score == pytest.approx(1.0 + math.log(2.0))
    assert out[1].reasons == ["boosted ×2 by rule:brand_acme", "r"]


def test_a_bury_of_a_negative_score_pushes_it_down_not_up():
    entries = ranked([-0.5, -1.0, -1.5])
    out = apply_rules(entries, rules(Rule(boost=0.25, match=ItemMatch(item_ids=["i0"]))), 3)
    assert ids(out) == ["i1", "i2", "i0"]  # -0.5 + ln 0.25 = -1.89: multiplying would have raised it
    assert out[2].reasons[0] == "buried ×0.25 by rule:rules[0]"


def test_boosts_compose_and_an_unranked_list_moves_by_position_keeping_its_scores():
    popular = [item(i, popularity=1 - i / 10) for i in range(6)]
    entries = in_order(popular, [c.popularity for c in popular], ["popular right now"], rows=False)
    out = apply_rules(entries, rules(Rule(boost=2.0, match=ItemMatch(item_ids=["i5"])),
                                     Rule(boost=2.0, match=ItemMatch(item_ids=["i5"]))), 6)
    # Position 5's odds times 4: -ln 6 + ln 4 = ln(2/3), between position 0 (0) and 1 (-ln 2).
    assert ids(out) == ["i0", "i5", "i1", "i2", "i3", "i4"]
    assert out[1].score == pytest.approx(0.5) and len(out[1].reasons) == 3


def test_exclude_is_hard_and_comes_first():
    entries = ranked([3.0, 2.0, 1.0, 0.0])
    out = apply_rules(entries, rules(Rule(exclude=True, match=ItemMatch(item_ids=["i0"])),
                                     Rule(pin=Pin(item_id="i0", position=0)),
                                     Rule(boost=100.0, match=ItemMatch(item_ids=["i0"]))), 3)
    assert ids(out) == ["i1", "i2", "i3"]


def test_a_match_needs_every_condition():
    entries = ranked([3.0, 2.0, 1.0, 0.0, -1.0, -2.0], brand_=acme_every_third,
                     category=lambda i: "Horror" if i >= 3 else "Drama")
    out = apply_rules(entries, rules(Rule(exclude=True, match=ItemMatch(categories=["Horror"],
                                                                         attributes=[brand("Acme")]))), 6)
    assert ids(out) == ["i0", "i1", "i2", "i3", "i4"]  # only i5 is an Acme horror film


def test_a_promotion_fills_its_share_with_the_best_matches_from_the_bottom_up():
    entries = ranked([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
                     category=lambda i: "Horror" if i in (1, 9, 11) else "Drama")
    out = apply_rules(entries, rules(Rule(name="halloween", promote_share=0.3,
                                          match=ItemMatch(categories=["Horror"]))), 5)
    # ceil(0.3 * 5) = 2 Horror slots: i1 holds one; the best other, i9, takes the last slot.
    assert ids(out) == ["i0", "i1", "i2", "i3", "i9"]
    assert out[4].reasons[0] == "promoted by rule:halloween" and out[1].reasons == ["r"]
    assert slots(0.3, 10) == 3 and slots(0.01, 10) == 1 and slots(1.0, 7) == 7


def test_a_promotion_short_of_candidates_takes_fetched_items_and_spares_an_earlier_ones_slots():
    entries = ranked([5.0, 4.0, 3.0, 2.0], category=lambda i: "Horror" if i == 3 else "Drama")
    first = Rule(name="horror", promote_share=0.5, match=ItemMatch(categories=["Horror"]))
    second = Rule(name="acme", promote_share=0.5, match=ItemMatch(attributes=[brand("Acme")]))
    acme = fetched([item(20, brand_="Acme"), item(21, brand_="Acme"), item(22, brand_="Acme")])
    out = apply_rules(entries, rules(first, second), 4, promoted={1: acme})
    # Horror: i3 into the last slot; Acme: 2 slots, taken from the lowest not held by Horror (i1, i2).
    assert ids(out) == ["i0", "i20", "i21", "i3"]
    assert out[1].score == 0.0 and out[1].reasons == ["promoted by rule:acme"]


def test_pins_place_items_later_rules_win_and_positions_past_k_are_not_shown():
    entries = ranked([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    out = apply_rules(entries, rules(Rule(pin=Pin(item_id="i4", position=0)),
                                     Rule(pin=Pin(item_id="i5", position=0)),  # later: wins position 0
                                     Rule(pin=Pin(item_id="i0", position=3)),
                                     Rule(pin=Pin(item_id="i1", position=9))), 4)
    # i1's pin is off this page: it stays where it ranked, as an item no rule names would.
    assert ids(out) == ["i5", "i4", "i1", "i0"]
    assert out[0].reasons[0] == "pinned by rule:rules[1]"


def test_a_pinned_item_that_is_no_candidate_comes_from_the_lookup_and_one_not_found_is_skipped():
    entries = ranked([3.0, 2.0, 1.0])
    out = apply_rules(entries, rules(Rule(pin=Pin(item_id="i9", position=1)),
                                     Rule(pin=Pin(item_id="gone", position=0))), 3,
                      pinned=fetched([item(9)]))
    assert ids(out) == ["i0", "i9", "i1"]


def test_the_order_is_exclude_boost_promote_pin():
    entries = ranked([5.0, 4.0, 3.0, 2.0, 1.0], category=lambda i: "Horror" if i == 4 else "Drama")
    out = apply_rules(entries, rules(
        Rule(pin=Pin(item_id="i0", position=2)),  # last, whatever its place in the list
        Rule(promote_share=0.3, match=ItemMatch(categories=["Horror"])),  # ceil(0.9): 1 of 3
        Rule(boost=10.0, match=ItemMatch(item_ids=["i3"])),  # 2 + 2.3 = 4.3: first after i0
        Rule(exclude=True, match=ItemMatch(item_ids=["i1"]))), 3)
    # exclude i1 -> [i0 5, i3 4.3, i2 3, i4 1]; top 3 [i0, i3, i2]; promote i4 over i2; pin i0 at 2.
    assert ids(out) == ["i3", "i4", "i0"]


def test_diversity_picks_among_the_boosted_scores():
    entries = ranked([3.0, 2.9, 2.8, 0.0])
    vectors = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1]], np.float32)  # i3 unlike the others
    boost = rules(Rule(boost=1.5, match=ItemMatch(item_ids=["i3"])))
    plain = apply_rules(ranked([3.0, 2.9, 2.8, 0.0]), boost, 2, diversity=0.0, vectors=vectors)
    varied = apply_rules(entries, boost, 2, diversity=0.7, vectors=vectors)
    assert ids(plain) == ["i0", "i1"] and ids(varied) == ["i0", "i3"]


# --- the gateway's copy of the stored rules --------------------------------------------------------

def stored(name: str, *surfaces: str, item_id: str = "1") -> common_pb2.StoredRule:
    return common_pb2.StoredRule(rule=Rule(name=name, exclude=True, match=ItemMatch(item_ids=[item_id])),
                                 surfaces=surfaces)


def test_stored_rules_apply_to_their_surfaces_in_name_order():
    book = StoredRules()
    assert book.replace([stored("b"), stored("a", "home"), stored("c", "pdp")], writes_before=0)
    assert [r.label for r in book.for_surface("home").rules] == ["rule:a", "rule:b"]
    assert [r.label for r in book.for_surface("").rules] == ["rule:b"]
    assert isinstance(book.for_surface("pdp").rules[0], CompiledRule)


def test_a_write_here_is_read_at_once_and_a_listing_older_than_it_is_not_taken():
    book = StoredRules()
    book.replace([stored("a")], writes_before=0)
    before = book.writes  # a listing is asked for ...
    book.put(stored("new"))  # ... a PutRule through this gateway lands meanwhile
    assert [r.label for r in book.for_surface("").rules] == ["rule:a", "rule:new"]
    assert not book.replace([stored("a")], writes_before=before)  # the stale listing is dropped
    assert [r.label for r in book.for_surface("").rules] == ["rule:a", "rule:new"]
    book.delete("a")
    assert [r.label for r in book.for_surface("").rules] == ["rule:new"]
    assert book.replace([stored("new"), stored("other")], writes_before=book.writes)
    assert [r.label for r in book.for_surface("").rules] == ["rule:new", "rule:other"]


# --- the updater's rules role --------------------------------------------------------------------

def test_the_updater_stores_checks_and_audits_each_change(tmp_path, caplog):
    import asyncio
    import logging

    from recmesh.common.errors import FailedPrecondition
    from services.updater.config import UpdaterSettings
    from services.updater.rules import RulesRole

    settings = UpdaterSettings(log_path=tmp_path / "events.sqlite")

    async def go():
        role = RulesRole(settings)
        await role.open()
        put = await role.put(common_pb2.PutRuleRequest(rule=stored("a", "home")), "ops-alice", "ipv4:1.2.3.4:5")
        await role.put(common_pb2.PutRuleRequest(rule=stored("a", item_id="2")), "ops-bob", "peer")
        with pytest.raises(InvalidArgument, match=r"^rule\.rule\.name"):
            await role.put(common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(rule=Rule(exclude=True))), "x", "p")
        for n in range(limits.STORED_RULES - 1):
            await role.put(common_pb2.PutRuleRequest(rule=stored(f"r{n}")), "ops-bob", "peer")
        with pytest.raises(FailedPrecondition):
            await role.put(common_pb2.PutRuleRequest(rule=stored("one-more")), "ops-bob", "peer")
        deleted = await role.delete(common_pb2.DeleteRuleRequest(name="a"), "ops-alice", "peer")
        missing = await role.delete(common_pb2.DeleteRuleRequest(name="a"), "ops-alice", "peer")
        listed = await role.list()
        await role.close()
        again = RulesRole(settings)  # the same file, as after a restart
        await again.open()
        kept = await again.list()
        await again.close()
        return put, deleted, missing, listed, kept

    with caplog.at_level(logging.INFO, logger="recmesh.updater.rules"):
        put, deleted, missing, listed, kept = asyncio.run(go())
    assert put.updated_ms > 0 and list(put.surfaces) == ["home"]
    assert deleted.deleted and not missing.deleted
    assert len(listed.rules) == limits.STORED_RULES - 1 and list(kept.rules) == list(listed.rules)
    assert (tmp_path / "rules.sqlite").is_file()
    audit = [r for r in caplog.records if getattr(r, "audit", None) == "rules"]
    assert [(r.getMessage(), r.action, r.client, r.rule_name) for r in audit[:2]] == [
        ("rule put", "create", "ops-alice", "a"), ("rule put", "replace", "ops-bob", "a")]
    assert '"item_ids":["2"]' in audit[1].rule and '"item_ids":["1"]' in audit[1].replaced
    assert (audit[-1].getMessage(), audit[-1].client, audit[-1].rule_name) == ("rule deleted", "ops-alice", "a")


# --- the client's and the CLI's forms ----------------------------------------------------------------

def test_the_client_builds_rules_from_plain_values():
    from recmesh.client import boost, exclude, pin, promote

    assert boost(2.0, name="acme", attributes={"brand": "Acme"}) == Rule(
        name="acme", boost=2.0, match=ItemMatch(attributes=[brand("Acme")]))
    assert promote(0.3, categories=["Horror"]) == Rule(promote_share=0.3, match=ItemMatch(categories=["Horror"]))
    assert exclude(item_ids=["1", "2"]).WhichOneof("action") == "exclude"
    assert pin("318", 2, name="hero") == Rule(name="hero", pin=Pin(item_id="318", position=2))
    check_rules([boost(2.0, attributes={"brand": ["A", "B"], "price": (1, 5)}), pin("1", 0)], "rules")


def test_the_cli_reads_rules_from_flags_and_json():
    from recmesh.tools.cli import _rule_from_flags, build_parser

    parser = build_parser()
    args = parser.parse_args(["rules", "put", "--name", "acme", "--boost", "2", "--where", "brand=Acme",
                              "--category", "Drama", "--surface", "home"])
    assert _rule_from_flags(args) == Rule(name="acme", boost=2.0, match=ItemMatch(
        categories=["Drama"], attributes=[brand("Acme")])) and args.surface == ["home"]
    args = parser.parse_args(["rules", "put", "--name", "hero", "--pin", "sku@1@3"])
    assert _rule_from_flags(args) == Rule(name="hero", pin=Pin(item_id="sku@1", position=3))
    args = parser.parse_args(["rules", "put", "--name", "x", "--exclude", "--item", "1"])
    assert _rule_from_flags(args) == Rule(name="x", exclude=True, match=ItemMatch(item_ids=["1"]))
    args = parser.parse_args(["recommend", "--user", "u", "--rule", '{"boost": 0.5, "match": {"categories": ["A"]}}'])
    assert args.rule == [Rule(boost=0.5, match=ItemMatch(categories=["A"]))]
    for bad in (["rules", "put", "--name", "x", "--pin", "318"], ["rules", "put", "--name", "x"],
                ["rules", "put", "--name", "x", "--boost", "2", "--exclude"],
                ["recommend", "--user", "u", "--rule", "{"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_rules_whose_fields_are_each_within_limits_are_bounded_in_all_before_they_are_read():
    """16 rules x 32 attribute tests x 1000 values passed every per-field limit and took the
    gateway's event loop ~3 s to check (hostile-input review): the total is refused first."""
    import time

    from recmesh.common import limits as lim
    from recmesh.common.errors import InvalidArgument
    from recmesh.common.rules import check_rule, check_rules
    from recmesh.v1 import common_pb2 as pb

    def heavy(n_values: int) -> pb.Rule:
        tests = [pb.AttributeFilter(name=f"a{j}", any_of=pb.StringSet(values=[f"v{i}" * 20 for i in range(n_values)]))
                 for j in range(32)]
        return pb.Rule(boost=2.0, match=pb.ItemMatch(attributes=tests))

    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as err:
        check_rules([heavy(1000)] * 16, "rules")
    assert err.value.field == "rules" and time.perf_counter() - started < 0.5
    with pytest.raises(InvalidArgument) as err:
        check_rule(heavy(1000), "rules[0]")
    assert err.value.field == "rules[0].match"
    per_test = lim.MATCH_VALUES // 32 - 1
    check_rule(heavy(per_test), "rules[0]")  # within MATCH_VALUES: accepted
    with pytest.raises(InvalidArgument, match="over all rules"):
        check_rules([heavy(per_test)] * 2, "rules")


def test_concurrent_changes_of_the_sqlite_store_hold_its_limit_and_delete_once(tmp_path):
    """16 puts at once each saw room under the limit (up to 78 of 64 stored), and two deletes of
    one name both found it (INTERNAL KeyError) - hostile-input review."""
    import asyncio

    from recmesh.events.rulestore import SqliteRules
    from recmesh.v1 import common_pb2 as pb

    def named(name: str) -> pb.StoredRule:
        return pb.StoredRule(rule=pb.Rule(name=name, exclude=True, match=pb.ItemMatch(item_ids=["x"])))

    async def run():
        store = SqliteRules(tmp_path / "rules.sqlite")
        await store.open()
        try:
            for n in range(6):
                await store.put(named(f"r{n}"), max_rules=8)
            done = await asyncio.gather(*(store.put(named(f"new{n}"), max_rules=8) for n in range(16)))
            assert sum(ok for ok, _ in done) == 2 and len(await store.list()) == 8
            deleted = await asyncio.gather(*(store.delete("r0") for _ in range(4)))
            assert sum(d is not None for d in deleted) == 1
        finally:
            await store.close()
    asyncio.run(run())


def test_the_stored_set_is_bounded_in_values_in_all(tmp_path):
    """Six stored rules of 32 x 1000 values each (within every per-field limit) outgrew the 16 MiB
    message cap of ListRules, which every gateway calls twice a second (hostile-input review)."""
    import asyncio

    from recmesh.common.errors import FailedPrecondition
    from recmesh.v1 import common_pb2 as pb
    from services.updater.config import UpdaterSettings
    from services.updater.rules import RulesRole

    def big(name: str) -> pb.PutRuleRequest:
        ids = [f"{name}-{i}" for i in range(limits.MATCH_ITEM_IDS)]
        tests = [pb.AttributeFilter(name=f"a{j}", any_of=pb.StringSet(values=[f"v{i}" for i in range(80)]))
                 for j in range(10)]
        return pb.PutRuleRequest(rule=pb.StoredRule(rule=pb.Rule(name=name, exclude=True, match=pb.ItemMatch(
            item_ids=ids, attributes=tests))))

    async def go():
        role = RulesRole(UpdaterSettings(log_path=tmp_path / "events.sqlite"))
        await role.open()
        try:
            per_rule = 100 + 10 + 800
            fits = limits.STORED_RULE_VALUES // per_rule
            for n in range(fits):
                await role.put(big(f"r{n}"), "ops", "peer")
            await role.put(big("r0"), "ops", "peer")  # replacing one never counts it twice
            with pytest.raises(FailedPrecondition, match=r"^rule\.rule\.match"):
                await role.put(big("one-more"), "ops", "peer")
        finally:
            await role.close()
    asyncio.run(go())
