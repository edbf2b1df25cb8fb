"""Every service exports spans when an OTLP endpoint is set, and Triton exports its
own when the controller is given a trace URL: real collectors in this process (OTLP
over gRPC for the services, OTLP/HTTP for Triton) receive them.

What inferences show: the gateway's span (slow path) continues each caller's trace;
Triton's spans (request, model, compute) continue the traceparent they receive
(the gateway's, or through HAProxy the caller's own) for most requests, not all
(Triton reads the value up to the next 0x00 byte in its buffer: bench.traceparent),
so the test asks it of at least one of eight per path; the autoscaler's call to the
controller is one trace across both services."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from matrixinfer.core.ports import free_ports
from tests.integration.autoscaler.test_autoscaler import POLICY, start_autoscaler
from tests.integration.conftest import (
    iris_manifests,
    running_platform,
    start_gateway,
    wait_routed,
)

#: Callers' trace ids: requests the gateway's Python carries (larger than HAProxy's
#: buffer), and small ones HAProxy carries; eight of each (see the module doc).
SLOW_TRACES = [f"4bf92f3577b34da6a3ce929d0e0e47{i:02x}" for i in range(8)]
HAPROXY_TRACES = [f"0af7651916cd43dd8448eb211c8031{i:02x}" for i in range(8)]
ROW = b"\x00\x00\x80\x3f" * 4


#: What Triton exports for one inference.
TRITON_SPANS = {"InferRequest", "iris", "compute"}


def triton_spans(collected: Collected, trace: str) -> set[str]:
    """The names of Triton's spans in one trace."""
    return {name for t, name in collected.spans["triton"] if t == trace}


def continued(collected: Collected, traces: list[str]) -> list[str]:
    """The callers' traces whose inference Triton's spans continued."""
    return [t for t in traces if triton_spans(collected, t) >= TRITON_SPANS]


@dataclass
class Collected:
    #: service.name -> [(trace id hex, span name)]
    spans: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    async def Export(  # noqa: N802 - the gRPC method's name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.collected.spans[service].append(
                        (span.trace_id.hex(), span.name)
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class Collectors:
    otlp_grpc: str
    triton_url: str
    collected: Collected


@pytest_asyncio.fixture
async def collectors() -> AsyncIterator[Collectors]:
    collected = Collected()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _Collector(collected), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def triton_export(request: web.Request) -> web.Response:
        # Triton's exporter speaks OTLP/HTTP with JSON bodies.
        body = json.loads(await request.read())
        for resource_spans in body["resourceSpans"]:
            for scope in resource_spans["scopeSpans"]:
                for span in scope["spans"]:
                    collected.spans["triton"].append((span["traceId"], span["name"]))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/traces", triton_export)
    runner = web.AppRunner(app)
    await runner.setup()
    (http_port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    try:
        yield Collectors(
            f"127.0.0.1:{port}",
            f"http://127.0.0.1:{http_port}/v1/traces",
            collected,
        )
    finally:
        await runner.cleanup()
        await server.stop(0)


async def test_services_and_triton_export_spans(
    collectors: Collectors, tmp_path: pathlib.Path
) -> None:
    async with running_platform(
        tmp_path,
        otlp_endpoint=collectors.otlp_grpc,
        triton_trace_url=collectors.triton_url,
        triton_trace_rate=1,
    ) as platform:
        gateway = await start_gateway(platform, otlp_endpoint=collectors.otlp_grpc)
        autoscaler = await start_autoscaler(
            platform, otlp_endpoint=collectors.otlp_grpc
        )
        try:
            await platform.apply(iris_manifests() + POLICY.format(min=1, grace=2))
            await platform.wait_for(
                lambda i: i is not None and i.status.ready_replicas == 1
            )
            await wait_routed(gateway)
            # A message larger than HAProxy's buffer: the gateway's Python carries
            # it, and makes its span.
            request = service_pb2.ModelInferRequest(model_name="iris", id="x" * 30_000)
            request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(ROW)
            small = service_pb2.ModelInferRequest()
            small.CopyFrom(request)
            small.id = "y"
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                sends = [(request, t) for t in SLOW_TRACES]
                sends += [(small, t) for t in HAPROXY_TRACES]
                for message, trace in sends:
                    await stub.ModelInfer(
                        message,
                        metadata=(("traceparent", f"00-{trace}-00f067aa0ba902b7-01"),),
                        timeout=10,
                    )
            # Triton exports in batches: until it continued a trace of each path.
            for _ in range(150):
                if continued(collectors.collected, SLOW_TRACES) and continued(
                    collectors.collected, HAPROXY_TRACES
                ):
                    break
                await asyncio.sleep(0.1)
        finally:
            await autoscaler.stop(0)  # flushes its spans
            await gateway.stop(0)
    spans = collectors.collected.spans  # the controller flushed when it stopped
    gateway_traces = {t for t, name in spans["gateway"] if "ModelInfer" in name}
    assert gateway_traces == set(SLOW_TRACES)
    # Triton's spans continue the gateway's trace (slow path) or the caller's own
    # (HAProxy): one trace from the caller to Triton, for the requests it continues.
    assert continued(collectors.collected, SLOW_TRACES)
    assert continued(collectors.collected, HAPROXY_TRACES)
    # The autoscaler asked the controller for replicas: one trace, both services.
    asked = {
        t for t, name in spans["autoscaler"] if name.endswith("Controller/GetReplicas")
    }
    answered = {
        t for t, name in spans["controller"] if name.endswith("Controller/GetReplicas")
    }
    assert asked and asked & answered
