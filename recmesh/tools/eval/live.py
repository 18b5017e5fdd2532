"""Evaluations through the live mesh: a fresh local stack over the built catalog with an empty
event log, so that only the events an evaluation sends are known."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recmesh.client import Event, RecmeshClient
from recmesh.common.paths import var_paths
from recmesh.tools.devstack import Stack, private_stack

# The gateway takes up to 1,000 events per call; 500 keeps each call short.
TRACK_BATCH = 500


@contextmanager
def fresh_stack(catalog: Path | None = None, env: dict[str, str] | None = None,
                interest_variants: dict[str, Path] | None = None) -> Iterator[Stack]:
    """catalog: a var's catalog folder (default: $RECMESH_VAR's); the stack serves that var's
    interest model, and interest_variants ({name: artifact}) beside it for experiments."""
    with private_stack(catalog or var_paths().catalog, env=env or {},  # no event log: an empty one
                       interest_variants=interest_variants) as stack:
        yield stack


@contextmanager
def fresh_mesh(catalog: Path | None = None, timeout_s: float = 1.0, env: dict[str, str] | None = None,
               interest_variants: dict[str, Path] | None = None) -> Iterator[RecmeshClient]:
    with fresh_stack(catalog, env, interest_variants) as stack, \
            RecmeshClient(stack.address("gateway"), timeout_s=timeout_s) as client:
        yield client


def track_all(client: RecmeshClient, events: list[Event]) -> None:
    for i in range(0, len(events), TRACK_BATCH):
        client.track_events(events[i : i + TRACK_BATCH])
