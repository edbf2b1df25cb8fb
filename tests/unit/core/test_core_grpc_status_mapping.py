"""The one table from our errors to gRPC status codes, and what a caller may see."""

from __future__ import annotations

from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    error_details_pb2,
    status_pb2,
)

from matrixinfer.core import errors
from matrixinfer.core.grpc.errors import (
    STATUS_DETAILS_KEY,
    status_code_for,
    to_rpc_status,
)


@pytest.mark.parametrize(
    "error, code",
    [
        (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.Conflict("x"), grpc.StatusCode.ABORTED),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Expired("x"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.MatrixInferError("x"), grpc.StatusCode.INTERNAL),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_its_code(error: Exception, code: object) -> None:
    assert status_code_for(error) is code
    assert to_rpc_status(error).code is code


def test_subclasses_map_like_their_parent() -> None:
    class ModelNotFound(errors.NotFound):
        reason = "MODEL_NOT_FOUND"

    status = to_rpc_status(ModelNotFound("iris"))

    assert status.code is grpc.StatusCode.NOT_FOUND
    assert _details(status.trailing_metadata)[0].reason == "MODEL_NOT_FOUND"


def test_internal_errors_never_echo_their_text() -> None:
    status = to_rpc_status(ValueError("password=hunter2"))

    assert status.message == "internal error"
    assert all(b"hunter2" not in _bytes(v) for _, v in status.trailing_metadata)


def test_details_stay_small_however_many_fields_are_wrong() -> None:
    violations = [
        errors.FieldViolation(f"spec.items[{i}].name", "x" * 1000) for i in range(1000)
    ]

    status = to_rpc_status(errors.InvalidArgument("", violations))

    size = sum(len(_bytes(v)) for _, v in status.trailing_metadata)
    assert size < 6 * 1024
    assert len(status.message) <= 1024
    bad_request = _details(status.trailing_metadata)[1]
    assert bad_request.field_violations[0].field == "spec.items[0].name"


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _details(metadata: tuple[tuple[str, str | bytes], ...]) -> list[Any]:
    [blob] = [_bytes(v) for k, v in metadata if k == STATUS_DETAILS_KEY]
    status = status_pb2.Status.FromString(blob)
    decoded: list[Any] = []
    for packed in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                decoded.append(message)
    return decoded
