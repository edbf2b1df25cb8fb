"""Structured logging with request and trace correlation.

Every log line of a service should be joinable with the trace and the request that
produced it, so the root handler gets a filter that stamps ``trace_id``/``span_id``
(from the current OpenTelemetry span) and ``request_id`` (from a contextvar the gRPC
server interceptor binds) onto each record. Output is one JSON object per line for log
collectors, or plain text for people.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from typing import TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

#: The request id of the RPC being handled in this task, if any.
request_id_var: ContextVar[str | None] = ContextVar(
    "matrixinfer_request_id", default=None
)

# Marks handlers installed by configure_logging so a second call replaces them
# instead of adding a duplicate (tests and `matrixinfer up` call it more than once).
_HANDLER_MARK = "_matrixinfer_handler"

_CORRELATION_FIELDS = ("request_id", "trace_id", "span_id")


def bind_request_id(value: str | None) -> Token[str | None]:
    """Bind ``value`` as the current request id; pass the token to reset_request_id."""
    return request_id_var.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Undo the matching bind_request_id."""
    request_id_var.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds request_id, trace_id and span_id to records; absent when unknown.

    Attached to the handler rather than a logger, because logger filters do not run
    for records propagated from child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id is not None:
            record.request_id = request_id
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            # The hex forms are what Jaeger/Tempo show and search by.
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
        return True


class _TextFormatter(logging.Formatter):
    """Human-readable lines that still carry the correlation ids when present."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={getattr(record, name)}"
            for name in _CORRELATION_FIELDS
            if hasattr(record, name)
        ]
        if not extras:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [{' '.join(extras)}]{newline}{rest}"


def configure_logging(
    level: str | int,
    json_output: bool,
    service_name: str,
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install one handler on the root logger; calling again replaces it.

    ``stream`` defaults to stderr (the container log stream); tests pass a StringIO.
    Returns the handler so callers (tests) can remove it.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.close()

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(CorrelationFilter())
    formatter: logging.Formatter
    if json_output:
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service_name},
        )
    else:
        formatter = _TextFormatter(
            f"%(asctime)s %(levelname)s {service_name} %(name)s: %(message)s"
        )
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
