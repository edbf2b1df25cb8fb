"""One mapping between gRPC codes, our errors and HTTP statuses, walked for every
code in both directions."""

from __future__ import annotations

import grpc
import pytest

from matrixinfer.core.grpc.errors import (
    HTTP_STATUS,
    code_for_http_status,
    error_for_status,
    http_status_for,
    status_code_for,
)

CODES = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
# The codes that come back as themselves from HTTP; the others share an HTTP status
# with one of these (400, 409, 500).
CANONICAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
def test_every_code_has_an_http_status_that_maps_back(code: grpc.StatusCode) -> None:
    status = http_status_for(code)
    assert status == HTTP_STATUS[code] and status >= 400
    back = code_for_http_status(status)
    assert http_status_for(back) == status
    if code in CANONICAL:
        assert back is code


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
def test_a_peers_code_survives_our_errors(code: grpc.StatusCode) -> None:
    """What an adapter raises for a peer's status answers our caller with the same
    status (UNKNOWN and DATA_LOSS become INTERNAL: we do not know more)."""
    error = error_for_status(code, "the peer's words")
    assert error.message == "the peer's words"
    expected = (
        grpc.StatusCode.INTERNAL
        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)
        else code
    )
    assert status_code_for(error) is expected


def test_http_statuses_outside_the_table() -> None:
    assert code_for_http_status(502) is grpc.StatusCode.UNAVAILABLE
    assert code_for_http_status(418) is grpc.StatusCode.FAILED_PRECONDITION
    assert code_for_http_status(507) is grpc.StatusCode.INTERNAL
