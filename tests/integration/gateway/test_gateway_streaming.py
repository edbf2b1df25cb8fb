"""A decoupled model (examples/tokens: one response per word) deployed by the real
controller and streamed through the real gateway, both ways it carries calls:
HAProxy, and the gateway's Python (a priority rule's REST calls and streams go
there). Clients are unchanged: tritonclient's gRPC streaming API, and curl for
Triton's REST generate extension (generate, generate_stream as server-sent events).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio

from matrixinfer.gateway.main import GatewayApp
from tests.conftest import ROOT
from tests.integration.conftest import (
    carried_by,
    running_platform,
    start_gateway,
    wait_routed,
)

#: Requests with this header match a rule with a priority: the gateway's Python
#: carries their REST calls and streams.
GOLD = {"x-tenant": "gold"}
ROUTE = """
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelRoute
metadata:
  name: tokens
spec:
  modelName: tokens
  rules:
    - match: {headers: {x-tenant: {exact: gold}}}
      targets: [{modelServer: tokens}]
      priority: 1
    - targets: [{modelServer: tokens}]
"""
#: (headers, HAProxy proxy whose count grows: a model backend or the slow path)
PATHS = pytest.mark.parametrize(
    ("headers", "carrier"),
    [({}, "haproxy"), (GOLD, "python")],
    ids=["haproxy", "python"],
)


def manifests() -> str:
    text = (ROOT / "examples/tokens/manifests.yaml").read_text()
    text = text.replace("${TOKENS_MODEL}", str(ROOT / "examples/tokens/model"))
    # The example's route, with a priority rule in front of it.
    return text[: text.rindex("---")] + "---" + ROUTE


@pytest_asyncio.fixture
async def gateway(tmp_path: pathlib.Path) -> AsyncIterator[GatewayApp]:
    async with running_platform(tmp_path, python_models=True) as platform:
        app = await start_gateway(platform)
        try:
            await platform.apply(manifests())
            await platform.wait_for(
                lambda i: i is not None and i.status.ready_replicas == 1,
                90,
                name="tokens",
            )
            await wait_routed(app, "tokens")
            yield app
        finally:
            await app.stop(0)


def proxies(rows: list[tuple[str, str]]) -> set[str]:
    """The HAProxy backends among grown (proxy, server) rows, by kind."""
    kinds = set()
    for proxy, _ in rows:
        if proxy.startswith("slow_"):
            kinds.add("python")
        elif proxy.startswith(("g:", "h:")):
            kinds.add("haproxy")
    return kinds


def words_request(text: str, max_tokens: int) -> list[triton_aio.InferInput]:
    text_input = triton_aio.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    limit = triton_aio.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    return [text_input, limit]


@PATHS
async def test_a_grpc_stream_gets_many_responses_per_request(
    gateway: GatewayApp, headers: dict[str, str], carrier: str
) -> None:
    client = triton_aio.InferenceServerClient(gateway.address)
    words: dict[str, list[str]] = {"a": [], "b": []}

    async def requests() -> AsyncIterator[dict[str, object]]:
        for request_id, text, limit in (
            ("a", "the quick brown fox", 3),
            ("b", "hello world", 5),
        ):
            inputs = words_request(text, limit)
            yield {"model_name": "tokens", "inputs": inputs, "request_id": request_id}

    async def stream() -> None:
        async for result, error in client.stream_infer(requests(), headers=headers):
            assert error is None
            output = result.as_numpy("text_output")
            assert output is not None
            words[result.get_response().id].append(output[0].decode())

    try:
        carried = await carried_by(gateway, "", stream)
    finally:
        await client.close()
    assert words == {"a": ["the", "quick", "brown"], "b": ["hello", "world"]}
    assert proxies(carried) == {carrier}


async def curl(
    gateway: GatewayApp, path: str, body: dict[str, object], headers: dict[str, str]
) -> tuple[int, str, str]:
    """POST ``body`` with curl (without buffering its output); the status, the
    Content-Type and the body. Run as a subprocess: the gateway's Python shares
    this event loop."""
    args = ["curl", "-sS", "-N", "-m", "20", "-X", "POST", "-D", "-"]
    for key, value in {"content-type": "application/json", **headers}.items():
        args += ["-H", f"{key}: {value}"]
    args += ["-d", json.dumps(body), f"{gateway.http_url}/v2/models/tokens/{path}"]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    head, _, content = out.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    types = [
        line.split(":", 1)[1].strip()
        for line in lines[1:]
        if line.lower().startswith("content-type:")
    ]
    return int(lines[0].split()[1]), types[-1], content


@PATHS
async def test_generate_stream_sends_each_response_as_an_event(
    gateway: GatewayApp, headers: dict[str, str], carrier: str
) -> None:
    answers: list[tuple[int, str, str]] = []

    async def send() -> None:
        body = {"text_input": "the quick brown fox", "max_tokens": 3}
        answers.append(await curl(gateway, "generate_stream", body, headers))

    carried = await carried_by(gateway, "", send)
    [(status, content_type, content)] = answers
    assert (status, content_type) == (200, "text/event-stream; charset=utf-8")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in content.split("\n\n")
        if line.strip()
    ]
    assert events == [
        {"model_name": "tokens", "model_version": "1", "text_output": word}
        for word in ("the", "quick", "brown")
    ]
    assert proxies(carried) == {carrier}


@PATHS
async def test_generate_answers_one_response_as_json(
    gateway: GatewayApp, headers: dict[str, str], carrier: str
) -> None:
    # An input's value may sit inside "parameters" too (Triton's mapping).
    bodies: list[dict[str, object]] = [
        {"text_input": "the quick", "max_tokens": 1},
        {"text_input": "the quick", "parameters": {"max_tokens": 1}},
    ]
    for body in bodies:
        status, content_type, content = await curl(gateway, "generate", body, headers)
        assert (status, content_type.split(";")[0]) == (200, "application/json")
        assert json.loads(content) == {
            "model_name": "tokens",
            "model_version": "1",
            "text_output": "the",
        }
    status, _, content = await curl(gateway, "generate", {"text_input": "a"}, headers)
    assert status == 400
    assert "expected 2 inputs but got 1" in json.loads(content)["error"]


@PATHS
async def test_a_model_error_is_a_client_error_on_both_endpoints(
    gateway: GatewayApp, headers: dict[str, str], carrier: str
) -> None:
    body = {"text_input": "a b", "max_tokens": 0}
    for path in ("generate", "generate_stream"):
        status, _, content = await curl(gateway, path, body, headers)
        assert status == 400
        # Triton's answer (HAProxy path) is an event; the Python path's plain JSON.
        assert "max_tokens must be at least 1" in content


async def test_the_python_path_refuses_generate_for_several_responses(
    gateway: GatewayApp,
) -> None:
    status, _, content = await curl(
        gateway, "generate", {"text_input": "a b c", "max_tokens": 3}, GOLD
    )
    assert status == 400
    assert json.loads(content) == {
        "error": "/generate takes exactly one response; model 'tokens' sent "
        "several (use /generate_stream)"
    }
