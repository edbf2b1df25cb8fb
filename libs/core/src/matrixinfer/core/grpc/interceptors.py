"""Server interceptors for request ids and Prometheus metrics.

Kept apart from the servicers so every service gets the same per-method numbers and
log correlation without a line in its handlers.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

from matrixinfer.core.errors import MatrixInferError
from matrixinfer.core.grpc._handlers import split_method, wrap_handler
from matrixinfer.core.grpc.errors import abort_for, status_code_for
from matrixinfer.core.logging import request_id_var
from matrixinfer.core.metrics import GrpcServerMetrics

#: Metadata key carrying the request id between services (lower case: gRPC requires).
REQUEST_ID_METADATA_KEY = "x-request-id"

# A caller-supplied id is written into every log line; anything outside this shape
# (newlines, megabytes, control characters) is replaced rather than trusted.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from_metadata(metadata: Any) -> str:
    """The caller's valid ``x-request-id``, or a fresh one."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == REQUEST_ID_METADATA_KEY:
            if isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value):
                return value
            break
    return new_request_id()


def _context_code(context: Any) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except NotImplementedError:
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def final_status_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The status the caller will see, given how the handler ended."""
    if error is None:
        return _context_code(context) or grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    if isinstance(error, grpc.aio.AbortError):
        return _context_code(context) or grpc.StatusCode.UNKNOWN
    if isinstance(error, MatrixInferError):
        return status_code_for(error)
    # What grpc itself answers for an exception nobody translated.
    return grpc.StatusCode.UNKNOWN


class StandardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """The one server interceptor every service gets: binds the request id for the
    handler's run, records metrics and maps errors to statuses (:func:`abort_for`).

    These three are one wrapper on purpose: every wrapper layer costs Python work per
    call and per streamed message, measurably so on the registry's hot path.
    """

    def __init__(
        self, metrics: GrpcServerMetrics | None, bypass: Sequence[str] = ()
    ) -> None:
        self._metrics = metrics
        # Method prefixes whose handlers do this work themselves (the gateway's data
        # path: every wrapper there costs CPU on each proxied request).
        self._bypass = tuple(bypass)

    async def intercept_service(
        self, continuation: Any, handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown methods are not recorded: their names come from the client.
            return None
        full_method: str = handler_call_details.method
        if self._bypass and full_method.startswith(self._bypass):
            return handler
        request_id = request_id_from_metadata(handler_call_details.invocation_metadata)
        metrics = self._metrics
        if metrics is not None:
            service, method = split_method(full_method)
            in_flight = metrics.in_flight.labels(service=service, method=method)
            handling_seconds = metrics.handling_seconds.labels(
                service=service, method=method
            )

        @asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            token = request_id_var.set(request_id)
            if metrics is not None:
                in_flight.inc()
            started_s = time.perf_counter()
            error: BaseException | None = None
            try:
                try:
                    yield
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise  # the handler already chose its status
                    await abort_for(context, exc, full_method)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if metrics is not None:
                    in_flight.dec()
                    handling_seconds.observe(time.perf_counter() - started_s)
                    code = final_status_code(context, error)
                    metrics.requests_total.labels(
                        service=service, method=method, code=code.name
                    ).inc()
                # grpc runs each RPC in its own task, so the value cannot leak to
                # another RPC; the reset only fails if a streaming handler is
                # finalised from another context, where there is nothing to undo.
                with suppress(ValueError):
                    request_id_var.reset(token)

        return wrap_handler(handler, around)
