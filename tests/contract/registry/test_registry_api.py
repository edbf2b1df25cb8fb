"""The registry's gRPC API on a real server (port 0), against SQLite and PostgreSQL.

Every test runs twice through the ``database_url`` fixture: the embedded default and
the production database must behave the same to a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.apikeys import hash_api_key
from matrixinfer.core.grpc.errors import error_details
from matrixinfer.registry.main import RegistryApp
from tests.conftest import ROOT, registry_settings, seed_manifest
from tests.manifests import STACK, model

Stub = registry_pb2_grpc.RegistryStub


async def apply(
    stub: Stub, manifest: str, create_only: bool = False
) -> rpb.ApplyResponse:
    request = rpb.ApplyRequest(manifest=manifest, create_only=create_only)
    response: rpb.ApplyResponse = await stub.Apply(request)
    return response


async def fails(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def next_event(
    stream: AsyncIterator[rpb.WatchEvent], skip_bookmarks: bool = True
) -> rpb.WatchEvent:
    while True:
        event = await asyncio.wait_for(anext(stream), 10)
        if not (skip_bookmarks and event.type == "BOOKMARK"):
            return event


async def test_seed_manifest_applies_unchanged_and_reads_back(registry: Stub) -> None:
    response = await apply(registry, seed_manifest())
    assert [r.action for r in response.results] == ["created"]
    got = (await registry.Get(rpb.GetRequest(kind="Model", name="my-model"))).model
    assert got.spec.model_spec.model_id == "my-model-v1"
    assert got.spec.model_spec.framework == "pytorch"
    assert got.spec.model_spec.source.uri == "s3://models/my-model/"
    assert got.spec.runtime.image == "matrixinfer/pytorch-runtime:latest"
    assert got.metadata.namespace == "default"
    assert got.metadata.generation == 1
    assert got.metadata.uid
    assert got.status.current_revision == 1


async def test_multi_document_stack_applies_with_defaults(registry: Stub) -> None:
    response = await apply(registry, STACK)
    assert [r.action for r in response.results] == ["created"] * 5
    infer = (
        await registry.Get(rpb.GetRequest(kind="modelinfers", name="iris"))
    ).model_infer
    assert infer.spec.replicas == 2
    assert infer.spec.rollout.max_surge == 1 and infer.spec.rollout.max_unavailable == 0
    route = (
        await registry.Get(rpb.GetRequest(kind="modelroute", name="iris"))
    ).model_route
    assert route.spec.rules[0].targets[0].weight == 100
    policy = (
        await registry.Get(rpb.GetRequest(kind="AutoscalingPolicy", name="iris"))
    ).autoscaling_policy
    assert policy.spec.min_replicas == 0
    assert policy.spec.behavior.stable_window_seconds == 60
    assert policy.spec.behavior.panic_window_seconds == 6
    assert policy.spec.behavior.panic_threshold_percent == 200
    server = (
        await registry.Get(rpb.GetRequest(kind="ModelServer", name="iris"))
    ).model_server
    assert server.spec.traffic_policy.load_balancer.type == "LEAST_REQUEST"
    # Applying the same stack again changes nothing.
    again = await apply(registry, STACK)
    assert [r.action for r in again.results] == ["unchanged"] * 5


async def test_failed_document_leaves_nothing_written(registry: Stub) -> None:
    broken = STACK.replace("replicas: 2", "replicas: 2\n  bogus: 1")
    err = await fails(apply(registry, broken))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("manifest[1].spec.bogus", "unknown field") in error_details(
        err
    ).field_violations
    listed = await registry.List(rpb.ListRequest(kind="Model"))
    assert list(listed.items) == []


async def test_cross_reference_errors_name_the_field(registry: Stub) -> None:
    infer_only = STACK.split("---")[1]
    err = await fails(apply(registry, infer_only))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in error_details(err).field_violations]
    assert fields == ["spec.modelRef.name"]
    assert "Model 'iris' not found" in err.details()


async def test_generation_moves_on_spec_changes_only(registry: Stub) -> None:
    first = (await apply(registry, model("m", "1"))).results[0].resource.model
    relabelled = model("m", "1").replace("tier: cpu", "tier: gpu")
    second = (await apply(registry, relabelled)).results[0]
    assert second.action == "configured"
    assert second.resource.model.metadata.generation == 1
    assert int(second.resource.model.metadata.resource_version) > int(
        first.metadata.resource_version
    )
    third = (
        (await apply(registry, model("m", "2", tier="gpu"))).results[0].resource.model
    )
    assert third.metadata.generation == 2
    assert third.metadata.uid == first.metadata.uid


async def test_stale_resource_version_is_aborted(registry: Stub) -> None:
    created = (await apply(registry, model("m", "1"))).results[0].resource.model
    await apply(registry, model("m", "2"))
    stale = pb.Model()
    stale.CopyFrom(created)
    stale.spec.model_spec.version = "3"
    err = await fails(
        registry.Apply(rpb.ApplyRequest(resources=[pb.Resource(model=stale)]))
    )
    assert err.code() == grpc.StatusCode.ABORTED
    current = (await registry.Get(rpb.GetRequest(kind="Model", name="m"))).model
    assert current.spec.model_spec.version == "2"


async def test_status_only_through_update_status(registry: Stub) -> None:
    manifest = STACK.split("---")[0] + "---" + STACK.split("---")[1]
    await apply(registry, manifest)
    with_status = manifest.replace(
        "replicas: 2", "replicas: 2\nstatus: {readyReplicas: 7}"
    )
    await apply(registry, with_status)
    infer = (
        await registry.Get(rpb.GetRequest(kind="ModelInfer", name="iris"))
    ).model_infer
    assert infer.status.ready_replicas == 0
    infer.status.ready_replicas = 2
    infer.status.conditions.add(type="Available", status="True", reason="Ready")
    infer.spec.replicas = 9  # ignored: status writes never touch spec
    updated = (
        await registry.UpdateStatus(
            rpb.UpdateStatusRequest(resource=pb.Resource(model_infer=infer))
        )
    ).model_infer
    assert updated.status.ready_replicas == 2
    assert updated.spec.replicas == 2
    assert updated.metadata.generation == infer.metadata.generation
    # A stale resourceVersion on status is refused too.
    err = await fails(
        registry.UpdateStatus(
            rpb.UpdateStatusRequest(resource=pb.Resource(model_infer=infer))
        )
    )
    assert err.code() == grpc.StatusCode.ABORTED


async def test_revisions_and_rollback(registry: Stub) -> None:
    for version in ("1", "2", "3"):
        await apply(registry, model("m", version))
    revisions = (
        await registry.ListRevisions(rpb.ListRevisionsRequest(name="m"))
    ).revisions
    assert [r.revision for r in revisions] == [1, 2, 3]
    assert [r.model.spec.model_spec.version for r in revisions] == ["1", "2", "3"]
    rolled = (await registry.Rollback(rpb.RollbackRequest(name="m", revision=1))).model
    assert rolled.spec.model_spec.version == "1"
    assert rolled.status.current_revision == 4
    assert rolled.metadata.generation == 4
    revisions = (
        await registry.ListRevisions(rpb.ListRevisionsRequest(name="m"))
    ).revisions
    assert [r.revision for r in revisions] == [1, 2, 3, 4]
    err = await fails(registry.Rollback(rpb.RollbackRequest(name="m", revision=9)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_waits_for_finalizers(registry: Stub) -> None:
    await apply(registry, model("m"))
    await registry.UpdateFinalizers(
        rpb.UpdateFinalizersRequest(
            kind="Model", name="m", add=["matrixinfer.ai/replicas"]
        )
    )
    deleting = (await registry.Delete(rpb.DeleteRequest(kind="Model", name="m"))).model
    assert deleting.metadata.deletion_timestamp
    still = (await registry.Get(rpb.GetRequest(kind="Model", name="m"))).model
    assert list(still.metadata.finalizers) == ["matrixinfer.ai/replicas"]
    err = await fails(apply(registry, model("m", "2")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await registry.UpdateFinalizers(
        rpb.UpdateFinalizersRequest(
            kind="Model", name="m", remove=["matrixinfer.ai/replicas"]
        )
    )
    err = await fails(registry.Get(rpb.GetRequest(kind="Model", name="m")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # Gone for real: the name can be used again, with fresh revisions.
    recreated = (await apply(registry, model("m", "5"))).results[0]
    assert recreated.action == "created"
    revisions = (
        await registry.ListRevisions(rpb.ListRevisionsRequest(name="m"))
    ).revisions
    assert [r.revision for r in revisions] == [1]


async def test_delete_missing_is_not_found(registry: Stub) -> None:
    err = await fails(registry.Delete(rpb.DeleteRequest(kind="Model", name="ghost")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pagination_and_label_selectors(registry: Stub) -> None:
    docs = "---".join(
        model(f"m{i:02d}", tier="gpu" if i % 3 == 0 else "cpu") for i in range(12)
    )
    await apply(registry, docs)
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        request = rpb.ListRequest(kind="Model", limit=5)
        setattr(request, "continue", token)  # noqa: B010
        page = await registry.List(request)
        pages += 1
        names += [i.model.metadata.name for i in page.items]
        token = getattr(page, "continue")
        if not token:
            break
    assert pages == 3
    assert names == [f"m{i:02d}" for i in range(12)]
    gpu = await registry.List(rpb.ListRequest(kind="Model", label_selector="tier=gpu"))
    assert [i.model.metadata.name for i in gpu.items] == ["m00", "m03", "m06", "m09"]
    gpu_paged = await registry.List(
        rpb.ListRequest(kind="Model", label_selector="tier in (gpu),app", limit=3)
    )
    assert [i.model.metadata.name for i in gpu_paged.items] == ["m00", "m03", "m06"]
    assert getattr(gpu_paged, "continue")


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"limit": -1}, "limit"),
        ({"limit": 10**9}, "limit"),
        ({"label_selector": "a=b=c"}, "labelSelector"),
        ({"kind": "Pod"}, "kind"),
        ({"namespace": "Bad_NS"}, "namespace"),
    ],
)
async def test_list_refuses_bad_parameters(
    registry: Stub, request_kwargs: dict[str, object], field: str
) -> None:
    request = rpb.ListRequest(kind="Model")
    for key, value in request_kwargs.items():
        setattr(request, key, value)
    err = await fails(registry.List(request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in error_details(err).field_violations]


@pytest.mark.parametrize("token", ["garbage", "eyJ2IjoxfQ", "x" * 5000])
async def test_tampered_continue_token_is_refused(registry: Stub, token: str) -> None:
    await apply(registry, model("m"))
    request = rpb.ListRequest(kind="Model", limit=1)
    setattr(request, "continue", token)  # noqa: B010
    err = await fails(registry.List(request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error_details(err).field_violations] == ["continue"]


async def test_concurrent_duplicate_creates_one_wins(registry: Stub) -> None:
    results = await asyncio.gather(
        *(apply(registry, model("dup"), create_only=True) for _ in range(8)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, rpb.ApplyResponse)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1
    assert len(errors) == 7
    assert {e.code() for e in errors} == {grpc.StatusCode.ALREADY_EXISTS}


async def test_concurrent_applies_all_succeed(registry: Stub) -> None:
    results = await asyncio.gather(
        *(apply(registry, model("same", str(v))) for v in range(6))
    )
    actions = sorted(r.results[0].action for r in results)
    assert actions.count("created") == 1
    final = (await registry.Get(rpb.GetRequest(kind="Model", name="same"))).model
    revisions = (
        await registry.ListRevisions(rpb.ListRevisionsRequest(name="same"))
    ).revisions
    assert final.status.current_revision == len(revisions)


async def test_watch_initial_list_then_changes(registry: Stub) -> None:
    await apply(registry, model("a"))
    stream = registry.Watch(
        rpb.WatchRequest(kind="Model", send_initial_events=True, allow_bookmarks=True)
    ).__aiter__()
    first = await next_event(stream)
    assert (first.type, first.object.model.metadata.name) == ("ADDED", "a")
    end = await next_event(stream, skip_bookmarks=False)
    assert end.type == "BOOKMARK" and end.initial_events_end
    await apply(registry, model("b"))
    await apply(registry, model("a", "2"))
    await registry.Delete(rpb.DeleteRequest(kind="Model", name="b"))
    seen = [await next_event(stream) for _ in range(3)]
    assert [(e.type, e.object.model.metadata.name) for e in seen] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    versions = [int(e.resource_version) for e in seen]
    assert versions == sorted(versions)


async def test_watch_resumes_from_resource_version(registry: Stub) -> None:
    first = (await apply(registry, model("a"))).results[0].resource.model
    await apply(registry, model("b"))
    await apply(registry, model("c"))
    stream = registry.Watch(
        rpb.WatchRequest(kind="Model", resource_version=first.metadata.resource_version)
    ).__aiter__()
    names = [(await next_event(stream)).object.model.metadata.name for _ in range(2)]
    assert names == ["b", "c"]


async def test_watch_filters_kind_and_labels(registry: Stub) -> None:
    stream = registry.Watch(
        rpb.WatchRequest(kind="Model", label_selector="tier=gpu")
    ).__aiter__()
    await asyncio.sleep(0.2)
    await apply(registry, STACK)
    await apply(registry, model("cpu-one", tier="cpu"))
    await apply(registry, model("gpu-one", tier="gpu"))
    event = await next_event(stream)
    assert event.object.model.metadata.name == "gpu-one"


async def test_watch_sends_bookmarks_when_idle(registry: Stub) -> None:
    await apply(registry, model("a"))
    stream = registry.Watch(
        rpb.WatchRequest(kind="Model", allow_bookmarks=True)
    ).__aiter__()
    event = await asyncio.wait_for(anext(stream), 10)
    assert event.type == "BOOKMARK"
    assert int(event.resource_version) >= 1


async def test_watch_too_old_resource_version_says_relist(
    registry: Stub, registry_app: RegistryApp
) -> None:
    for version in range(5):
        await apply(registry, model("a", str(version)))
    removed = await registry_app.store.compact(keep_events=1, older_than_s=0)
    assert removed == 4
    err = await fails(
        anext(
            registry.Watch(
                rpb.WatchRequest(kind="Model", resource_version="1")
            ).__aiter__()
        )
    )
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "too old" in err.details() and "list again" in err.details()
    info = error_details(err).error_info
    assert info is not None and info.reason == "EXPIRED"
    # The documented recovery works: list, then watch from the list's version.
    listed = await registry.List(rpb.ListRequest(kind="Model"))
    stream = registry.Watch(
        rpb.WatchRequest(kind="Model", resource_version=listed.resource_version)
    ).__aiter__()
    await apply(registry, model("z"))
    assert (await next_event(stream)).object.model.metadata.name == "z"


async def test_get_missing_and_unknown_kind(registry: Stub) -> None:
    err = await fails(registry.Get(rpb.GetRequest(kind="Model", name="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await fails(registry.Get(rpb.GetRequest(kind="Deployment", name="x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m.metadata, "name", "a\x00b"), "metadata.name"),
        (lambda m: m.metadata.labels.update({"k": "v\x00"}), "metadata.labels[k]"),
        (
            lambda m: setattr(m.spec.model_spec, "model_id", "x" * 5000),
            "spec.modelSpec.modelId",
        ),
        (
            lambda m: setattr(m.spec.model_spec, "version", "٣"),
            "spec.modelSpec.version",
        ),
        (
            lambda m: setattr(m.spec.model_spec.source, "uri", "s3://b/../x"),
            "spec.modelSpec.source.uri",
        ),
    ],
)
async def test_typed_bad_input_is_refused_and_nothing_written(
    registry: Stub, mutate: Callable[[pb.Model], None], field: str
) -> None:
    obj = pb.Model(api_version="registry.matrixinfer.ai/v1alpha1", kind="Model")
    obj.metadata.name = "m"
    obj.spec.model_spec.model_id = "m"
    obj.spec.model_spec.framework = "onnx"
    obj.spec.model_spec.source.uri = "s3://b/m"
    mutate(obj)
    err = await fails(
        registry.Apply(rpb.ApplyRequest(resources=[pb.Resource(model=obj)]))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in error_details(err).field_violations]
    assert list((await registry.List(rpb.ListRequest(kind="Model"))).items) == []


async def test_manifest_bad_input_over_grpc(registry: Stub) -> None:
    cases = {
        "name: x\x00": "manifest",
        model("m").replace("framework: onnx", "framework: onnx\n    extra: 1"): (
            "spec.modelSpec.extra"
        ),
        model("m").replace('version: "1"', "version: ١٢"): "spec.modelSpec.version",
        model("m").replace("kind: Model", "kind: Pod"): "kind",
    }
    for manifest, field in cases.items():
        err = await fails(apply(registry, manifest))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, manifest
        assert field in [f for f, _ in error_details(err).field_violations], manifest
    huge = "a: " + "x" * (5 << 20)
    err = await fails(apply(registry, huge))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list((await registry.List(rpb.ListRequest(kind="Model"))).items) == []


async def test_example_manifests_apply(registry: Stub) -> None:
    for path in sorted((ROOT / "examples" / "manifests").glob("*.yaml")):
        response = await apply(registry, path.read_text())
        assert {r.action for r in response.results} == {"created"}, path


@pytest.mark.parametrize("version", ["999999", "abc", "-1", "١"])
async def test_watch_refuses_resource_versions_it_never_gave(
    registry: Stub, version: str
) -> None:
    await apply(registry, model("a"))
    stream = registry.Watch(rpb.WatchRequest(kind="Model", resource_version=version))
    err = await fails(anext(stream.__aiter__()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error_details(err).field_violations] == ["resourceVersion"]


async def test_restart_keeps_everything(database_url: str) -> None:
    first = await RegistryApp.start(registry_settings(database_url))
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            await apply(stub, STACK)
            await apply(
                stub, model("iris", "2").replace("labels: {app: demo, tier: cpu}", "")
            )
    finally:
        await first.stop(0)
    second = await RegistryApp.start(
        registry_settings(database_url)
    )  # migrations again
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            listed = await stub.List(rpb.ListRequest(kind="ModelInfer"))
            assert [i.model_infer.metadata.name for i in listed.items] == ["iris"]
            revisions = await stub.ListRevisions(rpb.ListRevisionsRequest(name="iris"))
            assert [r.revision for r in revisions.revisions] == [1, 2]
    finally:
        await second.stop(0)


async def test_api_keys_show_the_secret_once(registry: Stub) -> None:
    created = await registry.CreateApiKey(
        rpb.CreateApiKeyRequest(
            subject="ci-bot", scopes=["infer:iris"], tenant="team-a"
        )
    )
    secret = created.secret
    assert secret.startswith("mik_") and created.api_key.metadata.name in secret
    assert created.api_key.spec.hash == hash_api_key(secret)
    stored = (
        await registry.Get(
            rpb.GetRequest(kind="ApiKey", name=created.api_key.metadata.name)
        )
    ).api_key
    assert secret not in str(stored) and stored.spec.hash == hash_api_key(secret)
    revoked = (
        await registry.RevokeApiKey(
            rpb.RevokeApiKeyRequest(name=created.api_key.metadata.name)
        )
    ).api_key
    assert revoked.spec.revoked


async def test_api_keys_cannot_be_applied_or_malformed(registry: Stub) -> None:
    manifest = (
        "apiVersion: security.matrixinfer.ai/v1alpha1\nkind: ApiKey\n"
        "metadata: {name: abc}\nspec: {subject: x, hash: 'sha256:00'}\n"
    )
    err = await fails(apply(registry, manifest))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CreateApiKey" in err.details()
    err = await fails(
        registry.CreateApiKey(
            rpb.CreateApiKeyRequest(
                subject="",
                scopes=["infer:../x", "root"],
                tenant="a b",
                expires_at="soon",
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in error_details(err).field_violations]
    assert fields == ["subject", "scopes[0]", "scopes[1]", "tenant", "expiresAt"]
    assert list((await registry.List(rpb.ListRequest(kind="ApiKey"))).items) == []
