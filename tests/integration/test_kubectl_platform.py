"""What a Kubernetes user does with a running platform: `kubectl apply` the quickstart
against the registry's Kubernetes API, and `kubectl get modelinfers` shows the model
ready once the controller's real Triton replica is, with the CLI's columns."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import sys

from matrixinfer.api.columns import COLUMNS
from tests.conftest import ROOT
from tests.integration.conftest import IRIS_ONNX, running_platform

KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"


async def kubectl(
    tmp: pathlib.Path, server: str, *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    """The real kubectl, reading no user configuration (run as a subprocess so the
    platform in this event loop keeps serving)."""
    (tmp / "kubeconfig").touch()
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    process = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        "--kubeconfig",
        str(tmp / "kubeconfig"),
        "--cache-dir",
        str(tmp / "kube-cache"),
        "--server",
        server,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "HOME": str(tmp)},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_kubectl_apply_then_get_shows_the_model_ready(
    tmp_path: pathlib.Path,
) -> None:
    quickstart = (ROOT / "examples/quickstart/iris.yaml").read_text()
    quickstart = quickstart.replace("file://${IRIS_MODEL}", f"file://{IRIS_ONNX}")
    async with running_platform(tmp_path) as platform:
        server = platform.registry.kube_url
        code, out, err = await kubectl(
            tmp_path, server, "apply", "-f", "-", stdin=quickstart
        )
        assert code == 0, err
        assert "modelinfer.workload.matrixinfer.ai/iris created" in out.splitlines()

        rows: list[list[str]] = []
        for _ in range(600):
            code, out, err = await kubectl(tmp_path, server, "get", "modelinfers")
            assert code == 0, err
            rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
            if rows[1][2] == "1/1":
                break
            await asyncio.sleep(0.2)
        header = [name for name, _ in COLUMNS["ModelInfer"][0]]
        assert rows[0] == header
        assert rows[1][:4] == ["iris", "iris", "1/1", "1"]
