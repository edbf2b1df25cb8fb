"""Fixtures for matrixinfer.core's contract tests: real in-process gRPC servers on
port 0 and channels to them, all stopped or closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest_asyncio

from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.server import RunningServer, start_server
from matrixinfer.core.settings import ServiceSettings
from tests.contract.core.probe import SERVICE, probe_settings

Serve = Callable[..., Awaitable[RunningServer]]
Connect = Callable[..., Any]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start servers whose methods are ``{name: grpc.*_rpc_method_handler(...)}``."""
    running: list[RunningServer] = []

    async def _serve(
        methods: Mapping[str, Any],
        settings: ServiceSettings | None = None,
        **kwargs: Any,
    ) -> RunningServer:
        def register(server: Any) -> None:
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(SERVICE, dict(methods)),)
            )

        server = await start_server(
            settings or probe_settings(),
            register,
            service_names=[SERVICE],
            **kwargs,
        )
        running.append(server)
        return server

    try:
        yield _serve
    finally:
        for server in running:
            await server.stop(0)


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Connect]:
    """Channels made by ``create_channel``."""
    channels: list[Any] = []

    def _connect(port: int, **kwargs: Any) -> Any:
        kwargs.setdefault("default_timeout_s", 5.0)
        channel = create_channel(f"127.0.0.1:{port}", **kwargs)
        channels.append(channel)
        return channel

    try:
        yield _connect
    finally:
        for channel in channels:
            await channel.close()
