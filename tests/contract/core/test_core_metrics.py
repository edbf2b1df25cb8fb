"""Per-method gRPC metrics on a fresh registry, and the /metrics HTTP server."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from matrixinfer.core.errors import NotFound
from matrixinfer.core.metrics import GrpcServerMetrics, start_metrics_server
from tests.contract.core.conftest import Connect, Serve
from tests.contract.core.probe import SERVICE, unary, unary_stream

pytestmark = pytest.mark.timeout(20)

REQUESTS = "matrixinfer_grpc_server_requests_total"
SECONDS = "matrixinfer_grpc_server_handling_seconds"
IN_FLIGHT = "matrixinfer_grpc_server_in_flight"


async def test_requests_are_counted_by_final_code(
    serve: Serve, connect: Connect
) -> None:
    registry = CollectorRegistry()
    in_flight_during_call: list[float | None] = []

    async def get(request: bytes, context: Any) -> bytes:
        in_flight_during_call.append(
            registry.get_sample_value(IN_FLIGHT, {"service": SERVICE, "method": "Get"})
        )
        if request == b"missing":
            raise NotFound("no such thing")
        return b"thing"

    async def tail(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"line"

    server = await serve(
        {
            "Get": grpc.unary_unary_rpc_method_handler(get),
            "Tail": grpc.unary_stream_rpc_method_handler(tail),
        },
        metrics=GrpcServerMetrics(registry),
    )
    channel = connect(server.port)

    assert await unary(channel, "Get")(b"present") == b"thing"
    with pytest.raises(grpc.aio.AioRpcError):
        await unary(channel, "Get")(b"missing")
    assert [m async for m in unary_stream(channel, "Tail")(b"")] == [b"line"]

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"service": SERVICE, **labels})

    assert sample(REQUESTS, method="Get", code="OK") == 1
    assert sample(REQUESTS, method="Get", code="NOT_FOUND") == 1
    assert sample(REQUESTS, method="Tail", code="OK") == 1
    assert sample(f"{SECONDS}_count", method="Get") == 2
    assert in_flight_during_call == [1, 1]
    assert sample(IN_FLIGHT, method="Get") == 0
    # Nothing leaked into the process-wide default registry.
    assert REGISTRY.get_sample_value(REQUESTS, {"service": SERVICE}) is None


async def test_metrics_server_serves_the_registry_on_a_free_port() -> None:
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    metrics.requests_total.labels(service=SERVICE, method="Get", code="OK").inc()

    server = start_metrics_server(0, registry, "127.0.0.1")
    try:
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(_fetch, url)
    finally:
        server.close()

    assert f'{REQUESTS}{{code="OK",method="Get",service="{SERVICE}"}} 1.0' in body
    assert f"# TYPE {SECONDS} histogram" in body
    assert f"# TYPE {IN_FLIGHT} gauge" in body
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_fetch, url)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text
