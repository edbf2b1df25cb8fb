"""How replicas get GPUs, with a configured inventory of fake GPU ids (this machine
has none): a replica takes resources.gpu GPUs, or as many as its GPU instance groups
name (highest id + 1; a GPU group without ids takes one); it sees exactly those
(CUDA_VISIBLE_DEVICES), renumbered 0..n-1, which is what its config.pbtxt's ids
name. A CPU replica sees none."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from matrixinfer.controller.adapters.local_runtime import LocalRuntime
from tests.integration.conftest import iris_manifests, running_platform

GROUP = "    - {kind: CPU, count: 1}"


def deployment(name: str, groups: str, resources: str = "") -> str:
    text = iris_manifests(**{GROUP: groups}).replace("name: iris", f"name: {name}")
    text = text.replace(f"modelRef: {{name: {name}}}", "modelRef: {name: iris}")
    if resources:
        text = text.replace("  replicas: 1", f"  replicas: 1\n  resources: {resources}")
    # Only the Model (once) and the ModelInfer matter here.
    docs = text.split("\n---\n")
    return docs[1]


async def test_replicas_see_the_inventory_gpus_they_were_given(
    tmp_path: pathlib.Path,
) -> None:
    async with running_platform(tmp_path, gpus=[4, 7, 9]) as platform:
        model = iris_manifests().split("\n---\n")[0]
        manifests = "\n---\n".join(
            [
                model,
                # the README's example: a GPU group naming GPU 0, no resources.gpu
                deployment("one", "    - {kind: GPU, count: 1, gpus: [0]}"),
                # ids name the replica's own devices: [1] needs two GPUs
                deployment("two", "    - {kind: GPU, count: 1, gpus: [1]}"),
                deployment("cpu", GROUP),
            ]
        )
        await platform.apply(manifests)
        runtime = platform.controller.runtime
        assert isinstance(runtime, LocalRuntime)
        seen: dict[str, str] = {}
        for _ in range(200):
            for owner in ("one", "two", "cpu"):
                for replica in runtime.replicas(f"default/{owner}"):
                    process = runtime.process_of(replica.name)
                    if process is not None:
                        seen[owner] = process.environment()["CUDA_VISIBLE_DEVICES"]
                        config = (
                            replica.spec.repository / "iris" / "config.pbtxt"
                        ).read_text()
                        seen[f"{owner}.config"] = config
            if {"one", "two", "cpu"} <= set(seen):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"replicas never started: {sorted(seen)}")
        visible = {owner: seen[owner].split(",") for owner in ("one", "two")}
        assert len(visible["one"]) == 1 and len(visible["two"]) == 2
        # Three GPUs in the inventory, three taken, none twice.
        taken = visible["one"] + visible["two"]
        assert sorted(taken) == ["4", "7", "9"]
        assert seen["cpu"] == ""
        assert "KIND_GPU" in seen["one.config"] and "gpus: 0" in seen["one.config"]
        assert "KIND_GPU" in seen["two.config"] and "gpus: 1" in seen["two.config"]
        assert "KIND_CPU" in seen["cpu.config"]
