"""A small client for backend teams: one object, plain Python arguments, recmesh.v1 replies.

    from recmesh.client import RecmeshClient
    with RecmeshClient("localhost:50060") as rm:
        rm.track("u42", "1", "click")
        reply = rm.recommend("u42", query="space opera", k=10)
        for item in reply.items:
            print(item.title, item.reasons)
        rm.similar_items("260", k=10, user_id="u42")  # more like item 260, for this user
        rm.similar_items(text="a heist in Rome, told backwards", k=5)
        # Filter by the items' attributes: a text in a set, a number in a range, a flag.
        rm.recommend("u42", attributes={"brand": ["HP", "Canon"], "price": (10, 50), "in_stock": True})
        rm.recommend("u42", attributes=[where("brand", "HP", exclude=True), in_range("price", max=50)])
        rm.upsert_items([{"item_id": "p1", "title": "Printer", "attributes": {"brand": "HP", "price": 89.0}}])
        # A guest without an id: their recent events inline, not logged.
        rm.recommend("", session_events=[Event("", "1258", "view"), Event("", "1214", "click")])
        rm.track("u42", "1214", "dislike")  # never shown again; items like it pushed down
        rm.merge_users("guest-7f3a", "u42")  # at sign-in: the guest's tracked events become u42's
        # Business rules: for one request, or stored by name for every answer of some surfaces.
        rm.recommend("u42", rules=[boost(2.0, attributes={"brand": "HP"}), pin("p1", 0)])
        rm.put_rule(exclude(name="no_recalls", item_ids=["p7"]), surfaces=["home"])
        rm.list_rules(); rm.delete_rule("no_recalls")
        # An experiment: half the users get retrieval order; reply.variant names each answer's arm.
        rm.put_experiment("rank-vs-retrieval", [{"name": "A", "share": 0.5},
                                                {"name": "B", "share": 0.5, "ranking": "retrieval_order"}])
        rm.experiment_report("rank-vs-retrieval"); rm.stop_experiment("rank-vs-retrieval")
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from recmesh.common.clock import now_ms
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc

EVENT_TYPES = {
    name.removeprefix("EVENT_TYPE_").lower(): value
    for name, value in common_pb2.EventType.items()
    if value != common_pb2.EventType.EVENT_TYPE_UNSPECIFIED
}


@dataclass
class Event:
    user_id: str
    item_id: str
    type: str  # view, click, add_to_cart, purchase, rate, search, hide, dislike
    query: str = ""
    value: float = 0.0
    timestamp_ms: int = 0
    request_id: str = ""
    # The idempotency key: resend the same event with the same id and it is applied once.
    event_id: str = ""

    def to_proto(self) -> common_pb2.Event:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; one of {sorted(EVENT_TYPES)}")
        return common_pb2.Event(
            event_id=self.event_id or uuid.uuid4().hex,
            user_id=self.user_id,
            item_id=self.item_id,
            type=EVENT_TYPES[self.type],
            query=self.query,
            value=self.value,
            timestamp_ms=self.timestamp_ms or now_ms(),
            request_id=self.request_id,
        )


def where(name: str, *values: str, exclude: bool = False) -> common_pb2.AttributeFilter:
    """The text attribute `name` equals one of values (exclude: leave those items out)."""
    return common_pb2.AttributeFilter(name=name, any_of=common_pb2.StringSet(values=values), exclude=exclude)


def in_range(name: str, min: float | None = None, max: float | None = None,
             exclude: bool = False) -> common_pb2.AttributeFilter:
    """The number attribute `name` lies in [min, max], bounds included; None leaves that side open."""
    bounds = {bound: float(value) for bound, value in (("min", min), ("max", max)) if value is not None}
    return common_pb2.AttributeFilter(name=name, range=common_pb2.NumberRange(**bounds), exclude=exclude)


def flag(name: str, value: bool = True, exclude: bool = False) -> common_pb2.AttributeFilter:
    """The flag attribute `name` is `value`."""
    return common_pb2.AttributeFilter(name=name, equals=value, exclude=exclude)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def attribute_filter(name: str, test: Any, exclude: bool = False) -> common_pb2.AttributeFilter:
    """One attribute filter from a plain value: a bool - the flag equals it; a str - the text
    equals it; a number - the number equals it; a 2-tuple of numbers or None - the number lies in
    [min, max] (None: open); any other iterable of str - the text is one of them. Raises
    ValueError for anything else (the gateway checks the rest: names, sizes, bounds)."""
    if isinstance(test, bool):
        return flag(name, test, exclude)
    if isinstance(test, str):
        return where(name, test, exclude=exclude)
    if _is_number(test):
        return in_range(name, test, test, exclude)
    if isinstance(test, tuple) and len(test) == 2 and all(b is None or _is_number(b) for b in test):
        return in_range(name, test[0], test[1], exclude)
    if isinstance(test, Iterable) and not isinstance(test, Mapping):
        values = list(test)
        if values and all(isinstance(v, str) for v in values):
            return where(name, *values, exclude=exclude)
    raise ValueError(f"attribute {name!r}: {test!r} is no filter; give a bool, a text or texts, a number, "
                     "or a (min, max) tuple")


def attribute_filters(attributes: Mapping[str, Any] | Iterable[common_pb2.AttributeFilter | Mapping[str, Any]]
                      ) -> list[common_pb2.AttributeFilter]:
    """Recommend's attribute filters (all must hold), from either form:
    - a mapping {name: test}, each test as `attribute_filter` reads it - e.g. {"brand": ["HP",
      "Canon"], "price": (10, 50), "in_stock": True};
    - an iterable of common_pb2.AttributeFilter (see where, in_range, flag) or of dicts
      {"name": ..., "test": <as attribute_filter>, "exclude": bool}."""
    if isinstance(attributes, Mapping):
        return [attribute_filter(name, test) for name, test in attributes.items()]
    filters = []
    for spec in attributes:
        if isinstance(spec, common_pb2.AttributeFilter):
            filters.append(spec)
        elif isinstance(spec, Mapping) and {"name", "test"} <= spec.keys() <= {"name", "test", "exclude"}:
            filters.append(attribute_filter(spec["name"], spec["test"], bool(spec.get("exclude", False))))
        else:
            raise ValueError(f"{spec!r} is no attribute filter: give an AttributeFilter, or a dict with name, test "
                             "and optionally exclude")
    return filters


def filters_proto(include_categories: Iterable[str] = (), exclude_categories: Iterable[str] = (),
                  exclude_item_ids: Iterable[str] = (), exclude_seen: bool = True,
                  attributes: Mapping[str, Any] | Iterable[common_pb2.AttributeFilter | Mapping[str, Any]] = ()
                  ) -> common_pb2.Filters:
    """A request's Filters (Recommend, SimilarItems) from plain arguments; attributes as
    `attribute_filters` reads them."""
    return common_pb2.Filters(include_categories=include_categories, exclude_categories=exclude_categories,
                              exclude_item_ids=exclude_item_ids, exclude_seen=exclude_seen,
                              attributes=attribute_filters(attributes))


def attribute_value(value: str | float | bool | common_pb2.AttributeValue) -> common_pb2.AttributeValue:
    """An item attribute's value: bool - a flag, int/float - a number, str - a text (or an
    AttributeValue as is). Raises ValueError for other types and for NaN or infinity."""
    if isinstance(value, common_pb2.AttributeValue):
        return value
    if isinstance(value, bool):
        return common_pb2.AttributeValue(flag=value)
    if _is_number(value):
        if not math.isfinite(value):
            raise ValueError(f"attribute value {value!r}: numbers must be finite")
        return common_pb2.AttributeValue(number=float(value))
    if isinstance(value, str):
        return common_pb2.AttributeValue(text=value)
    raise ValueError(f"attribute value {value!r}: give a str, a number or a bool")


def item_proto(item: common_pb2.Item | Mapping[str, Any]) -> common_pb2.Item:
    """An item from a proto or a dict of Item's fields, whose "attributes" may hold plain values
    ({"price": 89.0, "brand": "HP", "in_stock": True}: see attribute_value)."""
    if isinstance(item, common_pb2.Item):
        return item
    fields = dict(item)
    attributes = {name: attribute_value(value) for name, value in (fields.pop("attributes", None) or {}).items()}
    return common_pb2.Item(**fields, attributes=attributes)


RANKING_MODES = {"model": common_pb2.RANKING_MODE_MODEL, "retrieval_order": common_pb2.RANKING_MODE_RETRIEVAL_ORDER}


def variant_proto(variant: common_pb2.ExperimentVariant | Mapping[str, Any]) -> common_pb2.ExperimentVariant:
    """An experiment's variant from {"name", "share", "diversity"?, "exploration"?, "ranking"?
    ("model" | "retrieval_order"), "ranker_version"? (a parameter version's name),
    "interest_model"? (an interest model's version, Encoder.ListInterestModels)}; an
    ExperimentVariant as it is. KeyError naming an unknown ranking mode."""
    if isinstance(variant, common_pb2.ExperimentVariant):
        return variant
    overrides = common_pb2.VariantOverrides()
    if variant.get("diversity") is not None:
        overrides.diversity = float(variant["diversity"])
    if variant.get("exploration") is not None:
        overrides.exploration = float(variant["exploration"])
    if variant.get("ranking"):
        overrides.ranking = RANKING_MODES[variant["ranking"]]
    if variant.get("ranker_version"):
        overrides.ranker_version = str(variant["ranker_version"])
    if variant.get("interest_model"):
        overrides.interest_model_version = str(variant["interest_model"])
    return common_pb2.ExperimentVariant(name=variant["name"], share=float(variant["share"]), overrides=overrides)


def item_match(item_ids: Iterable[str] = (), categories: Iterable[str] = (),
               attributes: Mapping[str, Any] | Iterable[common_pb2.AttributeFilter | Mapping[str, Any]] = ()
               ) -> common_pb2.ItemMatch:
    """Which items a rule acts on: every condition given must hold - the id is one of item_ids,
    the item is in one of categories, every attribute test passes (as `attribute_filters` reads
    them)."""
    return common_pb2.ItemMatch(item_ids=list(item_ids), categories=list(categories),
                                attributes=attribute_filters(attributes))


def boost(factor: float, name: str = "", **match) -> common_pb2.Rule:
    """Multiply the matching items' odds by factor (> 1 boosts, 0 < factor < 1 buries): their
    ranking score moves by ln(factor). match: item_match's arguments."""
    return common_pb2.Rule(name=name, boost=factor, match=item_match(**match))


def promote(share: float, name: str = "", **match) -> common_pb2.Rule:
    """Fill ceil(share * k) of the k slots (0 < share <= 1) with the best matching items."""
    return common_pb2.Rule(name=name, promote_share=share, match=item_match(**match))


def exclude(name: str = "", **match) -> common_pb2.Rule:
    """Leave the matching items out of every answer (a hard exclusion)."""
    return common_pb2.Rule(name=name, exclude=True, match=item_match(**match))


def pin(item_id: str, position: int, name: str = "") -> common_pb2.Rule:
    """Show item_id at position (0 = the top), when it passes the request's filters and exclusions."""
    return common_pb2.Rule(name=name, pin=common_pb2.Pin(item_id=item_id, position=position))


class RecmeshClient:
    def __init__(self, target: str = "localhost:50060", timeout_s: float = 1.0, channel: grpc.Channel | None = None,
                 token: str | None = None):
        """token: the API key, sent as `authorization: Bearer <token>` (when the gateway has keys)."""
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = recommendations_pb2_grpc.RecommendationsStub(self._channel)
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def recommend(
        self,
        user_id: str,
        query: str = "",
        k: int | None = None,
        include_categories: Iterable[str] = (),
        exclude_categories: Iterable[str] = (),
        exclude_item_ids: Iterable[str] = (),
        exclude_seen: bool = True,
        surface: str = "",
        locale: str = "",
        diversity: float = 0.0,
        timeout_s: float | None = None,
        attributes: Mapping[str, Any] | Iterable[common_pb2.AttributeFilter | Mapping[str, Any]] = (),
        session_events: Iterable[Event | common_pb2.Event] = (),
        rules: Iterable[common_pb2.Rule] = (),
    ) -> recommendations_pb2.RecommendResponse:
        """Up to k items for the user. attributes: filters on the items' attributes, every one
        must hold - {name: test} or a list (see `attribute_filters`; ValueError for a form it
        cannot read). session_events: the user's recent events inline, oldest first (at most
        100), reflected at once as if tracked but not logged - user_id may then be "" (a guest
        without an id); each event's user_id "" or user_id. rules: business rules for this
        request only (boost, promote, exclude, pin), applied after the stored rules of its
        surface. A bad request raises grpc.RpcError INVALID_ARGUMENT naming the field
        (`rules[1].boost: ...`)."""
        request = recommendations_pb2.RecommendRequest(
            user_id=user_id,
            query=query,
            diversity=diversity,
            filters=filters_proto(include_categories, exclude_categories, exclude_item_ids, exclude_seen, attributes),
            context=common_pb2.Context(surface=surface, locale=locale),
            session_events=[e.to_proto() if isinstance(e, Event) else e for e in session_events],
            rules=list(rules),
        )
        if k is not None:
            request.k = k
        return self._stub.Recommend(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)

    def similar_items(
        self,
        item_id: str | None = None,
        text: str | None = None,
        k: int | None = None,
        user_id: str = "",
        include_categories: Iterable[str] = (),
        exclude_categories: Iterable[str] = (),
        exclude_item_ids: Iterable[str] = (),
        exclude_seen: bool = True,
        surface: str = "",
        locale: str = "",
        timeout_s: float | None = None,
        attributes: Mapping[str, Any] | Iterable[common_pb2.AttributeFilter | Mapping[str, Any]] = (),
        rules: Iterable[common_pb2.Rule] = (),
    ) -> recommendations_pb2.RecommendResponse:
        """Up to k items like a catalog item (item_id) or a free text (text; up to 1,000
        characters) - never the anchor itself - with Recommend's filters (attributes as in
        `recommend`) and business rules (the stored ones of `surface`, then `rules`, as in
        `recommend`). user_id (optional): their seen items are left out (unless exclude_seen is
        False), and those they hid or disliked, and their interest re-orders the answer.
        ValueError when both item_id and text are given; grpc.RpcError NOT_FOUND for an unknown
        item_id, INVALID_ARGUMENT naming the field for a bad request (no anchor at all:
        "anchor")."""
        if item_id is not None and text is not None:
            raise ValueError("give item_id or text, not both")
        request = recommendations_pb2.SimilarItemsRequest(
            user_id=user_id,
            filters=filters_proto(include_categories, exclude_categories, exclude_item_ids, exclude_seen, attributes),
            context=common_pb2.Context(surface=surface, locale=locale),
            rules=list(rules),
        )
        if item_id is not None:
            request.item_id = item_id
        elif text is not None:
            request.text = text
        if k is not None:
            request.k = k
        return self._stub.SimilarItems(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)

    def track(self, user_id: str, item_id: str, type: str, **fields) -> recommendations_pb2.TrackEventsResponse:
        return self.track_events([Event(user_id, item_id, type, **fields)])

    def track_events(self, events: Iterable[Event], timeout_s: float | None = None):
        request = recommendations_pb2.TrackEventsRequest(events=[e.to_proto() for e in events])
        return self._stub.TrackEvents(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def upsert_items(self, items: Iterable[common_pb2.Item | dict], timeout_s: float | None = None):
        """Adds or replaces items: protos, or dicts of Item's fields with plain attribute values
        (`item_proto`). An item is stored whole: attributes left out are gone."""
        request = recommendations_pb2.UpsertItemsRequest(items=[item_proto(it) for it in items])
        return self._stub.UpsertItems(request, timeout=timeout_s or max(self.timeout_s, 10.0), metadata=self._metadata)

    def delete_items(self, item_ids: Iterable[str], timeout_s: float | None = None):
        request = recommendations_pb2.DeleteItemsRequest(item_ids=list(item_ids))
        return self._stub.DeleteItems(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def profile(self, user_id: str, timeout_s: float | None = None) -> recommendations_pb2.UserProfile:
        request = recommendations_pb2.GetUserProfileRequest(user_id=user_id)
        return self._stub.GetUserProfile(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)

    def delete_user(self, user_id: str, timeout_s: float | None = None):
        request = recommendations_pb2.DeleteUserRequest(user_id=user_id)
        return self._stub.DeleteUser(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def merge_users(self, from_user_id: str, into_user_id: str,
                    timeout_s: float | None = None) -> common_pb2.MergeUsersResponse:
        """Moves every event tracked for from_user_id (e.g. a guest's session id) to into_user_id
        (the account they signed in to); durable when it returns. Idempotent: a repeated call
        moves 0 (`events_moved`), and each event is in into_user_id's profile once. The two ids
        must differ (INVALID_ARGUMENT naming into_user_id)."""
        request = common_pb2.MergeUsersRequest(from_user_id=from_user_id, into_user_id=into_user_id)
        return self._stub.MergeUsers(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def put_rule(self, rule: common_pb2.Rule, surfaces: Iterable[str] = (),
                 timeout_s: float | None = None) -> common_pb2.StoredRule:
        """Stores a named rule (created, or replaced by its name) for every answer on `surfaces`
        (Context.surface; none: every answer); returns it as stored (updated_ms set). Needs the
        admin scope; durable and audited. A new name beyond the stored limit raises grpc.RpcError
        FAILED_PRECONDITION."""
        request = common_pb2.PutRuleRequest(rule=common_pb2.StoredRule(rule=rule, surfaces=list(surfaces)))
        return self._stub.PutRule(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def list_rules(self, timeout_s: float | None = None) -> list[common_pb2.StoredRule]:
        """The stored rules, in name order (the order they apply in)."""
        reply = self._stub.ListRules(common_pb2.ListRulesRequest(), timeout=timeout_s or max(self.timeout_s, 5.0),
                                     metadata=self._metadata)
        return list(reply.rules)

    def delete_rule(self, name: str, timeout_s: float | None = None) -> bool:
        """Deletes a stored rule; False when none had that name."""
        reply = self._stub.DeleteRule(common_pb2.DeleteRuleRequest(name=name),
                                      timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)
        return reply.deleted

    def put_experiment(self, name: str, variants: Iterable[common_pb2.ExperimentVariant | Mapping[str, Any]],
                       control: str = "", primary_metric: str = "",
                       timeout_s: float | None = None) -> common_pb2.Experiment:
        """Starts an experiment (RUNNING at once; docs/experiments.md). variants: in assignment
        order, each an ExperimentVariant or {"name", "share", and overrides: "diversity" (0..1),
        "exploration" (0..1), "ranking" ("model" | "retrieval_order"), "ranker_version" (a
        parameter version the updater has), "interest_model" (an interest model the encoder
        serves for the catalog's item space: `recmesh interest-models list`)}; shares sum to 1. control:
        the variant compared against (default the first); primary_metric: what the guardrail tests
        (ctr_at_k by default, conversion, mrr). Needs the admin scope. grpc.RpcError
        INVALID_ARGUMENT naming the field; FAILED_PRECONDITION when the name is taken or another
        experiment is running."""
        request = common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(
            name=name, variants=[variant_proto(v) for v in variants], control=control,
            primary_metric=primary_metric))
        return self._stub.PutExperiment(request, timeout=timeout_s or max(self.timeout_s, 5.0),
                                        metadata=self._metadata)

    def list_experiments(self, timeout_s: float | None = None) -> list[common_pb2.Experiment]:
        """Every experiment kept, running and stopped, in creation order."""
        reply = self._stub.ListExperiments(common_pb2.ListExperimentsRequest(),
                                           timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)
        return list(reply.experiments)

    def stop_experiment(self, name: str, reason: str = "", timeout_s: float | None = None) -> common_pb2.Experiment:
        """Stops an experiment (everyone is then served the mesh's defaults); NOT_FOUND naming name."""
        return self._stub.StopExperiment(common_pb2.StopExperimentRequest(name=name, reason=reason),
                                         timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def experiment_report(self, name: str, timeout_s: float | None = None) -> dict:
        """The experiment's report (recmesh/experiments/report.py summarize, plus its state):
        per-variant counts and metrics with intervals, each variant against the control."""
        reply = self._stub.GetExperimentReport(common_pb2.GetExperimentReportRequest(name=name),
                                               timeout=timeout_s or max(self.timeout_s, 10.0), metadata=self._metadata)
        return json.loads(reply.report_json)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecmeshClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
