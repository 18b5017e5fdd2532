"""The one wall clock events, impressions and joins are stamped with."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (wall clock: comparable with clients' event times)."""
    return time.time_ns() // 1_000_000
