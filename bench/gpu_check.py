"""GPU check (not a test; needs a machine with an NVIDIA GPU): ``python -m
bench.gpu_check``.

Starts a registry and a controller whose inventory is every GPU ``nvidia-smi``
lists, deploys the iris example with a GPU instance group naming the replica's GPU
0, and checks what a user would: the replica becomes ready, it was given one
inventory GPU (CUDA_VISIBLE_DEVICES), Triton loaded the model with a KIND_GPU
instance, and an inference answers. On a machine without a GPU it says so and
exits 0 without checking anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.platform import ready, start_platform, stop, wait_for
from bench.report import ROOT
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.controller.adapters.local_runtime import LocalRuntime


def gpus() -> list[int]:
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [
        i for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")
    ]


async def check(inventory: list[int], work: pathlib.Path) -> dict[str, object]:
    registry, controller, channel = await start_platform(work, False, inventory)
    result: dict[str, object] = {"inventory": inventory}
    try:
        manifest = (
            (ROOT / "examples/iris/manifests.yaml")
            .read_text()
            .replace(
                "file://${IRIS_MODEL}", f"file://{ROOT / 'examples/iris/model.onnx'}"
            )
            .replace("{kind: CPU, count: 1}", "{kind: GPU, count: 1, gpus: [0]}")
        )
        stub = registry_pb2_grpc.RegistryStub(channel)
        await stub.Apply(rpb.ApplyRequest(manifest=manifest))
        with contextlib.suppress(TimeoutError):  # reported below, with the reasons
            await wait_for(stub, "iris", ready(1), timeout_s=120)
        infer = (
            await stub.Get(rpb.GetRequest(kind="ModelInfer", name="iris"))
        ).model_infer
        result["ready"] = infer.status.ready_replicas == 1
        result["conditions"] = [
            f"{c.type}={c.status} {c.reason}: {c.message}"
            for c in infer.status.conditions
        ]
        runtime = controller.runtime
        assert isinstance(runtime, LocalRuntime)
        replica = runtime.replicas("default/iris")[0]
        process = runtime.process_of(replica.name)
        result["cuda_visible_devices"] = (
            process.environment()["CUDA_VISIBLE_DEVICES"] if process else None
        )
        if result["ready"]:
            endpoint = infer.status.endpoints[0]
            client = triton_aio.InferenceServerClient(
                f"{endpoint.address}:{endpoint.grpc_port}"
            )
            try:
                config = await client.get_model_config("iris", as_json=True)
                result["instance_group"] = config["config"]["instance_group"]
                tensor = triton_aio.InferInput("X", [1, 4], "FP32")
                tensor.set_data_from_numpy(
                    np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
                )
                answer = await client.infer("iris", [tensor])
                result["label"] = answer.as_numpy("label").reshape(-1).tolist()
            finally:
                await client.close()
    finally:
        await stop(registry, controller, channel)
    groups = result.get("instance_group")
    kinds = [g.get("kind") for g in groups] if isinstance(groups, list) else []
    result["ok"] = bool(
        result.get("ready")
        and str(result.get("cuda_visible_devices")) in {str(g) for g in inventory}
        and "KIND_GPU" in kinds
        and result.get("label") == [2]
    )
    return result


def main() -> None:
    inventory = gpus()
    if not inventory:
        print("no NVIDIA GPU here (nvidia-smi lists none): nothing checked")
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(check(inventory, pathlib.Path(tmp)))
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
