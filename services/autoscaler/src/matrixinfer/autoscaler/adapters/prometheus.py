"""Optionally, a Prometheus server's HTTP API for GPU utilization (for clusters where
replicas are not reachable from the autoscaler)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp

from matrixinfer.autoscaler.domain.metric_types import Key

log = logging.getLogger(__name__)


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
