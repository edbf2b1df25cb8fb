"""What the loop needs from the world, as interfaces: the autoscaler's adapters
(and core's registry informer and client) implement them.

Adapters raise :class:`matrixinfer.core.errors.MatrixInferError` subclasses for a
peer that fails or does not answer, never transport errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.autoscaler.domain.decision import Decision
from matrixinfer.autoscaler.domain.metric_types import Key
from matrixinfer.autoscaler.domain.policy import Policy
from matrixinfer.autoscaler.domain.window import Sample


class Controller(Protocol):
    """The controller: replica counts and endpoints, and scaling."""

    async def get_replicas(
        self, namespace: str, model_infer: str
    ) -> tuple[int, list[pb.Endpoint]]:
        """The desired replica count and the replicas' endpoints."""
        ...

    async def scale(
        self, namespace: str, model_infer: str, replicas: int, reason: str
    ) -> None: ...


class Resources(Protocol):
    """A local, current view of registry objects (AutoscalingPolicy, ModelInfer)."""

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None: ...

    def items(self, kind: str) -> list[pb.Resource]: ...


class StatusWriter(Protocol):
    """Writes an object's status to the registry."""

    async def update_status(self, resource: pb.Resource) -> pb.Resource: ...


class GatewayReports(Protocol):
    """The gateways' load reports: Concurrency and RequestsPerSecond, arrivals."""

    def values(self, key: Key) -> dict[str, float]:
        """The gateway metrics of one ModelInfer; {} when no gateway is fresh."""
        ...

    def take_arrivals(self, key: Key) -> float:
        """Arrivals reported since the previous call for this key."""
        ...

    def retain(self, keys: set[Key]) -> None:
        """Forget the ModelInfers no policy tracks."""
        ...


class ReplicaMetrics(Protocol):
    """Metrics read from the replicas themselves (PendingRequests, QueueTimeMs,
    GpuUtilization)."""

    async def values(
        self, key: Key, endpoints: Iterable[pb.Endpoint], wanted: Iterable[str]
    ) -> dict[str, float]:
        """The metrics in ``wanted`` of one ModelInfer's ready replicas; a metric is
        left out (missing) when it cannot be read completely."""
        ...


class GpuQuery(Protocol):
    """GPU utilization (percent) of one ModelInfer from a metrics server."""

    async def gpu_utilization(self, key: Key) -> float | None: ...


class Recorder(Protocol):
    """Where the autoscaler's own metrics go."""

    def decided(
        self,
        target: Key,
        policy: Policy,
        sample: Sample,
        decision: Decision,
        ready: int,
    ) -> None:
        """A decision was made for ``target`` from ``sample``."""
        ...

    def scaled(self, target: Key, direction: str) -> None:
        """A scale call ``up`` or ``down`` went through."""
        ...

    def forget(self, target: Key) -> None:
        """``target`` is no longer autoscaled: drop its series."""
        ...
