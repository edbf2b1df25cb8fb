"""One trace across a gRPC hop: client and server spans share the trace id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from grpc_health.v1 import (  # type: ignore[import-untyped, unused-ignore]
    health_pb2,
    health_pb2_grpc,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from matrixinfer.core.tracing import setup_tracing
from tests.contract.core.conftest import Connect, Serve
from tests.contract.core.probe import SERVICE, unary, unary_stream

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = setup_tracing("core-test", None, exporter)
    try:
        yield provider
    finally:
        provider.shutdown()


async def test_server_span_continues_the_client_trace(
    serve: Serve,
    connect: Connect,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    seen_in_handler: list[int] = []

    async def echo(request: bytes, context: Any) -> bytes:
        seen_in_handler.append(trace.get_current_span().get_span_context().trace_id)
        return request

    async def tail(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    server = await serve(
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Tail": grpc.unary_stream_rpc_method_handler(tail),
        },
        tracer_provider=provider,
    )
    channel = connect(server.port, tracer_provider=provider)

    assert await unary(channel, "Echo")(b"hi") == b"hi"
    assert [m async for m in unary_stream(channel, "Tail")(b"")] == [b"a", b"b"]

    spans = exporter.get_finished_spans()
    echo_spans = [s for s in spans if s.name == f"/{SERVICE}/Echo"]
    client = next(s for s in echo_spans if s.kind is SpanKind.CLIENT)
    server_span = next(s for s in echo_spans if s.kind is SpanKind.SERVER)
    assert client.context is not None and server_span.context is not None
    assert server_span.context.trace_id == client.context.trace_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client.context.span_id
    assert seen_in_handler == [client.context.trace_id]
    assert server_span.resource.attributes["service.name"] == "core-test"
    tail_kinds = {s.kind for s in spans if s.name == f"/{SERVICE}/Tail"}
    assert tail_kinds == {SpanKind.CLIENT, SpanKind.SERVER}


async def test_health_checks_stay_out_of_traces_and_still_work(
    serve: Serve,
    connect: Connect,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    server = await serve({}, tracer_provider=provider)
    stub = health_pb2_grpc.HealthStub(
        connect(server.port, tracer_provider=provider, default_timeout_s=None)
    )

    checked = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    first = await anext(aiter(watch))
    watch.cancel()

    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert exporter.get_finished_spans() == ()
