"""recmesh.v1.Updater: a thin servicer over the updater's roles - events and per-user state
(services/updater/events.py: Ingest, the stored part of GetUserState, DeleteUser and MergeUsers),
online learning (services/updater/learning.py: LogImpressions, WatchParameters, and the joiner's
part of GetUserState, DeleteUser and MergeUsers), the stored business rules
(services/updater/rules.py: PutRule, ListRules, DeleteRule) and the experiments
(services/updater/experiments.py: their calls, and LogImpressions' impressions that name one).
Every committed new event is handed from the first to the second and the fourth."""

from __future__ import annotations

from contextlib import aclosing

import grpc

from recmesh.common.auth import CLIENT_HEADER
from recmesh.common.errors import rpc_method
from recmesh.common.server import Service
from recmesh.v1 import common_pb2, updater_pb2, updater_pb2_grpc
from services.updater.config import UpdaterSettings
from services.updater.events import EventsRole
from services.updater.experiments import ExperimentsRole
from services.updater.learning import LearningRole
from services.updater.rules import RulesRole


def caller(context) -> tuple[str, str]:
    """(the client a forwarding gateway authenticated - its CLIENT_HEADER - or "direct" for a
    call from inside the mesh, the peer's address): who an audited change is from."""
    client = dict(context.invocation_metadata() or ()).get(CLIENT_HEADER, "")
    return str(client) or "direct", context.peer() or ""


class UpdaterServicer(updater_pb2_grpc.UpdaterServicer):
    def __init__(self, settings: UpdaterSettings):
        self._max_impressions = settings.max_impressions_per_call
        self.learning = LearningRole(settings)
        self.experiments = ExperimentsRole(settings)
        self.events = EventsRole(settings, on_new=self._on_new)
        self.rules = RulesRole(settings)

    def _on_new(self, event) -> None:
        self.learning.feedback(event)
        self.experiments.feedback(event)

    async def load(self) -> None:
        await self.events.open()  # from here on, state is complete and calls are served
        await self.rules.open()  # after the events: a Redis store has been checked durable there
        await self.experiments.open()
        await self.learning.start()

    @rpc_method
    async def Ingest(self, request, context):
        return await self.events.ingest(request)

    @rpc_method
    async def LogImpressions(self, request, context):
        """Impressions naming an experiment go to its outcomes (they carry no features: not
        learned from), the others to online learning; all or none (the experiments' are checked
        first, then learning checks and takes its own, then the experiments' are recorded)."""
        tagged = [(n, i) for n, i in enumerate(request.impressions) if i.experiment]
        if not tagged or len(request.impressions) > self._max_impressions:  # learning refuses the latter
            return self.learning.log_impressions(request)
        self.experiments.check_impressions([i for _, i in tagged], [f"impressions[{n}]." for n, _ in tagged])
        untagged = [i for i in request.impressions if not i.experiment]
        if untagged:
            self.learning.log_impressions(updater_pb2.LogImpressionsRequest(impressions=untagged))
        self.experiments.record([i for _, i in tagged])
        return updater_pb2.LogImpressionsResponse()

    async def WatchParameters(self, request, context):
        async with aclosing(self.learning.watch(request.known_version)) as versions:
            async for parameters in versions:
                yield parameters

    @rpc_method
    async def GetUserState(self, request, context):
        reply = await self.events.user_state(request.user_id, request.max_recent)
        if reply is None:
            return updater_pb2.UserState(user_id=request.user_id)
        reply.skipped.update(self.learning.skipped(request.user_id))
        return reply

    @rpc_method
    async def DeleteUser(self, request, context):
        deleted = await self.events.delete_user(request.user_id)
        self.learning.forget_user(request.user_id)
        await self.experiments.forget_user(request.user_id)
        return updater_pb2.DeleteUserStateResponse(events_deleted=deleted)

    @rpc_method
    async def MergeUsers(self, request, context):
        moved = await self.events.merge_users(request.from_user_id, request.into_user_id)
        if moved:
            self.learning.merge_users(request.from_user_id, request.into_user_id)
        return common_pb2.MergeUsersResponse(events_moved=moved)

    @rpc_method
    async def GetParameters(self, request, context):
        return await self.learning.parameters(request.version)

    @rpc_method
    async def PutRule(self, request, context):
        return await self.rules.put(request, *caller(context))

    @rpc_method
    async def ListRules(self, request, context):
        return await self.rules.list()

    @rpc_method
    async def DeleteRule(self, request, context):
        return await self.rules.delete(request, *caller(context))

    @rpc_method
    async def PutExperiment(self, request, context):
        return await self.experiments.put(request, *caller(context))

    @rpc_method
    async def ListExperiments(self, request, context):
        return await self.experiments.list()

    @rpc_method
    async def StopExperiment(self, request, context):
        return await self.experiments.stop(request, *caller(context))

    @rpc_method
    async def GetExperimentReport(self, request, context):
        return await self.experiments.report(request)

    async def close(self) -> None:
        await self.experiments.close()
        await self.learning.close()
        await self.rules.close()
        await self.events.close()


def build_service(settings: UpdaterSettings) -> Service:
    servicer = UpdaterServicer(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        updater_pb2_grpc.add_UpdaterServicer_to_server(servicer, server)
        return [updater_pb2.DESCRIPTOR.services_by_name["Updater"].full_name]

    return Service("updater", register, servicer.load, servicer.close)
