"""Each ready replica's Triton metrics endpoint (Prometheus text):
``nv_inference_pending_request_count`` (a gauge, summed), queue time per request from
the ``nv_inference_queue_duration_us`` and ``nv_inference_request_success`` counters
(turned into deltas between scrapes), and ``nv_gpu_utilization``. A replica that
cannot be scraped makes these metrics missing for the tick rather than
under-counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.autoscaler.domain.metric_types import (
    GPU,
    PENDING,
    QUEUE_TIME,
    TRITON_METRICS,
    Key,
)
from matrixinfer.core.http import BodyTooLarge, read_capped

log = logging.getLogger(__name__)
_MAX_SCRAPE_BYTES = 4 * 1024 * 1024


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
