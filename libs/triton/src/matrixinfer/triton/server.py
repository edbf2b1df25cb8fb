"""One local ``tritonserver`` process: start, readiness, model control, stop.

Every call to a Triton server goes through here (or the rest of this package), so
tritonclient's exceptions are translated into ours in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import time
import uuid
from dataclasses import dataclass, field

import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from matrixinfer.core.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from matrixinfer.core.grpc.tls import ClientTls
from matrixinfer.core.pki import CertFiles
from matrixinfer.core.ports import free_ports
from matrixinfer.core.process import die_with_parent
from matrixinfer.triton.install import TritonInstall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ports:
    grpc: int
    http: int
    metrics: int


def allocate_ports(host: str = "127.0.0.1") -> Ports:
    """Three free ports (the OS picks them). Another process may take one before
    Triton binds it; Triton then exits at once and the caller starts it again."""
    grpc_port, http_port, metrics_port = free_ports(3, host)
    return Ports(grpc_port, http_port, metrics_port)


@dataclass(frozen=True)
class GrpcTls:
    """Mutual TLS on Triton's gRPC port (its HTTP port has no TLS option).

    ``server``: the certificate and key Triton serves, and the CA whose client
    certificates it demands (``--grpc-use-ssl-mutual``: a client without one is
    refused in the handshake). ``client``: what our own calls (readiness, model
    control) present, signed by that CA, and the identity (DNS SAN) they require
    of Triton's certificate, whatever address they dial."""

    server: CertFiles
    client: ClientTls

    def args(self) -> list[str]:
        return [
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={self.server.cert}",
            f"--grpc-server-key={self.server.key}",
            f"--grpc-root-cert={self.server.ca}",
        ]


@dataclass
class TritonProcess:
    """A tritonserver on 127.0.0.1 with explicit model control."""

    install: TritonInstall
    model_repository: pathlib.Path
    backend_directory: pathlib.Path
    ports: Ports
    log_path: pathlib.Path
    #: CUDA_VISIBLE_DEVICES; None hides every GPU (""), so CPU replicas never grab one.
    gpus: str | None = None
    models: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    #: mTLS on the gRPC port; None: plaintext.
    tls: GrpcTls | None = None
    shm_prefix: str = field(default_factory=lambda: f"mi{uuid.uuid4().hex[:12]}_")
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _client: triton_grpc.InferenceServerClient | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def command(self) -> list[str]:
        args = [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory}",
            "--model-control-mode=explicit",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Never let clients change what is served (CVE-2023-31036 class).
            "--disable-auto-complete-config",
            # The Python backend names its shared-memory regions with this prefix;
            # servers on one machine sharing the default prefix corrupt each other
            # (seen here: hangs and SIGABRT when two replicas start together).
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        args += [f"--load-model={m}" for m in self.models]
        if self.tls is not None:
            args += self.tls.args()
        return [*args, *self.extra_args]

    def environment(self) -> dict[str, str]:
        """The process's environment: ours, the install's, and the GPUs it may see
        (CUDA numbers them 0..n-1 inside the process)."""
        env = {**os.environ, **self.install.environment()}
        env["CUDA_VISIBLE_DEVICES"] = self.gpus if self.gpus is not None else ""
        return env

    async def start(self) -> None:
        env = self.environment()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            # Own session: stopping kills the stub processes the server spawned too.
            self._process = await asyncio.create_subprocess_exec(
                *die_with_parent(),
                *self.command(),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._client = self._new_client()
        log.info("started tritonserver pid %s on %s", self.pid, self.grpc_address)

    def _new_client(self) -> triton_grpc.InferenceServerClient:
        if self.tls is None:
            return triton_grpc.InferenceServerClient(self.grpc_address)
        return triton_grpc.InferenceServerClient(
            self.grpc_address,
            creds=self.tls.client.credentials(),
            channel_args=[
                ("grpc.ssl_target_name_override", self.tls.client.server_name)
            ],
        )

    async def wait_ready(self, timeout_s: float) -> None:
        """Until the server and every model it was started with are ready (after
        warmup, with --strict-readiness); raise with Triton's own words if the
        process exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.returncode is not None:
                raise FailedPrecondition(
                    f"tritonserver exited with code {self.returncode}: "
                    f"{self.last_error() or 'see ' + str(self.log_path)}"
                )
            if await self.is_ready():
                return
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"tritonserver not ready after {timeout_s:.0f} s"
                )
            await asyncio.sleep(0.05)

    async def wait(self) -> int:
        """Until the process exits; its exit code."""
        if self._process is None:
            raise FailedPrecondition("tritonserver was not started")
        return await self._process.wait()

    async def is_ready(self) -> bool:
        if self._client is None or self.returncode is not None:
            return False
        try:
            if not await self._client.is_server_ready(client_timeout=1.0):
                return False
            for model in self.models:
                if not await self._client.is_model_ready(model, client_timeout=1.0):
                    return False
        except InferenceServerException:
            return False
        return True

    async def load_model(self, name: str) -> None:
        client = self._require_client()
        try:
            await client.load_model(name, client_timeout=120.0)
        except InferenceServerException as e:
            raise FailedPrecondition(
                f"Triton could not load {name!r}: {e.message()}"
            ) from e

    async def unload_model(self, name: str) -> None:
        client = self._require_client()
        try:
            await client.unload_model(name, client_timeout=60.0)
        except InferenceServerException as e:
            raise Unavailable(f"Triton could not unload {name!r}: {e.message()}") from e

    def _require_client(self) -> triton_grpc.InferenceServerClient:
        if self._client is None:
            raise FailedPrecondition("tritonserver was not started")
        return self._client

    def last_error(self) -> str:
        """The last error line Triton logged (a model that failed to load says why)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-200:]
        except OSError:
            return ""
        for line in reversed(lines):
            if line.startswith("E") or line.startswith("error:"):
                return line.split("] ", 1)[-1].strip()
        return ""

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace_s``."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        # Python-backend stubs live in the same group; make sure none outlive us.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.info(
            "stopped tritonserver pid %s (code %s)", process.pid, process.returncode
        )
