"""An in-memory runtime whose replicas are ready at once: for measuring the control
loop alone (bench/controller's reconcile throughput) and for tests of the reconciler
that need no Triton. It runs nothing, so it lives with the tests, not in the product
package."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from matrixinfer.controller.domain.runtime import OnChange, Phase, Replica, ReplicaSpec
from matrixinfer.core.errors import NotFound


@dataclass
class FakeRuntime:
    _replicas: dict[str, Replica] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _on_change: OnChange | None = None
    #: What generation() says (a test renews the "certificate" by changing it).
    current_generation: str = ""

    def set_on_change(self, callback: OnChange) -> None:
        self._on_change = callback

    def generation(self) -> str:
        return self.current_generation

    async def start_replica(self, spec: ReplicaSpec) -> Replica:
        n = next(self._counter)
        replica = Replica(
            name=f"{spec.owner.replace('/', '-')}-r{spec.revision}-{n}",
            spec=spec,
            phase=Phase.READY,
            address="127.0.0.1",
            grpc_port=20000 + n % 40000,
        )
        self._replicas[replica.name] = replica
        if self._on_change is not None:
            self._on_change(spec.owner)
        return replica

    async def stop_replica(self, name: str, grace_s: float, wait: bool = True) -> None:
        replica = self._replicas.pop(name, None)
        if replica is None:
            raise NotFound(f"replica {name} not found")
        if self._on_change is not None:
            self._on_change(replica.spec.owner)

    def replicas(self, owner: str) -> list[Replica]:
        return [r for r in self._replicas.values() if r.spec.owner == owner]

    def owners(self) -> list[str]:
        return sorted({r.spec.owner for r in self._replicas.values()})

    def mark_draining(self, name: str, now_s: float) -> None:
        replica = self._replicas.get(name)
        if replica is not None and not replica.draining:
            replica.draining = True
            replica.draining_since_s = now_s

    async def close(self) -> None:
        self._replicas.clear()
