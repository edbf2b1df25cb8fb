"""Reconciling one ModelInfer: its Model's artifact becomes a Triton repository, the
runtime runs the wanted number of replicas of it (rolling over to a new template
without losing availability), and status tells the world — endpoints included.

Each call handles one key and returns when to look again; the work queue guarantees
one call per key at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from matrixinfer.api.envelope import Key
from matrixinfer.api.timestamps import now_rfc3339
from matrixinfer.api.v1 import meta_pb2
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.domain.artifacts import ArtifactSource
from matrixinfer.controller.domain.ports import Registry, ResourceCache
from matrixinfer.controller.domain.rollout import ReplicaView, plan
from matrixinfer.controller.domain.runtime import Phase, ReplicaSpec, Runtime
from matrixinfer.controller.domain.serving import (
    RepositoryPlan,
    gpus_needed,
    prepare_repository,
)
from matrixinfer.core.errors import MatrixInferError, NotFound

log = logging.getLogger(__name__)

FINALIZER = "matrixinfer.ai/replicas"


def template_of(
    model: pb.Model, revision: int, infer: pb.ModelInfer, generation: str = ""
) -> str:
    """Changes when what a replica serves changes, or what the runtime gives it
    at start (``generation``: a renewed replica certificate); not on replica count
    or rollout."""
    spec = pb.ModelInferSpec()
    spec.CopyFrom(infer.spec)
    spec.ClearField("replicas")
    spec.ClearField("rollout")
    digest = hashlib.sha256()
    digest.update(model.metadata.uid.encode())
    digest.update(str(revision).encode())
    digest.update(model.spec.SerializeToString(deterministic=True))
    digest.update(spec.SerializeToString(deterministic=True))
    if generation:
        digest.update(generation.encode())
    return digest.hexdigest()[:12]


@dataclass
class Reconciler:
    client: Registry
    informer: ResourceCache
    runtime: Runtime
    fetcher: ArtifactSource
    repos_dir: pathlib.Path
    backends: list[str]
    python_paths: list[str]
    #: Run framework: python artifacts' own model.py (operator's trust).
    python_models: bool = False
    drain_s: float = 2.0
    stop_grace_s: float = 10.0
    resync_s: float = 30.0
    #: Added to every replica's tritonserver command (the platform's own settings,
    #: e.g. tracing), after the ModelInfer's runtime.args.
    triton_args: tuple[str, ...] = ()
    clock: Callable[[], float] = time.time
    #: Build each template's repository in ``repos_dir`` (local runtime). False: the
    #: runtime builds it next to each replica from ``ReplicaSpec.plan`` (Kubernetes).
    build_repositories: bool = True
    _prepared: dict[str, pathlib.Path] = field(default_factory=dict)
    #: Scale requests not yet seen recorded in status: (replicas, reason). The
    #: reconciler alone writes status (status.desiredReplicas and status.scaleReason
    #: are the record); a request waits here until the ModelInfer is read back with
    #: it recorded, so a stale read cannot undo it.
    _requested: dict[Key, tuple[int, str]] = field(default_factory=dict)

    # ------------------------------------------------------------------ entry points

    async def reconcile(self, key: Key) -> float | None:
        """Returns seconds until this key should be looked at again (None: only on
        the next event)."""
        namespace, name = key
        owner = f"{namespace}/{name}"
        resource = self.informer.get("ModelInfer", namespace, name)
        if resource is None:
            await self._stop_all(owner)
            self._requested.pop(key, None)
            return None
        infer = resource.model_infer
        if infer.metadata.deletion_timestamp:
            await self._stop_all(owner)
            await self.client.update_finalizers(
                "ModelInfer", namespace, name, [], [FINALIZER]
            )
            self._requested.pop(key, None)
            return None
        if FINALIZER not in infer.metadata.finalizers:
            await self.client.update_finalizers(
                "ModelInfer", namespace, name, [FINALIZER], []
            )
        desired, reason = self._wanted(infer)
        try:
            model, revision = await self._model_for(infer)
            template = template_of(model, revision, infer, self.runtime.generation())
            repo_plan = RepositoryPlan.of(model, infer, revision, self.python_models)
            repository = await self._prepare(template, repo_plan)
        except MatrixInferError as error:
            log.warning("ModelInfer %s cannot be prepared: %s", owner, error.message)
            await self._write_status(infer, desired, reason, None, 0, error)
            raise
        replicas = self.runtime.replicas(owner)
        rollout = infer.spec.rollout
        steps = plan(
            desired,
            rollout.max_surge,
            rollout.max_unavailable,
            template,
            [
                ReplicaView(
                    r.name, r.spec.template, r.ready, r.draining, r.draining_since_s
                )
                for r in replicas
            ],
            self.clock(),
            self.drain_s,
        )
        for _ in range(steps.start):
            await self.runtime.start_replica(
                ReplicaSpec(
                    owner=owner,
                    revision=revision,
                    template=template,
                    repository=repository,
                    models=(model.metadata.name,),
                    gpus=gpus_needed(infer.spec),
                    env=tuple((e.name, e.value) for e in infer.spec.runtime.env),
                    args=(*infer.spec.runtime.args, *self.triton_args),
                    plan=repo_plan.to_json(),
                )
            )
        for replica_name in steps.drain:
            self.runtime.mark_draining(replica_name, self.clock())
        await asyncio.gather(
            # Drained replicas serve nothing: do not hold the rollout while they exit.
            *(
                self.runtime.stop_replica(n, self.stop_grace_s, wait=False)
                for n in steps.stop
            )
        )
        await self._write_status(infer, desired, reason, template, revision, None)
        if any(r.draining for r in self.runtime.replicas(owner)):
            return min(self.drain_s, 0.5) if self.drain_s else 0.1
        return None if steps.idle else 0.5

    def desired(self, infer: pb.ModelInfer) -> int:
        """How many replicas this ModelInfer gets now."""
        return self._wanted(infer)[0]

    def _wanted(self, infer: pb.ModelInfer) -> tuple[int, str]:
        """(replicas, scale reason to record; "" when none). One place decides the
        count, and bounds it by the AutoscalingPolicy once:

        - a Scale request not yet recorded wins;
        - else the last recorded Scale (status.desiredReplicas with its
          status.scaleReason, which survive a controller restart), while an
          AutoscalingPolicy targets the ModelInfer or its spec has not changed since;
        - else spec.replicas (without a policy, an edited spec overrides an earlier
          Scale, the newer intent)."""
        key = (infer.metadata.namespace, infer.metadata.name)
        policy = self._policy_for(key)
        status = infer.status
        spec_changed = status.observed_generation != infer.metadata.generation
        requested = self._requested.get(key)
        if requested is not None and (
            status.scale_reason,
            status.desired_replicas,
        ) == (requested[1], self.bound(policy, requested[0])):
            # The status this ModelInfer was read with records the request.
            del self._requested[key]
            requested = None
        if requested is not None:
            wanted, reason = requested
        elif status.scale_reason and (policy is not None or not spec_changed):
            wanted, reason = status.desired_replicas, status.scale_reason
        else:
            wanted, reason = infer.spec.replicas, ""
        return self.bound(policy, wanted), reason

    @staticmethod
    def bound(policy: pb.AutoscalingPolicy | None, replicas: int) -> int:
        if policy is None:
            return max(0, min(1000, replicas))
        return max(policy.spec.min_replicas, min(policy.spec.max_replicas, replicas))

    def scale(self, namespace: str, name: str, replicas: int, reason: str) -> int:
        """Record the autoscaler's (or an operator's) wish; returns what will apply."""
        resource = self.informer.get("ModelInfer", namespace, name)
        if resource is None:
            raise NotFound(f"ModelInfer {namespace}/{name} not found")
        self._requested[(namespace, name)] = (replicas, reason or "Scale")
        return self.desired(resource.model_infer)

    def _policy_for(self, key: Key) -> pb.AutoscalingPolicy | None:
        for resource in self.informer.items("AutoscalingPolicy"):
            policy = resource.autoscaling_policy
            if (policy.metadata.namespace, policy.spec.target_ref.name) == key:
                return policy
        return None

    # ------------------------------------------------------------------ steps

    async def _stop_all(self, owner: str) -> None:
        await asyncio.gather(
            *(
                self.runtime.stop_replica(r.name, self.stop_grace_s)
                for r in self.runtime.replicas(owner)
            )
        )

    async def _model_for(self, infer: pb.ModelInfer) -> tuple[pb.Model, int]:
        namespace = infer.metadata.namespace
        ref = infer.spec.model_ref
        resource = self.informer.get("Model", namespace, ref.name)
        if resource is None:
            raise NotFound(f"Model {ref.name!r} not found in namespace {namespace!r}")
        current = resource.model
        if not ref.revision or ref.revision == current.status.current_revision:
            return current, current.status.current_revision
        pinned = await self.client.model_revision(namespace, ref.name, ref.revision)
        pinned.metadata.uid = current.metadata.uid
        return pinned, ref.revision

    async def _prepare(self, template: str, repo_plan: RepositoryPlan) -> pathlib.Path:
        cached = self._prepared.get(template)
        if cached is not None and cached.exists():
            return cached
        target = self.repos_dir / template
        if not self.build_repositories:
            return target
        await prepare_repository(
            self.fetcher, repo_plan, target, self.backends, self.python_paths
        )
        self._prepared[template] = target
        return target

    # ------------------------------------------------------------------ status

    async def _write_status(
        self,
        infer: pb.ModelInfer,
        desired: int,
        scale_reason: str,
        template: str | None,
        revision: int,
        error: MatrixInferError | None,
    ) -> None:
        owner = f"{infer.metadata.namespace}/{infer.metadata.name}"
        replicas = self.runtime.replicas(owner)
        status = pb.ModelInferStatus()
        status.CopyFrom(infer.status)
        del status.endpoints[:]
        serving = [r for r in replicas if not r.draining]
        ready = [r for r in serving if r.ready]
        updated = [r for r in serving if r.spec.template == template]
        status.replicas = len(replicas)
        status.ready_replicas = len(ready)
        status.updated_replicas = len(updated)
        status.desired_replicas = desired
        status.observed_generation = infer.metadata.generation
        if revision:
            status.model_revision = revision
        status.scale_reason = scale_reason
        status.endpoints.extend(
            r.endpoint() for r in sorted(replicas, key=lambda r: r.name)
        )
        unavailable = infer.spec.rollout.max_unavailable
        if desired == 0:
            available = ("True", "ScaledToZero", "no replicas are wanted")
        elif len(ready) >= max(1, desired - unavailable):
            available = (
                "True",
                "MinimumReplicasAvailable",
                f"{len(ready)} of {desired} ready",
            )
        else:
            available = (
                "False",
                "MinimumReplicasUnavailable",
                f"{len(ready)} of {desired} ready",
            )
        settled = (
            error is None
            and len(updated) == desired
            and all(r.ready for r in updated)
            and len(replicas) == desired
        )
        progressing = (
            ("False", "Complete", f"{desired} replica(s) of revision {revision} ready")
            if settled
            else (
                "True",
                "Rolling",
                f"{len(updated)} of {desired} updated, {len(ready)} ready",
            )
        )
        degraded = ("False", "AsExpected", "")
        if error is not None:
            degraded = ("True", type(error).__name__, error.message)
        else:
            troubled = [r for r in replicas if r.phase in (Phase.FAILED, Phase.PENDING)]
            if troubled:
                worst = troubled[0]
                reason = (
                    "ReplicaPending"
                    if worst.phase is Phase.PENDING
                    else "ReplicaFailed"
                )
                degraded = ("True", reason, f"{worst.name}: {worst.message}")
        _set_conditions(
            status,
            infer.metadata.generation,
            {"Available": available, "Progressing": progressing, "Degraded": degraded},
        )
        if status == infer.status:
            return
        updated_infer = pb.ModelInfer()
        updated_infer.metadata.namespace = infer.metadata.namespace
        updated_infer.metadata.name = infer.metadata.name
        updated_infer.status.CopyFrom(status)
        await self.client.update_status(pb.Resource(model_infer=updated_infer))


def _set_conditions(
    status: pb.ModelInferStatus,
    generation: int,
    wanted: dict[str, tuple[str, str, str]],
) -> None:
    previous = {c.type: c for c in status.conditions}
    del status.conditions[:]
    for kind, (value, reason, message) in wanted.items():
        old = previous.get(kind)
        since = (
            old.last_transition_time if old is not None and old.status == value else ""
        )
        status.conditions.append(
            meta_pb2.Condition(
                type=kind,
                status=value,
                reason=reason,
                message=message[:1024],
                last_transition_time=since or now_rfc3339("seconds"),
                observed_generation=generation,
            )
        )
