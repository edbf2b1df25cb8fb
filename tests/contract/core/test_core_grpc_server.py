"""start_server / serve_forever against real clients: health, reflection, published
port, resource limits, graceful stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from grpc_health.v1 import (  # type: ignore[import-untyped, unused-ignore]
    health_pb2,
    health_pb2_grpc,
)
from grpc_reflection.v1alpha import (  # type: ignore[import-untyped, unused-ignore]
    reflection_pb2,
    reflection_pb2_grpc,
)

from matrixinfer.core.grpc.server import serve_forever
from matrixinfer.core.logging import request_id_var
from tests.contract.core.conftest import Connect, Serve
from tests.contract.core.probe import SERVICE, probe_settings, unary

pytestmark = pytest.mark.timeout(20)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _echo(request: bytes, context: Any) -> bytes:
    return request


ECHO = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}


async def test_health_reports_named_service_serving(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(ECHO)
    stub = health_pb2_grpc.HealthStub(connect(server.port))

    named = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))

    assert named.status == SERVING
    assert overall.status == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(serve: Serve, connect: Connect) -> None:
    server = await serve(ECHO)
    stub = reflection_pb2_grpc.ServerReflectionStub(connect(server.port))

    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    first = await anext(aiter(responses))
    responses.cancel()

    names = {s.name for s in first.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_port_zero_binds_a_free_port_and_publishes_it(
    serve: Serve, connect: Connect, tmp_path: Path
) -> None:
    port_file = tmp_path / "run" / "core-test.port"

    server = await serve(ECHO, probe_settings(port_file=port_file))

    assert server.port > 0
    assert port_file.read_text().strip() == str(server.port)
    assert [p.name for p in port_file.parent.iterdir()] == [port_file.name]
    assert await unary(connect(server.port), "Echo")(b"hi") == b"hi"


async def test_a_taken_port_fails_loudly(serve: Serve) -> None:
    first = await serve(ECHO)

    with pytest.raises(OSError, match="cannot bind"):
        await serve(ECHO, probe_settings(grpc_port=first.port))


async def test_oversized_message_is_refused(serve: Serve, connect: Connect) -> None:
    calls: list[bytes] = []

    async def record(request: bytes, context: Any) -> bytes:
        calls.append(request)
        return b""

    server = await serve(
        {"Put": grpc.unary_unary_rpc_method_handler(record)},
        probe_settings(max_message_bytes=1024),
    )
    put = unary(connect(server.port), "Put")

    assert await put(b"x" * 1000) == b""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(b"x" * 2048)

    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(calls) == 1


async def test_oversized_metadata_is_refused(serve: Serve, connect: Connect) -> None:
    calls: list[bytes] = []

    async def record(request: bytes, context: Any) -> bytes:
        calls.append(request)
        return b""

    server = await serve(
        {"Put": grpc.unary_unary_rpc_method_handler(record)},
        probe_settings(max_metadata_bytes=1024),
    )
    put = unary(connect(server.port), "Put")

    assert await put(b"", metadata=(("x-small", "y" * 100),)) == b""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(b"", metadata=(("x-big", "y" * 4096),))

    assert info.value.code() is not grpc.StatusCode.OK
    assert len(calls) == 1


async def test_request_id_is_bound_for_the_handler(
    serve: Serve, connect: Connect
) -> None:
    async def who(request: bytes, context: Any) -> bytes:
        return (request_id_var.get() or "").encode()

    server = await serve({"Who": grpc.unary_unary_rpc_method_handler(who)})
    call = unary(connect(server.port), "Who")

    given = await call(b"", metadata=(("x-request-id", "req-42"),))
    fresh = await call(b"")
    hostile = await call(b"", metadata=(("x-request-id", "a" * 500),))

    assert given == b"req-42"
    assert re.fullmatch(rb"[0-9a-f]{32}", fresh)
    assert re.fullmatch(rb"[0-9a-f]{32}", hostile)
    assert request_id_var.get() is None


async def test_stop_reports_not_serving_before_closing(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(ECHO)
    stub = health_pb2_grpc.HealthStub(connect(server.port, default_timeout_s=None))
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    updates = aiter(watch)
    assert (await anext(updates)).status == SERVING

    stopping = asyncio.create_task(server.stop(grace_s=2))
    try:
        update = await asyncio.wait_for(anext(updates), 5)
    finally:
        watch.cancel()
        await stopping

    assert update.status == NOT_SERVING


async def test_serve_forever_stops_gracefully_on_sigterm(serve: Serve) -> None:
    server = await serve(ECHO)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)

    await asyncio.wait_for(serve_forever(server, grace_s=0.5), 5)

    # The server really terminated, and the process' handlers are as they were.
    await asyncio.wait_for(server.wait(), 1)
    after = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    assert after == before
