"""The one place that turns our errors into gRPC statuses, and back into details.

Domain code raises :mod:`matrixinfer.core.errors`; :func:`abort_for` maps
them through :data:`STATUS_CODES` with google.rpc rich details (BadRequest,
ErrorInfo, RetryInfo) in ``grpc-status-details-bin``, so clients in any language
can tell which field was wrong or how long to back off. Anything we did not raise
on purpose becomes INTERNAL with a fixed message: exception text may hold secrets
or backend internals, so it goes to the log (with traceback), never to the caller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    error_details_pb2,
    status_pb2,
)
from grpc_status import rpc_status

from matrixinfer.core.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    Expired,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MatrixInferError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

logger = logging.getLogger(__name__)

#: google.rpc.ErrorInfo.domain of every error we send.
ERROR_DOMAIN = "matrixinfer.ai"

#: What callers see for anything we did not raise on purpose.
INTERNAL_MESSAGE = "internal error"

#: Trailing-metadata key grpc-status uses for the packed google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: The one table. Lookup walks the exception's MRO, so a subclass of NotFound maps
#: like NotFound; classes not here (including MatrixInferError itself) are INTERNAL.
STATUS_CODES: Mapping[type[MatrixInferError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.ABORTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Expired: grpc.StatusCode.OUT_OF_RANGE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    Internal: grpc.StatusCode.INTERNAL,
}

#: The way back, for a peer's status: every code but OK has its error class, so a
#: caller of an adapter sees the code the peer sent (never a made-up UNAVAILABLE).
ERRORS_BY_CODE: Mapping[grpc.StatusCode, type[MatrixInferError]] = {
    **{code: cls for cls, code in STATUS_CODES.items()},
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}

#: gRPC status → HTTP status, the one table for every REST surface (Google's
#: mapping; 499 is the de-facto "client closed request").
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

#: HTTP status → the gRPC code it stands for when it comes back (several codes
#: share 400, 409 and 500; this picks the canonical one of each).
_CODE_OF_HTTP: Mapping[int, grpc.StatusCode] = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def http_status_for(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def code_for_http_status(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP answer: the table's, else by class (other 4xx:
    FAILED_PRECONDITION, other 5xx: UNAVAILABLE for 502, INTERNAL otherwise)."""
    if status in _CODE_OF_HTTP:
        return _CODE_OF_HTTP[status]
    if status == 502:
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN


def error_for_status(code: grpc.StatusCode, message: str) -> MatrixInferError:
    """A peer's non-OK status as our error, keeping its code."""
    return ERRORS_BY_CODE.get(code, Internal)(message or code.name)


@contextlib.contextmanager
def peer_errors() -> Iterator[None]:
    """Calls to another service inside this block fail with our errors (the peer's
    code kept), not gRPC's: what every client wrapper does around its calls."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise error_for_status(e.code(), e.details() or "") from e


# Clients reject trailers over their metadata limit (8 KiB by default in gRPC), and
# then the caller would see a confusing INTERNAL instead of our error; so the
# message and the rich details are bounded well below it.
_MAX_MESSAGE_CHARS = 1024
_MAX_DETAILS_BYTES = 4096
_MAX_VIOLATION_CHARS = 256


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The status code ``error`` maps to; INTERNAL for anything not in the table."""
    for cls in type(error).__mro__:
        if issubclass(cls, MatrixInferError) and cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class RpcStatus:
    """A non-OK status ready for ``context.abort``."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_request(error: InvalidArgument) -> error_details_pb2.BadRequest:
    bad_request = error_details_pb2.BadRequest()
    for violation in error.violations:
        bad_request.field_violations.add(
            field=_truncate(violation.field, _MAX_VIOLATION_CHARS),
            description=_truncate(violation.description, _MAX_VIOLATION_CHARS),
        )
        if bad_request.ByteSize() > _MAX_DETAILS_BYTES:
            # Keep the first violations that fit: they are enough to fix the request.
            del bad_request.field_violations[-1]
            break
    return bad_request


def to_rpc_status(error: BaseException) -> RpcStatus:
    """Map ``error`` to code, caller-safe message and packed rich details."""
    code = status_code_for(error)
    details: list[Any] = []
    if code is grpc.StatusCode.INTERNAL or not isinstance(error, MatrixInferError):
        message = INTERNAL_MESSAGE
        details.append(
            error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN)
        )
    else:
        message = _truncate(error.message or code.name, _MAX_MESSAGE_CHARS)
        details.append(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
        )
        if isinstance(error, InvalidArgument) and error.violations:
            details.append(_bad_request(error))
        if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(round(max(error.retry_after_s, 0.0) * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    grpc_status = rpc_status.to_status(status)
    return RpcStatus(
        code=grpc_status.code,
        message=grpc_status.details,
        trailing_metadata=tuple(grpc_status.trailing_metadata),
    )


async def abort_for(context: Any, error: Exception, method: str) -> None:
    """Answer the RPC with the status :data:`STATUS_CODES` gives ``error``.

    Used by the one server interceptor (``StandardInterceptor``) for every handler.
    Unknown exceptions become INTERNAL with a generic message and are logged with
    their traceback; our own errors are expected outcomes and logged at DEBUG.
    """
    status = to_rpc_status(error)
    if status.code is grpc.StatusCode.INTERNAL:
        logger.exception("unhandled error in %s", method, exc_info=error)
    else:
        # Expected outcomes (NotFound, bad input) are counted by the metrics; at
        # INFO they would flood the hot path.
        logger.debug(
            "%s failed: %s %s",
            method,
            status.code.name,
            status.message,
            extra={"grpc_code": status.code.name},
        )
    await context.abort(
        status.code, status.message, trailing_metadata=status.trailing_metadata
    )


@dataclass(frozen=True)
class ErrorDetails:
    """Rich details a client decoded from a failed call; None where absent."""

    code: grpc.StatusCode
    message: str
    bad_request: error_details_pb2.BadRequest | None = None
    error_info: error_details_pb2.ErrorInfo | None = None
    retry_info: error_details_pb2.RetryInfo | None = None

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        if self.bad_request is None:
            return []
        return [(v.field, v.description) for v in self.bad_request.field_violations]

    @property
    def retry_after_s(self) -> float | None:
        if self.retry_info is None or not self.retry_info.HasField("retry_delay"):
            return None
        return float(self.retry_info.retry_delay.ToNanoseconds()) / 1e9


def _details_blob(metadata: Iterable[Any] | None) -> bytes | None:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def error_details(error: Any) -> ErrorDetails:
    """Decode the google.rpc details of a failed call (``grpc.aio.AioRpcError`` or a
    sync ``grpc.RpcError`` that is also a ``grpc.Call``).

    Malformed details (a peer is not trusted to send valid ones) decode as absent.
    """
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    blob = _details_blob(error.trailing_metadata())
    if blob is None:
        return ErrorDetails(code=code, message=message)
    status = status_pb2.Status()
    try:
        status.ParseFromString(blob)
    except DecodeError:
        return ErrorDetails(code=code, message=message)
    bad_request: error_details_pb2.BadRequest | None = None
    error_info: error_details_pb2.ErrorInfo | None = None
    retry_info: error_details_pb2.RetryInfo | None = None
    for packed in status.details:
        try:
            if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                packed.Unpack(bad_request)
            elif packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                error_info = error_details_pb2.ErrorInfo()
                packed.Unpack(error_info)
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                packed.Unpack(retry_info)
        except DecodeError:
            continue
    return ErrorDetails(
        code=code,
        message=message,
        bad_request=bad_request,
        error_info=error_info,
        retry_info=retry_info,
    )
