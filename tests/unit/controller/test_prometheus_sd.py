"""The controller's Prometheus file_sd output: the targets it lists, the atomic write,
and the wiring through ``prometheus_sd_file`` into a running controller."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import stat
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.controller.adapters.prometheus_sd import (
    PrometheusSD,
    target_groups,
    write_atomically,
)
from matrixinfer.controller.domain.runtime import Phase, Replica, ReplicaSpec
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.registry.main import RegistryApp
from tests.conftest import ROOT, registry_settings
from tests.fakes.controller_runtime import FakeRuntime


def spec(owner: str, revision: int = 1) -> ReplicaSpec:
    return ReplicaSpec(
        owner=owner,
        revision=revision,
        template="t",
        repository=pathlib.Path("/nonexistent"),
        models=("m",),
    )


@dataclass
class MetricsRuntime(FakeRuntime):
    """The fake runtime, with a metrics port per replica like the local one."""

    async def start_replica(self, spec: ReplicaSpec) -> Replica:
        replica = await super().start_replica(spec)
        replica.metrics_port = replica.grpc_port + 1
        if self._on_change is not None:
            self._on_change(spec.owner)
        return replica


async def test_groups_list_replicas_with_labels() -> None:
    runtime = MetricsRuntime()
    a = await runtime.start_replica(spec("default/iris", 3))
    b = await runtime.start_replica(spec("team-a/resnet", 1))
    assert target_groups(runtime) == [
        {
            "targets": [f"127.0.0.1:{a.metrics_port}"],
            "labels": {
                "namespace": "default",
                "model_infer": "iris",
                "replica": a.name,
                "revision": "3",
            },
        },
        {
            "targets": [f"127.0.0.1:{b.metrics_port}"],
            "labels": {
                "namespace": "team-a",
                "model_infer": "resnet",
                "replica": b.name,
                "revision": "1",
            },
        },
    ]


async def test_replicas_without_metrics_port_or_stopped_are_left_out() -> None:
    runtime = MetricsRuntime()
    kept = await runtime.start_replica(spec("default/iris"))
    pending = await runtime.start_replica(spec("default/iris"))
    pending.metrics_port, pending.phase = 0, Phase.PENDING
    stopped = await runtime.start_replica(spec("default/iris"))
    stopped.phase = Phase.STOPPED
    draining = await runtime.start_replica(spec("default/iris"))
    draining.draining = True  # still running, still scraped
    names = [g["labels"]["replica"] for g in target_groups(runtime)]  # type: ignore[index]
    assert names == sorted([kept.name, draining.name])


def test_write_atomically_replaces_and_is_world_readable(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "sd" / "replicas.json"
    write_atomically(path, "[]\n")
    write_atomically(path, '[{"targets": []}]\n')
    assert path.read_text() == '[{"targets": []}]\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["replicas.json"]  # no temporary file left


def test_write_atomically_leaves_old_file_on_failure(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "replicas.json"
    write_atomically(path, "[]\n")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_atomically(path, "[1]\n")
    assert path.read_text() == "[]\n"
    assert os.listdir(tmp_path) == ["replicas.json"]


async def test_chain_calls_downstream_and_rewrites_only_on_change(
    tmp_path: pathlib.Path,
) -> None:
    runtime = MetricsRuntime()
    path = tmp_path / "replicas.json"
    sd = PrometheusSD(path, runtime)
    seen: list[str] = []
    runtime.set_on_change(sd.chain(seen.append))
    assert sd.write()  # the empty list, so Prometheus finds the file at once
    assert json.loads(path.read_text()) == []

    replica = await runtime.start_replica(spec("default/iris"))
    assert seen == ["default/iris", "default/iris"]
    (group,) = json.loads(path.read_text())
    assert group["targets"] == [f"127.0.0.1:{replica.metrics_port}"]
    assert not sd.write()  # nothing changed: no rewrite

    await runtime.stop_replica(replica.name, 0)
    assert json.loads(path.read_text()) == []


async def test_failed_write_is_logged_not_raised(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    runtime = MetricsRuntime()
    sd = PrometheusSD(blocker / "replicas.json", runtime)  # parent is a file
    seen: list[str] = []
    runtime.set_on_change(sd.chain(seen.append))
    await runtime.start_replica(spec("default/iris"))
    assert seen  # the controller's own callback still ran
    assert "cannot write Prometheus service discovery file" in caplog.text


async def test_controller_keeps_the_file_current(tmp_path: pathlib.Path) -> None:
    """A running controller (fake runtime, real registry) lists a ModelInfer's
    replicas in ``prometheus_sd_file`` and empties it when they go."""
    path = tmp_path / "sd" / "replicas.json"
    registry = await RegistryApp.start(
        registry_settings(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    )
    controller = await ControllerApp.start(
        ControllerSettings(
            registry_address=registry.address,
            grpc_port=0,
            state_dir=tmp_path / "controller",
            prometheus_sd_file=path,
            log_json=False,
            drain_s=0,
        ),
        runtime=MetricsRuntime(),
    )
    try:
        assert json.loads(path.read_text()) == []
        async with grpc.aio.insecure_channel(registry.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            model = ROOT / "examples/iris/model.onnx"
            manifest = f"""
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {{name: iris}}
spec:
  modelSpec:
    modelId: iris
    framework: onnx
    version: "1"
    source: {{uri: "file://{model}"}}
---
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {{name: iris}}
spec: {{modelRef: {{name: iris}}, replicas: 2}}
"""
            await stub.Apply(rpb.ApplyRequest(manifest=manifest), timeout=10)
            groups = await _wait_for_groups(path, 2)
            assert {g["labels"]["model_infer"] for g in groups} == {"iris"}
            assert {g["labels"]["revision"] for g in groups} == {"1"}
            await stub.Apply(
                rpb.ApplyRequest(
                    manifest=manifest.replace("replicas: 2", "replicas: 0")
                ),
                timeout=10,
            )
            await _wait_for_groups(path, 0)
    finally:
        await controller.stop(0)
        await registry.stop(0)


async def _wait_for_groups(path: pathlib.Path, count: int) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for _ in range(200):
        groups = json.loads(path.read_text())
        if len(groups) == count:
            return groups
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path}: wanted {count} groups, last saw {groups}")
