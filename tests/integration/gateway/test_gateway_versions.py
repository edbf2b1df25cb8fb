"""Model versions are Model revisions: each replica serves its Model under the
revision number, so `model_version` in a request (gRPC field 2, REST
/versions/{v}) pins a revision, and a route rule matching a version sends it to
the replicas of that revision, natively in HAProxy."""

from __future__ import annotations

import aiohttp
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    IRIS_REST_BODY,
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

PINNED = """
---
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata:
  name: iris-r1
spec:
  modelRef: {name: iris, revision: 1}
  replicas: 1
  batching: {maxBatchSize: 64}
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata:
  name: iris-r1
spec:
  modelInferRef: iris-r1
  model: iris
"""

ROUTE_RULES = (
    "  rules:\n    - targets: [{modelServer: iris}]",
    "  rules:\n"
    "    - match: {version: '1'}\n"
    "      targets: [{modelServer: iris-r1}]\n"
    "    - targets: [{modelServer: iris}]",
)


def tensor() -> triton_aio.InferInput:
    t = triton_aio.InferInput("X", [1, 4], "FP32")
    t.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    return t


async def test_a_version_pins_a_revision_end_to_end(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 1, 90
    )
    # A second revision of the Model (a spec change), the first kept running by a
    # ModelInfer pinned to it, and a rule sending version 1 there.
    second = iris_manifests(**{'version: "1"': 'version: "2"'})
    await platform.apply(second.replace(*ROUTE_RULES) + PINNED)
    await platform.wait_for(
        lambda i: (
            i is not None
            and i.status.model_revision == 2
            and i.status.updated_replicas == 1
            and i.status.ready_replicas == 1
            and len(i.status.endpoints) == 1
        ),
        120,
    )
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 1,
        120,
        name="iris-r1",
    )
    app = await start_gateway(platform)
    client = triton_aio.InferenceServerClient(app.address)
    try:
        await wait_routed(app)
        assert len(app.routes.table.routes["iris"].rules) == 2
        for _ in range(50):  # the table may still show revision 1's draining replica
            latest = await client.infer("iris", [tensor()])
            if latest.get_response().model_version == "2":
                break
        assert latest.get_response().model_version == "2"
        for version in ("1", "2"):
            for _ in range(5):
                result = await client.infer("iris", [tensor()], model_version=version)
                assert result.get_response().model_version == version
                assert result.as_numpy("label").reshape(-1).tolist() == [2]
        try:
            await client.infer("iris", [tensor()], model_version="7")
        except InferenceServerException as e:
            # No rule pins 7: the default rule's replicas (revision 2) say so.
            assert "version" in str(e) and "7" in str(e)
        else:
            raise AssertionError("a version no replica has was answered")
        body = IRIS_REST_BODY
        async with aiohttp.ClientSession() as session:
            for version in ("1", "2"):
                url = f"{app.http_url}/v2/models/iris/versions/{version}/infer"
                async with session.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                    assert (await response.json())["model_version"] == version
    finally:
        await client.close()
        await app.stop(0)
