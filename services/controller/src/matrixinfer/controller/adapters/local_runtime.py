"""The local runtime: each replica is a real ``tritonserver`` process on 127.0.0.1.

A supervisor task per replica starts the server on free ports, waits for readiness
(after warmup), and restarts it with exponential backoff when it exits; GPUs come
from a configured inventory through CUDA_VISIBLE_DEVICES. Logs go to one file per
replica under the state folder, for ``matrixinfer logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import pathlib
import time
from dataclasses import dataclass, field

from matrixinfer.controller.domain.runtime import OnChange, Phase, Replica, ReplicaSpec
from matrixinfer.controller.domain.serving import RepositoryPlan, placement_fields
from matrixinfer.core.errors import MatrixInferError, NotFound
from matrixinfer.core.grpc.tls import read_files
from matrixinfer.triton.install import TritonInstall
from matrixinfer.triton.server import GrpcTls, TritonProcess, allocate_ports

log = logging.getLogger(__name__)


@dataclass
class _Running:
    replica: Replica
    task: asyncio.Task[None] | None = None
    process: TritonProcess | None = None
    stopping: bool = False


@dataclass
class LocalRuntime:
    install: TritonInstall
    state_dir: pathlib.Path
    gpu_inventory: tuple[int, ...] = ()
    ready_timeout_s: float = 120.0
    max_backoff_s: float = 30.0
    #: mTLS on every replica's gRPC port; None: plaintext.
    tls: GrpcTls | None = None
    _replicas: dict[str, _Running] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _on_change: OnChange | None = None
    _backend_dir: pathlib.Path | None = None
    _gpus_free: set[int] = field(default_factory=set)
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)
    #: (the files' mtimes and sizes, the generation they gave)
    _generation: tuple[tuple[int, ...], str] = ((), "")

    def __post_init__(self) -> None:
        self._gpus_free = set(self.gpu_inventory)

    def set_on_change(self, callback: OnChange) -> None:
        self._on_change = callback

    def _changed(self, replica: Replica) -> None:
        if self._on_change is not None:
            self._on_change(replica.spec.owner)

    def replicas(self, owner: str) -> list[Replica]:
        return [
            r.replica for r in self._replicas.values() if r.replica.spec.owner == owner
        ]

    def process_of(self, name: str) -> TritonProcess | None:
        """The tritonserver process a replica runs now (its environment, command)."""
        running = self._replicas.get(name)
        return running.process if running is not None else None

    def owners(self) -> list[str]:
        return sorted({r.replica.spec.owner for r in self._replicas.values()})

    def generation(self) -> str:
        """A digest of the replica certificate, key and CA Triton is started
        with: rotated files replace the replicas (Triton reads them only at
        start). A rotation half done (a certificate without its key yet) keeps
        the last one."""
        if self.tls is None:
            return ""
        files = self.tls.server
        try:
            stats = [path.stat() for path in (files.cert, files.key, files.ca)]
            stamp = tuple(v for st in stats for v in (st.st_mtime_ns, st.st_size))
            if stamp == self._generation[0]:
                return self._generation[1]
            digest = hashlib.sha256(b"".join(read_files(files))).hexdigest()[:12]
        except (OSError, ValueError) as e:
            log.warning("replica certificate not usable for now: %s", e)
            return self._generation[1]
        if self._generation[1] and digest != self._generation[1]:
            log.info(
                "replica certificate %s changed: replicas will be replaced",
                files.cert,
            )
        self._generation = (stamp, digest)
        return digest

    def mark_draining(self, name: str, now_s: float) -> None:
        running = self._replicas.get(name)
        if running is not None and not running.replica.draining:
            running.replica.draining = True
            running.replica.draining_since_s = now_s

    async def start_replica(self, spec: ReplicaSpec) -> Replica:
        refused = (
            placement_fields(RepositoryPlan.from_json(spec.plan).infer.spec)
            if spec.plan
            else []
        )
        if self._backend_dir is None and not refused:
            self._backend_dir = await asyncio.to_thread(
                self.install.prepare_backends, self.state_dir / "backends"
            )
        owner = spec.owner.replace("/", "-")
        name = f"{owner}-r{spec.revision}-{next(self._counter)}"
        replica = Replica(
            name=name,
            spec=spec,
            address="127.0.0.1",
            log_path=self.state_dir / "logs" / f"{name}.log",
        )
        running = _Running(replica)
        self._replicas[name] = running
        if refused:
            # Listed (so status names the field), never started.
            replica.phase = Phase.FAILED
            replica.message = (
                f"{' and '.join(refused)} set, but the local runtime has no nodes to "
                "place replicas on: remove it, or run the controller with "
                "MATRIXINFER_CONTROLLER_RUNTIME=kubernetes"
            )
            self._changed(replica)
            return replica
        running.task = asyncio.create_task(
            self._supervise(running), name=f"replica-{name}"
        )
        return replica

    async def stop_replica(self, name: str, grace_s: float, wait: bool = True) -> None:
        running = self._replicas.pop(name, None)  # out of every listing at once
        if running is None:
            raise NotFound(f"replica {name} not found")
        running.stopping = True
        task = asyncio.create_task(
            self._finish_stop(running, grace_s), name=f"stop-{name}"
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        if wait:
            # Shielded: a caller cancelled meanwhile (controller shutdown during a
            # delete) must not leave the server half-stopped and never reaped;
            # close() still awaits the task.
            await asyncio.shield(task)

    async def _finish_stop(self, running: _Running, grace_s: float) -> None:
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
        if running.process is not None:
            await running.process.stop(grace_s)
        self._release_gpus(running.replica)  # only now: the process held them
        running.replica.phase = Phase.STOPPED
        self._changed(running.replica)

    async def close(self) -> None:
        await asyncio.gather(
            *(self.stop_replica(name, 5.0) for name in list(self._replicas)),
            *list(self._stopping),
            return_exceptions=True,
        )

    def _take_gpus(self, replica: Replica) -> bool:
        wanted = replica.spec.gpus
        if wanted == 0:
            return True
        if len(self._gpus_free) < wanted:
            replica.phase = Phase.PENDING
            replica.message = (
                f"needs {wanted} GPU(s); {len(self._gpus_free)} of "
                f"{len(self.gpu_inventory)} in the inventory are free"
            )
            return False
        replica.gpu_ids = tuple(sorted(self._gpus_free)[:wanted])
        self._gpus_free -= set(replica.gpu_ids)
        return True

    def _release_gpus(self, replica: Replica) -> None:
        self._gpus_free |= set(replica.gpu_ids)
        replica.gpu_ids = ()

    async def _supervise(self, running: _Running) -> None:
        replica = running.replica
        attempt = 0
        while not running.stopping:
            if not replica.gpu_ids and not self._take_gpus(replica):
                self._changed(replica)
                await asyncio.sleep(1.0)
                continue
            ports = allocate_ports()
            process = TritonProcess(
                install=self.install,
                model_repository=replica.spec.repository,
                backend_directory=self._backend_dir or self.state_dir / "backends",
                ports=ports,
                log_path=replica.log_path
                or self.state_dir / "logs" / f"{replica.name}.log",
                gpus=",".join(map(str, replica.gpu_ids)) if replica.gpu_ids else None,
                models=replica.spec.models,
                extra_args=replica.spec.args,
                tls=self.tls,
            )
            running.process = process
            replica.phase = Phase.STARTING
            replica.grpc_port, replica.http_port, replica.metrics_port = (
                ports.grpc,
                ports.http,
                ports.metrics,
            )
            self._changed(replica)
            started = time.monotonic()
            try:
                await process.start()
                replica.pid = process.pid
                await process.wait_ready(self.ready_timeout_s)
            except MatrixInferError as e:
                replica.phase = Phase.FAILED
                replica.message = e.message
                await process.stop(grace_s=2.0)
            else:
                replica.phase = Phase.READY
                replica.message = ""
                self._changed(replica)
                exit_code = await process.wait()
                if running.stopping:
                    return
                replica.phase = Phase.FAILED
                replica.message = (
                    f"tritonserver exited with code {exit_code}: "
                    f"{process.last_error() or 'see its log'}"
                )
                await process.stop(grace_s=2.0)
            replica.restarts += 1
            self._changed(replica)
            # After a long run restart at once; a crash loop backs off.
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            delay = min(self.max_backoff_s, 0.5 * (2 ** max(0, attempt - 1)))
            log.warning(
                "replica %s failed (%s); restart %d in %.1f s",
                replica.name,
                replica.message,
                replica.restarts,
                delay,
            )
            await asyncio.sleep(delay)
