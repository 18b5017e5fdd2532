"""Business rules (common.proto Rule): the last step of every answer, whichever path made it -
full, browned out, shed, each fallback (and SimilarItems) - so that all obey the same rules.

A request's rules are its surface's stored ones (services/gateway/stored_rules.py, in name
order) then its own (RecommendRequest.rules), compiled into a `RuleSet`. The step:

1. exclude: items an exclude rule matches are left out (a hard exclusion). The candidate fetches
   also leave them out - retrieval by the request's filters narrowed with them (`RuleSet.narrow`),
   the candidate stage and the popular pool by a test of each candidate (`RuleSet.admit`) - so a
   page still holds k items whenever k pass;
2. boost: each matching item's ranking score (a logit) moves by ln(f) per boost rule - its odds
   multiplied by f (f < 1 buries) - and the list is re-sorted. An answer the ranker did not order
   (retrieval order, popular lists) orders by its position's logit, -ln(1 + i): a boost moves
   the item as if its odds were multiplied by f, the score shown stays the source's
   (popularity, similarity: no logit to move). Reasons say "boosted ×2 by rule:<name>";
3. diversity (when the rules re-order a ranked answer, `RuleSet.reorders`): maximal marginal
   relevance over the boosted scores picks the k slots - the ranker is then asked to order
   every candidate without diversity, since a re-sort after its diversification would undo it.
   Diversity trades relevance as the rules define it; promotions and pins come after it,
   because they are placements the business asked for exactly;
4. promote: ceil(share * k) slots hold the best matching items - from the candidates, else
   fetched (retrieval TopPopular with the match as filters, or GetItems for a match by ids,
   within the request's deadline); they take the lowest slots of items that do not match;
5. pin: the item at its 0-based position, if it passes the request's filters, the user's
   exclusions and the exclude rules (looked up with GetItems when it is no candidate); a later
   rule wins a position both want (a request's rule over a stored one). A pin at or past k is
   not shown.

Rules never override the request's filters or the user's exclusions: whatever they bring in is
checked against both. `apply_rules` is the step without I/O; `RulesStep.apply` fetches what
promotions and pins need and applies it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recmesh.common import limits
from recmesh.index.base import ATTRIBUTES, AnyOf, AttributeTest, FlagIs, InRange, SearchFilter, value_holds
from recmesh.models.ranking.selection import mmr
from recmesh.v1 import common_pb2, ranker_pb2, recommendations_pb2, retrieval_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import candidate_payload
from services.gateway.upstreams import Upstreams

# Stage name of the fetches rules make (latency and degraded reasons: "rules:deadline_exceeded").
STAGE = "rules"


@dataclass(frozen=True)
class Matcher:
    """An ItemMatch, compiled: the item's id is one of `ids`, it is in one of `categories` and
    every attribute test holds (`tests`: (attribute name, condition, whether the test excludes),
    decided as Filters.attributes are: recmesh.index.base.value_holds); None / (): that
    condition not given."""

    ids: frozenset[str] | None
    categories: frozenset[str] | None
    tests: tuple[tuple[str, AnyOf | InRange | FlagIs, bool], ...]

    @classmethod
    def of(cls, match: common_pb2.ItemMatch) -> "Matcher":
        tests = []
        for f in match.attributes:
            test = AttributeTest.from_proto(f)
            tests.append((f.name, test.condition, test.exclude))
        return cls(frozenset(match.item_ids) if match.item_ids else None,
                   frozenset(match.categories) if match.categories else None, tuple(tests))

    def matches(self, payload: dict) -> bool:
        """payload: {item_id, categories, attributes: {name: value}} (fallbacks.candidate_payload)."""
        return ((self.ids is None or payload["item_id"] in self.ids)
                and (self.categories is None or not self.categories.isdisjoint(payload["categories"]))
                and self._attributes_hold(payload[ATTRIBUTES]))

    def matches_entry(self, entry: "Entry") -> bool:
        """As matches, reading the item's id and categories from the entry: its attributes as
        plain values (made once per entry) only when an attribute is tested."""
        return ((self.ids is None or entry.item.item_id in self.ids)
                and (self.categories is None or not self.categories.isdisjoint(entry.categories))
                and (not self.tests or self._attributes_hold(entry.payload[ATTRIBUTES])))

    def _attributes_hold(self, values: dict) -> bool:
        return all(value_holds(condition, values.get(name)) != exclude for name, condition, exclude in self.tests)


@dataclass(frozen=True)
class CompiledRule:
    """One checked Rule, ready to apply. label: how reasons name it ("rule:<name>", or
    "rule:rules[i]" for an unnamed rule of the request)."""

    label: str
    action: str  # boost, pin, promote_share, exclude
    matcher: Matcher | None = None  # None for a pin
    match: common_pb2.ItemMatch | None = field(default=None, compare=False)  # what matcher was compiled from
    boost: float = 1.0
    share: float = 0.0
    pin_item: str = ""
    pin_position: int = 0

    @classmethod
    def of(cls, rule: common_pb2.Rule, label: str) -> "CompiledRule":
        """rule: checked already (recmesh.common.rules.check_rule)."""
        action = rule.WhichOneof("action")
        if action == "pin":
            return cls(label, action, pin_item=rule.pin.item_id, pin_position=rule.pin.position)
        return cls(label, action, Matcher.of(rule.match), rule.match, boost=rule.boost if action == "boost" else 1.0,
                   share=rule.promote_share if action == "promote_share" else 0.0)

    def matches(self, entry: "Entry") -> bool:
        return self.matcher is not None and self.matcher.matches_entry(entry)


def compile_rules(rules: Iterable[common_pb2.Rule], labels: Iterable[str]) -> tuple[CompiledRule, ...]:
    return tuple(CompiledRule.of(rule, label) for rule, label in zip(rules, labels, strict=True))


def request_labels(rules: Sequence[common_pb2.Rule], field: str = "rules") -> list[str]:
    """How reasons name a request's rules: by name, else by field (`rule:rules[2]`)."""
    return [f"rule:{rule.name}" if rule.name else f"rule:{field}[{i}]" for i, rule in enumerate(rules)]


@dataclass(frozen=True)
class RuleSet:
    """The rules one answer obeys, in the order they apply (stored ones of its surface first)."""

    rules: tuple[CompiledRule, ...] = ()

    def __post_init__(self) -> None:
        by_action: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            by_action.setdefault(rule.action, []).append(rule)
        for action, name in (("exclude", "excludes"), ("boost", "boosts"), ("promote_share", "promotes"),
                             ("pin", "pins")):
            object.__setattr__(self, name, tuple(by_action.get(action, ())))

    excludes: tuple[CompiledRule, ...] = field(init=False, default=())
    boosts: tuple[CompiledRule, ...] = field(init=False, default=())
    promotes: tuple[CompiledRule, ...] = field(init=False, default=())
    pins: tuple[CompiledRule, ...] = field(init=False, default=())

    def __bool__(self) -> bool:
        return bool(self.rules)

    def then(self, more: Iterable[CompiledRule]) -> "RuleSet":
        """These rules, then `more` (applied after them)."""
        more = tuple(more)
        return RuleSet(self.rules + more) if more else self

    @property
    def reorders(self) -> bool:
        """Boosts or promotions: the answer needs every candidate's score, not the top k's."""
        return bool(self.boosts or self.promotes)

    def narrow(self, filters: common_pb2.Filters) -> common_pb2.Filters:
        """The request's filters with the exclude rules a filter says exactly (a match of
        categories alone: exclude_categories; of one attribute test alone: that test inverted,
        while retrieval's ATTRIBUTE_FILTERS allow), so that retrieval leaves their items out
        before its cut and a page stays full; `admit` tests every exclude rule all the same."""
        categories, tests = [], []
        for rule in self.excludes:
            match = rule.match
            if match.item_ids:  # ids stay with `admit`: retrieval's excluded ids are the user's to fill
                continue
            if match.categories and not match.attributes:
                categories += match.categories
            elif len(match.attributes) == 1 and not match.categories:
                inverted = common_pb2.AttributeFilter()
                inverted.CopyFrom(match.attributes[0])
                inverted.exclude = not inverted.exclude
                tests.append(inverted)
        if not categories and not tests:
            return filters
        narrowed = common_pb2.Filters()
        narrowed.CopyFrom(filters)
        known = set(narrowed.exclude_categories)
        narrowed.exclude_categories.extend(c for c in dict.fromkeys(categories) if c not in known)
        narrowed.attributes.extend(tests[:max(0, limits.ATTRIBUTE_FILTERS - len(narrowed.attributes))])
        return narrowed

    @property
    def admit(self) -> Callable[[dict], bool] | None:
        """The exclude rules as a test of a candidate's payload (True: no exclude rule matches
        it), for the stages that fetch candidates; None when there are none."""
        if not self.excludes:
            return None
        matchers = [rule.matcher for rule in self.excludes]
        return lambda payload: not any(m.matches(payload) for m in matchers)


NO_RULES = RuleSet()


@dataclass
class Entry:
    """One item of an answer on its way out. score: what the reply shows; order: the logit the
    rules sort by (the ranker's score, or a position's for an unordered list); ranked: the
    ranker's item (features for the impression), None when the ranker did not score it; row:
    its row in the answer's candidate vectors (-1: none)."""

    item: retrieval_pb2.Candidate
    score: float
    order: float
    reasons: list[str]
    ranked: ranker_pb2.RankedItem | None = None
    row: int = -1
    _payload: dict | None = None
    _categories: frozenset[str] | None = None

    @property
    def item_id(self) -> str:
        return self.item.item_id

    @property
    def categories(self) -> frozenset[str]:
        """The item's categories, read from the proto once (each rule tests them)."""
        if self._categories is None:
            self._categories = frozenset(self.item.categories)
        return self._categories

    @property
    def payload(self) -> dict:
        if self._payload is None:
            self._payload = candidate_payload(self.item)
        return self._payload


def position_logit(i: int) -> float:
    """The logit of position i (0 = top) of a list no ranker scored: the odds that its i-th item is
    as good as its first fall as 1 / (1 + i)."""
    return -math.log1p(i)


def in_order(items: Sequence[retrieval_pb2.Candidate], scores: Sequence[float], reasons: Sequence[str],
             payloads: Sequence[dict] | None = None, rows: bool = True) -> list[Entry]:
    """Entries for a list in its own order (retrieval order, popular list): shown scores as given,
    ordered by position. rows: the items are the rows of the answer's vectors."""
    return [Entry(c, float(s), position_logit(i), list(reasons), row=i if rows else -1,
                  _payload=payloads[i] if payloads is not None else None)
            for i, (c, s) in enumerate(zip(items, scores, strict=True))]


def from_ranking(ranking: ranker_pb2.RankResponse, candidates: Sequence[retrieval_pb2.Candidate]) -> list[Entry]:
    """Entries for the ranker's order of the candidates (its items are among them)."""
    row = {c.item_id: i for i, c in enumerate(candidates)}
    return [Entry(candidates[row[r.item_id]], r.score, r.score, list(r.reasons), ranked=r, row=row[r.item_id])
            for r in ranking.items]


def fetched(items: Iterable[retrieval_pb2.Candidate]) -> list[Entry]:
    """Entries for items looked up for a rule (no candidate: never scored; shown with score 0,
    their reason says why they are there)."""
    return [Entry(c, 0.0, -math.inf, []) for c in items]


def add_items(reply: recommendations_pb2.RecommendResponse, entries: Iterable[Entry]) -> None:
    """The entries as the reply's items, in order: each with its catalog fields, score and reasons."""
    for e in entries:
        c = e.item
        reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories, score=e.score, reasons=e.reasons,
                        attributes=c.attributes)


def _factor(f: float) -> str:
    return f"{f:.3g}"


def select(entries: list[Entry], rules: RuleSet, k: int, diversity: float = 0.0,
           vectors: np.ndarray | None = None, mmr_pool_factor: int = 3) -> tuple[list[Entry], list[Entry]]:
    """Steps 1-3 (module docstring): (the k slots in order, the rest in order). diversity > 0 with
    `vectors` (row i: the candidate of Entry.row i) picks the slots by maximal marginal relevance
    over the boosted order; entries without a row are then left as they are."""
    if rules.excludes:
        entries = [e for e in entries if not any(rule.matches(e) for rule in rules.excludes)]
    if rules.boosts:
        for e in entries:
            lifted = []
            for rule in rules.boosts:
                if rule.matches(e):
                    shift = math.log(rule.boost)
                    e.order += shift
                    if e.ranked is not None:  # a logit: the score shown moves with the order
                        e.score += shift
                    verb = "boosted" if rule.boost >= 1 else "buried"
                    lifted.append(f"{verb} ×{_factor(rule.boost)} by {rule.label}")
            if lifted:
                e.reasons = lifted + e.reasons
        entries = sorted(entries, key=lambda e: -e.order)  # stable: ties keep the list's order
    if (diversity > 0 and vectors is not None and len(vectors) and len(entries) > k
            and all(e.row >= 0 for e in entries)):
        picked = mmr(np.array([e.order for e in entries], np.float64), vectors[[e.row for e in entries]], k,
                     diversity, mmr_pool_factor)
        chosen = set(picked.tolist())
        return [entries[i] for i in picked], [e for i, e in enumerate(entries) if i not in chosen]
    return entries[:k], entries[k:]


def promotion_needs(top: list[Entry], rest: list[Entry], rules: RuleSet, k: int) -> dict[int, int]:
    """For each promote rule (its index in rules.promotes) short of its share among the slots and
    the rest: how many matching items to fetch."""
    needs = {}
    for n, rule in enumerate(rules.promotes):
        want = slots(rule.share, k)
        have = sum(rule.matches(e) for e in top) + sum(rule.matches(e) for e in rest)
        if have < want:
            needs[n] = want - have
    return needs


def slots(share: float, k: int) -> int:
    """ceil(share * k), as a person counts it (0.3 of 10 is 3, not the float product's 4)."""
    return min(k, math.ceil(round(share * k, 9)))


def apply_rules(entries: list[Entry], rules: RuleSet, k: int, *, diversity: float = 0.0,
                vectors: np.ndarray | None = None, mmr_pool_factor: int = 3,
                promoted: dict[int, list[Entry]] | None = None, pinned: Iterable[Entry] = ()) -> list[Entry]:
    """The answer's k entries (module docstring's steps), without I/O. entries: the path's list,
    best first, every one passing the request's filters and exclusions; promoted: per promote rule
    (index in rules.promotes), matching items fetched for it, best first; pinned: pinned items
    that are no candidates. Both must pass the filters, exclusions and exclude rules (RulesStep
    checks what it fetches)."""
    if not rules:
        return entries[:k]
    top, rest = select(entries, rules, k, diversity, vectors, mmr_pool_factor)
    _promote(top, rest, rules, k, promoted or {})
    return _pin(top, rest, rules, k, pinned)


def _promote(top: list[Entry], rest: list[Entry], rules: RuleSet, k: int, promoted: dict[int, list[Entry]]) -> None:
    protected: set[str] = set()  # placed by an earlier promotion: a later one does not take their slots
    for n, rule in enumerate(rules.promotes):
        want = slots(rule.share, k)
        have = [e for e in top if rule.matches(e)]
        missing = want - len(have)
        if missing > 0:
            present = {e.item_id for e in top} | {e.item_id for e in rest}
            pool = [e for e in rest if rule.matches(e)] + [e for e in promoted.get(n, ()) if e.item_id not in present]
            victims = [j for j in range(len(top) - 1, -1, -1)
                       if not rule.matches(top[j]) and top[j].item_id not in protected]
            free = k - len(top)
            take = pool[:min(missing, free + len(victims))]
            for e in take:
                e.reasons = [f"promoted by {rule.label}"] + e.reasons
            appended, replacing = take[:free], take[free:]
            taken = {e.item_id for e in take}
            rest[:] = [e for e in rest if e.item_id not in taken]
            # The best promoted item takes the highest of the slots given up (all at the bottom).
            for j, e in zip(sorted(victims[:len(replacing)]), replacing, strict=True):
                rest.insert(0, top[j])
                top[j] = e
            top.extend(appended)
            have += take
        protected.update(e.item_id for e in have)


def _pin(top: list[Entry], rest: list[Entry], rules: RuleSet, k: int, pinned: Iterable[Entry]) -> list[Entry]:
    last: dict[str, tuple[int, CompiledRule]] = {}  # a later rule pinning the same item wins
    for n, rule in enumerate(rules.pins):
        last[rule.pin_item] = (n, rule)
    pins = sorted((rule.pin_position, n, rule) for n, rule in last.values() if rule.pin_position < k)
    if not pins:
        return top[:k]
    wanted = {rule.pin_item for _, _, rule in pins}
    found = {e.item_id: e for e in pinned if e.item_id in wanted}
    for e in rest:
        if e.item_id in wanted:
            found[e.item_id] = e
    kept = []
    for e in top:
        (found.__setitem__(e.item_id, e) if e.item_id in wanted else kept.append(e))
    # Every pinned item out first, then in by position: placing one never moves one placed before.
    for position, _, rule in pins:
        e = found.get(rule.pin_item)
        if e is None:  # not a candidate, and not found or not passing the filters
            continue
        e.reasons = [f"pinned by {rule.label}"] + e.reasons
        kept.insert(min(position, len(kept)), e)
    return kept[:k]


class RulesStep:
    """`apply_rules` with the lookups it needs: items fetched for promotions short of their share
    and pinned items that are no candidates, within the request's budget (stage "rules")."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams):
        self._s = settings
        self._up = upstreams

    async def apply(self, budget: Budget, rules: RuleSet, entries: list[Entry], k: int, filters: common_pb2.Filters,
                    excluded: set[str], diversity: float = 0.0, vectors: np.ndarray | None = None) -> list[Entry]:
        """The answer's k entries. entries: the path's list, best first (all passing `filters`
        and `excluded`, the user's exclusions); diversity and vectors: see `select` (pass them
        only when the list was not diversified already). A fetch failing or late is no error:
        the answer has what the candidates hold, the trace says why."""
        if not rules:
            return entries[:k]
        top, rest = select(entries, rules, k, diversity, vectors, self._s.mmr_pool_factor)
        present = {e.item_id for e in top} | {e.item_id for e in rest}
        needs = promotion_needs(top, rest, rules, k)
        pin_ids = sorted({r.pin_item for r in rules.pins if r.pin_position < k} - present)
        promoted, pinned = await self._fetch(budget, rules, k, needs, pin_ids, filters, excluded, present)
        _promote(top, rest, rules, k, promoted)
        return _pin(top, rest, rules, k, pinned)

    async def _fetch(self, budget: Budget, rules: RuleSet, k: int, needs: dict[int, int], pin_ids: list[str],
                     filters: common_pb2.Filters, excluded: set[str],
                     present: set[str]) -> tuple[dict[int, list[Entry]], list[Entry]]:
        """(per promote rule short of its share: matching items fetched, best first; pinned items
        found), each passing the filters, the exclusions and the exclude rules, none of `present`."""
        allowed = _admits(filters, excluded, rules)
        cap = self._s.retrieval_cap_ms * MS
        # Fetched items already among the candidates, or failing a filter checked here, are
        # dropped: k more than the share leaves room for them.
        calls: dict = {n: self._promotion_call(rules.promotes[n], filters, excluded,
                                               slots(rules.promotes[n].share, k) + k) for n in needs}
        calls["pins"] = retrieval_pb2.GetItemsRequest(item_ids=pin_ids)
        calls = {n: r for n, r in calls.items() if not isinstance(r, retrieval_pb2.GetItemsRequest) or r.item_ids}
        if not calls:
            return {}, []

        async def one(request):
            if isinstance(request, retrieval_pb2.GetItemsRequest):
                return await budget.call(STAGE, cap, lambda t: self._up.retrieval.GetItems(request, timeout=t))
            return await budget.call(STAGE, cap, lambda t: self._up.retrieval.TopPopular(request, timeout=t))

        replies = dict(zip(calls, await asyncio.gather(*(one(r) for r in calls.values())), strict=True))
        promoted, pinned = {}, []
        for n, reply in replies.items():
            if reply is None:
                continue
            items = fetched(c for c in reply.candidates if c.item_id not in present)
            items = [e for e in items if allowed(e)]
            if n == "pins":
                pinned = items
            else:
                rule = rules.promotes[n]
                # A match by ids comes back in the order asked: the most popular first instead.
                ranked = sorted(items, key=lambda e: -e.item.popularity) if rule.matcher.ids else items
                promoted[n] = [e for e in ranked if rule.matches(e)]
        return promoted, pinned

    def _promotion_call(self, rule: CompiledRule, filters: common_pb2.Filters, excluded: set[str],
                        limit: int) -> retrieval_pb2.GetItemsRequest | retrieval_pb2.TopPopularRequest:
        """The lookup of a promotion's matching items: by id (GetItems) for a match naming ids,
        else the most popular items passing the request's filters and the match (TopPopular;
        the match's categories stand in for the request's included ones when both are given -
        one list cannot say both - and the answer is checked against both)."""
        match = rule.match
        if match.item_ids:
            return retrieval_pb2.GetItemsRequest(item_ids=sorted(set(match.item_ids) - excluded))
        # Retrieval takes ATTRIBUTE_FILTERS tests at most: past that, the request's are checked here only.
        tests = [*match.attributes, *filters.attributes]
        return retrieval_pb2.TopPopularRequest(
            limit=limit, with_vectors=False,
            filters=common_pb2.Filters(
                include_categories=match.categories or filters.include_categories,
                exclude_categories=filters.exclude_categories, exclude_item_ids=sorted(excluded),
                attributes=tests if len(tests) <= limits.ATTRIBUTE_FILTERS else match.attributes))


def _admits(filters: common_pb2.Filters, excluded: set[str], rules: RuleSet) -> Callable[[Entry], bool]:
    """Whether an item fetched for a rule may be shown: it passes the request's filters
    (categories, attributes), is none of the user's exclusions and no exclude rule matches it."""
    conditions = SearchFilter.from_proto(filters, exclude_item_ids=()).conditions(with_ids=False)
    admit = rules.admit

    def allowed(e: Entry) -> bool:
        return (e.item_id not in excluded and (conditions is None or conditions.admits(e.payload))
                and (admit is None or admit(e.payload)))

    return allowed
