"""Scraping real Triton replicas: pending requests at once, queue time per request
from counter deltas between two scrapes."""

from __future__ import annotations

import aiohttp
import numpy as np
import tritonclient.grpc.aio as triton_aio

from matrixinfer.autoscaler.adapters.triton import TritonScraper
from tests.integration.conftest import Platform, iris_manifests

KEY = ("default", "iris")


async def test_scraping_a_real_replica(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    infer = await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 1
    )
    assert infer is not None
    endpoints = list(infer.status.endpoints)
    wanted = ["PendingRequests", "QueueTimeMs", "GpuUtilization"]
    async with aiohttp.ClientSession() as session:
        scraper = TritonScraper(session, timeout_s=2.0)
        first = await scraper.values(KEY, endpoints, wanted)
        # Pending is a gauge; queue time needs a delta, so not on the first scrape;
        # no GPU on this machine, so no GPU figure (missing, not 0).
        assert first == {"PendingRequests": 0.0}
        endpoint = endpoints[0]
        client = triton_aio.InferenceServerClient(
            f"{endpoint.address}:{endpoint.grpc_port}"
        )
        try:
            tensor = triton_aio.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
            for _ in range(20):
                await client.infer("iris", [tensor])
        finally:
            await client.close()
        second = await scraper.values(KEY, endpoints, wanted)
        assert second["PendingRequests"] == 0.0
        assert 0.0 < second["QueueTimeMs"] < 1000.0
        # A replica that cannot be scraped makes the metrics missing, not zero.
        gone = type(endpoint)()
        gone.CopyFrom(endpoint)
        gone.metrics_port = 1
        assert await scraper.values(KEY, [endpoint, gone], wanted) == {}
