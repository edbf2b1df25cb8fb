"""The registry's admin API over REST at the gateway (transcoded from the
google.api.http annotations), its auth, its errors, its watch stream, and
/openapi.json against the routes actually served."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.gateway.main import GatewayApp
from matrixinfer.httpapi.openapi import routes_documented, routes_of
from tests.integration.conftest import Platform, start_gateway
from tests.manifests import MODEL


@dataclass
class Admin:
    app: GatewayApp
    session: aiohttp.ClientSession
    admin_key: str
    infer_key: str

    @property
    def url(self) -> str:
        return self.app.http_url

    async def call(
        self, method: str, path: str, key: str | None = "admin", **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if key == "admin":
            headers["x-api-key"] = self.admin_key
        elif key == "infer":
            headers["authorization"] = f"Bearer {self.infer_key}"
        async with self.session.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None, response


async def wait_for_keys(app: GatewayApp, *key_ids: str) -> None:
    for _ in range(200):  # the gateway learns keys through Watch
        if app.routes.synced and all(k in app.routes.api_keys.records for k in key_ids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never learned the API keys")


@pytest_asyncio.fixture
async def admin(platform: Platform) -> AsyncIterator[Admin]:
    app = await start_gateway(platform, auth_mode="required", admin_watch_max_s=5.0)
    session = aiohttp.ClientSession()
    try:
        admin_key = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="ops", scopes=["admin"])
        )
        infer_key = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="app", scopes=["infer:*"])
        )
        await wait_for_keys(
            app, admin_key.api_key.metadata.name, infer_key.api_key.metadata.name
        )
        yield Admin(app, session, admin_key.secret, infer_key.secret)
    finally:
        await session.close()
        await app.stop(0)


async def test_apply_get_list_delete(admin: Admin) -> None:
    manifest = MODEL.format(name="demo", version="1", tier="gold")
    status, body, response = await admin.call(
        "POST",
        "/apis/v1/apply",
        json={"manifest": manifest},
        headers={"x-request-id": "rest-apply-1"},
    )
    assert status == 200, body
    assert response.headers["x-request-id"] == "rest-apply-1"
    (result,) = body["results"]
    assert result["action"] == "created"
    assert result["resource"]["model"]["metadata"]["name"] == "demo"

    status, body, _ = await admin.call("GET", "/apis/v1/namespaces/default/models/demo")
    assert status == 200, body
    model = body["model"]
    assert model["spec"]["modelSpec"]["version"] == "1"
    assert isinstance(model["metadata"]["generation"], str)  # int64 as a string

    # Typed resources, dry run: validated, nothing stored.
    status, body, _ = await admin.call(
        "POST",
        "/apis/v1/apply",
        json={
            "resources": [{"model": {**model, "metadata": {"name": "dry"}}}],
            "dryRun": True,
        },
    )
    assert status == 200, body

    status, body, _ = await admin.call(
        "GET",
        "/apis/v1/namespaces/default/models",
        params={"labelSelector": "tier=gold", "limit": "10"},
    )
    assert status == 200, body
    assert [i["model"]["metadata"]["name"] for i in body["items"]] == ["demo"]
    assert body["resourceVersion"]

    status, body, _ = await admin.call(
        "DELETE", "/apis/v1/namespaces/default/models/demo"
    )
    assert status == 200, body
    status, body, _ = await admin.call("GET", "/apis/v1/namespaces/default/models/demo")
    assert status == 404
    assert body["code"] == "NOT_FOUND"
    status, body, _ = await admin.call("GET", "/apis/v1/namespaces/default/models/dry")
    assert status == 404


async def test_errors_name_the_field(admin: Admin) -> None:
    # The registry's admission: its BadRequest details come back as fieldViolations.
    bad = MODEL.format(name="demo", version="1", tier="gold").replace(
        "framework: onnx", "framework: caffe"
    )
    status, body, _ = await admin.call("POST", "/apis/v1/apply", json={"manifest": bad})
    assert status == 400
    assert body["code"] == "INVALID_ARGUMENT"
    fields = [v["field"] for v in body["fieldViolations"]]
    assert any("framework" in f for f in fields), body

    # The gateway's transcoding: wrong types and unknown fields, never a 500.
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        (
            "POST",
            "/apis/v1/apply",
            {"json": {"resources": [{"model": {"metadata": {"name": 5}}}]}},
            "resources[0].model.metadata.name",
        ),
        ("POST", "/apis/v1/apply", {"json": {"dryRun": "yes"}}, "dryRun"),
        ("POST", "/apis/v1/apply", {"json": {"manfest": ""}}, "manfest"),
        (
            "GET",
            "/apis/v1/namespaces/default/models",
            {"params": {"limit": "many"}},
            "limit",
        ),
        (
            "GET",
            "/apis/v1/namespaces/default/models",
            {"params": {"bogus": "1"}},
            "bogus",
        ),
        (
            "POST",
            "/apis/v1/namespaces/default/apikeys",
            {"json": {"namespace": "other", "subject": "x"}},
            "namespace",
        ),
    ]
    for method, path, kwargs, field in cases:
        status, body, _ = await admin.call(method, path, **kwargs)
        assert status == 400, (path, kwargs, body)
        assert [v["field"] for v in body["fieldViolations"]] == [field], body

    for raw in (b"{not json", b'{"manifest": "", "manifest": ""}', b"[1, 2]"):
        status, body, _ = await admin.call("POST", "/apis/v1/apply", data=raw)
        assert status == 400, (raw, body)
    status, body, _ = await admin.call(
        "POST", "/apis/v1/apply", data=io.BytesIO(b" " * (1024 * 1024 + 1))
    )
    assert status == 413


async def test_auth(admin: Admin) -> None:
    path = "/apis/v1/namespaces/default/models"
    status, body, response = await admin.call("GET", path, key=None)
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await admin.call(
        "GET", path, key=None, headers={"x-api-key": admin.admin_key + "x"}
    )
    assert status == 401
    assert admin.admin_key not in json.dumps(body)
    status, body, _ = await admin.call("GET", path, key="infer")
    assert status == 403 and body["code"] == "PERMISSION_DENIED"
    status, _, _ = await admin.call("GET", path)
    assert status == 200


async def test_watch_streams_ndjson(admin: Admin, platform: Platform) -> None:
    await platform.apply(MODEL.format(name="first", version="1", tier="gold"))
    path = "/apis/v1/watch/models"
    params = {"sendInitialEvents": "true", "timeoutSeconds": "2"}
    headers = {"x-api-key": admin.admin_key}
    lines: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with admin.session.get(
        admin.url + path, params=params, headers=headers
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        async for raw in response.content:
            lines.append(json.loads(raw))
            if len(lines) == 2:
                await platform.apply(MODEL.format(name="second", version="1", tier="x"))
    assert 1.5 < loop.time() - started < 10  # ended by timeoutSeconds
    assert lines[0]["type"] == "ADDED"
    assert lines[0]["object"]["model"]["metadata"]["name"] == "first"
    assert lines[1]["type"] == "BOOKMARK" and lines[1]["initialEventsEnd"] is True
    assert lines[2]["type"] == "ADDED"
    assert lines[2]["object"]["model"]["metadata"]["name"] == "second"

    # Refusals before the first event keep their HTTP status.
    status, body, _ = await admin.call("GET", "/apis/v1/watch/teapots")
    assert status == 400, body
    status, body, _ = await admin.call(
        "GET", path, params={"resourceVersion": "999999"}
    )
    assert status == 400 and body["fieldViolations"][0]["field"] == "resourceVersion"
    status, body, _ = await admin.call("GET", path, params={"timeoutSeconds": "0"})
    assert status == 400 and body["fieldViolations"][0]["field"] == "timeoutSeconds"


async def test_openapi_matches_the_routes(platform: Platform) -> None:
    app = await start_gateway(platform)  # auth off: the admin API is open too
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(app.http_url + "/openapi.json") as response:
                assert response.status == 200
                doc = await response.json()
            async with session.get(
                app.http_url + "/apis/v1/namespaces/default/models"
            ) as response:
                assert response.status == 200
        assert doc["openapi"].startswith("3.")
        served = routes_of(app.rest.app)
        assert routes_documented(doc) == served
        assert ("POST", "/apis/v1/apply") in served
        assert ("GET", "/apis/v1/watch/{}") in served
        assert ("GET", "/openapi.json") in served
        operations = {
            op["operationId"] for ops in doc["paths"].values() for op in ops.values()
        }
        assert {"Registry_Apply", "Registry_Watch", "ModelInfer"} <= operations
    finally:
        await app.stop(0)


async def test_stopping_the_gateway_ends_open_watches(platform: Platform) -> None:
    app = await start_gateway(platform)
    stopped = False
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                app.http_url + "/apis/v1/watch/models?timeoutSeconds=600"
            ) as response:
                assert response.status == 200  # headers after a quiet second
                loop = asyncio.get_running_loop()
                started = loop.time()
                await app.stop(0)
                stopped = True
                assert await response.read() == b""  # ended cleanly, not cut
                assert loop.time() - started < 5
    finally:
        if not stopped:
            await app.stop(0)
