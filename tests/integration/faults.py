"""Faults the integration tests inject while work runs."""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Callable

from recmesh.tools.devstack import Stack


def sigkill_while_running(stack: Stack, service: str, work: Callable[[int], None], workers: int,
                          stop: threading.Event, kills: int, rng: random.Random,
                          pause_s: tuple[float, float] = (0.2, 0.8)) -> None:
    """Run `workers` threads of work(worker number) until `stop` is set; meanwhile SIGKILL and
    restart `service` `kills` times, each after a random pause; then stop the workers and wait
    for them."""
    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(*pause_s))
            stack.signal(service, signal.SIGKILL)
            stack.restart(service)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
