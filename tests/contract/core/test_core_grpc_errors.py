"""What a client sees when a handler raises: codes, safe messages, rich details."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from matrixinfer.core.errors import (
    Conflict,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from matrixinfer.core.grpc.errors import ERROR_DOMAIN, error_details
from tests.contract.core.conftest import Connect, Serve
from tests.contract.core.probe import (
    stream_stream,
    stream_unary,
    unary,
    unary_stream,
)

pytestmark = pytest.mark.timeout(20)


def _raiser(error: BaseException) -> Any:
    async def handler(request: bytes, context: Any) -> bytes:
        raise error

    return grpc.unary_unary_rpc_method_handler(handler)


async def _fail(channel: Any, name: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(channel, name)(b"", timeout=5)
    return info.value


async def test_invalid_argument_names_every_field(
    serve: Serve, connect: Connect
) -> None:
    error = InvalidArgument(
        "",
        [
            FieldViolation("spec.replicas", "must be at least 0"),
            FieldViolation("metadata.name", "must be a DNS label"),
        ],
    )
    server = await serve({"Bad": _raiser(error)})

    rpc_error = await _fail(connect(server.port), "Bad")

    assert rpc_error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(rpc_error)
    assert details.field_violations == [
        ("spec.replicas", "must be at least 0"),
        ("metadata.name", "must be a DNS label"),
    ]
    assert details.error_info is not None
    assert details.error_info.reason == "INVALID_ARGUMENT"
    assert details.error_info.domain == ERROR_DOMAIN
    assert "spec.replicas" in rpc_error.details()


async def test_not_found_keeps_our_message(serve: Serve, connect: Connect) -> None:
    server = await serve({"Get": _raiser(NotFound("model iris not found"))})

    rpc_error = await _fail(connect(server.port), "Get")

    assert rpc_error.code() is grpc.StatusCode.NOT_FOUND
    assert rpc_error.details() == "model iris not found"
    assert error_details(rpc_error).bad_request is None


async def test_unknown_exception_is_internal_without_its_text(
    serve: Serve, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve({"Boom": _raiser(RuntimeError("secret-token"))})

    with caplog.at_level(logging.ERROR, logger="matrixinfer.core.grpc.errors"):
        rpc_error = await _fail(connect(server.port), "Boom")

    assert rpc_error.code() is grpc.StatusCode.INTERNAL
    assert rpc_error.details() == "internal error"
    trailers = b"".join(
        value if isinstance(value, bytes) else value.encode()
        for _, value in rpc_error.trailing_metadata()
    )
    assert b"secret-token" not in trailers
    # The operator, unlike the caller, gets the exception with its traceback.
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1
    assert "RuntimeError: secret-token" in caplog.text


async def test_resource_exhausted_tells_when_to_retry(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(
        {"Busy": _raiser(ResourceExhausted("slow down", retry_after_s=1.5))}
    )

    rpc_error = await _fail(connect(server.port), "Busy")

    assert rpc_error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_details(rpc_error).retry_after_s == pytest.approx(1.5)


async def test_error_mid_stream_ends_the_stream_with_its_status(
    serve: Serve, connect: Connect
) -> None:
    async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        raise Conflict("resourceVersion 7 is stale")

    server = await serve({"Watch": grpc.unary_stream_rpc_method_handler(watch)})

    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in unary_stream(connect(server.port), "Watch")(
            b"", timeout=5
        ):
            received.append(message)

    assert received == [b"one", b"two"]
    assert info.value.code() is grpc.StatusCode.ABORTED
    assert info.value.details() == "resourceVersion 7 is stale"


async def test_write_style_stream_handler_still_works_and_maps_errors(
    serve: Serve, connect: Connect
) -> None:
    # Handlers that call context.write() instead of yielding (grpc's health Watch
    # does) must keep working through our interceptors.
    async def push(request: bytes, context: Any) -> None:
        await context.write(b"first")
        raise NotFound("gone")

    server = await serve({"Push": grpc.unary_stream_rpc_method_handler(push)})

    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in unary_stream(connect(server.port), "Push")(b"", timeout=5):
            received.append(message)

    assert received == [b"first"]
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_client_streaming_handlers_map_errors(
    serve: Serve, connect: Connect
) -> None:
    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for _ in requests:
            raise InvalidArgument.field("chunk", "too big")
        return b""

    async def chat(
        requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request
        raise NotFound("peer left")

    server = await serve(
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        }
    )
    channel = connect(server.port)

    with pytest.raises(grpc.aio.AioRpcError) as upload_info:
        await stream_unary(channel, "Upload")(iter([b"x"]), timeout=5)
    assert upload_info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(upload_info.value).field_violations == [("chunk", "too big")]

    echoed: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as chat_info:
        async for message in stream_stream(channel, "Chat")(
            iter([b"a", b"b"]), timeout=5
        ):
            echoed.append(message)
    assert echoed == [b"a", b"b"]
    assert chat_info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_handlers_own_abort_passes_through_untouched(
    serve: Serve, connect: Connect
) -> None:
    async def deny(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "scope models:write")
        return b""

    server = await serve({"Deny": grpc.unary_unary_rpc_method_handler(deny)})

    rpc_error = await _fail(connect(server.port), "Deny")

    assert rpc_error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error.details() == "scope models:write"
    # No ErrorInfo of ours was bolted on: the abort was not re-translated.
    assert error_details(rpc_error).error_info is None


async def test_cancellation_reaches_the_handler_and_is_not_an_error(
    serve: Serve, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(request: bytes, context: Any) -> bytes:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    server = await serve({"Slow": grpc.unary_unary_rpc_method_handler(slow)})
    call = unary(connect(server.port), "Slow")(b"", timeout=10)
    await asyncio.wait_for(started.wait(), 5)

    call.cancel()

    await asyncio.wait_for(cancelled.wait(), 5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_many_violations_still_reach_the_client(
    serve: Serve, connect: Connect
) -> None:
    # Trailers beyond the client's metadata limit would turn the answer into an
    # opaque transport error; the details are cut to fit instead.
    violations = [
        FieldViolation(f"spec.items[{i}].name", "x" * 1000) for i in range(1000)
    ]
    server = await serve({"Bad": _raiser(InvalidArgument("", violations))})

    rpc_error = await _fail(connect(server.port), "Bad")

    assert rpc_error.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = [field for field, _ in error_details(rpc_error).field_violations]
    assert fields[:2] == ["spec.items[0].name", "spec.items[1].name"]
