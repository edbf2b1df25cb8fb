"""MatrixInfer's own error hierarchy.

Domain code raises these; adapters translate library errors into them with
``raise ... from e``. Exactly one place (``matrixinfer.core.grpc.errors``) maps them to
gRPC status codes, so domain code never imports grpc and never carries HTTP codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One wrong field: its path (``spec.rules[1].targets[0].weight``) and why."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class MatrixInferError(Exception):
    """Base of every error we raise on purpose. Unknown exceptions become INTERNAL."""

    #: Machine-readable reason, sent as google.rpc.ErrorInfo.reason.
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(MatrixInferError):
    """The request is malformed; ``violations`` name the wrong fields."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        violations = list(violations or [])
        if not message and violations:
            message = "; ".join(str(v) for v in violations)
        super().__init__(message, reason=reason)
        self.violations = violations

    @classmethod
    def field(cls, path: str, description: str) -> InvalidArgument:
        violation = FieldViolation(path, description)
        return cls(str(violation), [violation])


class NotFound(MatrixInferError):
    reason = "NOT_FOUND"


class AlreadyExists(MatrixInferError):
    reason = "ALREADY_EXISTS"


class Conflict(MatrixInferError):
    """Optimistic concurrency failed (stale resourceVersion): re-read and retry."""

    reason = "CONFLICT"


class FailedPrecondition(MatrixInferError):
    reason = "FAILED_PRECONDITION"


class Expired(MatrixInferError):
    """A resourceVersion older than the retained history: list again, then watch."""

    reason = "EXPIRED"


class Unauthenticated(MatrixInferError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(MatrixInferError):
    reason = "PERMISSION_DENIED"


class ResourceExhausted(MatrixInferError):
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class Unavailable(MatrixInferError):
    """A dependency cannot be reached right now; retrying later may succeed."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(MatrixInferError):
    reason = "DEADLINE_EXCEEDED"


class Cancelled(MatrixInferError):
    """The caller gave up (a peer's CANCELLED, carried on as ours)."""

    reason = "CANCELLED"


class Unimplemented(MatrixInferError):
    reason = "UNIMPLEMENTED"


class Internal(MatrixInferError):
    """A peer failed in a way it did not explain (INTERNAL, UNKNOWN, DATA_LOSS)."""

    reason = "INTERNAL"


@dataclass
class ViolationCollector:
    """Collects field violations so one response can name every wrong field."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def raise_if_any(self, message: str = "") -> None:
        if self.violations:
            raise InvalidArgument(message, self.violations)
