"""Where the autoscaler's numbers come from.

- :class:`GatewayLoad` — the gateways' ``ReportLoad`` streams: average concurrency
  (in flight + held) and arrivals per ModelInfer, summed over every gateway that
  reported recently. No fresh gateway at all means the gateway metrics are missing
  (never zero: a gateway that went away must not look like a model nobody uses).
- :class:`TritonScraper` — each ready replica's Prometheus endpoint:
  ``nv_inference_pending_request_count`` (a gauge, summed), queue time per request
  from the ``nv_inference_queue_duration_us`` and ``nv_inference_request_success``
  counters (turned into deltas between scrapes), and ``nv_gpu_utilization``.
  A replica that cannot be scraped makes these metrics missing for the tick rather
  than under-counted.
- :class:`PrometheusQuery` — optionally, a Prometheus server's HTTP API for GPU
  utilization (for clusters where replicas are not reachable from the autoscaler).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.http import BodyTooLarge, read_capped

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, ModelInfer name)

CONCURRENCY = "Concurrency"
RPS = "RequestsPerSecond"
PENDING = "PendingRequests"
QUEUE_TIME = "QueueTimeMs"
GPU = "GpuUtilization"
GATEWAY_METRICS = (CONCURRENCY, RPS)
TRITON_METRICS = (PENDING, QUEUE_TIME, GPU)
_MAX_SCRAPE_BYTES = 4 * 1024 * 1024


@dataclass
class _GatewayState:
    received_at: float
    report: apb.LoadReport


@dataclass
class GatewayLoad:
    """The latest report of every gateway, plus arrivals since the last tick."""

    stale_s: float = 3.0
    clock: Callable[[], float] = time.monotonic
    _gateways: dict[str, _GatewayState] = field(default_factory=dict)
    _arrivals: dict[Key, float] = field(default_factory=dict)

    def _now(self) -> float:
        return self.clock()

    def ingest(self, report: apb.LoadReport) -> None:
        self._gateways[report.gateway_id] = _GatewayState(self._now(), report)
        for model in report.models:
            key = (model.namespace or "default", model.model_infer)
            self._arrivals[key] = self._arrivals.get(key, 0.0) + model.arrivals

    def fresh(self) -> bool:
        """Whether at least one gateway reported within ``stale_s``."""
        now = self._now()
        for gateway_id, state in list(self._gateways.items()):
            if now - state.received_at > 10 * self.stale_s:
                del self._gateways[gateway_id]  # long gone: forget it
        return any(now - s.received_at <= self.stale_s for s in self._gateways.values())

    def retain(self, keys: set[Key]) -> None:
        """Forget arrivals of ModelInfers no policy tracks (bounded memory; a policy
        created later does not start with a stale burst)."""
        for key in [k for k in self._arrivals if k not in keys]:
            del self._arrivals[key]

    def forget(self, gateway_id: str) -> None:
        """A gateway's stream ended: its last report no longer counts."""
        self._gateways.pop(gateway_id, None)

    def take_arrivals(self, key: Key) -> float:
        """Arrivals reported since the previous call for this key."""
        return self._arrivals.pop(key, 0.0)

    def values(self, key: Key) -> dict[str, float]:
        """Concurrency and RequestsPerSecond for one ModelInfer ({} when no gateway
        is fresh: missing data)."""
        if not self.fresh():
            return {}
        now = self._now()
        concurrency = rps = 0.0
        for state in self._gateways.values():
            if now - state.received_at > self.stale_s:
                continue
            window = state.report.window_seconds or 1.0
            for model in state.report.models:
                if (model.namespace or "default", model.model_infer) == key:
                    concurrency += model.in_flight
                    rps += model.arrivals / window
        return {CONCURRENCY: concurrency, RPS: rps}


@dataclass
class _Counters:
    queue_us: float
    requests: float


def parse_triton_metrics(text: str) -> dict[str, float]:
    """Sums over models (a replica serves one) of the families we use; GPU
    utilization is averaged over the GPUs present (0..1), absent without GPUs."""
    sums: dict[str, float] = {}
    gpu: list[float] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nv_gpu_utilization":
                gpu.append(sample.value)
            elif sample.name in (
                "nv_inference_pending_request_count",
                "nv_inference_queue_duration_us",
                "nv_inference_request_success",
                "nv_inference_request_success_total",
                "nv_inference_queue_duration_us_total",
            ):
                name = sample.name.removesuffix("_total")
                sums[name] = sums.get(name, 0.0) + sample.value
    if gpu:
        sums["nv_gpu_utilization"] = sum(gpu) / len(gpu)
    return sums


class TritonScraper:
    def __init__(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Counters of the previous scrape, per (ModelInfer, replica target): every
        # policy prunes only its own entries.
        self._previous: dict[tuple[Key, str], _Counters] = {}

    async def _scrape(self, target: str) -> dict[str, float] | None:
        try:
            async with self._session.get(
                f"http://{target}/metrics", timeout=self._timeout
            ) as response:
                if response.status != 200:
                    return None
                body = await read_capped(response, _MAX_SCRAPE_BYTES)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as e:
            log.debug("scrape of %s failed: %s", target, e)
            return None
        try:
            return parse_triton_metrics(body.decode("utf-8", "replace"))
        except ValueError as e:
            log.warning("unparsable metrics from %s: %s", target, e)
            return None

    async def values(
        self, key: Key, endpoints: Iterable[pb.Endpoint], wanted: Iterable[str]
    ) -> dict[str, float]:
        """The Triton metrics in ``wanted`` for the ready replicas of one
        ModelInfer; a metric is left out (missing) when any replica failed."""
        wanted = [w for w in wanted if w in TRITON_METRICS]
        targets = [
            f"{e.address}:{e.metrics_port}"
            for e in endpoints
            if e.ready and not e.draining and e.metrics_port
        ]
        if not wanted or not targets:
            return {}
        scraped = await asyncio.gather(*(self._scrape(t) for t in targets))
        for known in [k for k in self._previous if k[0] == key]:
            if known[1] not in targets:
                del self._previous[known]
        if any(s is None for s in scraped):
            return {}
        results: dict[str, float] = {}
        pending = queue_us = requests = 0.0
        gpu: list[float] = []
        complete = True
        for target, metrics in zip(targets, scraped, strict=True):
            assert metrics is not None
            pending += metrics.get("nv_inference_pending_request_count", 0.0)
            if "nv_gpu_utilization" in metrics:
                gpu.append(metrics["nv_gpu_utilization"])
            now = _Counters(
                metrics.get("nv_inference_queue_duration_us", 0.0),
                metrics.get("nv_inference_request_success", 0.0),
            )
            before = self._previous.get((key, target))
            self._previous[(key, target)] = now
            if before is None or now.requests < before.requests:
                complete = False  # first scrape or a restarted replica: no delta yet
                continue
            queue_us += now.queue_us - before.queue_us
            requests += now.requests - before.requests
        if PENDING in wanted:
            results[PENDING] = pending
        if QUEUE_TIME in wanted and complete:
            results[QUEUE_TIME] = queue_us / requests / 1000.0 if requests else 0.0
        if GPU in wanted and gpu:
            results[GPU] = 100.0 * sum(gpu) / len(gpu)
        return results


class PrometheusQuery:
    """GPU utilization of one ModelInfer from a Prometheus server's HTTP API."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, timeout_s: float
    ) -> None:
        self._session = session
        self._url = url.rstrip("/") + "/api/v1/query"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def gpu_utilization(self, key: Key) -> float | None:
        namespace, name = key
        query = (
            f'100 * avg(nv_gpu_utilization{{namespace="{namespace}",'
            f'model_infer="{name}"}})'
        )
        try:
            async with self._session.get(
                self._url, params={"query": query}, timeout=self._timeout
            ) as response:
                document = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.debug("Prometheus query failed: %s", e)
            return None
        return _scalar(document)


def _scalar(document: Mapping[str, object]) -> float | None:
    data = document.get("data")
    if document.get("status") != "success" or not isinstance(data, dict):
        return None
    result = data.get("result")
    if not isinstance(result, list) or not result:
        return None
    value = result[0].get("value") if isinstance(result[0], dict) else None
    if not isinstance(value, list) or len(value) != 2:
        return None
    try:
        return float(value[1])
    except (TypeError, ValueError):
        return None
