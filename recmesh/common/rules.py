"""Checks on business rules (common.proto Rule, ItemMatch, Pin, StoredRule), shared by the gateway
(per-request rules and PutRule, at the public edge) and the updater (which stores them, and
checks what it stores whoever calls it). Every failure is InvalidArgument naming the field,
e.g. `rules[2].boost: must be a finite number > 0 ...`. Sizes are recmesh/common/limits.py's."""

from __future__ import annotations

import math
import re

from recmesh.common import limits
from recmesh.common.errors import InvalidArgument
from recmesh.common.validation import check_attribute_filters, check_id, check_labels, check_name
from recmesh.v1 import common_pb2

ACTIONS = ("boost", "pin", "promote_share", "exclude")
_RULE_NAME = re.compile(f"[A-Za-z0-9_.:-]{{1,{limits.RULE_NAME_CHARS}}}")


def check_rule_name(name: str, field: str) -> str:
    """A rule's name: 1..RULE_NAME_CHARS of A-Z, a-z, 0-9 and _ . : - (it is shown in reasons as
    "rule:<name>" and used as a key in the updater's store)."""
    return check_name(name, field, _RULE_NAME, limits.RULE_NAME_CHARS, "A-Z, a-z, 0-9 and _ . : -")


def has_condition(match: common_pb2.ItemMatch) -> bool:
    return bool(match.item_ids or match.categories or match.attributes)


def match_values(match: common_pb2.ItemMatch) -> int:
    """How many values a match names: its ids, categories, attribute tests and their any_of
    values (counted without reading them: the limits on it bound the cost of checking them)."""
    return (len(match.item_ids) + len(match.categories) + len(match.attributes)
            + sum(len(a.any_of.values) for a in match.attributes))


def check_match(match: common_pb2.ItemMatch, field: str) -> None:
    """At least one condition; at most MATCH_VALUES values in all; ids (at most MATCH_ITEM_IDS),
    categories (MATCH_CATEGORIES) and attribute tests (as Filters.attributes:
    check_attribute_filters) each within limits."""
    if not has_condition(match):
        raise InvalidArgument(field, "set item_ids, categories or attributes (a rule with no condition would "
                                     "act on every item)")
    if (values := match_values(match)) > limits.MATCH_VALUES:
        raise InvalidArgument(field, f"at most {limits.MATCH_VALUES} ids, categories, attribute tests and "
                                     f"their values in all, got {values}")
    check_labels(match.item_ids, f"{field}.item_ids", limits.MATCH_ITEM_IDS, limits.ID_CHARS)
    check_labels(match.categories, f"{field}.categories", limits.MATCH_CATEGORIES)
    check_attribute_filters(match.attributes, f"{field}.attributes")


def check_rule(rule: common_pb2.Rule, field: str, max_position: int = limits.PIN_POSITIONS,
               name_required: bool = False) -> None:
    """One rule. `field` names it (`rules[3]`); max_position: a pin's position must be below it
    (the gateway's max_k; PIN_POSITIONS at most). name_required: a stored rule's name."""
    if rule.name or name_required:
        check_rule_name(rule.name, f"{field}.name")
    action = rule.WhichOneof("action")
    if action is None:
        raise InvalidArgument(f"{field}.action", f"set one of {', '.join(ACTIONS)}")
    if action == "pin":
        if has_condition(rule.match):
            raise InvalidArgument(f"{field}.match", "a pin names its item in pin.item_id; match is not used by pin")
        check_id(rule.pin.item_id, f"{field}.pin.item_id")
        if not 0 <= rule.pin.position < max_position:
            raise InvalidArgument(f"{field}.pin.position",
                                  f"must be in 0..{max_position - 1} (0 = the top), got {rule.pin.position}")
        return
    check_match(rule.match, f"{field}.match")
    if action == "boost" and not (math.isfinite(rule.boost) and rule.boost > 0):
        raise InvalidArgument(f"{field}.boost", f"must be a finite number > 0 (> 1 boosts, < 1 buries), "
                                                f"got {rule.boost}")
    if action == "promote_share" and not 0 < rule.promote_share <= 1:  # NaN fails this too
        raise InvalidArgument(f"{field}.promote_share", f"must be in (0, 1], got {rule.promote_share}")
    if action == "exclude" and not rule.exclude:
        raise InvalidArgument(f"{field}.exclude", "must be true (false sets no action)")


def check_rules(rules, field: str, max_position: int = limits.PIN_POSITIONS) -> None:
    """A request's rules (RecommendRequest.rules): at most RULES_PER_REQUEST, naming at most
    RULE_VALUES_PER_REQUEST values in all (counted before any is read), each checked."""
    if len(rules) > limits.RULES_PER_REQUEST:
        raise InvalidArgument(field, f"at most {limits.RULES_PER_REQUEST} rules per request, got {len(rules)}")
    if (values := sum(match_values(rule.match) for rule in rules)) > limits.RULE_VALUES_PER_REQUEST:
        raise InvalidArgument(field, f"at most {limits.RULE_VALUES_PER_REQUEST} ids, categories, attribute tests "
                                     f"and their values over all rules of a request, got {values}")
    for i, rule in enumerate(rules):
        check_rule(rule, f"{field}[{i}]", max_position)


def check_stored_rule(stored: common_pb2.StoredRule, field: str, max_position: int = limits.PIN_POSITIONS) -> None:
    """A rule to store (PutRuleRequest.rule): a named rule, and at most RULE_SURFACES surfaces,
    each a visible label of at most ID_CHARS (Context.surface's size)."""
    if not stored.HasField("rule"):
        raise InvalidArgument(f"{field}.rule", "required")
    check_rule(stored.rule, f"{field}.rule", max_position, name_required=True)
    check_labels(stored.surfaces, f"{field}.surfaces", limits.RULE_SURFACES, limits.ID_CHARS)
