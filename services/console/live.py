"""Live numbers from the gateway's Prometheus endpoint, and the ranker parameters' freshness
from the ranker's: scraped every scrape_interval_s, kept for the live plot.

Over a window (newest scrape against the oldest one inside live_window_s):
- throughput: Recommend and SimilarItems calls answered per second (any status);
- p99: the 0.99 quantile of their handling time, from the latency histogram's bucket
  increments, interpolated inside the bucket as Prometheus' histogram_quantile does;
- degraded share: answers naming at least one degraded reason (recmesh_degraded_answers_total)
  per OK answer.
Summed over every gateway replica the URL's host resolves to; a replica whose counters went
down (it restarted) counts from its restart."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

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


def _reset(old: Sample, new: Sample) -> bool:
    return new.calls < old.calls or new.degraded < old.degraded


@dataclass(frozen=True)
class Round:
    """One scrape of every gateway replica: address -> its sample."""

    at: float
    samples: dict[str, Sample]


def combined(old: Round, new: Round) -> Window:
    """The window between two rounds over every replica in both (one that restarted in
    between counts from its restart: its counts since then are its increments)."""
    calls = answered = degraded = 0.0
    increments: dict[float, float] = {}
    for address, n in new.samples.items():
        o = old.samples.get(address)
        if o is None:
            continue  # new to the list: its increments start at the next round
        if _reset(o, n):
            o = Sample(o.at, 0.0, 0.0, 0.0, ())
        calls += n.calls - o.calls
        answered += n.answered - o.answered
        degraded += n.degraded - o.degraded
        olds = dict(o.buckets)
        for bound, count in n.buckets:
            increments[bound] = increments.get(bound, 0.0) + count - olds.get(bound, 0.0)
    seconds = new.at - old.at
    p99 = quantile(0.99, sorted(increments.items())) if calls > 0 else None
    return Window(seconds, calls / seconds if seconds > 0 else 0.0, None if p99 is None else p99 * 1000,
                  degraded / answered if answered > 0 else None, int(calls))


async def addresses(url: str) -> list[str]:
    """Every address the URL's host resolves to (a Kubernetes headless Service: each replica),
    as host:port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    found = []
    for family, _, _, _, sockaddr in infos:
        address = f"[{sockaddr[0]}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{sockaddr[1]}"
        if address not in found:
            found.append(address)
    return found


def at_address(url: str, address: str) -> str:
    return urlunsplit(urlsplit(url)._replace(netloc=address))


@dataclass
class Live:
    """The scrape rounds so far and the loop that takes them. A metrics URL whose host names
    several addresses (a headless Service) is scraped at each of them: the live numbers are the
    whole gateway's, every ranker replica's version is known."""

    settings: ConsoleSettings
    rounds: deque = field(init=False)
    rankers: dict[str, RankerParameters] = field(default_factory=dict)
    gateway_error: str = ""
    ranker_error: str = ""

    def __post_init__(self) -> None:
        self.rounds = deque(maxlen=self.settings.live_history)

    @property
    def configured(self) -> bool:
        return bool(self.settings.gateway_metrics_url)

    def add(self, round_: Round) -> None:
        self.rounds.append(round_)

    def current(self) -> Window | None:
        """Over the last live_window_s; None until two rounds are in."""
        if len(self.rounds) < 2:
            return None
        newest = self.rounds[-1]
        oldest = next(r for r in self.rounds if newest.at - r.at <= self.settings.live_window_s + 1e-6)
        if oldest is newest:
            oldest = self.rounds[-2]
        return combined(oldest, newest)

    def series(self) -> list[tuple[float, Window]]:
        """One window per scrape interval, for the plot: (its end time, the window)."""
        rounds = list(self.rounds)
        return [(new.at, combined(old, new)) for old, new in zip(rounds, rounds[1:], strict=False)]

    def ranker_of(self, version: str) -> RankerParameters | None:
        """A ranker replica serving this version (the earliest to take it), if one was scraped."""
        serving = [r for r in self.rankers.values() if r.version == version]
        return min(serving, key=lambda r: r.serving_since) if serving else None

    async def _scrape_all(self, session: aiohttp.ClientSession, url: str) -> tuple[dict[str, str], list[str]]:
        """address -> metrics text, and what failed (one line each)."""
        timeout = aiohttp.ClientTimeout(total=self.settings.scrape_timeout_s)
        texts, errors = {}, []
        try:
            found = await addresses(url)
        except OSError as exc:
            return {}, [f"{url}: cannot resolve: {exc}"]

        async def one(address: str) -> None:
            try:
                async with session.get(at_address(url, address), timeout=timeout,
                                       headers={"Host": urlsplit(url).netloc}) as response:
                    response.raise_for_status()
                    texts[address] = await response.text()
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"{at_address(url, address)}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(a) for a in found))
        return texts, errors

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        s = self.settings
        if s.gateway_metrics_url:
            texts, errors = await self._scrape_all(session, s.gateway_metrics_url)
            now = time.time()
            try:
                samples = {address: parse_gateway(text, now) for address, text in texts.items()}
            except ValueError as exc:
                samples, errors = {}, [*errors, f"{s.gateway_metrics_url}: not Prometheus text: {exc}"]
            if samples:
                self.add(Round(now, samples))
            self.gateway_error = "; ".join(errors)
        if s.ranker_metrics_url:
            texts, errors = await self._scrape_all(session, s.ranker_metrics_url)
            rankers = {}
            for address, text in texts.items():
                try:
                    if (parsed := parse_ranker(text)) is not None:
                        rankers[address] = parsed
                except ValueError as exc:
                    errors.append(f"{address}: not Prometheus text: {exc}")
            self.rankers = rankers
            self.ranker_error = "; ".join(errors)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self.scrape(session)
                if self.gateway_error or self.ranker_error:
                    log.info("scrape failed", extra={"gateway": self.gateway_error, "ranker": self.ranker_error})
                await asyncio.sleep(self.settings.scrape_interval_s)
