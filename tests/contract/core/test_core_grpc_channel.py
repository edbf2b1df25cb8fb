"""create_channel against real servers: deadlines, bounded retries, request ids."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from matrixinfer.core.errors import InvalidArgument, ResourceExhausted, Unavailable
from matrixinfer.core.grpc.errors import to_rpc_status
from matrixinfer.core.logging import bind_request_id, request_id_var, reset_request_id
from tests.contract.core.conftest import Connect, Serve
from tests.contract.core.probe import unary, unary_stream

pytestmark = pytest.mark.timeout(20)


def _sleeper(seconds: float) -> Any:
    async def handler(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(seconds)
        return b"late"

    return grpc.unary_unary_rpc_method_handler(handler)


async def test_calls_without_timeout_get_the_default_deadline(
    serve: Serve, connect: Connect
) -> None:
    server = await serve({"Slow": _sleeper(1.0)})
    slow = unary(connect(server.port, default_timeout_s=0.2), "Slow")

    started_s = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await slow(b"")

    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started_s < 0.9


async def test_an_explicit_timeout_wins_over_the_default(
    serve: Serve, connect: Connect
) -> None:
    server = await serve({"Slow": _sleeper(0.4)})
    slow = unary(connect(server.port, default_timeout_s=0.2), "Slow")

    assert await slow(b"", timeout=5) == b"late"


async def test_streams_get_a_deadline_only_when_configured(
    serve: Serve, connect: Connect
) -> None:
    async def ticks(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0.15)
            yield b"tick"

    server = await serve({"Ticks": grpc.unary_stream_rpc_method_handler(ticks)})
    open_ended = unary_stream(connect(server.port, default_timeout_s=0.2), "Ticks")
    bounded = unary_stream(
        connect(server.port, default_timeout_s=0.2, stream_timeout_s=0.2), "Ticks"
    )

    assert [m async for m in open_ended(b"")] == [b"tick"] * 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in bounded(b""):
            pass
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def _flaky(failures: int, attempts: list[float]) -> Any:
    async def handler(request: bytes, context: Any) -> bytes:
        attempts.append(time.monotonic())
        if len(attempts) <= failures:
            raise Unavailable("warming up")
        return b"ok"

    return grpc.unary_unary_rpc_method_handler(handler)


async def test_unavailable_is_retried_until_it_succeeds(
    serve: Serve, connect: Connect
) -> None:
    attempts: list[float] = []
    server = await serve({"Flaky": _flaky(2, attempts)})
    flaky = unary(
        connect(server.port, retry_attempts=3, retry_max_backoff_s=0.1), "Flaky"
    )

    assert await flaky(b"") == b"ok"
    assert len(attempts) == 3


async def test_retries_are_bounded(serve: Serve, connect: Connect) -> None:
    attempts: list[float] = []
    server = await serve({"Down": _flaky(100, attempts)})
    down = unary(
        connect(server.port, retry_attempts=3, retry_max_backoff_s=0.1), "Down"
    )

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await down(b"")

    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(attempts) == 3


async def test_other_errors_are_not_retried(serve: Serve, connect: Connect) -> None:
    attempts: list[float] = []

    async def bad(request: bytes, context: Any) -> bytes:
        attempts.append(time.monotonic())
        raise InvalidArgument.field("name", "required")

    server = await serve({"Bad": grpc.unary_unary_rpc_method_handler(bad)})
    call = unary(connect(server.port, retry_attempts=3, retry_max_backoff_s=0.1), "Bad")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(b"")

    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(attempts) == 1


async def test_retry_honours_retry_info_within_the_deadline(
    serve: Serve, connect: Connect
) -> None:
    attempts: list[float] = []

    async def overloaded(request: bytes, context: Any) -> bytes:
        attempts.append(time.monotonic())
        # UNAVAILABLE carrying "come back in 5 s" (RetryInfo): with a 0.5 s deadline
        # the client must give up at once rather than sleep past it.
        status = to_rpc_status(ResourceExhausted("busy", retry_after_s=5.0))
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "busy",
            trailing_metadata=status.trailing_metadata,
        )
        return b""

    server = await serve({"Busy": grpc.unary_unary_rpc_method_handler(overloaded)})
    busy = unary(connect(server.port, default_timeout_s=0.5, retry_attempts=5), "Busy")

    started_s = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await busy(b"")

    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(attempts) == 1
    assert time.monotonic() - started_s < 1.0


async def test_request_id_travels_to_the_server(serve: Serve, connect: Connect) -> None:
    async def who(request: bytes, context: Any) -> bytes:
        return (request_id_var.get() or "").encode()

    server = await serve({"Who": grpc.unary_unary_rpc_method_handler(who)})
    call = unary(connect(server.port), "Who")

    token = bind_request_id("upstream-7")
    try:
        seen = await call(b"")
    finally:
        reset_request_id(token)

    assert seen == b"upstream-7"
