"""Controller benchmark (not a test): ``python -m bench.controller``.

Runs a real registry (SQLite) and a real controller in this process and measures:

(a) cold start — Apply of a ModelInfer to its first ready replica (a real
    ``tritonserver`` with the iris example on the Python backend + ONNX Runtime),
    5 times, each on a fresh name; the first also fetches the artifact and builds
    the repository, the others reuse them (median reported, first shown apart);
(b) rollout — a new Model revision on a 2-replica ModelInfer, from Apply until both
    replicas serve the new revision and the old ones are gone;
(c) reconcile throughput — 1,000 ModelInfers on the in-memory fake runtime (no Triton):
    from the Apply of all of them until every one reports its replica ready.

Figures are printed and written to BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import grpc

from bench.platform import start_platform, stop
from bench.report import ROOT, write_section
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb

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


async def wait_for(
    stub: registry_pb2_grpc.RegistryStub,
    name: str,
    predicate: Callable[[pb.ModelInfer], bool],
    timeout_s: float = 300,
) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            resource = await stub.Get(
                rpb.GetRequest(kind="ModelInfer", name=name), timeout=5
            )
            if predicate(resource.model_infer):
                return time.monotonic()
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{name} did not get there in {timeout_s} s")


def ready(count: int) -> Callable[[pb.ModelInfer], bool]:
    return lambda i: i.status.ready_replicas >= count


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


async def rollout(workdir: pathlib.Path) -> float:
    registry, controller, channel = await start_platform(workdir, fake=False)
    stub = registry_pb2_grpc.RegistryStub(channel)
    try:
        docs = [model_doc("1"), infer_doc("roll", replicas=2)]
        await stub.Apply(rpb.ApplyRequest(manifest=json.dumps(docs)))
        await wait_for(stub, "roll", ready(2))
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
        return done - started
    finally:
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


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        print("cold start (real tritonserver):", flush=True)
        cold = await cold_start(workdir / "cold", args.runs)
        print("rollout of 2 replicas:", flush=True)
        roll = await rollout(workdir / "roll")
        print(f"  {roll:.2f} s", flush=True)
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
        "registry (SQLite) and controller in one process, CPU only.",
        "",
        "| measure | result |",
        "|---|---:|",
        f"| cold start, Apply → first ready replica, median of {len(cold)} "
        f"| {median:.2f} s |",
        f"| cold start, first run (fetch + repository build included) "
        f"| {cold[0]:.2f} s |",
        f"| cold start, all runs | {', '.join(f'{t:.2f}' for t in cold)} s |",
        f"| rollout of 2 replicas to a new revision (maxSurge 1) | {roll:.2f} s |",
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
