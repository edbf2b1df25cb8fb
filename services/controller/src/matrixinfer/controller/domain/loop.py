"""The control loop: informer events and runtime changes become keys on the work
queue; workers reconcile one key at a time; failures are retried with backoff; every
ModelInfer is looked at again at least every ``resync_s``. One failing reconcile is
logged and the loop goes on.

``matrixinfer_controller_reconciles_total{namespace,model_infer,result}`` counts
reconciles by result (``ok``, or ``error``: retried with backoff); the
ControllerReconcileFailing alert (deploy/prometheus/alerts.yml) reads it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from matrixinfer.api.envelope import key_of
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.domain.ports import ResourceCache
from matrixinfer.controller.domain.reconciler import Reconciler
from matrixinfer.controller.domain.runtime import Runtime
from matrixinfer.controller.domain.workqueue import WorkQueue
from matrixinfer.core.errors import MatrixInferError

log = logging.getLogger(__name__)


@dataclass
class ControllerLoop:
    informer: ResourceCache
    reconciler: Reconciler
    runtime: Runtime
    queue: WorkQueue
    workers: int = 4
    resync_s: float = 30.0
    #: Where the reconcile counter is registered (None: counted, not served).
    metrics: CollectorRegistry | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _reconciles: Counter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._reconciles = Counter(
            "matrixinfer_controller_reconciles",
            "Reconciles of each ModelInfer, by result (ok; error: retried with "
            "backoff).",
            ["namespace", "model_infer", "result"],
            registry=self.metrics,
        )

    def on_event(self, kind: str, event_type: str, resource: pb.Resource) -> None:
        namespace, name = key_of(resource)
        if kind == "ModelInfer":
            self.queue.add((namespace, name))
        elif kind == "Model":
            for item in self.informer.items("ModelInfer"):
                infer = item.model_infer
                if (
                    infer.metadata.namespace == namespace
                    and infer.spec.model_ref.name == name
                ):
                    self.queue.add((namespace, infer.metadata.name))
        elif kind == "AutoscalingPolicy":
            self.queue.add(
                (namespace, resource.autoscaling_policy.spec.target_ref.name)
            )

    def on_runtime_change(self, owner: str) -> None:
        namespace, _, name = owner.partition("/")
        self.queue.add((namespace, name))

    async def start(self) -> None:
        self.runtime.set_on_change(self.on_runtime_change)
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-{i}")
            for i in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.queue.close()

    async def _worker(self) -> None:
        while True:
            key: Any = await self.queue.get()
            try:
                again = await self.reconciler.reconcile(key)
            except MatrixInferError as e:
                self._reconciles.labels(*key, "error").inc()
                delay = self.queue.retry(key)
                log.info("reconcile %s/%s: %s; again in %.1f s", *key, e.message, delay)
            except Exception:
                self._reconciles.labels(*key, "error").inc()
                delay = self.queue.retry(key)
                log.exception("reconcile %s/%s failed; again in %.1f s", *key, delay)
            else:
                self._reconciles.labels(*key, "ok").inc()
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self.queue.done(key)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_s)
            for item in self.informer.items("ModelInfer"):
                self.queue.add(key_of(item))
            for owner in self.runtime.owners():  # replicas whose ModelInfer is gone
                self.on_runtime_change(owner)
