"""The matrixinfer CLI as a user runs it (a subprocess) against a real registry."""

from __future__ import annotations

import asyncio
import pathlib
import sys
from collections.abc import AsyncIterator

import pytest_asyncio
import yaml

from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings, seed_manifest
from tests.manifests import STACK, model


@pytest_asyncio.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    app = await RegistryApp.start(
        registry_settings(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    )
    try:
        yield app.address
    finally:
        await app.stop(0)


async def run(server: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrixinfer.cli", "--server", server, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_apply_seed_get_it_back(server: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(seed_manifest())
    code, out, _ = await run(server, "apply", "-f", str(path))
    assert (code, out.strip()) == (0, "model/my-model created")
    code, out, _ = await run(server, "get", "model", "my-model", "-o", "yaml")
    assert code == 0
    doc = yaml.safe_load(out)
    assert doc["spec"]["modelSpec"]["source"]["uri"] == "s3://models/my-model/"
    assert doc["metadata"]["generation"] == "1"  # int64 is a string in JSON mapping
    code, out, _ = await run(server, "get", "models")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "FORMAT", "REVISION", "AGE"]
    assert out.splitlines()[1].split()[:3] == ["my-model", "pytorch", "1"]
    code, out, _ = await run(server, "get", "models", "-A", "-o", "wide")
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]


async def test_apply_folder_and_stdin(server: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "all.yaml").write_text(STACK)
    code, out, _ = await run(server, "apply", "-f", str(tmp_path / "stack"))
    assert code == 0 and len(out.splitlines()) == 5
    code, out, _ = await run(server, "apply", "-f", "-", stdin=model("m", "1"))
    assert (code, out.strip()) == (0, "model/m created")


async def test_history_and_rollback(server: str) -> None:
    for version in ("1", "2"):
        await run(server, "apply", "-f", "-", stdin=model("m", version))
    code, out, _ = await run(server, "history", "m")
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["1", "1"],
        ["2", "2"],
    ]
    code, out, _ = await run(server, "rollback", "m", "1")
    assert (code, out.strip()) == (
        0,
        "model/m rolled back to revision 1 (now revision 3)",
    )


async def test_bad_manifest_names_field_and_exits_1(server: str) -> None:
    bad = model("m").replace("framework: onnx", "framework: caffe")
    code, out, err = await run(server, "apply", "-f", "-", stdin=bad)
    assert code == 1
    assert "spec.modelSpec.framework: must be one of" in err
    code, _, err = await run(server, "get", "model", "ghost")
    assert code == 1 and "NOT_FOUND" in err


async def test_unreachable_registry_exits_3() -> None:
    code, _, err = await run("127.0.0.1:1", "--timeout", "2", "get", "models")
    assert code == 3
    assert "cannot reach the registry" in err


MODEL = """apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {name: ordered}
spec:
  modelSpec: {modelId: m, framework: onnx, version: "1",
              source: {uri: "file:///models/m.onnx"}}
"""
INFER = """apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {name: ordered}
spec: {modelRef: {name: ordered}, replicas: %s}
"""


async def test_a_folder_is_applied_in_one_transaction(
    server: str, tmp_path: pathlib.Path
) -> None:
    # The ModelInfer's file sorts first and refers to the Model in the other file.
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "a-infer.yaml").write_text(INFER % 1)
    (folder / "b-model.json").write_text(
        '{"apiVersion": "registry.matrixinfer.ai/v1alpha1", "kind": "Model", '
        '"metadata": {"name": "ordered"}, "spec": {"modelSpec": {"modelId": "m", '
        '"framework": "onnx", "version": "1", '
        '"source": {"uri": "file:///models/m.onnx"}}}}'
    )
    code, out, err = await run(server, "apply", "-f", str(folder))
    assert code == 0, err
    assert "modelinfer/ordered created" in out and "model/ordered created" in out

    # One bad file: nothing of the others is written, and the error says which
    # file the bad document came from.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text(MODEL.replace("ordered", "second"))
    (bad / "b.yaml").write_text(INFER % -2)
    code, out, err = await run(server, "apply", "-f", str(bad))
    assert code == 1
    assert "spec.replicas" in err and f"manifest[1] = {bad / 'b.yaml'}" in err
    code, out, err = await run(server, "get", "model", "second")
    assert code == 1 and "NOT_FOUND" in err
