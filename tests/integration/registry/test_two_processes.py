"""Two registry processes on one PostgreSQL: both migrate at once without harm, and a
watcher on either sees writes made through the other (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from tests.manifests import model


def _start(
    url: str, port_file: pathlib.Path, log: pathlib.Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MATRIXINFER_REGISTRY_DATABASE_URL": url,
        "MATRIXINFER_REGISTRY_GRPC_PORT": "0",
        "MATRIXINFER_REGISTRY_KUBE_PORT": "0",
        "MATRIXINFER_REGISTRY_PORT_FILE": str(port_file),
        # Long poll: delivery must come from NOTIFY, not from the safety-net poll.
        "MATRIXINFER_REGISTRY_WATCH_POLL_INTERVAL_S": "30",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "matrixinfer.registry"],
            env=env,
            stdout=out,
            stderr=out,
        )


def _wait_port(
    port_file: pathlib.Path, proc: subprocess.Popen[bytes], log: pathlib.Path
) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"registry exited early:\n{log.read_text()}")
        if port_file.exists():
            return int(port_file.read_text())
        time.sleep(0.05)
    raise AssertionError(f"registry did not start:\n{log.read_text()}")


@pytest.fixture
def two_registries(
    pg_schema_url: str, tmp_path: pathlib.Path
) -> Iterator[tuple[str, str]]:
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(
                (
                    _start(
                        pg_schema_url,
                        tmp_path / f"{name}.port",
                        tmp_path / f"{name}.log",
                    ),
                    tmp_path / f"{name}.port",
                    tmp_path / f"{name}.log",
                )
            )
        yield tuple(  # type: ignore[misc]
            f"127.0.0.1:{_wait_port(port_file, proc, log)}"
            for proc, port_file, log in procs
        )
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, log in procs:
            try:
                assert proc.wait(timeout=15) == 0, log.read_text()
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


async def _watch_names(
    address: str, count: int, ready: asyncio.Event
) -> list[tuple[str, str]]:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        stream = stub.Watch(rpb.WatchRequest(kind="Model", send_initial_events=True))
        seen: list[tuple[str, str]] = []
        async for event in stream:
            if event.initial_events_end:
                ready.set()
                continue
            seen.append((event.type, event.object.model.metadata.name))
            if len(seen) == count:
                stream.cancel()
                break
        return seen


async def test_watchers_on_each_process_see_writes_through_the_other(
    two_registries: tuple[str, str],
) -> None:
    a, b = two_registries
    ready_a, ready_b = asyncio.Event(), asyncio.Event()
    watch_a = asyncio.create_task(_watch_names(a, 2, ready_a))
    watch_b = asyncio.create_task(_watch_names(b, 2, ready_b))
    await asyncio.wait_for(asyncio.gather(ready_a.wait(), ready_b.wait()), 10)
    for address, name in ((a, "from-a"), (b, "from-b")):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            await stub.Apply(rpb.ApplyRequest(manifest=model(name)), timeout=10)
    expected = [("ADDED", "from-a"), ("ADDED", "from-b")]
    # Well under the 30 s poll: only NOTIFY can deliver this fast.
    assert await asyncio.wait_for(watch_a, 10) == expected
    assert await asyncio.wait_for(watch_b, 10) == expected


async def _watch_versions(address: str, count: int, ready: asyncio.Event) -> list[int]:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        stream = stub.Watch(rpb.WatchRequest(kind="Model", send_initial_events=True))
        versions: list[int] = []
        async for event in stream:
            if event.initial_events_end:
                ready.set()
                continue
            versions.append(int(event.resource_version))
            if len(versions) == count:
                stream.cancel()
                break
        return versions


async def test_interleaved_writers_every_watcher_sees_one_ordered_history(
    two_registries: tuple[str, str],
) -> None:
    a, b = two_registries
    ready = [asyncio.Event(), asyncio.Event()]
    watchers = [
        asyncio.create_task(_watch_versions(address, 40, event))
        for address, event in zip((a, b), ready, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)
    async with (
        grpc.aio.insecure_channel(a) as channel_a,
        grpc.aio.insecure_channel(b) as channel_b,
    ):
        stubs = [
            registry_pb2_grpc.RegistryStub(channel_a),
            registry_pb2_grpc.RegistryStub(channel_b),
        ]
        await asyncio.gather(
            *(
                stubs[i % 2].Apply(
                    rpb.ApplyRequest(manifest=model(f"m{i}")), timeout=10
                )
                for i in range(40)
            )
        )
    seen_a = await asyncio.wait_for(watchers[0], 15)
    seen_b = await asyncio.wait_for(watchers[1], 15)
    # No gaps, no repeats, in resourceVersion order, and the same on both processes.
    assert seen_a == sorted(set(seen_a))
    assert seen_a == list(range(seen_a[0], seen_a[0] + 40))
    assert seen_b == seen_a
