"""Autoscaler benchmark (not a test): ``python -m bench.autoscaler``.

A real registry (SQLite), controller (real ``tritonserver`` replicas of the iris
example), gateway and autoscaler run in this process; load is sent through the
gateway with tritonclient's gRPC aio client.

(a) reaction to a 10× load step: a steady 4 req/s, then 40 req/s, with a
    RequestsPerSecond target of 10 per replica and the default windows (stable
    60 s, panic 6 s). Measured from the step to the autoscaler's decision (the
    controller's desired count rising, polled every 20 ms) and to the new replica
    serving (routed by the gateway). Repeated ``--steps`` times.
(b) scale from zero: a policy with minReplicas 0 takes the model to zero when idle;
    then one request is sent and timed to its response (held by the gateway's
    activator, ``Activate`` scales to one, the replica starts, the request is
    answered). Median of ``--runs``.

Figures are printed and written to BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.report import ROOT, machine_line, write_section
from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc, registry_pb2_grpc
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.autoscaler.main import AutoscalerApp
from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.gateway.main import GatewayApp
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.registry.main import RegistryApp
from matrixinfer.registry.settings import RegistrySettings

MANIFESTS = ROOT / "examples/iris/manifests.yaml"
ONNX = ROOT / "examples/iris/model.onnx"
STEP_POLICY = """
---
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: AutoscalingPolicy
metadata: {name: iris}
spec:
  targetRef: {kind: ModelInfer, name: iris}
  minReplicas: 1
  maxReplicas: 6
  metrics: [{type: RequestsPerSecond, target: 10}]
"""
ZERO_POLICY = """
---
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: AutoscalingPolicy
metadata: {name: iris}
spec:
  targetRef: {kind: ModelInfer, name: iris}
  minReplicas: 0
  maxReplicas: 2
  metrics: [{type: Concurrency, target: 4}]
  behavior: {stableWindowSeconds: 6, panicWindowSeconds: 1,
             scaleToZeroGracePeriodSeconds: 1}
"""


class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir

    async def __aenter__(self) -> Stack:
        self.registry = await RegistryApp.start(
            RegistrySettings(
                database_url=f"sqlite+aiosqlite:///{self.workdir}/registry.db",
                grpc_port=0,
                kube_port=0,
                log_level="WARNING",
            )
        )
        self.controller = await ControllerApp.start(
            ControllerSettings(
                registry_address=self.registry.address,
                grpc_port=0,
                state_dir=self.workdir / "controller",
                drain_s=0.5,
                log_level="WARNING",
            )
        )
        self.autoscaler = await AutoscalerApp.start(
            AutoscalerSettings(
                registry_address=self.registry.address,
                controller_address=self.controller.address,
                grpc_port=0,
                log_level="WARNING",
            )
        )
        self.gateway = await GatewayApp.start(
            GatewaySettings(
                registry_address=self.registry.address,
                autoscaler_address=self.autoscaler.address,
                grpc_port=0,
                http_port=0,
                auth_mode="off",
                log_level="WARNING",
            )
        )
        self.channel = grpc.aio.insecure_channel(self.registry.address)
        self.registry_stub = registry_pb2_grpc.RegistryStub(self.channel)
        self.controller_channel = grpc.aio.insecure_channel(self.controller.address)
        self.controller_stub = controller_pb2_grpc.ControllerStub(
            self.controller_channel
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.controller_channel.close()
        await self.gateway.stop(0)
        await self.autoscaler.stop(0)
        await self.controller.stop(0)
        await self.registry.stop(0)

    async def apply(self, policy: str) -> None:
        manifest = MANIFESTS.read_text().replace(
            "file://${IRIS_MODEL}", f"file://{ONNX}"
        )
        await self.registry_stub.Apply(
            rpb.ApplyRequest(manifest=manifest + policy), timeout=10
        )

    async def desired(self) -> int:
        response = await self.controller_stub.GetReplicas(
            cpb.GetReplicasRequest(namespace="default", model_infer="iris"), timeout=5
        )
        desired: int = response.desired_replicas
        return desired

    def routed(self) -> int:
        return self.gateway.routes.table.routed_replicas("iris")


async def until(predicate: Callable[[], object], timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def inputs() -> list[triton_aio.InferInput]:
    tensor = triton_aio.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    return [tensor]


class Load:
    """Requests at a settable rate through the gateway."""

    def __init__(self, client: triton_aio.InferenceServerClient, rps: float) -> None:
        self.client, self.rps, self.failures = client, rps, 0

    async def run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while True:
            next_at += 1 / self.rps
            task = asyncio.create_task(self._one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _one(self) -> None:
        try:
            await self.client.infer("iris", inputs(), client_timeout=30)
        except Exception:  # noqa: BLE001 - counted, shown in the results
            self.failures += 1


@contextlib.asynccontextmanager
async def running(load: Load) -> AsyncIterator[Load]:
    task = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def load_step(workdir: pathlib.Path, steps: int) -> list[tuple[float, float]]:
    results = []
    for i in range(steps):
        async with Stack(workdir / f"step{i}") as stack:
            await stack.apply(STEP_POLICY)
            await until(lambda: stack.routed() >= 1)
            client = triton_aio.InferenceServerClient(stack.gateway.address)
            load = Load(client, 4.0)
            async with running(load):
                await asyncio.sleep(8)  # steady state at one replica
                assert await stack.desired() == 1, "scaled before the step"
                step = time.monotonic()
                load.rps = 40.0
                decided = await until(lambda: _above_one(stack))
                serving = await until(lambda: stack.routed() >= 2)
            await client.close()
            results.append((decided - step, serving - step))
            print(
                f"  step {i + 1}: decision {decided - step:.2f} s, new replica "
                f"serving {serving - step:.2f} s, failures {load.failures}",
                flush=True,
            )
    return results


async def _above_one(stack: Stack) -> bool:
    return await stack.desired() > 1


async def from_zero(workdir: pathlib.Path, runs: int) -> list[float]:
    times = []
    async with Stack(workdir / "zero") as stack:
        await stack.apply(ZERO_POLICY)
        await until(lambda: stack.routed() >= 1)  # deployed and serving first
        client = triton_aio.InferenceServerClient(stack.gateway.address)
        try:
            for i in range(runs):
                # Idle → the autoscaler takes it to zero; wait until nothing serves.
                await until(lambda: _at_zero(stack))
                await until(lambda: stack.routed() == 0)
                await asyncio.sleep(1.0)  # the old server has fully exited
                started = time.monotonic()
                result = await client.infer("iris", inputs(), client_timeout=60)
                spent = time.monotonic() - started
                label = result.as_numpy("label")
                assert label is not None and label.reshape(-1).tolist() == [2]
                times.append(spent)
                print(f"  run {i + 1}: first response after {spent:.2f} s", flush=True)
        finally:
            await client.close()
    return times


async def _at_zero(stack: Stack) -> bool:
    try:
        return await stack.desired() == 0
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:  # not seen by the controller yet
            return False
        raise


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        print("(a) 10x load step (4 → 40 req/s, target 10 req/s per replica):")
        steps = await load_step(workdir, args.steps)
        print("(b) scale from zero:")
        zero = await from_zero(workdir, args.runs)
    decision = [d for d, _ in steps]
    serving = [s for _, s in steps]
    lines = [
        "Command: `python -m bench.autoscaler`  ",
        f"{machine_line()}; registry (SQLite), controller (real tritonserver, iris "
        "on the Python backend + ONNX Runtime), gateway and autoscaler (tick 1 s) in "
        "one process, load from the same process through the gateway.",
        "",
        "| measure | result |",
        "|---|---:|",
        f"| 10× step (4 → 40 req/s): step → scale decision, median of {len(steps)} "
        f"| {statistics.median(decision):.2f} s |",
        f"| 10× step: step → new replica serving, median of {len(steps)} "
        f"| {statistics.median(serving):.2f} s |",
        "| 10× step, all runs (decision / serving) | "
        + ", ".join(f"{d:.2f} / {s:.2f}" for d, s in steps)
        + " s |",
        f"| scale from zero: request → first response, median of {len(zero)} "
        f"| {statistics.median(zero):.2f} s |",
        f"| scale from zero, all runs | {', '.join(f'{t:.2f}' for t in zero)} s |",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("autoscaler", "Autoscaler", lines)
        print("figures written to BENCHMARKS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
