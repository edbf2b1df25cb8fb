"""Errors of the registry's Kubernetes API as Status objects: the HTTP code from the
one gRPC → HTTP table, Kubernetes' reasons, field paths as causes."""

from __future__ import annotations

import pytest

from matrixinfer.core.errors import (
    AlreadyExists,
    Conflict,
    Expired,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    MatrixInferError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from matrixinfer.registry.kube.status import KubeError, status_for


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (NotFound("ModelInfer default/x not found"), 404, "NotFound"),
        (AlreadyExists("exists"), 409, "AlreadyExists"),
        (Conflict("stale"), 409, "Conflict"),
        (InvalidArgument("bad continue"), 400, "BadRequest"),
        (FailedPrecondition("being deleted"), 400, "BadRequest"),
        (Expired("too old"), 410, "Expired"),
        (ResourceExhausted("slow down"), 429, "TooManyRequests"),
        (Unavailable("database down"), 503, "ServiceUnavailable"),
    ],
)
def test_codes_and_reasons(error: MatrixInferError, code: int, reason: str) -> None:
    status = status_for(error)

    assert status["kind"] == "Status"
    assert status["apiVersion"] == "v1"
    assert status["status"] == "Failure"
    assert (status["code"], status["reason"]) == (code, reason)
    assert status["message"] == error.message


def test_field_violations_are_invalid_with_causes() -> None:
    error = InvalidArgument(
        "",
        [
            FieldViolation("spec.replicas", "must be 0..1000"),
            FieldViolation("metadata.name", "required"),
        ],
    )

    status = status_for(error, kind="modelinfers", name="iris", group="g")

    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["details"] == {
        "name": "iris",
        "group": "g",
        "kind": "modelinfers",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "must be 0..1000",
                "field": "spec.replicas",
            },
            {
                "reason": "FieldValueInvalid",
                "message": "required",
                "field": "metadata.name",
            },
        ],
    }


@pytest.mark.parametrize("error", [RuntimeError("secret dsn"), Internal("db said x")])
def test_internal_errors_hide_their_text(error: Exception) -> None:
    status = status_for(error)

    assert (status["code"], status["reason"]) == (500, "InternalError")
    assert status["message"] == "internal error"
    assert "details" not in status


def test_surface_errors_keep_their_code() -> None:
    status = status_for(KubeError(415, "UnsupportedMediaType", "no strategic merge"))

    assert (status["code"], status["reason"]) == (415, "UnsupportedMediaType")
    assert status["message"] == "no strategic merge"
