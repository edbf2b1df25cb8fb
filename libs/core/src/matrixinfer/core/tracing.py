"""OpenTelemetry tracing: one TracerProvider per service, OTLP export, gRPC hooks.

A request that crosses gateway → controller → registry should be one trace. The
interceptors returned here carry W3C trace context in gRPC metadata in both
directions; the provider is passed explicitly to them (not read from the global) so
that two services in one process, as in tests and `matrixinfer up`, keep apart.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
)
from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_name
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)

#: Services left out of tracing. Health probes arrive every few seconds and would
#: drown real traces; and the OTel aio server wrapper turns every streaming handler
#: into an async generator, which breaks the health servicer's context.write()
#: style Watch.
UNTRACED_SERVICES: tuple[str, ...] = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def setup_tracing(
    service_name: str,
    otlp_endpoint: str | None,
    exporter: SpanExporter | None = None,
    *,
    set_global: bool = False,
    export_timeout_s: float = 5.0,
) -> TracerProvider:
    """Build the service's TracerProvider.

    ``otlp_endpoint`` adds a batching OTLP/gRPC exporter (batching keeps export off
    the request path). ``exporter`` adds a synchronous one, for tests that read
    spans back from an InMemorySpanExporter. With neither, spans are still created
    and propagated (trace ids in logs stay useful) but exported nowhere.

    The global provider is left alone unless ``set_global``: OTel allows setting it
    only once per process, and the interceptors get the provider explicitly anyway.
    Callers own the provider and call ``shutdown()`` on it to flush at exit;
    ``export_timeout_s`` bounds one OTLP export with its retries, so an absent
    collector delays that shutdown by about that much, not the exporter's 10 s.
    """
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if otlp_endpoint is not None:
        # Inside the cluster the collector is reached in plaintext; TLS belongs to
        # the mesh or a later setting, not this default.
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(
                    endpoint=otlp_endpoint, insecure=True, timeout=export_timeout_s
                )
            )
        )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _traced() -> Any:
    return negate(any_of(*(service_name(name) for name in UNTRACED_SERVICES)))


def server_interceptors(tracer_provider: TracerProvider) -> list[Any]:
    """Server interceptors that continue the caller's trace (one span per RPC)."""
    # The instrumentation is untyped; it returns a grpc.aio.ServerInterceptor.
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call, unused-ignore]
        tracer_provider=tracer_provider, filter_=_traced()
    )
    return [interceptor]


def client_interceptors(tracer_provider: TracerProvider) -> list[Any]:
    """Client interceptors, one per call kind, that inject W3C traceparent."""
    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call, unused-ignore]
        tracer_provider=tracer_provider, filter_=_traced()
    )
    return list(interceptors)
