"""The audit log across the registry's surfaces and processes: writes through the
Kubernetes REST API are audited like gRPC ones, and two registry processes writing
at once on one PostgreSQL leave one unbroken chain."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import yaml

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.registry.main import RegistryApp
from tests.integration.registry.test_two_processes import (  # noqa: F401 - fixture
    two_registries,
)
from tests.manifests import model

MODELS = "/apis/registry.matrixinfer.ai/v1alpha1/namespaces/default/models"


async def audit_entries(stub: registry_pb2_grpc.RegistryStub) -> list[rpb.AuditEntry]:
    out: list[rpb.AuditEntry] = []
    request = rpb.ListAuditEntriesRequest(page_size=7)
    while True:
        page = await stub.ListAuditEntries(request, timeout=10)
        out.extend(page.entries)
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


async def test_writes_through_the_kubernetes_api_are_audited(
    registry_app: RegistryApp, registry: registry_pb2_grpc.RegistryStub
) -> None:
    doc = yaml.safe_load(model("k", "1"))
    async with aiohttp.ClientSession(registry_app.kube_url) as http:
        async with http.post(MODELS, json=doc) as created:
            assert created.status == 201
        async with http.post(MODELS, json=doc) as again:
            assert again.status == 409
        async with http.patch(
            f"{MODELS}/k",
            data=json.dumps({"spec": {"modelSpec": {"version": "2"}}}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as patched:
            assert patched.status == 200
        async with http.delete(f"{MODELS}/k") as deleted:
            assert deleted.status == 200

    got = await audit_entries(registry)

    assert [(e.action, e.kind, e.name, e.result) for e in got] == [
        ("create", "Model", "k", "ok"),
        ("apply", "Model", "k", "ALREADY_EXISTS"),
        ("update", "Model", "k", "ok"),
        ("delete", "Model", "k", "ok"),
    ]
    assert {e.actor for e in got} == {"anonymous"}
    assert {
        "op": "replace",
        "path": "/spec/modelSpec/version",
        "value": "2",
    } in json.loads(got[2].diff)
    verified = await registry.VerifyAuditLog(rpb.VerifyAuditLogRequest())
    assert (verified.intact, verified.entries) == (True, 4)


async def test_two_processes_writing_at_once_leave_one_unbroken_chain(
    two_registries: tuple[str, str],  # noqa: F811 - the imported fixture
) -> None:
    a, b = two_registries
    async with (
        grpc.aio.insecure_channel(a) as channel_a,
        grpc.aio.insecure_channel(b) as channel_b,
    ):
        stubs = [
            registry_pb2_grpc.RegistryStub(channel_a),
            registry_pb2_grpc.RegistryStub(channel_b),
        ]

        async def write(i: int) -> None:
            stub = stubs[i % 2]
            await stub.Apply(rpb.ApplyRequest(manifest=model(f"m{i % 10}", str(i))))
            if i % 5 == 0:
                await stub.UpdateFinalizers(
                    rpb.UpdateFinalizersRequest(
                        kind="Model", name=f"m{i % 10}", add=[f"x/f{i}"]
                    )
                )
            if i % 7 == 0:
                try:
                    await stub.Delete(rpb.DeleteRequest(kind="Model", name="ghost"))
                except grpc.aio.AioRpcError as e:
                    refusals.append(e.code())

        refusals: list[grpc.StatusCode] = []
        await asyncio.gather(*(write(i) for i in range(60)))
        seen = [await audit_entries(stub) for stub in stubs]
        verified = [
            await stub.VerifyAuditLog(rpb.VerifyAuditLogRequest(), timeout=30)
            for stub in stubs
        ]

    assert refusals == [grpc.StatusCode.NOT_FOUND] * 9
    # 60 applies (10 creates, 50 updates), 12 finalizer updates, 9 refused deletes.
    expected = 60 + 12 + 9
    assert [(v.intact, v.entries, v.reason) for v in verified] == [
        (True, expected, "")
    ] * 2
    assert [e.seq for e in seen[0]] == list(range(1, expected + 1))
    assert seen[1] == seen[0]
    actions = [e.action for e in seen[0]]
    assert (actions.count("create"), actions.count("update")) == (10, 50)
    assert actions.count("update-finalizers") == 12
    assert [(e.action, e.result) for e in seen[0] if e.result != "ok"] == [
        ("delete", "NOT_FOUND")
    ] * 9
    for previous, entry in zip(seen[0], seen[0][1:], strict=False):
        assert entry.previous_hash == previous.hash
