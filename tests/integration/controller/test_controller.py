"""From a manifest to ready Triton replicas and back, with real tritonserver
processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import signal
from collections.abc import Callable

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc.aio as triton_grpc

from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.main import ControllerApp
from tests.conftest import ROOT, http_files
from tests.integration.conftest import IRIS_ONNX, Platform, iris_manifests


def ready(count: int) -> Callable[[pb.ModelInfer | None], bool]:
    def check(infer: pb.ModelInfer | None) -> bool:
        return (
            infer is not None
            and infer.status.ready_replicas == count
            and len([e for e in infer.status.endpoints if e.ready and not e.draining])
            == count
        )

    return check


async def classify(endpoint: pb.Endpoint, rows: list[list[float]]) -> list[int]:
    client = triton_grpc.InferenceServerClient(
        f"{endpoint.address}:{endpoint.grpc_port}"
    )
    try:
        tensor = triton_grpc.InferInput("X", [len(rows), 4], "FP32")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.float32))
        result = await client.infer("iris", [tensor], client_timeout=10)
        labels = result.as_numpy("label")
        assert labels is not None
        return [int(v) for v in labels.reshape(-1)]
    finally:
        await client.close()


POLICY = """
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: AutoscalingPolicy
metadata: {name: iris}
spec:
  targetRef: {name: iris}
  minReplicas: 0
  maxReplicas: 1
"""

SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


async def test_apply_ready_infer_delete(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    infer = await platform.wait_for(ready(1))
    assert infer is not None
    assert infer.status.observed_generation == infer.metadata.generation
    assert infer.status.model_revision == 1
    assert "matrixinfer.ai/replicas" in infer.metadata.finalizers
    conditions = {c.type: c for c in infer.status.conditions}
    assert conditions["Available"].status == "True"
    assert conditions["Degraded"].status == "False"
    (endpoint,) = infer.status.endpoints
    assert await classify(endpoint, [SETOSA, VIRGINICA]) == [0, 2]

    pids = [r.name for r in platform.controller.runtime.replicas("default/iris")]
    assert len(pids) == 1
    await platform.stub.Delete(
        rpb.DeleteRequest(kind="ModelInfer", name="iris"), timeout=5
    )
    await platform.wait_for(lambda i: i is None, timeout_s=30)
    assert platform.controller.runtime.replicas("default/iris") == []
    with pytest.raises(ConnectionError):
        await classify_or_connection_error(endpoint)


async def classify_or_connection_error(endpoint: pb.Endpoint) -> None:
    try:
        await classify(endpoint, [SETOSA])
    except Exception as e:  # the server is gone: the call cannot connect
        raise ConnectionError(str(e)) from e


async def test_killed_replica_is_restarted(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    await platform.wait_for(ready(1))
    (replica,) = platform.controller.runtime.replicas("default/iris")
    assert replica.pid is not None
    os.killpg(replica.pid, signal.SIGKILL)
    infer = await platform.wait_for(
        lambda i: (
            i is not None
            and i.status.ready_replicas == 1
            and i.status.endpoints[0].restarts == 1
        )
    )
    assert infer is not None
    assert await classify(infer.status.endpoints[0], [VIRGINICA]) == [2]


async def test_unreachable_artifact_is_degraded_and_others_unaffected(
    platform: Platform,
) -> None:
    broken = iris_manifests(uri="file:///nonexistent/model.onnx").replace(
        "iris", "broken"
    )
    await platform.apply(broken)
    infer = await platform.wait_for(
        lambda i: (
            i is not None
            and any(
                c.type == "Degraded" and c.status == "True" for c in i.status.conditions
            )
        ),
        name="broken",
    )
    assert infer is not None
    degraded = next(c for c in infer.status.conditions if c.type == "Degraded")
    assert "does not exist" in degraded.message
    # The controller keeps working for other models.
    await platform.apply(iris_manifests())
    await platform.wait_for(ready(1))


async def test_http_artifact_is_verified_and_deployed(platform: Platform) -> None:
    """A Model whose source is an http:// URL with a sha256: a wrong digest is a
    Degraded condition naming both digests; the right one gives a ready replica
    that answers. The file comes from a local HTTP server (loopback needs no
    setting; the SSRF guard refuses link-local and metadata addresses)."""
    digest = hashlib.sha256(IRIS_ONNX.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"some other model").hexdigest()
    with http_files(ROOT / "examples/iris") as (base, requested):
        uri = f"{base}/model.onnx"

        def with_digest(sha256: str) -> str:
            line = f'uri: "{uri}"'
            return iris_manifests(uri, **{line: f'{line}\n      sha256: "{sha256}"'})

        await platform.apply(with_digest(wrong))
        infer = await platform.wait_for(
            lambda i: (
                i is not None
                and any(
                    c.type == "Degraded" and c.status == "True"
                    for c in i.status.conditions
                )
            )
        )
        assert infer is not None
        degraded = next(c for c in infer.status.conditions if c.type == "Degraded")
        assert (
            f"sha256 mismatch for {uri}: the Model says {wrong}, the artifact is "
            f"{digest}" in degraded.message
        )
        assert platform.controller.runtime.replicas("default/iris") == []

        await platform.apply(with_digest(digest))
        infer = await platform.wait_for(ready(1))
    assert infer is not None
    assert {c.type: c.status for c in infer.status.conditions}["Degraded"] == "False"
    (endpoint,) = infer.status.endpoints
    assert await classify(endpoint, [SETOSA, VIRGINICA]) == [0, 2]
    assert set(requested) == {"/model.onnx"}  # every fetch went over HTTP


def unloadable_onnx(path: pathlib.Path) -> None:
    """A well-formed ONNX graph that ONNX Runtime refuses: it uses an operator that
    does not exist. The controller can read its inputs and outputs; Triton cannot
    load it."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOperator", ["X"], ["Y"])],
        "broken",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [None, 4])],
    )
    onnx.save(onnx.helper.make_model(graph), str(path))


async def test_model_triton_refuses_is_degraded_with_tritons_reason(
    platform: Platform, tmp_path: pathlib.Path
) -> None:
    model = tmp_path / "broken.onnx"
    unloadable_onnx(model)
    await platform.apply(iris_manifests(uri=f"file://{model}"))
    infer = await platform.wait_for(
        lambda i: (
            i is not None
            and any(
                c.type == "Degraded" and c.reason == "ReplicaFailed"
                for c in i.status.conditions
            )
        )
    )
    assert infer is not None
    degraded = next(c for c in infer.status.conditions if c.type == "Degraded")
    assert "NoSuchOperator" in degraded.message  # Triton's own words reach the user
    assert infer.status.ready_replicas == 0


async def test_unreadable_onnx_is_degraded_before_any_replica(
    platform: Platform, tmp_path: pathlib.Path
) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx model at all")
    await platform.apply(iris_manifests(uri=f"file://{bogus}"))
    infer = await platform.wait_for(
        lambda i: (
            i is not None
            and any(
                c.type == "Degraded" and c.status == "True" for c in i.status.conditions
            )
        )
    )
    assert infer is not None
    degraded = next(c for c in infer.status.conditions if c.type == "Degraded")
    assert "not a readable ONNX model" in degraded.message
    assert platform.controller.runtime.replicas("default/iris") == []


async def test_gpu_request_without_gpus_stays_pending(platform: Platform) -> None:
    await platform.apply(
        iris_manifests(
            **{"    - {kind: CPU, count: 1}": "    - {kind: GPU, count: 1}"}
        ).replace("  replicas: 1", "  replicas: 1\n  resources: {gpu: 1}")
    )
    infer = await platform.wait_for(
        lambda i: (
            i is not None
            and any(
                c.type == "Degraded" and c.status == "True" and "GPU" in c.message
                for c in i.status.conditions
            )
        )
    )
    assert infer is not None
    assert infer.status.ready_replicas == 0
    degraded = next(c for c in infer.status.conditions if c.type == "Degraded")
    assert degraded.reason == "ReplicaPending"
    assert "needs 1 GPU(s); 0 of 0 in the inventory are free" in degraded.message


async def test_scale_and_get_replicas(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    await platform.wait_for(ready(1))
    async with grpc.aio.insecure_channel(platform.controller.address) as channel:
        controller = controller_pb2_grpc.ControllerStub(channel)
        scaled = await controller.Scale(
            cpb.ScaleRequest(model_infer="iris", replicas=0, reason="test: to zero"),
            timeout=5,
        )
        assert scaled.replicas == 0
        infer = await platform.wait_for(
            lambda i: (
                i is not None
                and i.status.replicas == 0
                and i.status.desired_replicas == 0
            )
        )
        assert infer is not None and infer.status.scale_reason == "test: to zero"
        replicas = await controller.GetReplicas(
            cpb.GetReplicasRequest(model_infer="iris")
        )
        assert list(replicas.endpoints) == [] and replicas.desired_replicas == 0
        # With an AutoscalingPolicy, Scale is bounded by it.
        await platform.apply(POLICY)
        await asyncio.sleep(0.5)  # the controller's informer sees the policy
        bounded = await controller.Scale(
            cpb.ScaleRequest(model_infer="iris", replicas=9, reason="burst"), timeout=5
        )
        assert bounded.replicas == 1
        infer = await platform.wait_for(ready(1))
        assert infer is not None and infer.status.scale_reason == "burst"
        err = None
        try:
            await controller.Scale(
                cpb.ScaleRequest(model_infer="ghost", replicas=1), timeout=5
            )
        except grpc.aio.AioRpcError as e:
            err = e
        assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_scale_survives_a_restart_until_the_spec_changes(
    platform: Platform,
) -> None:
    """The last Scale is recorded in status (desiredReplicas, scaleReason): a new
    controller keeps it; an edited spec, the newer intent, overrides it."""
    await platform.apply(iris_manifests())
    await platform.wait_for(ready(1))
    async with grpc.aio.insecure_channel(platform.controller.address) as channel:
        await controller_pb2_grpc.ControllerStub(channel).Scale(
            cpb.ScaleRequest(model_infer="iris", replicas=0, reason="operator: pause"),
            timeout=5,
        )
    await platform.wait_for(
        lambda i: (
            i is not None and i.status.replicas == 0 and i.status.scale_reason != ""
        )
    )
    settings = platform.controller.settings
    await platform.controller.stop(0)
    restarted = await ControllerApp.start(settings)
    try:
        async with grpc.aio.insecure_channel(restarted.address) as channel:
            stub = controller_pb2_grpc.ControllerStub(channel)
            # Until the new controller knows the ModelInfer (its informer synced),
            # then long enough for its first reconcile to have started replicas if
            # it wanted any.
            for _ in range(100):
                try:
                    await stub.GetReplicas(
                        cpb.GetReplicasRequest(model_infer="iris"), timeout=5
                    )
                    break
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2)
            answer = await stub.GetReplicas(
                cpb.GetReplicasRequest(model_infer="iris"), timeout=5
            )
            assert answer.desired_replicas == 0
            assert list(answer.endpoints) == []
        infer = await platform.infer_status()
        assert infer is not None
        assert (infer.status.desired_replicas, infer.status.scale_reason) == (
            0,
            "operator: pause",
        )
        # A spec edit (generation 2) is newer than the Scale: its replicas apply.
        await platform.apply(
            iris_manifests(
                **{"warmup: {enabled: true, batchSize: 1}": "warmup: {enabled: false}"}
            )
        )
        infer = await platform.wait_for(ready(1))
        assert infer is not None and infer.status.scale_reason == ""
    finally:
        await restarted.stop(0)
