"""Controller benchmark (not a test): ``python -m bench.controller``.

Runs a real registry (SQLite) and a real controller in this process and measures:

(a) cold start — Apply of a ModelInfer to its first ready replica (a real
    ``tritonserver`` with the iris example on the Python backend + ONNX Runtime),
    5 times, each on a fresh name; the first also fetches the artifact and builds
    the repository, the others reuse them (median reported, first shown apart);
(b) rollout — a new Model revision on a 2-replica ModelInfer, from Apply until both
    replicas serve the new revision and the old ones are gone, under continuous
    inference through a real gateway (HAProxy, auth off) in this process: two
    tritonclient senders from before the Apply until after the rollout; every
    failed request is counted and reported, and the answers per revision (Triton's
    ``model_version``) show the traffic moving to the new one;
(c) reconcile throughput — 1,000 ModelInfers on the in-memory fake runtime (no Triton):
    from the Apply of all of them until every one reports its replica ready.

Figures are printed and written to BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.platform import ready, routed, start_platform, stop, wait_for
from bench.report import ROOT, write_section
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.gateway.main import GatewayApp
from matrixinfer.gateway.settings import GatewaySettings

ONNX = ROOT / "examples/iris/model.onnx"


def model_doc(version: str = "1") -> dict[str, object]:
    return {
        "apiVersion": "registry.matrixinfer.ai/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "iris"},
        "spec": {
            "modelSpec": {
                "modelId": "iris",
                "framework": "onnx",
                "version": version,
                "source": {"uri": f"file://{ONNX}"},
            }
        },
    }


def infer_doc(name: str, replicas: int = 1) -> dict[str, object]:
    return {
        "apiVersion": "workload.matrixinfer.ai/v1alpha1",
        "kind": "ModelInfer",
        "metadata": {"name": name},
        "spec": {"modelRef": {"name": "iris"}, "replicas": replicas},
    }


def route_docs(infer: str) -> list[dict[str, object]]:
    """A ModelServer and a ModelRoute: clients call ``iris`` on the gateway."""
    return [
        {
            "apiVersion": "networking.matrixinfer.ai/v1alpha1",
            "kind": "ModelServer",
            "metadata": {"name": infer},
            "spec": {"modelInferRef": infer, "model": "iris"},
        },
        {
            "apiVersion": "networking.matrixinfer.ai/v1alpha1",
            "kind": "ModelRoute",
            "metadata": {"name": "iris"},
            "spec": {
                "modelName": "iris",
                "rules": [{"targets": [{"modelServer": infer}]}],
            },
        },
    ]


async def cold_start(workdir: pathlib.Path, runs: int) -> list[float]:
    registry, controller, channel = await start_platform(workdir, fake=False)
    stub = registry_pb2_grpc.RegistryStub(channel)
    times: list[float] = []
    try:
        await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(model_doc())))
        for i in range(runs):
            name = f"cold-{i}"
            started = time.monotonic()
            await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(infer_doc(name))))
            times.append(await wait_for(stub, name, ready(1)) - started)
            await stub.Delete(rpb.DeleteRequest(kind="ModelInfer", name=name))
            await wait_for_gone(stub, name)
            print(f"  cold start {i + 1}: {times[-1]:.2f} s", flush=True)
    finally:
        await stop(registry, controller, channel)
    return times


async def wait_for_gone(stub: registry_pb2_grpc.RegistryStub, name: str) -> None:
    while True:
        try:
            await stub.Get(rpb.GetRequest(kind="ModelInfer", name=name), timeout=5)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise
        await asyncio.sleep(0.05)


@dataclass
class Rollout:
    seconds: float
    answered: dict[str, int]  # by the revision that answered
    failed: int
    errors: list[str]


class Senders:
    """Clients calling ``iris`` through the gateway, one request after another each,
    until stopped."""

    def __init__(self, address: str, count: int = 2) -> None:
        self.address = address
        self.count = count
        self.answered: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send()) for _ in range(self.count)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _send(self) -> None:
        client = triton_aio.InferenceServerClient(self.address)
        x = triton_aio.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
        try:
            while not self._stop.is_set():
                try:
                    result = await client.infer("iris", [x], client_timeout=10)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    self.errors.append(str(e))
                    continue
                self.answered[result.get_response().model_version] += 1
        finally:
            await client.close()


async def rollout(workdir: pathlib.Path) -> Rollout:
    registry, controller, channel = await start_platform(workdir, fake=False)
    stub = registry_pb2_grpc.RegistryStub(channel)
    gateway = await GatewayApp.start(
        GatewaySettings(
            registry_address=registry.address,
            grpc_port=0,
            http_port=0,
            auth_mode="off",
            log_level="WARNING",
        )
    )
    senders = Senders(gateway.address)
    try:
        docs = [model_doc("1"), infer_doc("roll", replicas=2), *route_docs("roll")]
        await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(docs)))
        await wait_for(stub, "roll", ready(2))
        await routed(gateway, "iris", replicas=2)
        senders.start()
        await asyncio.sleep(1.0)  # traffic on revision 1 before the change
        started = time.monotonic()
        await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(model_doc("2"))))
        done = await wait_for(
            stub,
            "roll",
            lambda i: (
                i.status.model_revision == 2
                and i.status.updated_replicas == 2
                and i.status.ready_replicas == 2
                and i.status.replicas == 2
            ),
        )
        await asyncio.sleep(1.0)  # and on revision 2 after it
        await senders.stop()
        return Rollout(
            done - started,
            dict(sorted(senders.answered.items())),
            len(senders.errors),
            sorted(set(senders.errors))[:5],
        )
    finally:
        await senders.stop()
        await gateway.stop(0)
        await stop(registry, controller, channel)


async def throughput(workdir: pathlib.Path, count: int) -> float:
    registry, controller, channel = await start_platform(workdir, fake=True)
    stub = registry_pb2_grpc.RegistryStub(channel)
    try:
        await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(model_doc())))
        started = time.monotonic()
        for i in range(0, count, 100):
            batch = [infer_doc(f"m{j}") for j in range(i, min(count, i + 100))]
            await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(batch)), timeout=60)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = 0
            token = ""
            while True:
                request = rpb.ListRequest(kind="ModelInfer", limit=1000)
                setattr(request, "continue", token)  # noqa: B010
                page = await stub.List(request, timeout=30)
                done += sum(
                    1 for i in page.items if i.model_infer.status.ready_replicas == 1
                )
                token = getattr(page, "continue")
                if not token:
                    break
            if done == count:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise TimeoutError("not all ModelInfers became ready")
    finally:
        await stop(registry, controller, channel)


def rollout_traffic(roll: Rollout) -> str:
    by_revision = ", ".join(
        f"{n} by revision {revision}" for revision, n in roll.answered.items()
    )
    return (
        f"{sum(roll.answered.values())} answered ({by_revision}), {roll.failed} failed"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        print("cold start (real tritonserver):", flush=True)
        cold = await cold_start(workdir / "cold", args.runs)
        print("rollout of 2 replicas:", flush=True)
        roll = await rollout(workdir / "roll")
        print(f"  {roll.seconds:.2f} s; {rollout_traffic(roll)}", flush=True)
        for error in roll.errors:
            print(f"  failed: {error}", flush=True)
        print(
            f"reconcile throughput, {args.objects} ModelInfers, fake runtime:",
            flush=True,
        )
        spent = await throughput(workdir / "fake", args.objects)
        print(f"  {spent:.2f} s = {args.objects / spent:.0f} ModelInfers/s", flush=True)
    median = statistics.median(cold)
    lines = [
        "Command: `python -m bench.controller`  ",
        f"Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; "
        "registry (SQLite) and controller in one process, CPU only; during the "
        "rollout a gateway (HAProxy, auth off) in the same process carries two "
        "tritonclient senders' requests.",
        "",
        "| measure | result |",
        "|---|---:|",
        f"| cold start, Apply → first ready replica, median of {len(cold)} "
        f"| {median:.2f} s |",
        f"| cold start, first run (fetch + repository build included) "
        f"| {cold[0]:.2f} s |",
        f"| cold start, all runs | {', '.join(f'{t:.2f}' for t in cold)} s |",
        f"| rollout of 2 replicas to a new revision (maxSurge 1) "
        f"| {roll.seconds:.2f} s |",
        f"| requests through the gateway during the rollout "
        f"| {rollout_traffic(roll)} |",
        f"| reconcile {args.objects} ModelInfers on the fake runtime | "
        f"{spent:.2f} s ({args.objects / spent:.0f}/s) |",
    ]
    if not args.no_write:
        write_section("controller", "Controller", lines)
        print("figures written to BENCHMARKS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
