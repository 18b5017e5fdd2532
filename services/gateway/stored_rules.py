"""The stored business rules as this gateway knows them, by surface: the updater's set (ListRules),
listed again every `refresh_s` in the background, and changed at once by a PutRule or DeleteRule
made through this gateway (read-your-writes; other replicas see it at their next listing).

Why a listing on a timer and not a watch stream (as WatchParameters is): with the Redis store
any number of updater replicas share the rules, and a change made through one would reach a
stream served by another only through a notification channel of its own (pub/sub); a listing
reads the shared store and needs none. It costs one small call per gateway per refresh; the
rules change by hand, rarely. While the updater cannot be reached the last listing stays in
force (a stale rule set, never none: an exclusion keeps holding)."""

from __future__ import annotations

from collections.abc import Iterable

from recmesh.v1 import common_pb2
from services.gateway.rules import CompiledRule, RuleSet

# Surfaces are the clients' words (Context.surface): the per-surface sets kept at most.
MAX_SURFACES = 1000


class StoredRules:
    def __init__(self) -> None:
        self._rules: dict[str, common_pb2.StoredRule] = {}
        self._compiled: dict[str, CompiledRule] = {}
        self._by_surface: dict[str, RuleSet] = {}
        # Local writes so far: a listing asked for before the latest one may not hold it.
        self.writes = 0
        self.loaded = False

    def for_surface(self, surface: str) -> RuleSet:
        """The stored rules that apply to an answer on `surface` (those naming it, and those
        naming none), in name order."""
        found = self._by_surface.get(surface)
        if found is None:
            if len(self._by_surface) >= MAX_SURFACES:
                self._by_surface.clear()
            found = self._by_surface[surface] = RuleSet(tuple(
                self._compiled[name] for name in sorted(self._rules)
                if not self._rules[name].surfaces or surface in self._rules[name].surfaces))
        return found

    def listed(self) -> list[common_pb2.StoredRule]:
        """What this gateway holds, in name order."""
        return [self._rules[name] for name in sorted(self._rules)]

    def replace(self, rules: Iterable[common_pb2.StoredRule], writes_before: int) -> bool:
        """A listing from the updater, asked for when `writes` was writes_before: taken unless a
        write through this gateway came since (it may be missing from the listing; the next one
        will hold it). Returns whether it was taken."""
        if writes_before != self.writes:
            return False
        listed = {r.rule.name: r for r in rules}
        if self.loaded and listed == self._rules:  # the common case: compiled sets stay
            return True
        self._rules = listed
        self._compiled = {name: _compile(r) for name, r in self._rules.items()}
        self._by_surface = {}
        self.loaded = True
        return True

    def put(self, rule: common_pb2.StoredRule) -> None:
        """A rule the updater stored for this gateway's PutRule."""
        self.writes += 1
        self._rules[rule.rule.name] = rule
        self._compiled[rule.rule.name] = _compile(rule)
        self._by_surface = {}

    def delete(self, name: str) -> None:
        self.writes += 1
        self._rules.pop(name, None)
        self._compiled.pop(name, None)
        self._by_surface = {}


def _compile(stored: common_pb2.StoredRule) -> CompiledRule:
    return CompiledRule.of(stored.rule, f"rule:{stored.rule.name}")
