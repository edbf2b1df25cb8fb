"""What an operator sees of inference traffic: per-model request counts on the
gateway's /metrics, read from HAProxy's counters (HAProxy passes the caller's
traceparent on to Triton unchanged; the gateway makes spans only on its slow path)."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

ROWS = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_per_model_metrics_from_the_data_plane(platform: Platform) -> None:
    exporter = InMemorySpanExporter()
    app = await start_gateway(platform, exporter)
    try:
        await platform.apply(iris_manifests())
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        await wait_routed(app)
        client = triton_grpc.InferenceServerClient(app.address)
        try:
            tensor = triton_grpc.InferInput("X", list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS)
            for _ in range(3):
                await client.infer(
                    "iris",
                    [tensor],
                    headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
                )
            for made_up in ("no-such-model-1", "no-such-model-2"):
                try:
                    await client.infer(made_up, [tensor])
                except InferenceServerException as e:
                    assert "not served" in str(e)
                else:
                    raise AssertionError("an unknown model was answered")
        finally:
            await client.close()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{app.http_url}/metrics") as response,
        ):
            text = await response.text()
        # HAProxy carried the three calls: per-model series from its counters.
        key = (
            ("code", "2xx"),
            ("model", "iris"),
            ("protocol", "grpc"),
            ("server", "iris"),
        )
        for _ in range(40):  # counters are read about four times a second
            counts = samples(text, "matrixinfer_gateway_dataplane_requests_total")
            if counts.get(key) == 3:
                break
            await asyncio.sleep(0.1)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{app.http_url}/metrics") as response,
            ):
                text = await response.text()
        assert counts[key] == 3
        # Made-up names never become label values.
        assert not any("no-such-model" in str(labels) for labels in counts)
        up = samples(text, "matrixinfer_gateway_dataplane_replicas_up")
        assert up[(("model", "iris"), ("protocol", "grpc"), ("server", "iris"))] == 1
    finally:
        await app.stop(0)
        await asyncio.sleep(0)
