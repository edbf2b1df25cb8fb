"""The registry's audit log: an entry per write (and per refused write) with the
caller's identity, the change as a JSON Patch with credentials redacted, a hash
chain that names the first altered entry, and a JSON log line per entry.

Writes are made through the domain service under ``identity.acting_as`` (what the
authentication sets for a call); what they left is read as a user reads it, through
the Registry RPCs. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import text

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core import identity
from matrixinfer.core.errors import AlreadyExists, InvalidArgument
from matrixinfer.core.logging import configure_logging
from matrixinfer.registry.domain import audit
from matrixinfer.registry.main import RegistryApp
from tests.manifests import model

Stub = registry_pb2_grpc.RegistryStub
ALICE = identity.Identity("key:alice")
BOB = identity.Identity("jwt:bob")


async def entries(stub: Stub, **filters: object) -> list[rpb.AuditEntry]:
    out: list[rpb.AuditEntry] = []
    request = rpb.ListAuditEntriesRequest(**filters)  # type: ignore[arg-type]
    while True:
        page: rpb.ListAuditEntriesResponse = await stub.ListAuditEntries(request)
        out.extend(page.entries)
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


def summary(entry: rpb.AuditEntry) -> tuple[str, str, str, str, str, str]:
    return (
        entry.actor,
        entry.action,
        entry.kind,
        entry.namespace,
        entry.name,
        entry.result,
    )


async def verify(stub: Stub) -> rpb.VerifyAuditLogResponse:
    response: rpb.VerifyAuditLogResponse = await stub.VerifyAuditLog(
        rpb.VerifyAuditLogRequest()
    )
    return response


async def tamper(app: RegistryApp, statement: str) -> None:
    """Change the audit table behind the registry's back."""
    async with app.store.engine.begin() as conn:
        await conn.execute(text(statement))


def status_of(name: str, ready: int) -> pb.Resource:
    resource = pb.Resource()
    infer = resource.model_infer
    infer.kind = "ModelInfer"
    infer.metadata.name = name
    infer.status.ready_replicas = ready
    return resource


INFER = """
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {name: m}
spec: {modelRef: {name: m}, replicas: 1}
"""


async def test_every_write_is_recorded_with_who_did_it(
    registry_app: RegistryApp, registry: Stub
) -> None:
    service = registry_app.service
    with identity.acting_as(ALICE):
        await service.apply(model("m", "1"), [])
        await service.apply(model("m", "2"), [])
        await service.apply(model("m", "2"), [])  # unchanged: no write, no entry
        await service.apply(INFER, [])
        key, _ = await service.create_api_key("default", "ci", ["infer:*"], "", "")
        await service.revoke_api_key("default", key.api_key.metadata.name)
        with pytest.raises(InvalidArgument):
            await service.apply(
                model("m").replace("framework: onnx", "framework: x"), []
            )
    with identity.acting_as(BOB):
        await service.update_status(status_of("m", 1))
        await service.rollback("default", "m", 1)
        await service.delete("ModelInfer", "default", "m", "")
    key_name = key.api_key.metadata.name

    got = await entries(registry)

    assert [summary(e) for e in got] == [
        ("key:alice", "create", "Model", "default", "m", "ok"),
        ("key:alice", "update", "Model", "default", "m", "ok"),
        ("key:alice", "create", "ModelInfer", "default", "m", "ok"),
        ("key:alice", "create-apikey", "ApiKey", "default", key_name, "ok"),
        ("key:alice", "revoke-apikey", "ApiKey", "default", key_name, "ok"),
        ("key:alice", "apply", "Model", "default", "m", "INVALID_ARGUMENT"),
        ("jwt:bob", "update-status", "ModelInfer", "default", "m", "ok"),
        ("jwt:bob", "rollback", "Model", "default", "m", "ok"),
        ("jwt:bob", "delete", "ModelInfer", "default", "m", "ok"),
    ]
    assert [e.seq for e in got] == list(range(1, 10))
    update, refused, status, rollback = got[1], got[5], got[6], got[7]
    assert {
        "op": "replace",
        "path": "/spec/modelSpec/version",
        "value": "2",
    } in json.loads(update.diff)
    assert "spec.modelSpec.framework: must be one of" in refused.message
    assert json.loads(refused.diff) == []
    assert {
        "op": "add",
        "path": "/status",
        "value": {"readyReplicas": 1},
    } in json.loads(status.diff)
    assert {
        "op": "replace",
        "path": "/spec/modelSpec/version",
        "value": "1",
    } in json.loads(rollback.diff)
    assert got[0].time <= got[-1].time
    assert (await verify(registry)).intact


async def test_a_delete_diff_removes_what_was_stored(
    registry_app: RegistryApp, registry: Stub
) -> None:
    await registry_app.service.apply(model("m"), [])
    await registry_app.service.delete("models", "", "m", "")

    created, deleted = await entries(registry)

    assert {op["path"] for op in json.loads(created.diff)} == {
        "/apiVersion",
        "/kind",
        "/metadata",
        "/spec",
        "/status",
    }
    assert [(op["op"], op["path"]) for op in json.loads(deleted.diff)] == [
        ("remove", "/apiVersion"),
        ("remove", "/kind"),
        ("remove", "/metadata"),
        ("remove", "/spec"),
        ("remove", "/status"),
    ]
    assert (deleted.actor, deleted.action) == ("anonymous", "delete")


async def test_a_refused_apply_records_its_refusal_and_writes_nothing(
    registry_app: RegistryApp, registry: Stub
) -> None:
    await registry_app.service.apply(model("b"), [])
    both = model("a") + "\n---\n" + model("b")

    with (
        identity.acting_as(ALICE),
        pytest.raises(AlreadyExists),
    ):
        await registry_app.service.apply(both, [], create_only=True)

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry.Get(rpb.GetRequest(kind="Model", name="a"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    got = await entries(registry, actor="key:alice")
    assert [summary(e) for e in got] == [
        ("key:alice", "apply", "Model", "default", "a", "ALREADY_EXISTS"),
        ("key:alice", "apply", "Model", "default", "b", "ALREADY_EXISTS"),
    ]
    assert "Model default/b already exists" in got[0].message
    assert (await verify(registry)).entries == 3


async def test_a_write_without_a_change_and_a_dry_run_record_nothing(
    registry_app: RegistryApp, registry: Stub
) -> None:
    await registry_app.service.apply(model("m"), [], dry_run=True)
    await registry_app.service.apply(model("m"), [])
    await registry_app.service.apply(model("m"), [])
    await registry_app.service.update_finalizers("Model", "", "m", [], ["none"])

    assert [e.action for e in await entries(registry)] == ["create"]


async def test_api_key_secrets_and_hashes_never_appear(
    registry_app: RegistryApp, registry: Stub
) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", True, "registry", stream=stream)
    try:
        created = await registry.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="ci", scopes=["infer:*"])
        )
        await registry.RevokeApiKey(
            rpb.RevokeApiKeyRequest(name=created.api_key.metadata.name)
        )
    finally:
        logging.getLogger().removeHandler(handler)
    stored = await registry.Get(
        rpb.GetRequest(kind="ApiKey", name=created.api_key.metadata.name)
    )
    digest = stored.api_key.spec.hash

    listed = json_format.MessageToJson(
        await registry.ListAuditEntries(rpb.ListAuditEntriesRequest())
    )
    logged = stream.getvalue()

    hex_digest = digest.removeprefix("sha256:")
    assert len(hex_digest) == 64
    for text_seen in (listed, logged):
        assert created.secret not in text_seen
        assert hex_digest not in text_seen
    create = (await entries(registry))[0]
    spec_op = next(op for op in json.loads(create.diff) if op["path"] == "/spec")
    assert spec_op["value"]["hash"] == audit.REDACTED
    assert spec_op["value"]["subject"] == "ci"


async def test_each_entry_is_a_json_log_line_with_the_same_fields(
    registry_app: RegistryApp, registry: Stub
) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", True, "registry", stream=stream)
    try:
        with identity.acting_as(ALICE):
            await registry_app.service.apply(model("m"), [])
            with pytest.raises(InvalidArgument):
                await registry_app.service.delete("nonsense", "", "m", "")
    finally:
        logging.getLogger().removeHandler(handler)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    logged = [line["audit"] for line in lines if "audit" in line]
    expected = [
        json_format.MessageToDict(
            e,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        for e in await entries(registry)
    ]

    assert [{**e, "seq": str(e["seq"])} for e in logged] == expected
    assert [e["result"] for e in logged] == ["ok", "INVALID_ARGUMENT"]
    assert [line["logger"] for line in lines if "audit" in line] == [
        "matrixinfer.registry.audit"
    ] * 2


async def test_filters_and_pages(registry_app: RegistryApp, registry: Stub) -> None:
    service = registry_app.service
    with identity.acting_as(ALICE):
        for name in ("a", "b", "c"):
            await service.apply(model(name), [])
    first = (await entries(registry))[0]
    with identity.acting_as(BOB):
        await service.apply(model("a", "2"), [])

    by_name = await entries(registry, kind="models", name="a")
    by_actor = await entries(registry, actor="jwt:bob")
    page = await registry.ListAuditEntries(rpb.ListAuditEntriesRequest(page_size=3))
    rest = await registry.ListAuditEntries(
        rpb.ListAuditEntriesRequest(page_size=3, page_token=page.next_page_token)
    )
    later = await entries(registry, since="2999-01-01T00:00:00Z")
    since_first = await entries(registry, since=first.time)

    assert [(e.name, e.action) for e in by_name] == [("a", "create"), ("a", "update")]
    assert [e.actor for e in by_actor] == ["jwt:bob"]
    assert [e.seq for e in page.entries] == [1, 2, 3]
    assert ([e.seq for e in rest.entries], rest.next_page_token) == ([4], "")
    assert later == []
    assert len(since_first) == 4
    for bad in (
        rpb.ListAuditEntriesRequest(page_token="x"),
        rpb.ListAuditEntriesRequest(since="yesterday"),
        rpb.ListAuditEntriesRequest(page_size=5000),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.ListAuditEntries(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_verify_names_the_altered_entry(
    registry_app: RegistryApp, registry: Stub
) -> None:
    for name in ("a", "b", "c"):
        await registry_app.service.apply(model(name), [])
    assert (await verify(registry)) == rpb.VerifyAuditLogResponse(
        intact=True, entries=3
    )

    await tamper(registry_app, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    result = await verify(registry)

    assert (result.intact, result.entries, result.first_broken_seq) == (False, 3, 2)
    assert result.reason == "entry 2 was altered: its hash does not match its contents"


async def test_verify_names_the_entry_after_a_rehashed_one(
    registry_app: RegistryApp, registry: Stub
) -> None:
    """Whoever alters an entry and recomputes its hash breaks the next link."""
    for name in ("a", "b", "c"):
        await registry_app.service.apply(model(name), [])
    second = (await entries(registry))[1]
    forged = audit.AuditEntry(
        **{
            **json_format.MessageToDict(second, preserving_proto_field_name=True),
            "seq": 2,
            "actor": "mallory",
            "message": "",
        }
    )
    rehashed = audit.entry_hash(forged)
    await tamper(
        registry_app,
        f"UPDATE audit_log SET actor = 'mallory', hash = '{rehashed}' WHERE seq = 2",
    )

    result = await verify(registry)

    assert (result.intact, result.first_broken_seq, result.reason) == (
        False,
        3,
        "entry 3's previous hash is not entry 2's hash: entry 2 or 3 was altered",
    )


async def test_verify_names_a_removed_entry(
    registry_app: RegistryApp, registry: Stub
) -> None:
    for name in ("a", "b", "c"):
        await registry_app.service.apply(model(name), [])
    await tamper(registry_app, "DELETE FROM audit_log WHERE seq = 2")

    result = await verify(registry)

    assert (result.intact, result.first_broken_seq, result.reason) == (
        False,
        2,
        "entry 2 is missing",
    )


async def test_verify_notices_entries_cut_from_the_end(
    registry_app: RegistryApp, registry: Stub
) -> None:
    for name in ("a", "b", "c"):
        await registry_app.service.apply(model(name), [])
    await tamper(registry_app, "DELETE FROM audit_log WHERE seq = 3")

    result = await verify(registry)

    assert (result.intact, result.first_broken_seq, result.reason) == (
        False,
        3,
        "entry 3 is missing (the log has 3)",
    )


async def test_an_empty_log_is_intact(registry: Stub) -> None:
    assert (await verify(registry)) == rpb.VerifyAuditLogResponse(
        intact=True, entries=0
    )
