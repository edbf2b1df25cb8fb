"""Errors as Kubernetes ``Status`` objects.

The HTTP code comes from the one gRPC → HTTP table (``matrixinfer.core.grpc.errors``)
through the code our error maps to, with the two refinements the Kubernetes API
makes and its clients rely on: a rejected object (field violations) is 422 Invalid,
and an expired resourceVersion is 410 Gone (client-go relists on it).
"""

from __future__ import annotations

import logging
from typing import Any

from matrixinfer.core.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    Expired,
    FailedPrecondition,
    InvalidArgument,
    MatrixInferError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from matrixinfer.core.grpc.errors import (
    INTERNAL_MESSAGE,
    http_status_for,
    status_code_for,
)

log = logging.getLogger(__name__)

#: Our error → the Kubernetes StatusReason (metav1.StatusReason*).
_REASONS: tuple[tuple[type[MatrixInferError], str], ...] = (
    (InvalidArgument, "BadRequest"),
    (NotFound, "NotFound"),
    (AlreadyExists, "AlreadyExists"),
    (Conflict, "Conflict"),
    (FailedPrecondition, "BadRequest"),
    (Expired, "Expired"),
    (Unauthenticated, "Unauthorized"),
    (PermissionDenied, "Forbidden"),
    (ResourceExhausted, "TooManyRequests"),
    (Unavailable, "ServiceUnavailable"),
    (DeadlineExceeded, "Timeout"),
    (Cancelled, "Timeout"),
    (Unimplemented, "MethodNotAllowed"),
)

#: A Status kubectl and client-go read as "gone, relist".
GONE = 410
#: A Status for an object that failed validation (StatusReasonInvalid).
UNPROCESSABLE = 422


class KubeError(Exception):
    """An answer only the Kubernetes surface gives (no domain error stands for it:
    a wrong media type, a path that names no resource)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = details
    return out


def status_for(
    error: BaseException, kind: str = "", name: str = "", group: str = ""
) -> dict[str, Any]:
    """The Status answering ``error`` (its ``code`` is the HTTP status to send)."""
    if isinstance(error, KubeError):
        return status(error.code, error.reason, error.message)
    if not isinstance(error, MatrixInferError):
        log.exception("unhandled error on the Kubernetes API", exc_info=error)
        return status(500, "InternalError", INTERNAL_MESSAGE)
    code = http_status_for(status_code_for(error))
    reason = next(
        (r for cls, r in _REASONS if isinstance(error, cls)),
        "InternalError",
    )
    if code >= 500 and reason == "InternalError":
        return status(code, reason, INTERNAL_MESSAGE)
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    if isinstance(error, Expired):
        code = GONE
    if isinstance(error, InvalidArgument) and error.violations:
        code, reason = UNPROCESSABLE, "Invalid"
        details["causes"] = [
            {
                "reason": "FieldValueInvalid",
                "message": v.description,
                "field": v.field,
            }
            for v in error.violations
        ]
    return status(code, reason, error.message or reason, details or None)
