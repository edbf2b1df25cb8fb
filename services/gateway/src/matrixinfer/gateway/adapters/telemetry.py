"""Per-model inference metrics and spans for the proxy path.

Metrics (on the gateway's /metrics):

- ``matrixinfer_gateway_requests_total{model,code}`` — inference calls (ModelInfer,
  over gRPC or REST) by the model name the caller used and the status code answered;
- ``matrixinfer_gateway_request_duration_seconds{model}`` — their latency, as seen
  by the gateway (admission, routing, any hold at zero, the upstream call).

Only names that resolved to a route become label values; everything else is counted
under ``model="<unrouted>"``, so a client cannot grow the label set by sending
made-up names. The per-model children are looked up once and cached, which keeps the
cost per request to two dictionary hits and two lock-free increments.

Spans are made only when the gateway exports traces (``otlp_endpoint``): one SERVER
span per inference call, continuing the caller's W3C ``traceparent``; the span's own
context replaces the caller's on the way to Triton.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram

UNROUTED = "<unrouted>"
# Triton answers the example model in ≈ 0.3–2 ms here; the buckets resolve that
# range finely and still place multi-second holds at zero replicas.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_PROPAGATOR = TraceContextTextMapPropagator()


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._requests = Counter(
            "matrixinfer_gateway_requests",
            "Inference calls answered by the gateway, by model and status code.",
            ["model", "code"],
            registry=registry,
        )
        self._duration = Histogram(
            "matrixinfer_gateway_request_duration_seconds",
            "Latency of inference calls at the gateway, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[str, tuple[Any, Any]] = {}

    def observe(self, model: str, code: grpc.StatusCode, seconds: float) -> None:
        children = self._children.get(model)
        if children is None:
            children = self._children[model] = (
                self._requests.labels(model, "OK"),
                self._duration.labels(model),
            )
        ok, duration = children
        if code is grpc.StatusCode.OK:
            ok.inc()
        else:
            self._requests.labels(model, code.name).inc()
        duration.observe(seconds)


class ProxyTracer:
    """Spans on the proxy path; a no-op object when tracing is off."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._tracer = (
            provider.get_tracer("matrixinfer.gateway") if provider is not None else None
        )

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def span(
        self, method: str, model: str, headers: Mapping[str, str]
    ) -> Iterator[dict[str, str]]:
        """Yields the trace headers to send upstream ({} when tracing is off)."""
        if self._tracer is None:
            yield {}
            return
        parent = _PROPAGATOR.extract(headers)
        with self._tracer.start_as_current_span(
            f"{method} {model}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.method": method, "matrixinfer.model": model},
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            yield carrier
