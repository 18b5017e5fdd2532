"""Channels and stubs to the internal services."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from recmesh.common.server import GRPC_OPTIONS
from recmesh.v1 import encoder_pb2_grpc, ranker_pb2_grpc, retrieval_pb2_grpc, updater_pb2_grpc
from services.gateway.config import GatewaySettings

# A restarted stage should be back in use within about a second, not after gRPC's
# default reconnect backoff (1 s growing to 120 s).
UPSTREAM_OPTIONS = GRPC_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Upstreams:
    updater: updater_pb2_grpc.UpdaterStub
    encoder: encoder_pb2_grpc.EncoderStub
    retrieval: retrieval_pb2_grpc.RetrievalStub
    ranker: ranker_pb2_grpc.RankerStub
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, settings: GatewaySettings) -> "Upstreams":
        addrs = [settings.updater_addr, settings.encoder_addr, settings.retrieval_addr, settings.ranker_addr]
        channels = [grpc.aio.insecure_channel(a, options=UPSTREAM_OPTIONS) for a in addrs]
        return cls(
            updater_pb2_grpc.UpdaterStub(channels[0]),
            encoder_pb2_grpc.EncoderStub(channels[1]),
            retrieval_pb2_grpc.RetrievalStub(channels[2]),
            ranker_pb2_grpc.RankerStub(channels[3]),
            channels,
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
