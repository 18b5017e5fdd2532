"""Live numbers from the gateway's Prometheus endpoint, and the ranker parameters' freshness
from the ranker's: scraped every scrape_interval_s, kept for the live plot.

Over a window (newest scrape against the oldest one inside live_window_s):
- throughput: Recommend and SimilarItems calls answered per second (any status);
- p99: the 0.99 quantile of their handling time, from the latency histogram's bucket
  increments, interpolated inside the bucket as Prometheus' histogram_quantile does;
- degraded share: answers naming at least one degraded reason (recmesh_degraded_answers_total)
  per OK answer.
A counter that went down (the gateway restarted) starts the window afresh."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from services.console.config import ConsoleSettings

log = logging.getLogger("recmesh.console.live")

ANSWERING = ("Recommend", "SimilarItems")


@dataclass(frozen=True)
class Sample:
    """One scrape of the gateway: cumulative counts since it started."""

    at: float  # time.time() of the scrape
    calls: float  # Recommend + SimilarItems, any status
    answered: float  # ... with status OK
    degraded: float  # OK answers that named a degraded reason
    buckets: tuple[tuple[float, float], ...]  # (upper bound s, cumulative count), +Inf last


@dataclass(frozen=True)
class Window:
    seconds: float
    throughput: float  # calls/s
    p99_ms: float | None  # None: no call in the window
    degraded_share: float | None  # None: no answer in the window
    calls: int


@dataclass(frozen=True)
class RankerParameters:
    """What the ranker serves and how fresh it is: trained_through is the newest feedback the
    version learned from (0: a shipped or offline-trained version), since when this ranker
    serves it."""

    version: str
    trained_through: float
    serving_since: float


def parse_gateway(text: str, at: float) -> Sample:
    calls = answered = degraded = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "recmesh_rpc_requests_total" and labels.get("method") in ANSWERING \
                    and labels.get("service") == "gateway":
                calls += s.value
                if labels.get("code") == "OK":
                    answered += s.value
            elif s.name == "recmesh_rpc_latency_seconds_bucket" and labels.get("method") in ANSWERING \
                    and labels.get("service") == "gateway":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
            elif s.name == "recmesh_degraded_answers_total":
                degraded += s.value
    return Sample(at, calls, answered, degraded, tuple(sorted(buckets.items())))


def parse_ranker(text: str) -> RankerParameters | None:
    version, trained, since = None, 0.0, 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "recmesh_serving_version_info" and s.labels.get("service") == "ranker" \
                    and s.labels.get("component") == "parameters" and s.value == 1:
                version = s.labels["version"]
            elif s.name == "recmesh_ranker_parameters_trained_through_seconds":
                trained = s.value
            elif s.name == "recmesh_ranker_parameters_serving_since_seconds":
                since = s.value
    return RankerParameters(version, trained, since) if version else None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs, +Inf last:
    linear inside the bucket the rank falls in; the highest finite bound if it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


def window(old: Sample, new: Sample) -> Window:
    seconds = new.at - old.at
    calls = new.calls - old.calls
    answered = new.answered - old.answered
    olds = dict(old.buckets)
    increments = [(bound, count - olds.get(bound, 0.0)) for bound, count in new.buckets]
    p99 = quantile(0.99, increments) if calls > 0 else None
    return Window(seconds, calls / seconds if seconds > 0 else 0.0, None if p99 is None else p99 * 1000,
                  (new.degraded - old.degraded) / answered if answered > 0 else None, int(calls))


def _reset(old: Sample, new: Sample) -> bool:
    return new.calls < old.calls or new.degraded < old.degraded


@dataclass
class Live:
    """The scrapes so far and the loop that takes them."""

    settings: ConsoleSettings
    samples: deque = field(init=False)
    ranker: RankerParameters | None = None
    gateway_error: str = ""
    ranker_error: str = ""

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.settings.live_history)

    @property
    def configured(self) -> bool:
        return bool(self.settings.gateway_metrics_url)

    def add(self, sample: Sample) -> None:
        if self.samples and _reset(self.samples[-1], sample):
            self.samples.clear()
        self.samples.append(sample)

    def current(self) -> Window | None:
        """Over the last live_window_s; None until two scrapes are in."""
        if len(self.samples) < 2:
            return None
        newest = self.samples[-1]
        oldest = next(s for s in self.samples if newest.at - s.at <= self.settings.live_window_s + 1e-6)
        if oldest is newest:
            oldest = self.samples[-2]
        return window(oldest, newest)

    def series(self) -> list[tuple[float, Window]]:
        """One window per scrape interval, for the plot: (its end time, the window)."""
        samples = list(self.samples)
        return [(new.at, window(old, new)) for old, new in zip(samples, samples[1:], strict=False)]

    async def _get(self, session: aiohttp.ClientSession, url: str) -> str:
        timeout = aiohttp.ClientTimeout(total=self.settings.scrape_timeout_s)
        async with session.get(url, timeout=timeout) as response:
            response.raise_for_status()
            return await response.text()

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        s = self.settings
        if s.gateway_metrics_url:
            try:
                self.add(parse_gateway(await self._get(session, s.gateway_metrics_url), time.time()))
                self.gateway_error = ""
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                self.gateway_error = f"{s.gateway_metrics_url}: {type(exc).__name__}: {exc}"
        if s.ranker_metrics_url:
            try:
                self.ranker = parse_ranker(await self._get(session, s.ranker_metrics_url))
                self.ranker_error = ""
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                self.ranker_error = f"{s.ranker_metrics_url}: {type(exc).__name__}: {exc}"

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self.scrape(session)
                if self.gateway_error or self.ranker_error:
                    log.info("scrape failed", extra={"gateway": self.gateway_error, "ranker": self.ranker_error})
                await asyncio.sleep(self.settings.scrape_interval_s)
