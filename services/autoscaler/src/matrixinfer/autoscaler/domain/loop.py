"""The autoscaler's loop: every tick, for every AutoscalingPolicy, gather a sample,
fold it into that policy's window state, `decide`, and act.

Acting is a scale through the controller with the decision's reason (only when the
count changes), the policy's status (current/desired replicas, mode, last scale
time; written only when it changes), metrics, and a log line for every scale.

Nothing here is persisted: after a restart the window states start empty, and
`decide` refuses to scale down until a full stable window has been observed, so a
restart can delay a scale-down but never cause one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from matrixinfer.api.timestamps import now_rfc3339
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.autoscaler.domain.decision import Decision, decide
from matrixinfer.autoscaler.domain.metric_types import (
    GATEWAY_METRICS,
    GPU,
    TRITON_METRICS,
    Key,
)
from matrixinfer.autoscaler.domain.policy import Policy
from matrixinfer.autoscaler.domain.ports import (
    Controller,
    GatewayReports,
    GpuQuery,
    Recorder,
    ReplicaMetrics,
    Resources,
    StatusWriter,
)
from matrixinfer.autoscaler.domain.window import Sample, WindowState
from matrixinfer.core.errors import (
    FailedPrecondition,
    MatrixInferError,
    NotFound,
    Unavailable,
)

log = logging.getLogger(__name__)


@dataclass
class _Tracked:
    policy_key: Key
    target: Key
    uid: str
    generation: int
    policy: Policy
    state: WindowState
    lock: asyncio.Lock
    last_scale_time: str = ""
    decision: Decision | None = None
    written: tuple[int, int, str, str] | None = None


class Autoscaler:
    def __init__(
        self,
        informer: Resources,
        registry: StatusWriter,
        controller: Controller,
        gateways: GatewayReports,
        triton: ReplicaMetrics,
        prometheus: GpuQuery | None,
        metrics: Recorder,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.informer = informer
        self._registry = registry
        self._controller = controller
        self.gateways = gateways
        self._triton = triton
        self._prometheus = prometheus
        self._metrics = metrics
        self._tick_s = tick_s
        self._clock = clock
        self._tracked: dict[Key, _Tracked] = {}  # by target ModelInfer
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.tick()
            except Exception:  # one bad tick must not end autoscaling for good
                log.exception("autoscaler tick failed")
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self._tick_s - elapsed))

    # ------------------------------------------------------------------ policies

    def _sync_policies(self) -> None:
        now = self._clock()
        seen: set[Key] = set()
        for resource in self.informer.items("AutoscalingPolicy"):
            obj = resource.autoscaling_policy
            namespace = obj.metadata.namespace or "default"
            target = (namespace, obj.spec.target_ref.name)
            if target in seen:
                log.warning(
                    "several AutoscalingPolicies target %s/%s; %s is ignored",
                    *target,
                    obj.metadata.name,
                )
                continue
            seen.add(target)
            tracked = self._tracked.get(target)
            policy_key = (namespace, obj.metadata.name)
            if tracked is not None and (
                tracked.uid != obj.metadata.uid or tracked.policy_key != policy_key
            ):
                tracked = None  # deleted and re-created, or another policy now
            if tracked is not None and tracked.generation == obj.metadata.generation:
                continue
            try:
                policy = Policy.from_spec(obj.spec)
            except ValueError as e:
                log.error("AutoscalingPolicy %s is unusable: %s", obj.metadata.name, e)
                continue
            if tracked is None:
                self._tracked[target] = _Tracked(
                    policy_key,
                    target,
                    obj.metadata.uid,
                    obj.metadata.generation,
                    policy,
                    WindowState.empty(now, policy.horizon_s),
                    asyncio.Lock(),
                    last_scale_time=obj.status.last_scale_time,
                )
            else:  # edited: keep what was observed, decide by the new rules
                tracked.policy, tracked.generation = policy, obj.metadata.generation
        for target in [t for t in self._tracked if t not in seen]:
            del self._tracked[target]
            self._metrics.forget(target)
        self.gateways.retain(set(self._tracked))

    # ------------------------------------------------------------------ the tick

    async def tick(self) -> None:
        self._sync_policies()
        tracked = list(self._tracked.values())
        results = await asyncio.gather(
            *(self._tick_one(t) for t in tracked), return_exceptions=True
        )
        for t, result in zip(tracked, results, strict=True):
            if isinstance(result, Exception):
                log.error("autoscaling %s/%s failed this tick: %r", *t.target, result)

    async def _replicas(self, target: Key) -> tuple[int, list[pb.Endpoint]]:
        return await self._controller.get_replicas(*target)

    async def _sample(
        self, tracked: _Tracked, endpoints: list[pb.Endpoint], now: float
    ) -> Sample:
        wanted = [m.type for m in tracked.policy.metrics]
        values: dict[str, float] = {}
        if any(m in GATEWAY_METRICS for m in wanted):
            gateway = self.gateways.values(tracked.target)
            values.update({k: v for k, v in gateway.items() if k in wanted})
        if any(m in TRITON_METRICS for m in wanted):
            values.update(await self._triton.values(tracked.target, endpoints, wanted))
            if GPU in wanted and GPU not in values and self._prometheus is not None:
                gpu = await self._prometheus.gpu_utilization(tracked.target)
                if gpu is not None:
                    values[GPU] = gpu
        arrivals = self.gateways.take_arrivals(tracked.target)
        return Sample(now, values, arrivals)

    async def _tick_one(self, tracked: _Tracked) -> None:
        async with tracked.lock:
            try:
                current, endpoints = await self._replicas(tracked.target)
            except MatrixInferError as e:
                # Controller away or ModelInfer not there yet: decide nothing.
                log.debug("GetReplicas %s/%s: %s", *tracked.target, e)
                return
            ready = sum(1 for e in endpoints if e.ready and not e.draining)
            now = self._clock()
            sample = await self._sample(tracked, endpoints, now)
            state = tracked.state.with_sample(sample)
            decision, state = decide(tracked.policy, state, now, current, ready)
            tracked.state, tracked.decision = state, decision
            self._metrics.decided(
                tracked.target, tracked.policy, sample, decision, ready
            )
            if decision.desired != current:
                await self._scale(tracked, current, decision.desired, decision.reason)
            await self._write_status(tracked, ready, decision)

    async def _scale(
        self, tracked: _Tracked, current: int, desired: int, reason: str
    ) -> bool:
        """Ask the controller; False (logged) when it could not be reached."""
        namespace, name = tracked.target
        try:
            await self._controller.scale(namespace, name, desired, reason)
        except MatrixInferError as e:
            log.warning("Scale %s/%s failed: %s", namespace, name, e)
            return False
        tracked.last_scale_time = now_rfc3339("seconds")
        direction = "up" if desired > current else "down"
        self._metrics.scaled(tracked.target, direction)
        log.info(
            "scaled %s/%s %d -> %d: %s",
            namespace,
            name,
            current,
            desired,
            reason,
            extra={"model_infer": name, "replicas": desired},
        )
        return True

    async def _write_status(
        self, tracked: _Tracked, ready: int, decision: Decision
    ) -> None:
        wanted = (ready, decision.desired, decision.mode, tracked.last_scale_time)
        if tracked.written == wanted:
            return
        namespace, name = tracked.policy_key
        resource = self.informer.get("AutoscalingPolicy", namespace, name)
        if resource is None:
            return
        updated = pb.Resource()
        updated.CopyFrom(resource)
        status = updated.autoscaling_policy.status
        status.current_replicas = ready
        status.desired_replicas = decision.desired
        status.mode = decision.mode
        status.last_scale_time = tracked.last_scale_time
        # Unconditional: the autoscaler owns this status; a spec edit in between
        # must not make the status write fail.
        updated.autoscaling_policy.metadata.resource_version = ""
        try:
            await self._registry.update_status(updated)
        except MatrixInferError as e:
            log.debug("status of AutoscalingPolicy %s not written: %s", name, e)
            return
        tracked.written = wanted

    # ------------------------------------------------------------------ activation

    async def activate(self, namespace: str, name: str) -> int:
        """A request is waiting for a ModelInfer at zero: scale it up now."""
        self._sync_policies()
        tracked = self._tracked.get((namespace, name))
        if tracked is None:
            if self.informer.get("ModelInfer", namespace, name) is None:
                raise NotFound(f"ModelInfer {namespace}/{name} not found")
            raise FailedPrecondition(
                f"no AutoscalingPolicy targets ModelInfer {namespace}/{name}; "
                "it is not scaled from zero automatically"
            )
        async with tracked.lock:
            now = self._clock()
            # The waiting request is traffic: the next decisions must not go back
            # to zero before it is served.
            tracked.state = tracked.state.with_sample(Sample(now, {}, 1.0))
            try:
                current, _ = await self._replicas(tracked.target)
            except MatrixInferError as e:
                raise Unavailable(
                    f"the controller did not answer ({e}); retry"
                ) from None
            if current > 0:
                return current
            wanted = max(1, tracked.policy.min_replicas)
            if not await self._scale(
                tracked, 0, wanted, "activation: a request arrived at zero replicas"
            ):
                raise Unavailable("the controller did not take the scale-up; retry")
            return wanted
