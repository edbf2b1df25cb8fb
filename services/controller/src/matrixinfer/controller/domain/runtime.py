"""The runtime interface the reconciler drives; adapters implement it: the local
runtime (:mod:`matrixinfer.controller.adapters.local_runtime`, ``tritonserver``
processes on this machine) and the Kubernetes one
(:mod:`matrixinfer.controller.adapters.kubernetes`: a Deployment per template, one
replica per pod).

A replica is one Triton server serving one revision of one ModelInfer's model. The
reconciler asks for replicas to exist or go away and reads back their state; the
runtime keeps them alive (restarts with backoff) and calls ``on_change`` whenever a
replica's state changes, so the owner is reconciled again without polling.
"""

from __future__ import annotations

import enum
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from matrixinfer.api.v1 import resources_pb2 as pb


class Phase(enum.Enum):
    PENDING = "Pending"  # waiting for resources (e.g. GPUs)
    STARTING = "Starting"
    READY = "Ready"
    FAILED = "Failed"  # crashed or refused the model; restarting with backoff
    STOPPED = "Stopped"


@dataclass(frozen=True)
class ReplicaSpec:
    #: "<namespace>/<ModelInfer name>"
    owner: str
    revision: int
    #: Identity of what the replica serves (model revision + serving config); a
    #: ModelInfer whose template changes rolls its replicas over.
    template: str
    repository: pathlib.Path
    models: tuple[str, ...]
    gpus: int = 0
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    #: The serialized :class:`~matrixinfer.controller.domain.serving.RepositoryPlan`
    #: the repository is built from: a runtime that builds it next to the replica
    #: (Kubernetes: the init container) needs it; the local one uses ``repository``.
    plan: str = ""


@dataclass
class Replica:
    name: str
    spec: ReplicaSpec
    phase: Phase = Phase.STARTING
    address: str = ""
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    restarts: int = 0
    message: str = ""
    draining: bool = False
    gpu_ids: tuple[int, ...] = field(default=())
    #: Seconds since the epoch when draining began (0: not draining).
    draining_since_s: float = 0.0
    log_path: pathlib.Path | None = None
    #: The server's process id where the runtime has processes (local).
    pid: int | None = None

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def endpoint(self) -> pb.Endpoint:
        """How status (and GetReplicas) show this replica to routers and users."""
        return pb.Endpoint(
            name=self.name,
            address=self.address,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            metrics_port=self.metrics_port,
            revision=self.spec.revision,
            ready=self.ready,
            draining=self.draining,
            restarts=self.restarts,
        )


OnChange = Callable[[str], None]


class Runtime(Protocol):
    def set_on_change(self, callback: OnChange) -> None: ...

    async def start_replica(self, spec: ReplicaSpec) -> Replica:
        """Create a replica and start it in the background (it becomes READY later)."""

    async def stop_replica(self, name: str, grace_s: float, wait: bool = True) -> None:
        """Take the replica out of the listings at once and stop it; ``wait=False``
        returns before the server has finished shutting down."""

    def replicas(self, owner: str) -> list[Replica]: ...

    def owners(self) -> list[str]: ...

    def mark_draining(self, name: str, now_s: float) -> None: ...

    def generation(self) -> str:
        """What a replica gets from the runtime itself when it starts, beyond its
        spec: the replica certificate, which Triton reads only then. When it
        changes, every template changes with it, so the replicas are replaced as
        in a rollout (surge, then drain); "" when there is nothing of the kind."""

    async def close(self) -> None:
        """Controller shutdown. Local: stop every replica, nothing may outlive us.
        Kubernetes: stop watching only; the pods stay for the next controller."""
