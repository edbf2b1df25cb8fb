"""Composition root of the controller: settings → registry client, informer, runtime,
artifact fetcher (adapters) → reconciler, loop and service (domain) → gRPC server
(Controller service).

``ControllerApp.start`` is what ``main()`` runs and what tests use in-process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from matrixinfer.api.v1 import controller_pb2, controller_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.adapters.kubernetes import (
    KubeClient,
    KubeConfig,
    KubernetesRuntime,
    PodSettings,
)
from matrixinfer.controller.adapters.kubernetes.objects import TRITON_IMAGE_BACKENDS
from matrixinfer.controller.adapters.local_runtime import LocalRuntime
from matrixinfer.controller.adapters.prometheus_sd import PrometheusSD
from matrixinfer.controller.domain.loop import ControllerLoop
from matrixinfer.controller.domain.reconciler import Reconciler
from matrixinfer.controller.domain.runtime import Runtime
from matrixinfer.controller.domain.service import ControllerService
from matrixinfer.controller.domain.workqueue import WorkQueue
from matrixinfer.controller.grpc.auth import POLICY
from matrixinfer.controller.grpc.servicer import ControllerServicer
from matrixinfer.controller.prepare import artifact_fetcher
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core.grpc.auth import ApiKeyVerifier, CallerAuth
from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.server import RunningServer, run_service, start_server
from matrixinfer.core.grpc.tls import ClientTls, client_tls
from matrixinfer.core.metrics import (
    GrpcServerMetrics,
    MetricsServer,
    start_metrics_server,
)
from matrixinfer.core.pki import REPLICA
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.core.registry.informer import Informer
from matrixinfer.core.tracing import setup_tracing
from matrixinfer.triton.install import find_tritonserver, python_paths
from matrixinfer.triton.server import GrpcTls

log = logging.getLogger(__name__)
SERVICE_NAME = controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name
KINDS = ["ModelInfer", "Model", "AutoscalingPolicy"]


@dataclass
class ControllerApp:
    settings: ControllerSettings
    channel: grpc.aio.Channel
    informer: Informer
    runtime: Runtime
    loop: ControllerLoop
    server: RunningServer
    metrics_server: MetricsServer | None = None
    tracer_provider: TracerProvider | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.server.port}"

    @classmethod
    async def start(
        cls, settings: ControllerSettings, runtime: Runtime | None = None
    ) -> ControllerApp:
        """``runtime``: a different runtime than the settings' (bench: FakeRuntime)."""
        state = settings.state_dir.resolve()
        kubernetes = settings.runtime == "kubernetes"
        # On Kubernetes the replicas' image has Triton; this process needs none.
        install = None if kubernetes and runtime is None else find_tritonserver()
        # Deadlines on every call, keepalive, bounded retries of UNAVAILABLE: a hung
        # registry cannot hang the controller.
        tracer = (
            setup_tracing(settings.service_name, settings.otlp_endpoint)
            if settings.otlp_endpoint
            else None
        )
        channel = create_channel(
            settings.registry_address,
            max_message_bytes=settings.max_message_bytes,
            tracer_provider=tracer,
            tls=client_tls(settings.tls_files(), "registry"),
        )
        client = RegistryClient(channel)
        if runtime is None and kubernetes:
            kube_runtime = kubernetes_runtime(settings)
            try:
                await kube_runtime.start()  # adopts what is there before reconciling
            except BaseException:
                await kube_runtime.close()
                raise
            runtime = kube_runtime
        elif runtime is None:
            assert install is not None
            runtime = LocalRuntime(
                install=install,
                state_dir=state,
                gpu_inventory=tuple(settings.gpus),
                ready_timeout_s=settings.ready_timeout_s,
                tls=replica_tls(settings),
            )
        queue = WorkQueue()
        informer = Informer(client, KINDS)
        reconciler = Reconciler(
            client=client,
            informer=informer,
            runtime=runtime,
            fetcher=artifact_fetcher(settings, state / "artifacts"),
            repos_dir=state / "repositories",
            backends=(
                install.backends if install is not None else list(TRITON_IMAGE_BACKENDS)
            ),
            python_paths=python_paths(),
            python_models=settings.python_models,
            drain_s=settings.drain_s,
            stop_grace_s=settings.stop_grace_s,
            resync_s=settings.resync_s,
            triton_args=triton_trace_args(settings),
            # Kubernetes replicas build their repository in their init container.
            build_repositories=not kubernetes,
        )
        metrics = CollectorRegistry()
        loop = ControllerLoop(
            informer,
            reconciler,
            runtime,
            queue,
            settings.workers,
            settings.resync_s,
            metrics,
        )
        informer.subscribe(loop.on_event)
        servicer = ControllerServicer(
            ControllerService(informer, reconciler, runtime, queue)
        )
        metrics_server: MetricsServer | None = None
        try:
            await informer.start()
            await loop.start()
            if settings.prometheus_sd_file is not None:
                # After loop.start(), which installs the loop's own callback.
                sd = PrometheusSD(settings.prometheus_sd_file, runtime)
                runtime.set_on_change(sd.chain(loop.on_runtime_change))
                sd.write()
            server = await start_server(
                settings,
                lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(
                    servicer, s
                ),
                service_names=[SERVICE_NAME],
                metrics=GrpcServerMetrics(metrics),
                tracer_provider=tracer,
                interceptors=_caller_auth(settings, client),
            )
            if settings.metrics_port is not None:
                metrics_server = start_metrics_server(
                    settings.metrics_port, metrics, settings.host
                )
        except BaseException:
            await loop.stop()
            await informer.stop()
            await runtime.close()
            await channel.close()
            raise
        return cls(
            settings, channel, informer, runtime, loop, server, metrics_server, tracer
        )

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(
            self.settings.grace_period_s if grace_s is None else grace_s
        )
        await self.loop.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await self.informer.stop()
        # Every replica goes with us: no tritonserver outlives its controller.
        await self.runtime.close()
        await self.channel.close()
        if self.tracer_provider is not None:
            # Flushes the last spans; off the event loop, which may still serve.
            await asyncio.to_thread(self.tracer_provider.shutdown)


def _caller_auth(
    settings: ControllerSettings, client: RegistryClient
) -> list[CallerAuth]:
    """Who may call (grpc/auth.py): identities with mTLS, checks when enforced;
    admins' API keys are checked against the registry's."""
    enforce = settings.auth_enforced()
    if not enforce and settings.tls_files() is None:
        return []

    async def keys() -> list[pb.Resource]:
        return (await client.list_all("ApiKey"))[0]

    return [
        CallerAuth(
            "controller",
            enforce=enforce,
            policy=POLICY,
            credentials=ApiKeyVerifier(keys),
        )
    ]


def replica_tls(settings: ControllerSettings) -> GrpcTls | None:
    """mTLS on the local replicas' gRPC port, when the replica_tls_* files are set;
    the controller's own calls to Triton present its certificate."""
    server, client = settings.replica_tls_files(), settings.tls_files()
    if server is None or client is None:
        return None
    return GrpcTls(server, ClientTls(client, REPLICA))


def kubernetes_runtime(settings: ControllerSettings) -> KubernetesRuntime:
    """The Kubernetes runtime the settings describe; the init containers get the
    controller's artifact settings."""
    passed = {
        "ARTIFACT_MAX_BYTES": str(settings.artifact_max_bytes),
        "ARTIFACT_ALLOW_LINK_LOCAL": str(settings.artifact_allow_link_local).lower(),
        "PYTHON_MODELS": str(settings.python_models).lower(),
        "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "GCS_ENDPOINT_URL": settings.gcs_endpoint_url or "",
        "AZURE_ENDPOINT_URL": settings.azure_endpoint_url or "",
    }
    return KubernetesRuntime(
        KubeClient(KubeConfig.of(settings.kube_api_url)),
        PodSettings(
            namespace=settings.kube_namespace,
            triton_image=settings.kube_triton_image,
            fetcher_image=settings.kube_fetcher_image,
            gpu_node_selector=dict(settings.kube_gpu_node_selector),
            gpu_tolerations=tuple(settings.kube_gpu_tolerations),
            fetcher_env=tuple(
                (f"MATRIXINFER_CONTROLLER_{name}", value)
                for name, value in passed.items()
                if value
            ),
            artifact_secret=settings.kube_artifact_secret,
            replica_tls_secret=settings.kube_replica_tls_secret,
            stop_grace_s=settings.stop_grace_s,
        ),
    )


def triton_trace_args(settings: ControllerSettings) -> tuple[str, ...]:
    """tritonserver's OpenTelemetry trace mode, when a URL is set."""
    if not settings.triton_trace_url:
        return ()
    return (
        "--trace-config=mode=opentelemetry",
        f"--trace-config=rate={settings.triton_trace_rate}",
        "--trace-config=level=TIMESTAMPS",
        f"--trace-config=opentelemetry,url={settings.triton_trace_url}",
    )


def main() -> None:
    settings = ControllerSettings()
    run_service(
        settings,
        lambda: ControllerApp.start(settings),
        lambda app: (
            f"controller ready on {app.address} (registry {settings.registry_address})"
        ),
    )


if __name__ == "__main__":
    main()
