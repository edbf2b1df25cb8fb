"""JSON logs carry the request id and trace ids that join them to a request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from matrixinfer.core.logging import (
    bind_request_id,
    configure_logging,
    reset_request_id,
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Capture what configure_logging writes; restore the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        yield out
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_record_carries_the_bound_request_id(stream: io.StringIO) -> None:
    configure_logging("INFO", True, "probe", stream=stream)
    log = logging.getLogger("matrixinfer.probe")

    token = bind_request_id("req-123")
    try:
        log.info("model %s loaded", "iris")
    finally:
        reset_request_id(token)
    log.info("after the request")

    inside, outside = _lines(stream)
    assert inside["request_id"] == "req-123"
    assert inside["message"] == "model iris loaded"
    assert inside["level"] == "INFO"
    assert inside["service"] == "probe"
    assert "request_id" not in outside
    assert "trace_id" not in outside


def test_json_record_carries_the_current_trace(stream: io.StringIO) -> None:
    configure_logging("INFO", True, "probe", stream=stream)
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("work") as span:
        logging.getLogger("matrixinfer.probe").warning("inside a span")
    context = span.get_span_context()

    [record] = _lines(stream)
    assert record["trace_id"] == trace.format_trace_id(context.trace_id)
    assert record["span_id"] == trace.format_span_id(context.span_id)


def test_configuring_twice_does_not_duplicate_lines(stream: io.StringIO) -> None:
    configure_logging("INFO", True, "probe", stream=stream)
    configure_logging("DEBUG", True, "probe", stream=stream)

    logging.getLogger("matrixinfer.probe").debug("once")

    assert [r["message"] for r in _lines(stream)] == ["once"]


def test_text_output_still_shows_the_request_id(stream: io.StringIO) -> None:
    configure_logging("INFO", False, "probe", stream=stream)

    token = bind_request_id("req-9")
    try:
        logging.getLogger("matrixinfer.probe").info("plain")
    finally:
        reset_request_id(token)

    line = stream.getvalue().strip()
    assert "plain" in line
    assert "request_id=req-9" in line
