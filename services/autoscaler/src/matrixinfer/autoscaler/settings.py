"""Autoscaler settings (environment prefix MATRIXINFER_AUTOSCALER_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.settings import ServiceSettings


class AutoscalerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MATRIXINFER_AUTOSCALER_",
        use_attribute_docstrings=True,
        extra="ignore",
    )

    service_name: str = "autoscaler"
    """Name in logs, traces and health."""

    grpc_port: int = Field(default=50054, ge=0, le=65535)
    """gRPC port of the Autoscaler service (ReportLoad from gateways, Activate)."""

    registry_address: str = "127.0.0.1:50051"
    """host:port of the registry (policies and ModelInfers come from its Watch)."""

    controller_address: str = "127.0.0.1:50052"
    """host:port of the controller (GetReplicas, Scale)."""

    tick_s: float = Field(default=1.0, gt=0, le=60)
    """Seconds between decisions for every policy (Knative ticks every 2 s; 1 s keeps
    the reaction to a load step well inside the 6 s panic window)."""

    report_stale_s: float = Field(default=3.0, gt=0)
    """A gateway whose last load report is older than this is gone: when no gateway
    is fresh, gateway metrics are missing data (which never scales down)."""

    scrape_timeout_s: float = Field(default=0.5, gt=0)
    """Deadline of one scrape of a replica's Triton metrics endpoint."""

    prometheus_url: str | None = None
    """Optional Prometheus server (e.g. http://prometheus:9090): GpuUtilization is
    then read from its HTTP API (avg of nv_gpu_utilization over the replicas) when
    scraping the replicas gives none."""

    call_timeout_s: float = Field(default=2.0, gt=0)
    """Deadline of each call to the controller or registry."""

    auth_mode: Literal["auto", "on", "off"] = "auto"
    """Which callers the gRPC API takes (docs/security.md). on: only the gateways'
    certificates (ReportLoad, Activate) and the admin certificate; anonymous:
    UNAUTHENTICATED, any other service: PERMISSION_DENIED. off: anyone who reaches
    the port. auto (default): on when the tls_* files are set (as `matrixinfer up`
    does), off on plaintext."""

    def auth_enforced(self) -> bool:
        """Whether the gRPC API requires identities and scopes."""
        if self.auth_mode == "auto":
            return self.tls_files() is not None
        return self.auth_mode == "on"
