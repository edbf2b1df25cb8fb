"""The Kubernetes runtime against kmock, an in-memory Kubernetes API over HTTP.

The real reconciler drives the runtime; kmock stores what the runtime writes. What a
cluster does beyond storing objects is played here by :class:`Cluster`: the
ReplicaSet controller (a Deployment's pods, the lowest ``pod-deletion-cost`` removed
first), the garbage collector (owner references) and the kubelet (a pod becomes
Running and Ready with an IP). Every object the runtime sends is checked against
the Kubernetes OpenAPI schema (``kubernetes-validate --strict``, every version of
``tests.kubernetes.KUBERNETES_VERSIONS``), and the objects left in kmock are
checked again at the end of each test.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import attrs
import kmock
import pytest
import pytest_asyncio
import yaml

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.adapters.kubernetes import (
    KubeClient,
    KubeConfig,
    KubernetesRuntime,
    PodSettings,
    RetryPolicy,
)
from matrixinfer.controller.adapters.kubernetes import objects as ko
from matrixinfer.controller.domain.artifacts import Artifact
from matrixinfer.controller.domain.reconciler import Reconciler
from matrixinfer.controller.domain.runtime import Replica
from matrixinfer.core.errors import NotFound, Unavailable
from tests.conftest import ROOT
from tests.kubernetes import validate_strict

JSON = dict[str, Any]
NS = "mi-replicas"
KEY = ("default", "iris")
OWNER = "default/iris"
DRAIN_S = 5.0
CLUSTER_AGENT = "simulated-kube-controller-manager"
GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)
PATHS = {
    "deployments": f"/apis/apps/v1/namespaces/{NS}/deployments",
    "pods": f"/api/v1/namespaces/{NS}/pods",
    "configmaps": f"/api/v1/namespaces/{NS}/configmaps",
}
REPLICA_TLS = "matrixinfer-replica-tls"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


def validate(obj: JSON) -> None:
    validate_strict(obj)


# ---------------------------------------------------------------- the API server


@dataclass
class Fault:
    status: int
    times: int
    method: str | None = None
    plural: str | None = None
    #: The server does the work, then the answer is lost (a 5xx after the write).
    after_write: bool = False
    #: Fails watch requests (and only those) instead of the others.
    watch: bool = False
    served: int = 0


def _verb(request: kmock.Request) -> str:
    method = str(request.method.value if request.method else "").upper()
    if method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}[
        method
    ]


def rbac_allows() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the controller's Role grants."""
    docs = yaml.safe_load_all(
        (ROOT / "deploy/k8s/base/controller-rbac.yaml").read_text()
    )
    [role] = [d for d in docs if d["kind"] == "Role"]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus what a real API server adds that the runtime relies on
    (uid, resourceVersion, creationTimestamp on create), a log of the calls, and
    failures on demand."""

    calls: list[tuple[str, str, str]] = attrs.field(factory=list)
    #: (API group, resource, RBAC verb) of every call the controller made.
    verbs: set[tuple[str, str, str]] = attrs.field(factory=set)
    faults: list[Fault] = attrs.field(factory=list)
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in (
            "apps/v1/deployments",
            "v1/pods",
            "v1/configmaps",
            "v1/secrets",
        ):
            self.resources[resource] = kmock.ResourceInfo()

    def fail(
        self,
        status: int,
        times: int,
        method: str | None = None,
        plural: str | None = None,
        after_write: bool = False,
        watch: bool = False,
    ) -> Fault:
        fault = Fault(status, times, method, plural, after_write, watch)
        self.faults.append(fault)
        return fault

    def writes(self) -> list[tuple[str, str, str]]:
        """Every create, patch and delete the controller sent, failed or not (the
        simulated cluster's own are not counted)."""
        return [c for c in self.calls if c[0] in ("POST", "PATCH", "DELETE")]

    async def _handle(self, request: kmock.Request) -> Any:
        method = str(request.method.value if request.method else "").upper()
        plural = request.resource.plural if request.resource is not None else ""
        plural = str(plural or "")
        if request.headers.get("User-Agent") != CLUSTER_AGENT:
            self.calls.append((method, plural, str(request.name or "")))
            group = request.resource.group if request.resource is not None else None
            self.verbs.add((str(group or ""), plural, _verb(request)))
        for fault in self.faults:
            if (
                request.headers.get("User-Agent") != CLUSTER_AGENT
                and fault.served < fault.times
                and fault.method in (None, method)
                and fault.plural in (None, plural)
                and (request.params.get("watch") == "true") == fault.watch
            ):
                fault.served += 1
                if fault.after_write:
                    self._server_fields(request, method)
                    await super()._handle(request)
                response = await self._render_error(
                    kmock.KubernetesError(
                        status=fault.status,
                        reason="Injected",
                        message=f"injected {fault.status}",
                    )
                )
                response.headers["Retry-After"] = "0"
                return response
        self._server_fields(request, method)
        return await super()._handle(request)

    def _server_fields(self, request: kmock.Request, method: str) -> None:
        if isinstance(request.data, dict) and method in ("POST", "PATCH"):
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self._versions))
            if method == "POST":
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault(
                    "creationTimestamp",
                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )


class Cluster:
    """The parts of a cluster kmock does not play, over the same HTTP API: the
    ReplicaSet controller, the garbage collector and the kubelet."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.session = aiohttp.ClientSession(
            base_url=str(api.url), headers={"User-Agent": CLUSTER_AGENT}
        )
        self._ips = itertools.count(10)
        self._pods = itertools.count(1)

    async def close(self) -> None:
        await self.session.close()

    async def items(self, plural: str) -> list[JSON]:
        async with self.session.get(PATHS[plural]) as response:
            assert response.status == 200, await response.text()
            data = await response.json()
        return list(data["items"])

    async def names(self, plural: str) -> list[str]:
        return sorted(o["metadata"]["name"] for o in await self.items(plural))

    async def deployment(self, name: str) -> JSON:
        async with self.session.get(f"{PATHS['deployments']}/{name}") as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def delete(self, plural: str, name: str) -> None:
        async with self.session.delete(f"{PATHS[plural]}/{name}") as response:
            assert response.status in (200, 404), await response.text()

    async def delete_pod(self, name: str) -> None:
        await self.delete("pods", name)

    async def put_secret(self, name: str, serial: str) -> None:
        """The replica TLS Secret as cert-manager writes (and renews) it."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": serial, "tls.key": serial, "ca.crt": "ca"},
        }
        async with self.session.get(f"{SECRETS}/{name}") as response:
            exists = response.status == 200
        if exists:
            request = self.session.patch(f"{SECRETS}/{name}", json=body)
        else:
            request = self.session.post(SECRETS, json=body)
        async with request as response:
            assert response.status in (200, 201), await response.text()

    async def sync(self) -> None:
        """One pass of the garbage collector and the ReplicaSet controller."""
        owners = {o["metadata"]["uid"] for o in await self.items("configmaps")}
        deployments = []
        for d in await self.items("deployments"):
            refs = d["metadata"].get("ownerReferences") or []
            if any(r["uid"] not in owners for r in refs):
                await self.delete("deployments", d["metadata"]["name"])
            else:
                deployments.append(d)
        by_uid = {d["metadata"]["uid"]: d for d in deployments}
        pods: dict[str, list[JSON]] = {uid: [] for uid in by_uid}
        for pod in await self.items("pods"):
            uid = pod["metadata"]["ownerReferences"][0]["uid"]
            if uid in by_uid:
                pods[uid].append(pod)
            else:
                await self.delete("pods", pod["metadata"]["name"])
        for uid, d in by_uid.items():
            mine = pods[uid]
            for _ in range(d["spec"]["replicas"] - len(mine)):
                await self._create_pod(d)
            excess = len(mine) - d["spec"]["replicas"]
            ranked = sorted(
                mine,
                key=lambda p: (
                    ko.is_ready(p),
                    int(p["metadata"].get("annotations", {}).get(ko.DELETION_COST, 0)),
                    p["metadata"]["name"],
                ),
            )
            for pod in ranked[: max(0, excess)]:
                await self.delete("pods", pod["metadata"]["name"])

    async def _create_pod(self, deployment: JSON) -> None:
        template = deployment["spec"]["template"]
        name = f"{deployment['metadata']['name']}-7d9f8c6b5-{next(self._pods):05d}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": deployment["metadata"]["name"],
                        "uid": deployment["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        validate(pod)
        async with self.session.post(PATHS["pods"], json=pod) as response:
            assert response.status in (200, 201), await response.text()

    async def run_pods(self) -> list[str]:
        """The kubelet: every pod not yet ready starts and passes its readiness
        probe. Returns the pods it made ready."""
        started = []
        for pod in await self.items("pods"):
            if ko.is_ready(pod):
                continue
            status = {
                "phase": "Running",
                "podIP": f"10.1.0.{next(self._ips)}",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "containerStatuses": [
                    {
                        "name": "triton",
                        "ready": True,
                        "restartCount": 0,
                        "image": "triton",
                        "imageID": "",
                        "state": {"running": {}},
                    }
                ],
            }
            path = f"{PATHS['pods']}/{pod['metadata']['name']}/status"
            async with self.session.patch(path, json={"status": status}) as response:
                assert response.status == 200, await response.text()
            started.append(pod["metadata"]["name"])
        return started


# ---------------------------------------------------------------- the registry side


def model(revision: int) -> pb.Model:
    m = pb.Model()
    m.metadata.namespace, m.metadata.name, m.metadata.uid = "default", "iris", "u-1"
    m.spec.model_spec.framework = "onnx"
    m.spec.model_spec.source.uri = f"s3://models/iris-{revision}.onnx"
    m.status.current_revision = revision
    return m


def model_infer(replicas: int, gpus: int = 0) -> pb.ModelInfer:
    infer = pb.ModelInfer()
    infer.metadata.namespace, infer.metadata.name = KEY
    infer.metadata.generation = 1
    infer.spec.model_ref.name = "iris"
    infer.spec.replicas = replicas
    infer.spec.resources.gpu = gpus
    infer.spec.rollout.max_surge = 1
    infer.spec.rollout.max_unavailable = 0
    return infer


@dataclass
class Registry:
    """The registry writes and the informer cache the reconciler uses, in memory."""

    resources: dict[tuple[str, str, str], pb.Resource] = field(default_factory=dict)
    #: Every status written, in order.
    history: list[pb.ModelInferStatus] = field(default_factory=list)

    def put(self, resource: pb.Resource) -> None:
        which = resource.WhichOneof("object")
        assert which is not None
        meta = getattr(resource, which).metadata
        kind = {"model": "Model", "model_infer": "ModelInfer"}[which]
        self.resources[(kind, meta.namespace, meta.name)] = resource

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        return self.resources.get((kind, namespace, name))

    def items(self, kind: str) -> list[pb.Resource]:
        return [r for (k, _, _), r in self.resources.items() if k == kind]

    def infer(self) -> pb.ModelInfer:
        resource = self.get("ModelInfer", *KEY)
        assert resource is not None
        return resource.model_infer

    async def update_status(self, resource: pb.Resource) -> pb.Resource:
        self.infer().status.CopyFrom(resource.model_infer.status)
        self.history.append(pb.ModelInferStatus())
        self.history[-1].CopyFrom(resource.model_infer.status)
        return resource

    async def update_finalizers(
        self, kind: str, namespace: str, name: str, add: list[str], remove: list[str]
    ) -> pb.Resource | None:
        resource = self.get(kind, namespace, name)
        if resource is None:
            return None
        finalizers = resource.model_infer.metadata.finalizers
        kept = [f for f in finalizers if f not in remove]
        del finalizers[:]
        finalizers.extend([*kept, *(f for f in add if f not in kept)])
        return resource

    async def model_revision(
        self, namespace: str, name: str, revision: int
    ) -> pb.Model:
        raise NotFound("no revisions here")


class NoFetch:
    """The controller fetches nothing on Kubernetes: the init containers do."""

    async def fetch(
        self, uri: str, sha256: str = "", endpoint_url: str = ""
    ) -> Artifact:
        raise AssertionError(f"the controller fetched {uri}")


# ---------------------------------------------------------------- the harness


def new_runtime(
    api: ApiServer, attempts: int = 6, replica_tls_secret: str = ""
) -> KubernetesRuntime:
    return KubernetesRuntime(
        KubeClient(
            KubeConfig(str(api.url)),
            RetryPolicy(attempts=attempts, base_s=0.001, max_s=0.01),
        ),
        PodSettings(
            namespace=NS,
            triton_image="nvcr.io/nvidia/tritonserver:25.10-py3",
            fetcher_image="registry.example/matrixinfer/controller:test",
            gpu_node_selector=GPU_SELECTOR,
            gpu_tolerations=GPU_TOLERATIONS,
            fetcher_env=(("MATRIXINFER_CONTROLLER_ARTIFACT_MAX_BYTES", "1000000"),),
            replica_tls_secret=replica_tls_secret,
        ),
        watch_backoff_s=0.01,
        check=validate,
        secret_poll_s=0.02,
    )


@dataclass
class Harness:
    api: ApiServer
    cluster: Cluster
    registry: Registry
    runtime: KubernetesRuntime
    tmp: pathlib.Path
    now: list[float] = field(default_factory=lambda: [1000.0])
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        self.reconciler = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        return Reconciler(
            client=self.registry,
            informer=self.registry,
            runtime=self.runtime,
            fetcher=NoFetch(),
            repos_dir=self.tmp,
            backends=list(ko.TRITON_IMAGE_BACKENDS),
            python_paths=[],
            drain_s=DRAIN_S,
            clock=lambda: self.now[0],
            build_repositories=False,
        )

    def replicas(self) -> list[Replica]:
        return sorted(self.runtime.replicas(OWNER), key=lambda r: r.name)

    def status(self) -> pb.ModelInferStatus:
        return self.registry.infer().status

    def condition(self, kind: str) -> tuple[str, str]:
        found = {c.type: (c.status, c.reason) for c in self.status().conditions}
        return found[kind]

    async def seen(self) -> None:
        """Until the runtime's watch has caught up with every pod in the API."""
        while True:
            pods = {p["metadata"]["name"]: p for p in await self.cluster.items("pods")}
            observed = self.runtime.observed_pods()
            if set(pods) == set(observed) and all(
                ko.is_ready(pods[n]) == ko.is_ready(observed[n]) for n in pods
            ):
                return
            await asyncio.sleep(0.005)

    async def step(self) -> None:
        """The cluster acts, the runtime sees it, the controller reconciles."""
        await self.cluster.sync()
        await self.cluster.run_pods()
        await self.seen()
        await self.reconciler.reconcile(KEY)

    async def settle(self) -> None:
        """Steps (the drain period passing each time) until the ModelInfer's
        rollout is complete and the cluster has nothing left to do."""
        while True:
            await self.step()
            self.now[0] += DRAIN_S
            await self.cluster.sync()
            await self.seen()
            done = self.condition("Progressing") == ("False", "Complete")
            if done and not await self.cluster.run_pods():
                await self.seen()
                await self.reconciler.reconcile(KEY)
                return

    async def everything_valid(self) -> None:
        for plural in PATHS:
            for obj in await self.cluster.items(plural):
                validate(obj)


async def harness(
    tmp_path: pathlib.Path, replica_tls_secret: str = ""
) -> AsyncIterator[Harness]:
    api = ApiServer()
    async with api, kmock.Server(api):
        cluster = Cluster(api)
        if replica_tls_secret:  # as cert-manager writes it
            await cluster.put_secret(replica_tls_secret, "first")
        registry = Registry()
        registry.put(pb.Resource(model=model(1)))
        runtime = new_runtime(api, replica_tls_secret=replica_tls_secret)
        h = Harness(api, cluster, registry, runtime, tmp_path)
        try:
            await h.runtime.start()
            yield h
            # Every call the controller made is one its Role allows.
            assert api.verbs - rbac_allows() == set()
        finally:
            await h.runtime.close()
            await cluster.close()


@pytest_asyncio.fixture
async def h(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    async for harness_ in harness(tmp_path):
        yield harness_


@pytest_asyncio.fixture
async def h_tls(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """Replica pods mount the replica TLS Secret, which cert-manager renews."""
    async for harness_ in harness(tmp_path, REPLICA_TLS):
        yield harness_


# ---------------------------------------------------------------- the cases


@pytest.mark.timeout(60)
async def test_replicas_become_ready_when_their_pods_do(h: Harness) -> None:
    h.registry.put(pb.Resource(model_infer=model_infer(replicas=2, gpus=1)))

    await h.reconciler.reconcile(KEY)

    # One owner object, one Deployment grown to two replicas; no pod yet.
    assert [(m, p) for m, p, _ in h.api.writes()] == [
        ("POST", "configmaps"),
        ("POST", "deployments"),
        ("PATCH", "deployments"),
    ]
    [name] = await h.cluster.names("deployments")
    deployment = await h.cluster.deployment(name)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == GPU_SELECTOR
    assert pod["tolerations"] == list(GPU_TOLERATIONS)
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    init = pod["initContainers"][0]
    assert init["command"] == ["python", "-m", "matrixinfer.controller.prepare"]
    plan_env = {e["name"]: e["value"] for e in init["env"]}
    assert '"uri":"s3://models/iris-1.onnx"' in plan_env["MATRIXINFER_REPOSITORY_PLAN"]
    assert h.status().replicas == 2
    assert h.status().ready_replicas == 0

    await h.cluster.sync()  # the ReplicaSet makes two pods; not ready yet
    await h.seen()
    await h.reconciler.reconcile(KEY)
    assert h.status().ready_replicas == 0
    assert h.condition("Available") == ("False", "MinimumReplicasUnavailable")

    assert len(await h.cluster.run_pods()) == 2  # the kubelet: both pods ready
    await h.seen()
    await h.reconciler.reconcile(KEY)
    pods = await h.cluster.items("pods")
    ips = sorted(p["status"]["podIP"] for p in pods)

    assert h.status().ready_replicas == 2
    assert h.condition("Available") == ("True", "MinimumReplicasAvailable")
    assert h.condition("Progressing") == ("False", "Complete")
    assert sorted(
        (e.name, e.address, e.grpc_port, e.http_port, e.metrics_port, e.ready)
        for e in h.status().endpoints
    ) == sorted(
        (p["metadata"]["name"], p["status"]["podIP"], 8001, 8000, 8002, True)
        for p in pods
    )
    assert sorted(e.address for e in h.status().endpoints) == ips
    assert (await h.cluster.names("configmaps")) == [ko.owner_object_name(OWNER)]
    await h.everything_valid()


def endpoints(h: Harness) -> list[tuple[str, bool, bool]]:
    """(name, ready, draining) of each endpoint in the ModelInfer's status."""
    return sorted((e.name, e.ready, e.draining) for e in h.status().endpoints)


async def running(h: Harness, replicas: int) -> list[str]:
    """A ModelInfer with ``replicas`` ready replicas; returns its pods."""
    h.registry.put(pb.Resource(model_infer=model_infer(replicas)))
    await h.reconciler.reconcile(KEY)
    await h.settle()
    pods = await h.cluster.names("pods")
    assert h.status().ready_replicas == replicas
    assert len(pods) == replicas
    return pods


async def replicas_of(h: Harness, deployment: str) -> int:
    return int((await h.cluster.deployment(deployment))["spec"]["replicas"])


@pytest.mark.timeout(60)
async def test_a_rollout_surges_then_drains(h: Harness) -> None:
    old_pods = await running(h, 2)
    [old] = await h.cluster.names("deployments")
    first = len(h.registry.history)

    h.registry.put(pb.Resource(model=model(2)))  # a new Model revision
    await h.reconciler.reconcile(KEY)

    # Surge: a Deployment for revision 2 with one replica beside the two old ones.
    [new] = [d for d in await h.cluster.names("deployments") if d != old]
    assert (await h.cluster.deployment(new))["metadata"]["labels"][
        ko.LABEL_REVISION
    ] == "2"
    assert (await replicas_of(h, old), await replicas_of(h, new)) == (2, 1)
    assert h.status().ready_replicas == 2

    await h.step()  # the new pod is ready: one old pod drains, still running
    [surged] = [p for p in await h.cluster.names("pods") if p.startswith(new)]
    draining = [name for name, _, is_draining in endpoints(h) if is_draining]
    assert len(draining) == 1
    assert draining[0] in old_pods
    assert (await replicas_of(h, old), await replicas_of(h, new)) == (2, 1)
    assert (surged, True, False) in endpoints(h)

    h.now[0] += DRAIN_S  # the routers have moved away: the drained pod goes
    await h.reconciler.reconcile(KEY)
    assert (await replicas_of(h, old), await replicas_of(h, new)) == (1, 2)
    drained = await h.cluster.items("pods")
    assert [
        p["metadata"]["name"]
        for p in drained
        if p["metadata"]["annotations"].get(ko.DELETION_COST) == ko.LOWEST_COST
    ] == draining
    await h.cluster.sync()
    assert draining[0] not in await h.cluster.names("pods")

    await h.settle()
    assert await h.cluster.names("deployments") == [new]
    new_pods = await h.cluster.names("pods")
    assert len(new_pods) == 2
    assert all(p.startswith(new) for p in new_pods)
    assert endpoints(h) == [(p, True, False) for p in new_pods]
    assert h.status().model_revision == 2
    assert h.condition("Progressing") == ("False", "Complete")
    # maxUnavailable 0: never fewer than two ready replicas during the rollout.
    assert min(s.ready_replicas for s in h.registry.history[first:]) == 2
    await h.everything_valid()


@pytest.mark.timeout(60)
async def test_a_scale_to_zero_leaves_nothing(h: Harness) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "not-ours", "namespace": NS},
        "data": {"a": "b"},
    }
    async with h.cluster.session.post(PATHS["configmaps"], json=foreign) as response:
        assert response.status in (200, 201)
    await running(h, 2)

    h.reconciler.scale(*KEY, 0, "idle")
    await h.reconciler.reconcile(KEY)
    assert [d for _, _, d in endpoints(h)] == [True, True]  # drained first
    h.now[0] += DRAIN_S
    await h.reconciler.reconcile(KEY)
    await h.cluster.sync()  # the garbage collector

    assert await h.cluster.names("deployments") == []
    assert await h.cluster.names("pods") == []
    assert await h.cluster.names("configmaps") == ["not-ours"]
    assert h.status().replicas == 0
    assert list(h.status().endpoints) == []
    assert h.condition("Available") == ("True", "ScaledToZero")
    assert h.runtime.owners() == []


@pytest.mark.timeout(60)
async def test_deleting_the_model_infer_removes_everything(h: Harness) -> None:
    await running(h, 2)

    del h.registry.resources[("ModelInfer", *KEY)]
    await h.reconciler.reconcile(KEY)
    await h.cluster.sync()

    assert await h.cluster.names("deployments") == []
    assert await h.cluster.names("pods") == []
    assert await h.cluster.names("configmaps") == []
    assert h.runtime.owners() == []
    assert h.runtime.replicas(OWNER) == []


@pytest.mark.timeout(60)
async def test_a_deleted_pod_is_reported_and_replaced(h: Harness) -> None:
    victim, survivor = await running(h, 2)
    writes = len(h.api.writes())

    await h.cluster.delete_pod(victim)
    await h.seen()
    await h.reconciler.reconcile(KEY)

    # Reported: one replica short, its slot waiting for a pod.
    assert h.status().replicas == 2
    assert h.status().ready_replicas == 1
    assert h.condition("Available") == ("False", "MinimumReplicasUnavailable")
    assert [name for name, _, _ in endpoints(h)][0] != victim
    assert (survivor, True, False) in endpoints(h)

    await h.step()  # the ReplicaSet replaces the pod, which becomes ready

    pods = await h.cluster.names("pods")
    assert victim not in pods
    assert len(pods) == 2
    assert endpoints(h) == [(p, True, False) for p in pods]
    assert h.condition("Available") == ("True", "MinimumReplicasAvailable")
    # The ReplicaSet replaced it: the controller changed nothing in the API.
    assert h.api.writes()[writes:] == []


@pytest.mark.timeout(60)
async def test_a_restarted_controller_adopts_what_exists(h: Harness) -> None:
    pods = await running(h, 2)
    [deployment] = await h.cluster.names("deployments")
    before = endpoints(h)

    await h.runtime.close()  # the controller goes; its replicas stay
    h.api.calls.clear()
    h.runtime = new_runtime(h.api)
    await h.runtime.start()
    h.reconciler = h.new_reconciler()

    assert [r.name for r in h.replicas()] == pods
    assert all(r.ready for r in h.replicas())
    await h.reconciler.reconcile(KEY)
    assert h.api.writes() == []  # nothing created twice, nothing removed
    assert endpoints(h) == before

    h.reconciler.scale(*KEY, 3, "more")
    await h.reconciler.reconcile(KEY)
    await h.settle()
    assert await h.cluster.names("deployments") == [deployment]
    assert await replicas_of(h, deployment) == 3
    assert [(m, p) for m, p, _ in h.api.writes()] == [("PATCH", "deployments")]
    assert h.status().ready_replicas == 3
    await h.everything_valid()


@pytest.mark.timeout(60)
async def test_api_errors_are_retried_until_it_converges(h: Harness) -> None:
    faults = [
        h.api.fail(500, times=3, method="POST", plural="configmaps"),
        h.api.fail(429, times=2, method="POST", plural="deployments"),
        h.api.fail(409, times=2, method="PATCH", plural="deployments"),
    ]

    pods = await running(h, 2)

    assert [f.served for f in faults] == [3, 2, 2]
    assert [(m, p) for m, p, _ in h.api.writes()] == [
        *[("POST", "configmaps")] * 4,
        *[("POST", "deployments")] * 3,
        *[("PATCH", "deployments")] * 3,
    ]
    assert len(await h.cluster.names("deployments")) == 1
    assert len(await h.cluster.names("configmaps")) == 1
    assert len(pods) == 2

    # Longer than the client's attempts: the reconcile fails (the loop retries it
    # with backoff) and the next one converges.
    outage = h.api.fail(503, times=8, method="PATCH", plural="deployments")
    h.reconciler.scale(*KEY, 3, "more")
    with pytest.raises(Unavailable):
        await h.reconciler.reconcile(KEY)
    assert h.status().ready_replicas == 2
    await h.reconciler.reconcile(KEY)
    await h.settle()
    assert outage.served == 8
    assert h.status().ready_replicas == 3
    assert len(await h.cluster.names("deployments")) == 1

    # A create that happened but whose answer was lost: adopted, not duplicated.
    lost = h.api.fail(
        500, times=1, method="POST", plural="deployments", after_write=True
    )
    h.registry.put(pb.Resource(model=model(2)))
    await h.settle()
    assert lost.served == 1
    [deployment] = await h.cluster.names("deployments")
    assert await replicas_of(h, deployment) == 3
    assert len(await h.cluster.names("pods")) == 3
    assert h.status().model_revision == 2
    assert h.status().ready_replicas == 3
    await h.everything_valid()


@pytest.mark.timeout(60)
async def test_a_failing_watch_is_retried_and_relisted(h: Harness) -> None:
    victim, survivor = await running(h, 2)
    await h.runtime.close()
    faults = [
        h.api.fail(500, times=3, method="GET", plural="pods", watch=True),
        h.api.fail(503, times=2, method="GET", plural="pods"),
    ]
    h.runtime = new_runtime(h.api)
    await h.runtime.start()
    h.reconciler = h.new_reconciler()

    await h.cluster.delete_pod(victim)  # while the watch is failing
    while faults[0].served < 3:  # the watch is retried (relisting) until it works
        await asyncio.sleep(0.005)
    await h.step()

    assert [f.served for f in faults] == [3, 2]
    pods = await h.cluster.names("pods")
    assert victim not in pods
    assert survivor in pods
    assert endpoints(h) == [(p, True, False) for p in pods]
    assert h.status().ready_replicas == 2


@pytest.mark.timeout(60)
async def test_a_deployment_deleted_by_someone_else_is_recreated(h: Harness) -> None:
    old_pods = await running(h, 2)
    [deployment] = await h.cluster.names("deployments")

    await h.cluster.delete("deployments", deployment)  # kubectl delete deployment
    while h.replicas():  # the watch reports it gone
        await asyncio.sleep(0.005)
    await h.reconciler.reconcile(KEY)
    await h.settle()

    assert await h.cluster.names("deployments") == [deployment]
    pods = await h.cluster.names("pods")
    assert len(pods) == 2
    assert set(pods).isdisjoint(old_pods)
    assert endpoints(h) == [(p, True, False) for p in pods]
    await h.everything_valid()


@pytest.mark.timeout(60)
async def test_a_renewed_replica_certificate_replaces_the_replicas(
    h_tls: Harness,
) -> None:
    """Triton reads its certificate only when it starts: when cert-manager renews
    the replica TLS Secret, the replicas are replaced as in a rollout (surge,
    drain), never all at once."""
    h = h_tls
    changed: list[str] = []
    h.runtime.set_on_change(changed.append)
    await running(h, 2)
    [old] = await h.cluster.names("deployments")
    first = len(h.registry.history)
    before = h.runtime.generation()
    assert before != ""
    changed.clear()

    await h.cluster.put_secret(REPLICA_TLS, "renewed")
    while h.runtime.generation() == before:
        await asyncio.sleep(0.01)
    assert OWNER in changed  # the runtime asked for a reconcile
    await h.reconciler.reconcile(KEY)

    [new] = [d for d in await h.cluster.names("deployments") if d != old]
    assert (await replicas_of(h, old), await replicas_of(h, new)) == (2, 1)
    await h.settle()
    assert await h.cluster.names("deployments") == [new]
    assert all(p.startswith(new) for p in await h.cluster.names("pods"))
    # maxUnavailable 0: never fewer than two ready replicas meanwhile.
    assert min(s.ready_replicas for s in h.registry.history[first:]) == 2
    # The Secret is only read, by name.
    assert ("", "secrets", "get") in h.api.verbs
    assert {c for c in h.api.calls if c[1] == "secrets"} == {
        ("GET", "secrets", REPLICA_TLS)
    }
    await h.everything_valid()
