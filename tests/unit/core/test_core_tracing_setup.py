"""setup_tracing builds a private provider; the process-wide one is left alone."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from matrixinfer.core.tracing import setup_tracing

pytestmark = pytest.mark.timeout(10)


def test_spans_reach_the_given_exporter_with_the_service_name() -> None:
    exporter = InMemorySpanExporter()
    provider = setup_tracing("probe", None, exporter)
    try:
        with provider.get_tracer("test").start_as_current_span("work"):
            pass
    finally:
        provider.shutdown()

    [span] = exporter.get_finished_spans()
    assert span.name == "work"
    assert span.resource.attributes["service.name"] == "probe"


def test_global_provider_is_untouched_unless_asked() -> None:
    before = trace.get_tracer_provider()

    provider = setup_tracing("probe", None)
    provider.shutdown()

    assert trace.get_tracer_provider() is before


def test_an_absent_collector_delays_shutdown_only_briefly() -> None:
    # Nothing listens on port 9; a stopping service must not hang on its spans.
    provider = setup_tracing("probe", "http://127.0.0.1:9", export_timeout_s=1.0)
    with provider.get_tracer("test").start_as_current_span("lost"):
        pass
    started_s = time.monotonic()
    provider.shutdown()

    assert time.monotonic() - started_s < 3
