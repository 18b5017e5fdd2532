"""gRPC channel and server options every process shares (constants only: a client-only install
imports them without the server's dependencies)."""

from __future__ import annotations

# Internal messages carry up to a few hundred 384-d vectors; allow headroom.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# For servers: compressed requests are refused (UNIMPLEMENTED "Compression algorithm 'gzip' is
# disabled") before grpc core inflates them - it inflates a whole message before checking the
# size limit, so a 0.5 MB gzip body cost the gateway 0.5 GB. recmesh's clients never compress.
IDENTITY_ONLY = [("grpc.compression_enabled_algorithms_bitset", 1)]
# For servers: a port already in use is an error at start, not shared. gRPC sets SO_REUSEPORT by
# default, and a second local mesh on the same port silently took half of the first's calls.
EXCLUSIVE_PORT = [("grpc.so_reuseport", 0)]
# For client channels to a dependency: a restarted peer is back in use within about a second,
# not after gRPC's default reconnect backoff (1 s growing to 120 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
