"""The `matrixinfer` command against a real registry, controller (real Triton
replicas of the iris example) and gateway.

Commands run through click's CliRunner on a worker thread: the platform serves
from this test's event loop, which must keep running while a command waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

import grpc
import pytest
from click.testing import CliRunner, Result

from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.cli.main import cli
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

SETOSA = "[[5.1,3.5,1.4,0.2]]"


class Cli:
    def __init__(self, platform: Platform, tmp_path: pathlib.Path) -> None:
        config = tmp_path / "cli-config.yaml"
        config.write_text("")  # isolated from the user's ~/.config
        self.env = {"MATRIXINFER_CONFIG": str(config), "MATRIXINFER_TOKEN": ""}
        self.flags = [
            "--server", platform.registry.address,
            "--controller", platform.controller.address,
        ]  # fmt: skip

    def gateway(self, app: GatewayApp) -> None:
        self.flags += ["--gateway", app.http_url, "--gateway-grpc", app.address]

    async def __call__(self, *args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        return await asyncio.to_thread(
            runner.invoke, cli, [*self.flags, *args], input=input, env=self.env
        )


async def test_apply_wait_get_describe_logs(
    platform: Platform, tmp_path: pathlib.Path
) -> None:
    run = Cli(platform, tmp_path)
    manifest = tmp_path / "iris.yaml"
    manifest.write_text(iris_manifests())

    result = await run("apply", "-f", str(manifest), "--wait", "--timeout", "90")
    assert result.exit_code == 0, result.output
    assert "modelinfer/iris created" in result.stdout
    assert "modelinfer/iris available (1/1 ready, model revision 1)" in result.stdout

    result = await run("get", "mi")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "MODEL", "READY", "REVISION", "AGE"]
    assert row.split()[:4] == ["iris", "iris", "1/1", "1"]

    result = await run("get", "modelinfer", "iris", "-o", "json")
    infer = json.loads(result.stdout)
    assert infer["status"]["readyReplicas"] == 1
    (endpoint,) = infer["status"]["endpoints"]
    replica = endpoint["name"]

    result = await run("get", "models", "-l", "app=iris", "-o", "yaml")
    assert "framework: onnx" in result.stdout

    result = await run("describe", "mi", "iris")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Conditions:" in text and "MinimumReplicasAvailable" in text
    assert f"{replica}   127.0.0.1" in text
    assert "MatrixInfer keeps no events" in text

    result = await run("describe", "model", "iris")
    assert "Revisions (newest first):" in result.stdout

    # A second apply of the same manifest: nothing to roll, the wait is immediate.
    result = await run("apply", "-f", "-", "--wait", input=iris_manifests())
    assert result.exit_code == 0, result.output
    assert "modelinfer/iris unchanged" in result.stdout

    result = await run("logs", "iris", "--tail", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert 1 <= len(lines) <= 3
    assert all(line.startswith(f"[{replica}] ") for line in lines)

    result = await run("logs", "iris", "--replica", replica, "--tail", "1")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    assert not result.stdout.startswith("[")

    result = await run("logs", "iris", "--replica", "default-iris-r9-9")
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr and replica in result.stderr

    result = await run("logs", "nope")
    assert result.exit_code == 1 and "ModelInfer default/nope not found" in (
        result.stderr
    )

    # A new Model revision applied alone: --wait follows the ModelInfer's rollout.
    model_v2 = iris_manifests(**{'version: "1"': 'version: "2"'}).split("---")[0]
    result = await run("apply", "-f", "-", "--wait", input=model_v2)
    assert result.exit_code == 0, result.output
    assert "model/iris configured" in result.stdout
    assert "modelinfer/iris available (1/1 ready, model revision 2)" in result.stdout
    result = await run("rollback", "iris", "1", "--wait", "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert "modelinfer/iris available: 1/1 ready on revision 3" in result.stdout

    result = await run("delete", "mi", "iris")
    assert result.exit_code == 0
    assert "modelinfer/iris deleting (waiting for matrixinfer.ai/replicas)" in (
        result.stdout
    )
    # Gone once the controller has stopped its replicas (and removed its finalizer).
    await platform.wait_for(lambda i: i is None, timeout_s=30)


async def test_get_logs_rpc_validates_and_follows(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    infer = await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 1
    )
    assert infer is not None
    replica = infer.status.endpoints[0].name
    async with grpc.aio.insecure_channel(platform.controller.address) as channel:
        stub = controller_pb2_grpc.ControllerStub(channel)
        for request, field in [
            (cpb.GetLogsRequest(model_infer="iris", tail_lines=-1), "tail_lines"),
            (cpb.GetLogsRequest(model_infer="iris", replica="../../etc"), "replica"),
            (cpb.GetLogsRequest(model_infer=""), "model_infer"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.GetLogs(request, timeout=5):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (info.value.details() or "")

        # Follow: the tail comes at once; the stream stays open for more.
        call = stub.GetLogs(
            cpb.GetLogsRequest(model_infer="iris", tail_lines=2, follow=True)
        )
        chunk = await asyncio.wait_for(call.read(), 5)
        assert chunk.replica == replica and 1 <= len(chunk.lines) <= 2
        call.cancel()


async def test_apply_wait_fails_with_the_degraded_message(
    platform: Platform, tmp_path: pathlib.Path
) -> None:
    run = Cli(platform, tmp_path)
    broken = iris_manifests(uri=f"file://{tmp_path}/missing.onnx")
    result = await run("apply", "-f", "-", "--wait", "--timeout", "4", input=broken)
    assert result.exit_code == 1, result.output
    assert "modelinfer/iris not available after 4 s (0/1 ready)" in result.stderr
    assert "Degraded" in result.stderr and "missing.onnx" in result.stderr


async def test_apikeys_infer_and_top_through_the_gateway(
    platform: Platform, tmp_path: pathlib.Path
) -> None:
    run = Cli(platform, tmp_path)
    app = await start_gateway(platform, auth_mode="required")
    run.gateway(app)
    try:
        result = await run("apply", "-f", "-", "--wait", input=iris_manifests())
        assert result.exit_code == 0, result.output
        await wait_routed(app)

        result = await run(
            "apikey", "create", "--subject", "ci", "--scope", "infer:*", "-o", "json"
        )
        assert result.exit_code == 0, result.output
        assert "not shown again" in result.stderr
        key = json.loads(result.stdout)
        result = await run("apikey", "list")
        assert result.exit_code == 0
        assert [key["name"], "ci", "infer:*", "false"] in [
            line.split() for line in result.stdout.splitlines()
        ]

        result = await run("infer", "iris", "--input", f"X={SETOSA}")
        assert result.exit_code == 1
        assert "HTTP 401" in result.stderr and "--token" in result.stderr

        token = ["--token", key["secret"]]
        result = await run(*token, "infer", "iris", "--input", f"X={SETOSA}")
        assert result.exit_code == 0, result.output
        assert "label" in result.stdout and "[0]" in result.stdout

        result = await run(
            *token, "infer", "iris", "--grpc", "-o", "json",
            "--input", "X=[6.7,3.0,5.2,2.3]",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs = {o["name"]: o for o in json.loads(result.stdout)["outputs"]}
        assert outputs["label"]["data"] == [2]

        body = tmp_path / "request.json"
        body.write_text(json.dumps({"inputs": [{"name": "X", "shape": [1, 4],
            "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}))  # fmt: skip
        result = await run(*token, "infer", "iris", "--data", str(body), "-o", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["model_name"] == "iris"

        # Traffic while `top` scrapes twice.
        async def traffic() -> None:
            # Spread over more than the interval: some calls land between each
            # pair of reads (HAProxy's counters, then Triton's statistics).
            for _ in range(8):
                await run(*token, "infer", "iris", "--input", f"X={SETOSA}")
                await asyncio.sleep(0.25)

        top, _ = await asyncio.gather(
            run(*token, "top", "--interval", "1.5"), traffic()
        )
        assert top.exit_code == 0, top.output
        header, *rows = top.stdout.splitlines()
        assert header.split() == [
            "MODEL", "MODELINFER", "READY", "RPS", "LATENCY", "BATCH",
        ]  # fmt: skip
        iris = next(r.split() for r in rows if r.startswith("iris"))
        assert iris[:3] == ["iris", "iris", "1/1"]
        # HAProxy carried the calls: its counters give the rate; Triton's
        # statistics (read through the gateway) give the batch it formed.
        assert iris[3] != "-" and float(iris[3]) > 0
        assert iris[5] != "-" and float(iris[5]) >= 1.0

        result = await run("apikey", "revoke", key["name"])
        assert result.exit_code == 0 and "revoked" in result.stdout
        for _ in range(50):
            result = await run(*token, "infer", "iris", "--input", f"X={SETOSA}")
            if result.exit_code == 1:
                break
            await asyncio.sleep(0.1)
        assert "HTTP 401" in result.stderr
    finally:
        await app.stop(0)


async def test_get_watch_prints_changes_until_ctrl_c(
    platform: Platform, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrixinfer.cli", "--server", platform.registry.address,
        "get", "mi", "-w",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MATRIXINFER_CONFIG": str(config)},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        header = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert header.decode().split() == ["NAME", "MODEL", "READY", "REVISION", "AGE"]
        await platform.apply(iris_manifests())
        rows: list[list[str]] = []
        while not rows or rows[-1][2] != "1/1":
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            rows.append(line.decode().split())
        assert rows[0][:3] == ["iris", "iris", "0/1"]
        assert rows[-1][:4] == ["iris", "iris", "1/1", "1"]
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
