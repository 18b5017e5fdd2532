"""The updater's stored business rules: PutRule (create or replace by name), ListRules,
DeleteRule over the rule store of its event store's kind (recmesh/events/rulestore.py: a SQLite
file beside the log, or the shared Redis). Every change is checked here as at the gateway
(recmesh/common/rules.py: the store holds only valid rules, whoever calls) and audited in the
structured log: who (the client the gateway authenticated, `x-recmesh-client`, and the peer),
what (the action, the rule as JSON, the rule it replaced), when (the log line's time and the
rule's updated_ms)."""

from __future__ import annotations

import asyncio
import logging

from recmesh.common import clock, limits
from recmesh.common.errors import FailedPrecondition, Unavailable
from recmesh.common.rules import check_rule_name, check_stored_rule, match_values
from recmesh.events.rulestore import RedisRules, RuleStore, SqliteRules, rule_json
from recmesh.v1 import common_pb2
from services.updater.config import UpdaterSettings

log = logging.getLogger("recmesh.updater.rules")


def make_rule_store(settings: UpdaterSettings) -> RuleStore:
    """The rule store beside the configured event store, not yet opened."""
    if settings.store == "redis":
        return RedisRules(settings.redis_url, settings.redis_prefix)
    return SqliteRules(settings.rules_path or settings.log_path.with_name("rules.sqlite"))


class RulesRole:
    """Calls are UNAVAILABLE until open() has returned."""

    def __init__(self, settings: UpdaterSettings):
        self.store = make_rule_store(settings)
        self._putting = asyncio.Lock()
        self._ready = False

    async def open(self) -> None:
        count = await self.store.open()
        self._ready = True
        log.info("rule store open", extra={"rules": count})

    def _check_ready(self) -> None:
        if not self._ready:
            raise Unavailable("updater is warming up")

    async def put(self, request: common_pb2.PutRuleRequest, client: str, peer: str) -> common_pb2.StoredRule:
        """The rule as stored (updated_ms: now, ms since the Unix epoch). InvalidArgument naming
        the field; FailedPrecondition when the name is new and STORED_RULES are stored."""
        check_stored_rule(request.rule, "rule")
        self._check_ready()
        stored = common_pb2.StoredRule()
        stored.CopyFrom(request.rule)
        stored.updated_ms = clock.now_ms()
        async with self._putting:  # the size check and the put as one (on this replica)
            held = sum(match_values(r.rule.match) for r in await self.store.list() if r.rule.name != stored.rule.name)
            if held + match_values(stored.rule.match) > limits.STORED_RULE_VALUES:
                raise FailedPrecondition(
                    f"rule.rule.match: the stored rules would name {held + match_values(stored.rule.match)} ids, "
                    f"categories, attribute tests and values in all, more than {limits.STORED_RULE_VALUES} (every "
                    "gateway lists them twice a second); delete rules, or narrow this one")
            done, old = await self.store.put(stored, limits.STORED_RULES)
        if not done:
            raise FailedPrecondition(f"rule.rule.name: {limits.STORED_RULES} rules are stored already (the most "
                                     "there may be); delete one, or replace one by its name")
        log.info("rule put", extra={"audit": "rules", "action": "replace" if old is not None else "create",
                                    "client": client, "peer": peer, "rule_name": stored.rule.name,
                                    "rule": rule_json(stored), "replaced": rule_json(old) if old is not None else None})
        return stored

    async def list(self) -> common_pb2.ListRulesResponse:
        self._check_ready()
        return common_pb2.ListRulesResponse(rules=await self.store.list())

    async def delete(self, request: common_pb2.DeleteRuleRequest, client: str,
                     peer: str) -> common_pb2.DeleteRuleResponse:
        """deleted False when no rule had the name (nothing is audited then)."""
        name = check_rule_name(request.name, "name")
        self._check_ready()
        old = await self.store.delete(name)
        if old is not None:
            log.info("rule deleted", extra={"audit": "rules", "action": "delete", "client": client, "peer": peer,
                                            "rule_name": name, "rule": rule_json(old), "deleted_ms": clock.now_ms()})
        return common_pb2.DeleteRuleResponse(deleted=old is not None)

    async def close(self) -> None:
        await self.store.close()
