"""The Kubernetes runtime: each template of a ModelInfer is a Deployment, each of its
pods is one replica.

How the reconciler's per-replica calls map onto Deployments (so the reconciler and
its rollout plan stay as they are):

- ``start_replica`` raises the template's Deployment's ``spec.replicas`` by one
  (creating the Deployment, and the ModelInfer's owner ConfigMap, at the first).
  Until the ReplicaSet has made a pod for it, the slot is listed as a placeholder
  replica (``<deployment>-pending-<i>``, Starting), so the plan counts it at once.
- Each live pod is a replica named like the pod: Ready when the pod is Ready (the
  readiness probe on Triton's ``/v2/health/ready``), with the pod IP and Triton's
  ports as its endpoint, so the gateway balances per pod.
- ``stop_replica`` of a pod marks it with the lowest ``pod-deletion-cost`` and lowers
  ``spec.replicas`` by one, so the ReplicaSet removes that pod; a Deployment
  reaching zero is deleted, and the owner ConfigMap with the last one. A stopped
  pod leaves the listings at once.
- ``mark_draining`` is the controller's own bookkeeping, as in the local runtime.

Surge then drain across revisions is then exactly the plan's: the new template's
Deployment grows while the old one's shrinks pod by pod.

State: everything is in the API server. ``start()`` lists the Deployments and pods
labelled ``app.kubernetes.io/managed-by=matrixinfer-controller`` (adoption after a
restart: no duplicates), then watches both. ``close()`` only stops watching: the
replicas outlive a controller restart, and a ModelInfer's deletion (the reconciler
stopping every replica) removes its objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from matrixinfer.controller.adapters.kubernetes import objects as ko
from matrixinfer.controller.adapters.kubernetes.client import KubeClient
from matrixinfer.controller.domain.runtime import OnChange, Phase, Replica, ReplicaSpec
from matrixinfer.controller.domain.serving import RepositoryPlan
from matrixinfer.core.errors import (
    AlreadyExists,
    Expired,
    MatrixInferError,
    NotFound,
    Unavailable,
)

log = logging.getLogger(__name__)
JSON = dict[str, Any]


@dataclass
class _Deployment:
    name: str
    spec: ReplicaSpec
    #: ``spec.replicas`` as this controller last wrote it: the truth for counts.
    replicas: int
    uid: str = ""


def _uid(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _name(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def placement_of(spec: ReplicaSpec) -> ko.Placement:
    """The ModelInfer's own nodeSelector, tolerations and cpu/memory, from its
    plan."""
    if not spec.plan:
        return ko.Placement()
    infer = RepositoryPlan.from_json(spec.plan).infer.spec
    tolerations: list[JSON] = []
    for t in infer.tolerations:
        toleration: JSON = {
            k: v
            for k, v in (
                ("key", t.key),
                ("operator", t.operator),
                ("value", t.value),
                ("effect", t.effect),
            )
            if v
        }
        if t.HasField("toleration_seconds"):
            toleration["tolerationSeconds"] = t.toleration_seconds
        tolerations.append(toleration)
    return ko.Placement(
        dict(infer.node_selector),
        tuple(tolerations),
        infer.resources.cpu,
        infer.resources.memory,
    )


@dataclass
class KubernetesRuntime:
    client: KubeClient
    pods: ko.PodSettings
    #: Pauses of the watch loops after a failure.
    watch_backoff_s: float = 1.0
    #: Validates every object before it is sent (tests: the OpenAPI schema).
    check: Callable[[JSON], None] | None = None
    _deployments: dict[str, _Deployment] = field(default_factory=dict)
    _pods: dict[str, JSON] = field(default_factory=dict)
    _stopped: set[str] = field(default_factory=set)
    _draining: dict[str, float] = field(default_factory=dict)
    _owner_refs: dict[str, JSON] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _on_change: OnChange | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: How often the replica TLS Secret is read for a renewal.
    secret_poll_s: float = 30.0
    #: Its resourceVersion when last read ("" without one).
    _secret_version: str = ""

    @property
    def namespace(self) -> str:
        return self.pods.namespace

    def _path(self, plural: str, name: str = "") -> str:
        group = "/apis/apps/v1" if plural == "deployments" else "/api/v1"
        base = f"{group}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Adopts what a previous controller left, then watches for changes."""
        deployments, deployments_version = await self.client.list(
            self._path("deployments"), ko.SELECTOR
        )
        pods, pods_version = await self.client.list(self._path("pods"), ko.SELECTOR)
        owners, _ = await self.client.list(self._path("configmaps"), ko.SELECTOR)
        for obj in deployments:
            self._adopt(obj)
        self._pods = {_name(p): p for p in pods}
        kept = {ko.infer_key(d.spec.owner) for d in self._deployments.values()}
        for owner in owners:
            labels = (owner.get("metadata") or {}).get("labels") or {}
            ours = labels.get(ko.MANAGED_BY_KEY) == ko.MANAGED_BY
            if ours and labels.get(ko.LABEL_INFER) not in kept:  # nothing left
                await self.client.delete(self._path("configmaps", _name(owner)))
        log.info(
            "kubernetes runtime: adopted %d deployment(s), %d pod(s) in %s",
            len(self._deployments),
            len(self._pods),
            self.namespace,
        )
        if self.pods.replica_tls_secret:
            self._secret_version = await self._read_secret_version()
        self._tasks = [
            asyncio.create_task(
                self._watch("pods", pods_version, self._on_pod), name="watch-pods"
            ),
            asyncio.create_task(
                self._watch("deployments", deployments_version, self._on_deployment),
                name="watch-deployments",
            ),
        ]
        if self.pods.replica_tls_secret:
            self._tasks.append(
                asyncio.create_task(self._poll_secret(), name="poll-replica-tls")
            )

    # ----------------------------------------------------- the replica certificate

    def generation(self) -> str:
        """The replica TLS Secret's resourceVersion: cert-manager's renewal
        replaces the replicas (Triton reads its certificate only at start)."""
        return self._secret_version

    async def _read_secret_version(self) -> str:
        name = self.pods.replica_tls_secret
        try:
            secret = await self.client.get(self._path("secrets", name))
        except NotFound:
            log.warning("replica TLS Secret %s/%s not found", self.namespace, name)
            return self._secret_version
        except MatrixInferError as e:
            log.warning("replica TLS Secret %s not read: %s", name, e.message)
            return self._secret_version
        return str((secret.get("metadata") or {}).get("resourceVersion", ""))

    async def _poll_secret(self) -> None:
        while True:
            await asyncio.sleep(self.secret_poll_s)
            version = await self._read_secret_version()
            if version == self._secret_version:
                continue
            log.info(
                "replica TLS Secret %s renewed: replacing the replicas",
                self.pods.replica_tls_secret,
            )
            self._secret_version = version
            for owner in self.owners():
                self._changed(owner)

    async def close(self) -> None:
        """Stops watching; the replicas stay (a new controller adopts them)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.client.close()

    def _adopt(self, obj: JSON) -> None:
        spec = ko.spec_of_deployment(obj)
        if spec is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return
        replicas = int((obj.get("spec") or {}).get("replicas", 1))
        self._deployments[_name(obj)] = _Deployment(
            _name(obj), spec, replicas, _uid(obj)
        )

    # ------------------------------------------------------------------ watching

    async def _watch(
        self, plural: str, version: str, handle: Callable[[str, JSON], None]
    ) -> None:
        path = self._path(plural)
        while True:
            try:
                if not version:
                    known = set(self._deployments)  # before the list: see below
                    items, version = await self.client.list(path, ko.SELECTOR)
                    self._relisted(plural, items, known)
                async for event in self.client.watch(path, ko.SELECTOR, version):
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        raise Expired(str(obj.get("message", "watch error")))
                    meta = obj.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        version = str(meta["resourceVersion"])
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        handle(str(kind), obj)
                version = ""  # the server ended the watch: relist
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the watch must go on
                log.info("watching %s: %s; relisting", plural, e)
                version = ""
                await asyncio.sleep(self.watch_backoff_s)

    def _relisted(self, plural: str, items: list[JSON], known: set[str]) -> None:
        """A fresh list replaces what the watch had seen. Deployments created
        while the list was on its way (not in ``known``) are not in it, and stay."""
        if plural == "pods":
            before = set(self._pods)
            self._pods = {_name(p): p for p in items}
            self._stopped &= set(self._pods)
            for name in before ^ set(self._pods):
                self._notify_pod(name)
            for pod in items:
                self._notify_pod(_name(pod))
        else:
            present = {_name(d): d for d in items}
            for name, deployment in list(self._deployments.items()):
                if name in known and name not in present:
                    del self._deployments[name]
                    self._changed(deployment.spec.owner)

    def _on_pod(self, kind: str, pod: JSON) -> None:
        name = _name(pod)
        owner = self._owner_of_pod(pod)
        if kind == "DELETED":
            self._pods.pop(name, None)
            self._stopped.discard(name)
            self._draining.pop(name, None)
        else:
            self._pods[name] = pod
        if owner:
            self._changed(owner)

    def _on_deployment(self, kind: str, obj: JSON) -> None:
        """Only deletions we did not make matter (someone removed a Deployment):
        its replicas are gone, and the reconciler starts new ones."""
        known = self._deployments.get(_name(obj))
        if kind == "DELETED" and known is not None and known.uid == _uid(obj):
            del self._deployments[known.name]
            self._changed(known.spec.owner)

    def _notify_pod(self, name: str) -> None:
        pod = self._pods.get(name)
        owner = self._owner_of_pod(pod) if pod is not None else ""
        if owner:
            self._changed(owner)

    def _owner_of_pod(self, pod: JSON) -> str:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        return str(annotations.get(ko.ANNOTATION_OWNER, ""))

    # ------------------------------------------------------------------ listing

    def set_on_change(self, callback: OnChange) -> None:
        self._on_change = callback

    def _changed(self, owner: str) -> None:
        if self._on_change is not None:
            self._on_change(owner)

    def _pods_of(self, deployment: str) -> list[JSON]:
        return sorted(
            (
                p
                for p in self._pods.values()
                if ((p.get("metadata") or {}).get("labels") or {}).get(
                    ko.LABEL_DEPLOYMENT
                )
                == deployment
                and ko.is_live(p)
            ),
            key=lambda p: (not ko.is_ready(p), _name(p)),
        )

    def _replicas_of(self, deployment: _Deployment) -> list[Replica]:
        live = self._pods_of(deployment.name)
        shown = [p for p in live if _name(p) not in self._stopped]
        replicas = [ko.replica_of_pod(p, deployment.spec) for p in shown]
        replicas = replicas[: deployment.replicas]
        for index in range(max(0, deployment.replicas - len(live))):
            replicas.append(
                Replica(
                    name=ko.placeholder_name(deployment.name, index),
                    spec=deployment.spec,
                    phase=Phase.STARTING,
                    message="waiting for the pod to be created",
                )
            )
        for replica in replicas:
            since = self._draining.get(replica.name)
            if since is not None:
                replica.draining = True
                replica.draining_since_s = since
        return replicas

    def replicas(self, owner: str) -> list[Replica]:
        return [
            replica
            for deployment in list(self._deployments.values())
            if deployment.spec.owner == owner
            for replica in self._replicas_of(deployment)
        ]

    def observed_pods(self) -> dict[str, JSON]:
        """The pods as the watch has seen them last (tests, debugging)."""
        return dict(self._pods)

    def owners(self) -> list[str]:
        return sorted({d.spec.owner for d in self._deployments.values()})

    def mark_draining(self, name: str, now_s: float) -> None:
        self._draining.setdefault(name, now_s)

    # ------------------------------------------------------------------ changes

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _send(self, obj: JSON) -> JSON:
        if self.check is not None:
            self.check(obj)
        return obj

    async def _owner_ref(self, owner: str) -> JSON:
        cached = self._owner_refs.get(owner)
        if cached is not None:
            return cached
        body = self._send(ko.owner_object(owner, self.namespace))
        try:
            created = await self.client.create(self._path("configmaps"), body)
        except AlreadyExists:
            created = await self.client.get(
                self._path("configmaps", ko.owner_object_name(owner))
            )
        ref = ko.owner_reference(created)
        self._owner_refs[owner] = ref
        return ref

    async def start_replica(self, spec: ReplicaSpec) -> Replica:
        name = ko.deployment_name(spec.owner, spec.template)
        async with self._lock(name):
            known = self._deployments.get(name)
            if known is None:
                known = await self._create_deployment(name, spec)
            else:
                await self._scale(known, known.replicas + 1)
        self._changed(spec.owner)
        return Replica(
            name=ko.placeholder_name(name, 0), spec=spec, phase=Phase.STARTING
        )

    async def _create_deployment(self, name: str, spec: ReplicaSpec) -> _Deployment:
        body = self._send(
            ko.deployment(
                spec,
                1,
                self.pods,
                await self._owner_ref(spec.owner),
                placement_of(spec),
            )
        )
        path = self._path("deployments")
        for _ in range(3):
            try:
                created = await self.client.create(path, body)
                known = _Deployment(name, spec, 1, _uid(created))
                break
            except AlreadyExists:
                # Ours, made by a create whose answer was lost (or by a controller
                # before us): adopt it at the count we want.
                try:
                    existing = await self.client.get(self._path("deployments", name))
                except NotFound:
                    continue
                known = _Deployment(name, spec, 0, _uid(existing))
                await self._scale(known, 1, force=True)
                break
        else:
            raise AlreadyExists(f"deployment {name} keeps colliding")
        self._deployments[name] = known
        return known

    async def _scale(
        self, deployment: _Deployment, replicas: int, force: bool = False
    ) -> None:
        if replicas == deployment.replicas and not force:
            return
        try:
            await self.client.merge_patch(
                self._path("deployments", deployment.name),
                {"spec": {"replicas": replicas}},
            )
        except NotFound:
            # Deleted behind our back (and the watch missed it): forget it, so the
            # next reconcile sees its replicas gone and starts new ones.
            if self._deployments.get(deployment.name) is deployment:
                del self._deployments[deployment.name]
            self._changed(deployment.spec.owner)
            raise Unavailable(
                f"deployment {deployment.name} disappeared; its replicas are "
                "started again"
            ) from None
        deployment.replicas = replicas

    def _find(self, name: str) -> tuple[_Deployment, JSON | None] | None:
        pod = self._pods.get(name)
        if pod is not None:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            known = self._deployments.get(labels.get(ko.LABEL_DEPLOYMENT, ""))
            if known is not None:
                return known, pod
        base, sep, index = name.rpartition("-pending-")
        if sep and index.isdigit() and base in self._deployments:
            return self._deployments[base], None
        return None

    async def stop_replica(self, name: str, grace_s: float, wait: bool = True) -> None:
        """The pod goes with the grace period of its Deployment
        (terminationGracePeriodSeconds, from the controller's stop grace): the
        kubelet stops it, so ``wait`` changes nothing here."""
        found = self._find(name)
        if found is None:
            raise NotFound(f"replica {name} not found")
        deployment, pod = found
        if pod is not None:
            self._stopped.add(name)  # out of every listing at once
        try:
            async with self._lock(deployment.name):
                if self._deployments.get(deployment.name) is not deployment:
                    return  # deleted meanwhile (the stop of its last replica)
                if pod is not None:
                    with contextlib.suppress(NotFound):
                        await self.client.merge_patch(
                            self._path("pods", name),
                            {
                                "metadata": {
                                    "annotations": {ko.DELETION_COST: ko.LOWEST_COST}
                                }
                            },
                        )
                if deployment.replicas > 1:
                    await self._scale(deployment, deployment.replicas - 1)
                else:
                    await self._delete_deployment(deployment)
        except MatrixInferError:
            self._stopped.discard(name)
            raise
        self._draining.pop(name, None)
        self._changed(deployment.spec.owner)

    async def _delete_deployment(self, deployment: _Deployment) -> None:
        await self.client.delete(self._path("deployments", deployment.name))
        self._deployments.pop(deployment.name, None)
        owner = deployment.spec.owner
        if not any(d.spec.owner == owner for d in self._deployments.values()):
            await self.client.delete(
                self._path("configmaps", ko.owner_object_name(owner))
            )
            self._owner_refs.pop(owner, None)
