"""Channels and stubs to the internal services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from recmesh.common import tracing
from recmesh.common.channels import FAST_RECONNECT, GRPC_OPTIONS
from recmesh.common.transport import aio_channel
from recmesh.v1 import encoder_pb2_grpc, ranker_pb2, ranker_pb2_grpc, retrieval_pb2_grpc, updater_pb2_grpc
from services.gateway.config import GatewaySettings


@dataclass
class Upstreams:
    updater: updater_pb2_grpc.UpdaterStub
    encoder: encoder_pb2_grpc.EncoderStub
    retrieval: retrieval_pb2_grpc.RetrievalStub
    ranker: ranker_pb2_grpc.RankerStub
    channels: list[grpc.aio.Channel]
    # Ranker.Rank taking the request already serialised (bytes of a RankRequest; the same method
    # and reply): the gateway forwards retrieval's candidates to the ranker as the bytes they
    # came in, not copied into a new message one by one (services/gateway/ranking.py). None (an
    # in-process floor, a test's fake): the request goes as a message through `ranker`.
    rank_wire: Callable[..., Awaitable[ranker_pb2.RankResponse]] | None = None

    @classmethod
    def connect(cls, settings: GatewaySettings) -> "Upstreams":
        addrs = [settings.updater_addr, settings.encoder_addr, settings.retrieval_addr, settings.ranker_addr]
        channels = [aio_channel(a, settings, GRPC_OPTIONS + FAST_RECONNECT, tracing.client_interceptors())
                    for a in addrs]
        return cls(
            updater_pb2_grpc.UpdaterStub(channels[0]),
            encoder_pb2_grpc.EncoderStub(channels[1]),
            retrieval_pb2_grpc.RetrievalStub(channels[2]),
            ranker_pb2_grpc.RankerStub(channels[3]),
            channels,
            channels[3].unary_unary("/recmesh.v1.Ranker/Rank", request_serializer=None,
                                    response_deserializer=ranker_pb2.RankResponse.FromString),
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
