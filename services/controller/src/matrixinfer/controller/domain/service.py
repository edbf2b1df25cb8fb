"""The Controller API's domain side: Scale, GetReplicas and GetLogs, without gRPC.

The gRPC servicer validates and converts messages and calls this; the loop
(:mod:`matrixinfer.controller.domain.loop`) does the reconciling. A Scale records the
wish with the reconciler and queues the ModelInfer, so the loop acts on it at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.domain.logs import LogChunk, replica_logs
from matrixinfer.controller.domain.ports import ResourceCache
from matrixinfer.controller.domain.reconciler import Reconciler
from matrixinfer.controller.domain.runtime import Runtime
from matrixinfer.controller.domain.workqueue import WorkQueue
from matrixinfer.core.errors import NotFound


@dataclass
class ControllerService:
    informer: ResourceCache
    reconciler: Reconciler
    runtime: Runtime
    #: The loop's queue: a scaled ModelInfer is reconciled next.
    queue: WorkQueue

    def scale(self, namespace: str, name: str, replicas: int, reason: str) -> int:
        applied = self.reconciler.scale(namespace, name, replicas, reason)
        self.queue.add((namespace, name))
        return applied

    def replicas(self, namespace: str, name: str) -> tuple[list[pb.Endpoint], int]:
        resource = self.informer.get("ModelInfer", namespace, name)
        if resource is None:
            raise NotFound(f"ModelInfer {namespace}/{name} not found")
        replicas = sorted(
            self.runtime.replicas(f"{namespace}/{name}"), key=lambda r: r.name
        )
        endpoints = [r.endpoint() for r in replicas]
        return endpoints, self.reconciler.desired(resource.model_infer)

    def logs(
        self,
        namespace: str,
        model_infer: str,
        replica: str,
        tail: int | None,
        follow: bool,
    ) -> AsyncIterator[LogChunk]:
        """See :func:`matrixinfer.controller.domain.logs.replica_logs`."""
        return replica_logs(
            self.informer, self.runtime, namespace, model_infer, replica, tail, follow
        )
