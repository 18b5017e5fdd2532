"""A request that pins a ranker parameter version (RankRequest.parameters_version, an
experiment's variant): over real gRPC, a ranker and the real updater servicer on temporary
folders. The ranker serves the named version - its own start version from disk, or one the
updater published (Updater.GetParameters) - with model_version saying so and the scores that
version gives; keeps the last few it used (least recently used out); refuses an unknown one with
NOT_FOUND and a malformed one with INVALID_ARGUMENT, naming parameters_version. PutExperiment
refuses a variant pinning a version the updater does not have, naming the field."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil

import grpc
import numpy as np
import pytest

from recmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from recmesh.common.vectors import to_matrix
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, load_params, newest_params, save_params
from recmesh.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc, retrieval_pb2, updater_pb2_grpc
from services.ranker.config import RankerSettings
from services.ranker.server import PinnedVersions, RankerServicer
from services.updater.config import UpdaterSettings
from services.updater.experiments import ExperimentsRole
from services.updater.server import UpdaterServicer

SHIPPED = load_params(newest_params(SHIPPED_PARAMS))


def variant_of(version: str, seed: int):
    """SHIPPED with other weights: a version that orders candidates its own way."""
    weights = np.random.default_rng(seed).normal(size=len(FEATURES))
    return dataclasses.replace(SHIPPED, version=version, weights=weights, deep=None)


def request(version: str = "") -> ranker_pb2.RankRequest:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(12, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    interest = rng.normal(size=(1, 8))
    return ranker_pb2.RankRequest(
        candidates=[retrieval_pb2.Candidate(item_id=f"i{n}", categories=["Drama"], popularity=n / 12,
                                            score=float(rng.random())) for n in range(12)],
        candidate_vectors=to_matrix(vectors), interest=to_matrix(interest / np.linalg.norm(interest)),
        k=12, parameters_version=version)


def folders(tmp_path):
    start, published = tmp_path / "start", tmp_path / "published"
    start.mkdir()
    shutil.copy(newest_params(SHIPPED_PARAMS), start)  # the ranker's start version, on its disk
    for n in range(3):
        save_params(variant_of(f"ranker-online-old-{n}", n), published)  # only the updater has these
    return start, published


def run(test, tmp_path, pinned_versions: int = 4, with_updater: bool = True):
    start, published = folders(tmp_path)

    async def main():
        servers = []
        stub = None
        if with_updater:
            updater = UpdaterServicer(UpdaterSettings(
                log_path=tmp_path / "events.sqlite", params_dir=published, shipped_params_dir=start, learn=False,
                event_weights_file=None, guardrail_s=3600))
            await updater.load()
            server = grpc.aio.server()
            updater_pb2_grpc.add_UpdaterServicer_to_server(updater, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stub = updater_pb2_grpc.UpdaterStub(channel)
        settings = RankerSettings(params_dir=start, pinned_versions=pinned_versions, exploration=0.0,
                                  updater_addr="")
        pinned = PinnedVersions(settings, stub)
        current = variant_of("ranker-online-current", 99)  # what the stream swapped in last
        ranker = grpc.aio.server()
        ranker_pb2_grpc.add_RankerServicer_to_server(RankerServicer(settings, current, pinned), ranker)
        port = ranker.add_insecure_port("127.0.0.1:0")
        await ranker.start()
        servers.append(ranker)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ranker_channel:
                await test(ranker_pb2_grpc.RankerStub(ranker_channel), pinned, published)
        finally:
            if with_updater:
                await channel.close()
                await updater.close()
            for server in servers:
                await server.stop(None)

    asyncio.run(main())


def order(reply) -> list[str]:
    return [item.item_id for item in reply.items]


def test_the_named_version_serves_with_its_own_scores(tmp_path):
    async def test(ranker, pinned, published):
        current = await ranker.Rank(request(), timeout=5)
        assert current.model_version == "ranker-online-current"
        shipped = await ranker.Rank(request(SHIPPED.version), timeout=5)  # the ranker's start version
        old = await ranker.Rank(request("ranker-online-old-1"), timeout=5)  # published: from the updater
        assert shipped.model_version == SHIPPED.version and old.model_version == "ranker-online-old-1"
        # Each answer is its version's: the scores are what that version gives these features.
        for reply, scorer in ((current, variant_of("x", 99)), (shipped, SHIPPED),
                              (old, load_params(published / "ranker-online-old-1.json"))):
            features = np.array([item.features for item in reply.items])
            assert np.allclose([item.score for item in reply.items], scorer.score(features), atol=1e-4)
        assert len({tuple(order(r)) for r in (current, shipped, old)}) == 3  # really different rankers
        # The current version named explicitly is the current one, not a copy loaded again.
        again = await ranker.Rank(request("ranker-online-current"), timeout=5)
        assert again.model_version == "ranker-online-current" and order(again) == order(current)
        assert pinned.kept() == [SHIPPED.version, "ranker-online-old-1"]

    run(test, tmp_path)


def test_versions_are_kept_least_recently_used_out(tmp_path):
    async def test(ranker, pinned, published):
        for version in ("ranker-online-old-0", "ranker-online-old-1", "ranker-online-old-0", "ranker-online-old-2"):
            assert (await ranker.Rank(request(version), timeout=5)).model_version == version
        assert pinned.kept() == ["ranker-online-old-0", "ranker-online-old-2"]  # old-1 used least recently
        for n in range(3):
            (published / f"ranker-online-old-{n}.json").unlink()
        # A kept version is served from memory; the one dropped must be asked for again, and is gone.
        assert (await ranker.Rank(request("ranker-online-old-0"), timeout=5)).model_version == "ranker-online-old-0"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ranker.Rank(request("ranker-online-old-1"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    run(test, tmp_path, pinned_versions=2)


def test_concurrent_first_requests_share_one_load(tmp_path):
    async def test(ranker, pinned, published):
        replies = await asyncio.gather(*(ranker.Rank(request("ranker-online-old-2"), timeout=5) for _ in range(8)))
        assert {r.model_version for r in replies} == {"ranker-online-old-2"}
        assert len({tuple(order(r)) for r in replies}) == 1 and pinned.kept() == ["ranker-online-old-2"]

    run(test, tmp_path)


@pytest.mark.parametrize("version, code", [
    ("ranker-never-published", grpc.StatusCode.NOT_FOUND),
    ("../published/ranker-online-old-0", grpc.StatusCode.INVALID_ARGUMENT),
    (".hidden", grpc.StatusCode.INVALID_ARGUMENT),
    ("v" * 129, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_unknown_or_malformed_versions_are_refused_naming_the_field(tmp_path, version, code):
    async def test(ranker, pinned, published):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ranker.Rank(request(version), timeout=5)
        assert err.value.code() == code and err.value.details().startswith("parameters_version:")
        assert pinned.kept() == []
        # The ranker goes on serving its current version.
        assert (await ranker.Rank(request(), timeout=5)).model_version == "ranker-online-current"

    run(test, tmp_path)


def test_without_an_updater_only_the_start_versions_can_be_named(tmp_path):
    async def test(ranker, pinned, published):
        assert (await ranker.Rank(request(SHIPPED.version), timeout=5)).model_version == SHIPPED.version
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ranker.Rank(request("ranker-online-old-0"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details().startswith("parameters_version:")

    run(test, tmp_path, with_updater=False)


def test_the_updater_gives_a_version_by_name_and_refuses_others_naming_version(tmp_path):
    start, published = folders(tmp_path)
    updater = UpdaterServicer(UpdaterSettings(log_path=tmp_path / "events.sqlite", params_dir=published,
                                              shipped_params_dir=start, learn=False, event_weights_file=None))

    async def scenario():
        got = await updater.learning.parameters("ranker-online-old-2")
        assert got.version == "ranker-online-old-2"
        assert (await updater.learning.parameters(SHIPPED.version)).version == SHIPPED.version  # a start version
        with pytest.raises(NotFound) as err:
            await updater.learning.parameters("nope")
        assert err.value.field == "version"
        with pytest.raises(InvalidArgument) as bad:
            await updater.learning.parameters("../start/x")
        assert bad.value.field == "version"

    asyncio.run(scenario())


def experiment(name: str, version: str) -> common_pb2.PutExperimentRequest:
    return common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(name=name, variants=[
        common_pb2.ExperimentVariant(name="A", share=0.5),
        common_pb2.ExperimentVariant(name="B", share=0.5,
                                     overrides=common_pb2.VariantOverrides(ranker_version=version))]))


def test_put_experiment_refuses_a_version_the_updater_does_not_have(tmp_path):
    start, published = folders(tmp_path)

    async def scenario():
        role = ExperimentsRole(UpdaterSettings(log_path=tmp_path / "events.sqlite", params_dir=published,
                                               shipped_params_dir=start, event_weights_file=None, guardrail_s=3600))
        await role.open()
        try:
            with pytest.raises(FailedPrecondition, match=r"^experiment\.variants\[1\]\.overrides\.ranker_version:"):
                await role.put(experiment("e-unknown", "ranker-never-published"), "test", "")
            assert (await role.list()).experiments == []  # nothing stored
            stored = await role.put(experiment("e-old", "ranker-online-old-0"), "test", "")
            assert stored.variants[1].overrides.ranker_version == "ranker-online-old-0"
            await role.stop(common_pb2.StopExperimentRequest(name="e-old"), "test", "")
            stored = await role.put(experiment("e-start", SHIPPED.version), "test", "")  # a start version too
            assert stored.variants[1].overrides.ranker_version == SHIPPED.version
        finally:
            await role.close()

    asyncio.run(scenario())
