"""core's informer against a real registry: every subscriber sees the initial list
and each change after it; subscribing after the start is refused (the initial list
would be missed)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable

import grpc
import pytest

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.core.registry.informer import Informer
from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings

MODEL = """
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {{name: {name}, labels: {{stage: {stage}}}}}
spec:
  modelSpec: {{modelId: m, framework: onnx, source: {{uri: "file:///models/m.onnx"}}}}
"""


async def test_every_subscriber_sees_the_list_and_each_change(
    tmp_path: pathlib.Path,
) -> None:
    registry = await RegistryApp.start(
        registry_settings(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    )
    channel = grpc.aio.insecure_channel(registry.address)
    stub = registry_pb2_grpc.RegistryStub(channel)
    informer = Informer(RegistryClient(channel), ["Model"])
    seen: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}

    def recorder(who: str) -> Callable[[str, str, pb.Resource], None]:
        def record(kind: str, event_type: str, obj: pb.Resource) -> None:
            seen[who].append((event_type, obj.model.metadata.name))

        return record

    for who in seen:
        informer.subscribe(recorder(who))
    try:
        await stub.Apply(
            rpb.ApplyRequest(manifest=MODEL.format(name="first", stage="a")),
            timeout=10,
        )
        await informer.start()
        await informer.wait_synced(10)
        with pytest.raises(RuntimeError, match="subscribe before start"):
            informer.subscribe(lambda *_: None)
        await stub.Apply(
            rpb.ApplyRequest(manifest=MODEL.format(name="first", stage="b")),
            timeout=10,
        )
        for _ in range(100):
            if len(seen["b"]) == 2:
                break
            await asyncio.sleep(0.05)
        expected = [("ADDED", "first"), ("MODIFIED", "first")]
        assert seen == {"a": expected, "b": expected}
        model = informer.get("Model", "default", "first")
        assert model is not None and model.model.metadata.labels["stage"] == "b"
    finally:
        await informer.stop()
        await channel.close()
        await registry.stop(0)
