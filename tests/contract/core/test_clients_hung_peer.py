"""A hung peer cannot hang a service: every client wrapper (registry, controller,
autoscaler) on core's channel gives up at its deadline with DeadlineExceeded.

The peer is a real TCP listener that accepts connections and never says a word
(a process stopped with SIGSTOP looks the same from outside)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.core.autoscaler import AutoscalerClient
from matrixinfer.core.controller import ControllerClient
from matrixinfer.core.errors import DeadlineExceeded
from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.registry.client import RegistryClient

TIMEOUT_S = 0.5


@pytest_asyncio.fixture
async def silent_peer() -> AsyncIterator[str]:
    accepted: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def accept() -> None:
        while True:
            connection, _ = await loop.sock_accept(listener)
            accepted.append(connection)  # held open, never read or written

    task = asyncio.create_task(accept())
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        task.cancel()
        for connection in accepted:
            connection.close()
        listener.close()


async def _reports() -> AsyncIterator[apb.LoadReport]:
    yield apb.LoadReport(gateway_id="g")
    await asyncio.sleep(3600)


CALLS: dict[str, Callable[[object], Awaitable[object]]] = {
    "registry get": lambda c: RegistryClient(c, TIMEOUT_S).get("Model", "default", "m"),
    "registry list": lambda c: RegistryClient(c, TIMEOUT_S).list_all("Model"),
    "controller get_replicas": lambda c: ControllerClient(c, TIMEOUT_S).get_replicas(
        "default", "m"
    ),
    "controller scale": lambda c: ControllerClient(c, TIMEOUT_S).scale(
        "default", "m", 1, "test"
    ),
    "autoscaler activate": lambda c: AutoscalerClient(c, TIMEOUT_S).activate(
        "default", "m"
    ),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_silent_peer_ends_in_deadline_exceeded(
    silent_peer: str, call: str
) -> None:
    channel = create_channel(silent_peer)
    try:
        with pytest.raises(DeadlineExceeded):
            # A hung client would end in TimeoutError at this outer bound instead.
            await asyncio.wait_for(CALLS[call](channel), 30)
    finally:
        await channel.close()


async def test_the_load_stream_to_a_silent_autoscaler_is_bounded_by_its_deadline(
    silent_peer: str,
) -> None:
    # A long-lived stream has no deadline of its own; the channel's stream timeout
    # bounds it (the gateway's reporter reconnects after it).
    channel = create_channel(silent_peer, stream_timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(
                AutoscalerClient(channel).report_load(_reports()), 30
            )
    finally:
        await channel.close()
