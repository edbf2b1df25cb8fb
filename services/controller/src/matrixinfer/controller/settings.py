"""Controller settings (environment prefix MATRIXINFER_CONTROLLER_)."""

from __future__ import annotations

import pathlib
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.pki import CertFiles
from matrixinfer.core.settings import ServiceSettings


class ControllerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MATRIXINFER_CONTROLLER_",
        use_attribute_docstrings=True,
        extra="ignore",
    )

    service_name: str = "controller"
    """Name in logs, traces and health."""

    grpc_port: int = Field(default=50052, ge=0, le=65535)
    """TCP port of the Controller service (Scale, GetReplicas)."""

    registry_address: str = "127.0.0.1:50051"
    """host:port of the registry."""

    state_dir: pathlib.Path = pathlib.Path(".matrixinfer/controller")
    """Model repositories, the artifact cache and replica logs live here."""

    gpus: list[int] = Field(default_factory=list)
    """GPU ids this controller may hand to replicas (CUDA_VISIBLE_DEVICES), e.g.
    [0,1]. Empty: replicas that need GPUs stay pending with a condition saying so."""

    workers: int = Field(default=4, ge=1)
    """ModelInfers reconciled at once (one worker per ModelInfer at a time)."""

    ready_timeout_s: float = Field(default=120.0, gt=0)
    """How long a replica may take from process start to ready (after warmup)."""

    drain_s: float = Field(default=2.0, ge=0)
    """Seconds a replica stays marked draining in status, so routers stop sending to it,
    before it is stopped."""

    stop_grace_s: float = Field(default=10.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when a replica stops."""

    artifact_max_bytes: int = Field(default=2 << 30, gt=0)
    """Largest artifact, downloaded or unpacked, in bytes."""

    artifact_allow_link_local: bool = False
    """Allow artifact sources and S3 endpoints on link-local or cloud metadata
    addresses (169.254.0.0/16, metadata.google.internal). Off: SSRF protection."""

    python_models: bool = False
    """Serve ``framework: python`` Models: Triton's Python backend runs the
    artifact's own ``model.py`` with the replica's rights. Off: such Models are
    refused (FailedPrecondition), since their source is code. Turn it on only where
    every Model's source is trusted."""

    s3_endpoint_url: str | None = None
    """Default endpoint for s3:// sources (MinIO, moto); a Model's endpointUrl wins."""

    gcs_endpoint_url: str | None = None
    """Default endpoint for gs:// sources (e.g. an emulator); credentials come from
    Application Default Credentials unless an endpoint is set (then anonymous)."""

    azure_endpoint_url: str | None = None
    """Default account URL for az://<container>/<path> sources; the account key comes
    from AZURE_STORAGE_CONNECTION_STRING when set."""

    triton_trace_url: str | None = None
    """OTLP/HTTP URL every replica's Triton exports its own spans to (OpenTelemetry
    trace mode, JSON encoding), e.g. http://otel-collector:4318/v1/traces. None:
    Triton does not trace. The services' own spans go to ``otlp_endpoint``."""

    triton_trace_rate: int = Field(default=1000, ge=1)
    """Triton traces one request in this many."""

    resync_s: float = Field(default=30.0, gt=0)
    """Every ModelInfer is reconciled at least this often, even without events."""

    prometheus_sd_file: pathlib.Path | None = None
    """Prometheus file_sd JSON file listing every replica's Triton metrics endpoint
    (labels namespace, model_infer, replica, revision), rewritten atomically whenever
    the replicas change. None writes none."""

    runtime: Literal["local", "kubernetes"] = "local"
    """Where replicas run: ``local`` (tritonserver processes on this machine) or
    ``kubernetes`` (a Deployment per ModelInfer template in ``kube_namespace``; see
    docs/kubernetes-runtime.md)."""

    kube_namespace: str = "matrixinfer-replicas"
    """Kubernetes namespace the replicas' Deployments and pods go to."""

    kube_triton_image: str = "nvcr.io/nvidia/tritonserver:25.10-py3"
    """Image of each replica's Triton container."""

    kube_fetcher_image: str = "matrixinfer/controller:latest"
    """Image of each replica's init container (the controller's own image): it runs
    ``python -m matrixinfer.controller.prepare`` to fetch the artifact and write the
    model repository."""

    kube_gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector (JSON object) for replicas that take GPUs, e.g.
    {"nvidia.com/gpu.present": "true"}."""

    kube_gpu_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations (JSON list of Kubernetes Toleration objects) for replicas that
    take GPUs, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists",
    "effect": "NoSchedule"}]."""

    kube_api_url: str = ""
    """Kubernetes API server URL, e.g. http://127.0.0.1:8001 (kubectl proxy). Empty:
    in-cluster configuration from the pod's service account."""

    kube_artifact_secret: str = ""
    """Name of a Secret in ``kube_namespace`` whose keys become the init container's
    environment (e.g. AWS_ACCESS_KEY_ID) for fetching artifacts. Empty: none."""

    replica_tls_cert_file: pathlib.Path | None = None
    """PEM certificate every local replica's Triton serves on its gRPC port (its
    identity: ``replica.matrixinfer.internal``). With replica_tls_key_file and
    replica_tls_ca_file set, Triton's gRPC port speaks only TLS and demands a
    client certificate signed by that CA (``--grpc-use-ssl-mutual``); the
    controller's own calls to it present the controller's certificate (tls_*
    files, needed then). Triton's HTTP and metrics ports stay plaintext. Read at
    each replica's start. All three unset: plaintext (local runtime)."""

    replica_tls_key_file: pathlib.Path | None = None
    """PEM private key of replica_tls_cert_file."""

    replica_tls_ca_file: pathlib.Path | None = None
    """PEM CA certificate(s) that sign the clients a replica's gRPC port accepts
    (the gateway's and the controller's certificates)."""

    kube_replica_tls_secret: str = ""
    """Name of a Secret in ``kube_namespace`` (cert-manager's format: ``tls.crt``,
    ``tls.key``, ``ca.crt``) each replica pod mounts read-only: its Triton then
    serves gRPC over mutual TLS as replica_tls_* does locally. Empty: plaintext
    (kubernetes runtime)."""

    auth_mode: Literal["auto", "on", "off"] = "auto"
    """Which callers the gRPC API takes (docs/security.md). on: only the
    autoscaler's certificate (Scale, GetReplicas) and admins (GetLogs: an API key
    with the admin scope, or the admin certificate); anonymous: UNAUTHENTICATED,
    any other service: PERMISSION_DENIED. off: anyone who reaches the port. auto
    (default): on when the tls_* files are set (as `matrixinfer up` does), off on
    plaintext."""

    @model_validator(mode="after")
    def _replica_tls_complete(self) -> ControllerSettings:
        if (
            self.runtime == "local"
            and self.replica_tls_files() is not None
            and self.tls_files() is None
        ):
            raise ValueError(
                "replica_tls_* needs tls_cert_file, tls_key_file and tls_ca_file: "
                "the controller presents its own certificate to the replicas"
            )
        return self

    def replica_tls_files(self) -> CertFiles | None:
        """The certificate, key and CA of the local replicas' gRPC port, or None."""
        return self.cert_files("replica_tls")

    def auth_enforced(self) -> bool:
        """Whether the gRPC API requires identities and scopes."""
        if self.auth_mode == "auto":
            return self.tls_files() is not None
        return self.auth_mode == "on"
