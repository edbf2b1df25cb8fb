"""Gateway settings (environment prefix MATRIXINFER_GATEWAY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MATRIXINFER_GATEWAY_", use_attribute_docstrings=True, extra="ignore"
    )

    service_name: str = "gateway"
    """Name in logs, traces and health."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """KServe v2 gRPC port; 8001 is Triton's, so clients change only the host."""

    registry_address: str = "127.0.0.1:50051"
    """host:port of the registry (routing comes from its Watch)."""

    max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request or response, in bytes; tensors are big, so more than gRPC's
    4 MiB default, but bounded."""

    default_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline for a call that brings none."""

    max_timeout_s: float = Field(default=300.0, gt=0)
    """A client's deadline is capped at this."""
