"""Prometheus metrics shared by every service, on an explicit registry.

prometheus_client registers into a process-global registry by default; that makes
tests leak samples into each other and forbids two servers in one process (as
`matrixinfer up` and the contract tests do). Everything here therefore takes a
``CollectorRegistry`` and never touches the default one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

#: Seconds. Spans the sub-millisecond gateway hot path up to slow control-plane
#: calls; long-lived streams land in +Inf, which is what they are.
DEFAULT_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class GrpcServerMetrics:
    """Per-method request count, latency and concurrency of a gRPC server.

    ``service`` and ``method`` labels come only from registered methods (unknown
    methods are never recorded), so a client cannot blow up label cardinality.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        latency_buckets_s: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S,
    ) -> None:
        self.registry = registry
        # prometheus_client appends the `_total` suffix itself.
        self.requests_total = Counter(
            "matrixinfer_grpc_server_requests",
            "RPCs completed, by final status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "matrixinfer_grpc_server_handling_seconds",
            "Time from handler start to final status, in seconds.",
            ["service", "method"],
            buckets=tuple(latency_buckets_s),
            registry=registry,
        )
        self.in_flight = Gauge(
            "matrixinfer_grpc_server_in_flight",
            "RPCs currently being handled.",
            ["service", "method"],
            registry=registry,
        )


@dataclass
class MetricsServer:
    """A running /metrics HTTP server; ``close()`` stops it and joins its thread."""

    port: int
    _httpd: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(
    port: int, registry: CollectorRegistry, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve ``registry`` over HTTP on ``host:port`` from a daemon thread.

    ``port=0`` binds a free port; the returned object says which. The socket is
    bound before this returns, so a port clash raises here rather than in a thread.
    """
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(port=int(httpd.server_port), _httpd=httpd, _thread=thread)
