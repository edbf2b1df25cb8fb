"""The admin API's REST transcoding, without a registry: path templates, query and
body rules, errors that name the field, the gRPC → HTTP mapping, and the routes
(served behind a fake channel) against the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from matrixinfer.api.v1 import meta_pb2
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.apikeys import api_key_id, generate_api_key
from matrixinfer.core.errors import (
    Expired,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from matrixinfer.core.grpc.errors import to_rpc_status
from matrixinfer.gateway.domain.auth import (
    ApiKeyRecord,
    Authenticator,
    InMemoryApiKeyStore,
)
from matrixinfer.gateway.grpc.proxy import InferenceProxy
from matrixinfer.gateway.http.admin import (
    REGISTRY,
    AdminApi,
    http_status,
    rpc_error,
)
from matrixinfer.gateway.http.openapi import DATATYPES, document
from matrixinfer.gateway.http.rest import DTYPES, rest_app
from matrixinfer.httpapi.jsonbody import parse_json
from matrixinfer.httpapi.openapi import routes_documented, routes_of
from matrixinfer.httpapi.transcoding import (
    bindings,
    parse_template,
    render,
    transcode,
)

BINDINGS = {b.rpc: b for b in bindings(REGISTRY)}


def violations(info: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in info.value.violations]


# ------------------------------------------------------------------ templates


def test_path_templates() -> None:
    plain = parse_template("/apis/v1/namespaces/{namespace}/{kind}/{name}")
    assert plain.route == "/apis/v1/namespaces/{namespace}/{kind}/{name}"
    assert plain.openapi == plain.route
    assert [v.name for v in plain.variables] == ["namespace", "kind", "name"]

    nested = parse_template("/v1/{resource.metadata.name}/status")
    assert nested.route == "/v1/{resource__metadata__name}/status"
    assert nested.openapi == "/v1/{resource.metadata.name}/status"
    assert nested.variables[0].field_path == ("resource", "metadata", "name")

    pattern = parse_template("/v1/{name=projects/*/things/**}:cancel")
    assert pattern.route == "/v1/{name:projects/[^/]+/things/.+}:cancel"
    assert pattern.openapi == "/v1/{name}:cancel"
    assert pattern.variables[0].segments == ("projects", "*", "things", "**")

    wildcard = parse_template("/v1/*/x")
    assert wildcard.route == "/v1/{_wildcard1:[^/]+}/x"  # named by position


@pytest.mark.parametrize(
    "template",
    ["", "v1/x", "/v1/{name", "/v1/{}", "/v1/{a={b}}", "/v1/x:", "/v1//x", "/v1/{9}"],
)
def test_bad_templates_fail_at_start(template: str) -> None:
    with pytest.raises(ValueError):
        parse_template(template)


def test_every_annotated_rpc_is_bound_from_the_descriptors() -> None:
    service = rpb.DESCRIPTOR.services_by_name["Registry"]
    assert set(BINDINGS) == {m.name for m in service.methods}
    assert (BINDINGS["Apply"].verb, BINDINGS["Apply"].body) == ("POST", "*")
    assert BINDINGS["UpdateStatus"].body == "resource"
    assert BINDINGS["Watch"].streaming and not BINDINGS["Get"].streaming
    assert BINDINGS["Get"].path.route == "/apis/v1/namespaces/{namespace}/{kind}/{name}"
    assert BINDINGS["Delete"].verb == "DELETE"


# ------------------------------------------------------------------ transcoding


def test_path_and_query_fill_the_request() -> None:
    message = transcode(
        BINDINGS["List"],
        {"namespace": "default", "kind": "models"},
        [("labelSelector", "app=iris"), ("limit", "5"), ("continue", "abc")],
        None,
    )
    expected = rpb.ListRequest(
        namespace="default", kind="models", label_selector="app=iris", limit=5
    )
    setattr(expected, "continue", "abc")  # noqa: B010 - a keyword
    assert message == expected

    watch = transcode(
        BINDINGS["Watch"],
        {"kind": "models"},
        [("send_initial_events", "true"), ("allowBookmarks", "1")],
        None,
    )
    assert isinstance(watch, rpb.WatchRequest)
    assert watch.send_initial_events and watch.allow_bookmarks


def test_body_rules() -> None:
    apply = transcode(BINDINGS["Apply"], {}, [], {"manifest": "x", "dryRun": True})
    assert apply == rpb.ApplyRequest(manifest="x", dry_run=True)
    assert transcode(BINDINGS["Apply"], {}, [], None) == rpb.ApplyRequest()

    finalizers = transcode(
        BINDINGS["UpdateFinalizers"],
        {"namespace": "ns", "kind": "models", "name": "m"},
        [],
        {"add": ["a", "b"]},
    )
    assert finalizers == rpb.UpdateFinalizersRequest(
        namespace="ns", kind="models", name="m", add=["a", "b"]
    )

    # body: "resource": the body is that one field.
    status = transcode(
        BINDINGS["UpdateStatus"],
        {"namespace": "ns", "kind": "models", "name": "m"},
        [],
        {"model": {"status": {"currentRevision": "3"}}},
    )
    assert isinstance(status, rpb.UpdateStatusRequest)
    assert status.resource.model.status.current_revision == 3
    assert (status.namespace, status.kind, status.name) == ("ns", "models", "m")


@pytest.mark.parametrize(
    ("rpc", "path", "query", "body", "field"),
    [
        ("List", {"namespace": "d", "kind": "m"}, [("limit", "many")], None, "limit"),
        ("List", {"namespace": "d", "kind": "m"}, [("limit", "1e99")], None, "limit"),
        ("List", {"namespace": "d", "kind": "m"}, [("bogus", "1")], None, "bogus"),
        ("List", {"namespace": "d", "kind": "m"}, [("kind", "x")], None, "kind"),
        (
            "List",
            {"namespace": "d", "kind": "m"},
            [("limit", "1"), ("limit", "2")],
            None,
            "limit",
        ),
        ("Watch", {"kind": "m"}, [("allowBookmarks", "maybe")], None, "allowBookmarks"),
        ("Apply", {}, [("dryRun", "true")], None, "dryRun"),
        ("Apply", {}, [], {"dryRun": "yes"}, "dryRun"),
        ("Apply", {}, [], {"manfest": ""}, "manfest"),
        (
            "Apply",
            {},
            [],
            {"resources": [{}, {"model": {"metadata": {"name": 5}}}]},
            "resources[1].model.metadata.name",
        ),
        (
            "Apply",
            {},
            [],
            {"resources": [{"model": {"metadata": {"labels": {"a": 1}}}}]},
            "resources[0].model.metadata.labels[a]",
        ),
        (
            "Apply",
            {},
            [],
            {"resources": [{"model": {}, "apiKey": {}}]},
            "resources[0]",
        ),
        (
            "Apply",
            {},
            [],
            {
                "resources": [
                    {"model": {"spec": {"modelSpec": {"inputs": [{"dims": ["x"]}]}}}}
                ]
            },
            "resources[0].model.spec.modelSpec.inputs[0].dims[0]",
        ),
        ("Apply", {}, [], {"resources": {"model": {}}}, "resources"),
        (
            "CreateApiKey",
            {"namespace": "ns"},
            [],
            {"namespace": "other"},
            "namespace",
        ),
        (
            "Rollback",
            {"namespace": "ns", "name": "m"},
            [],
            {"revision": "99999999999999999999"},
            "revision",
        ),
        (
            "Rollback",
            {"namespace": "ns", "name": "m"},
            [],
            {"revision": 1.5},
            "revision",
        ),
    ],
)
def test_wrong_input_names_the_field(
    rpc: str,
    path: dict[str, str],
    query: list[tuple[str, str]],
    body: Any,
    field: str,
) -> None:
    with pytest.raises(InvalidArgument) as info:
        transcode(BINDINGS[rpc], path, query, body)
    assert violations(info) == [field]


def test_bodies_where_none_or_an_object_is_expected() -> None:
    with pytest.raises(InvalidArgument, match="no request body"):
        transcode(BINDINGS["Get"], {"namespace": "a", "kind": "b", "name": "c"}, [], {})
    with pytest.raises(InvalidArgument, match="JSON object"):
        transcode(BINDINGS["Apply"], {}, [], [1, 2])


def test_strict_json() -> None:
    assert parse_json(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    for raw in (b'{"a": 1, "a": 2}', b"[NaN]", b"{", b"\xff", b"[" * 100 + b"]" * 100):
        with pytest.raises(InvalidArgument):
            parse_json(raw)


def test_responses_use_the_proto3_json_mapping() -> None:
    resource = pb.Resource(
        model=pb.Model(metadata=meta_pb2.ObjectMeta(name="m", generation=7))
    )
    assert render(BINDINGS["Get"], resource) == {
        "model": {"metadata": {"name": "m", "generation": "7"}}
    }


# ------------------------------------------------------------------ errors


def _rpc_error(
    code: grpc.StatusCode, error: Exception | None = None, details: str = ""
) -> grpc.aio.AioRpcError:
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    if error is not None:
        status = to_rpc_status(error)
        trailing, details = status.trailing_metadata, status.message
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def test_grpc_status_to_http() -> None:
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 500,
    }
    assert {code: http_status(code) for code in expected} == expected
    assert http_status(grpc.StatusCode.OUT_OF_RANGE, "EXPIRED") == 410

    status, body, _ = rpc_error(
        _rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            InvalidArgument(
                "", [FieldViolation("spec.modelSpec.framework", "not one of ...")]
            ),
        )
    )
    assert status == 400
    assert body["fieldViolations"] == [
        {"field": "spec.modelSpec.framework", "description": "not one of ..."}
    ]
    status, body, _ = rpc_error(
        _rpc_error(grpc.StatusCode.OUT_OF_RANGE, Expired("old"))
    )
    assert (status, body["reason"]) == (410, "EXPIRED")
    # The channel's own failure (no ErrorInfo): the address stays in the log.
    status, body, _ = rpc_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, details="failed to connect to 10.0.0.7")
    )
    assert status == 503 and "10.0.0.7" not in json.dumps(body)


# ------------------------------------------------------------------ served


class FakeStream:
    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)
        self.cancelled = False

    async def read(self) -> Any:
        if not self.items:
            return grpc.aio.EOF
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class FakeChannel:
    """Answers by method path; records what it was asked."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, Any, float, Any]] = []

    def unary_unary(self, path: str, **_: Any) -> Any:
        async def call(message: Any, timeout: float, metadata: Any) -> Any:
            self.calls.append((path, message, timeout, metadata))
            answer = self.answers[path]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call

    def unary_stream(self, path: str, **_: Any) -> Any:
        def call(message: Any, timeout: float, metadata: Any) -> FakeStream:
            self.calls.append((path, message, timeout, metadata))
            return FakeStream(self.answers[path])

        return call


def _app(api: AdminApi | None) -> web.Application:
    return rest_app(
        cast(InferenceProxy, object()),
        lambda: True,
        CollectorRegistry(),
        1024,
        api,
    )


@pytest.fixture
async def served() -> AsyncIterator[
    tuple[TestClient[Any, Any], FakeChannel, dict[str, str]]
]:
    store = InMemoryApiKeyStore()
    keys = {}
    for name, scopes in (("admin", {"admin"}), ("infer", {"infer:*"})):
        key, hashed = generate_api_key()
        key_id = api_key_id(key)
        assert key_id is not None
        store.add(ApiKeyRecord(key_id, hashed, name, frozenset(scopes), None))
        keys[name] = key
    channel = FakeChannel()
    api = AdminApi(
        cast(grpc.aio.Channel, channel),
        Authenticator(store, None),
        timeout_s=3.0,
        max_body_bytes=64,
        watch_max_s=5.0,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(_app(api)))
    await client.start_server()
    try:
        yield client, channel, keys
    finally:
        await client.close()


async def test_served_routes_auth_errors_and_request_ids(
    served: tuple[TestClient[Any, Any], FakeChannel, dict[str, str]],
) -> None:
    client, channel, keys = served
    get = "/matrixinfer.v1.Registry/Get"
    channel.answers[get] = pb.Resource(
        model=pb.Model(metadata=meta_pb2.ObjectMeta(name="m"))
    )
    url = "/apis/v1/namespaces/default/models/m"
    admin = {"x-api-key": keys["admin"], "x-request-id": "req-1"}

    response = await client.get(url)
    assert response.status == 401
    assert (await response.json())["code"] == "UNAUTHENTICATED"
    response = await client.get(
        url, headers={"authorization": f"Bearer {keys['infer']}"}
    )
    assert response.status == 403
    assert channel.calls == []

    response = await client.get(url, headers=admin)
    assert response.status == 200
    assert await response.json() == {"model": {"metadata": {"name": "m"}}}
    assert response.headers["x-request-id"] == "req-1"
    path, message, timeout, metadata = channel.calls[-1]
    assert message == rpb.GetRequest(namespace="default", kind="models", name="m")
    assert timeout == 3.0 and ("x-request-id", "req-1") in metadata

    channel.answers[get] = _rpc_error(grpc.StatusCode.NOT_FOUND, NotFound("no m"))
    response = await client.get(url, headers=admin)
    assert response.status == 404
    assert await response.json() == {
        "error": "no m",
        "code": "NOT_FOUND",
        "reason": "NOT_FOUND",
    }

    response = await client.post(
        "/apis/v1/apply", data=b'{"manifest": "' + b"x" * 100 + b'"}', headers=admin
    )
    assert response.status == 413
    response = await client.get(url + "?foo=1", headers=admin)
    assert response.status == 400
    assert (await response.json())["fieldViolations"][0]["field"] == "foo"


async def test_watch_is_newline_delimited_json(
    served: tuple[TestClient[Any, Any], FakeChannel, dict[str, str]],
) -> None:
    client, channel, keys = served
    watch = "/matrixinfer.v1.Registry/Watch"
    headers = {"x-api-key": keys["admin"]}
    channel.answers[watch] = [
        rpb.WatchEvent(type="BOOKMARK", resource_version="5", initial_events_end=True),
        rpb.WatchEvent(type="ADDED", resource_version="6"),
        _rpc_error(grpc.StatusCode.OUT_OF_RANGE, Expired("too old")),
    ]
    response = await client.get(
        "/apis/v1/watch/models?timeoutSeconds=2", headers=headers
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines[0] == {
        "type": "BOOKMARK",
        "resourceVersion": "5",
        "initialEventsEnd": True,
    }
    assert lines[1]["type"] == "ADDED"
    assert lines[2]["error"]["reason"] == "EXPIRED"  # after the first event: a line
    assert channel.calls[-1][2] == 2.0

    # Refused before any event: a real HTTP status.
    channel.answers[watch] = [_rpc_error(grpc.StatusCode.OUT_OF_RANGE, Expired("old"))]
    response = await client.get("/apis/v1/watch/models", headers=headers)
    assert response.status == 410
    assert channel.calls[-1][2] == 5.0  # the cap is the default

    for bad in ("0", "-1", "1.5", "x"):
        response = await client.get(
            f"/apis/v1/watch/models?timeoutSeconds={bad}", headers=headers
        )
        assert response.status == 400


def test_openapi_document_matches_the_routes() -> None:
    api = AdminApi(cast(grpc.aio.Channel, FakeChannel()), None, auth_required=False)
    app = _app(api)
    doc = document(api, auth=False)
    assert routes_documented(doc) == routes_of(app)
    without_admin = _app(None)
    assert routes_documented(document(None)) == routes_of(without_admin)
    assert set(DATATYPES) == set(DTYPES) | {"BYTES"}


def test_openapi_schemas_follow_the_json_mapping() -> None:
    api = AdminApi(cast(grpc.aio.Channel, FakeChannel()), None, auth_required=False)
    doc = document(api)
    schemas = doc["components"]["schemas"]
    text = json.dumps(doc)
    for ref in {
        r.split('"')[0] for r in text.split('"$ref": "#/components/schemas/')[1:]
    }:
        assert ref in schemas, ref  # every reference resolves
    meta = schemas["matrixinfer.v1.ObjectMeta"]["properties"]
    assert meta["generation"]["type"] == "string"  # int64
    assert meta["labels"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    assert schemas["matrixinfer.v1.Resource"]["maxProperties"] == 1  # the oneof
    watch = doc["paths"]["/apis/v1/watch/{kind}"]["get"]
    assert "application/x-ndjson" in watch["responses"]["200"]["content"]
    query = {p["name"] for p in watch["parameters"] if p["in"] == "query"}
    assert query == {
        "namespace",
        "labelSelector",
        "resourceVersion",
        "sendInitialEvents",
        "allowBookmarks",
        "timeoutSeconds",
    }
    create = doc["paths"]["/apis/v1/namespaces/{namespace}/apikeys"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert "namespace" not in body["properties"]  # the path sets it
