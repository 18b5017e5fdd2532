"""Keep full garbage collections short in long-running processes."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Collect once, then move every object alive now into the permanent generation: state built
    at start-up (catalog mirror, models, replayed sessions: ~10^5 objects) is no longer rescanned
    by each full collection. Measured under load before this: gen-2 pauses of 24-138 ms in every
    service and the load generator - whole answers late for nothing."""
    gc.collect()
    gc.freeze()
