"""ServiceSettings: safe defaults, per-service env prefixes, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.settings import ServiceSettings


class ProbeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MATRIXINFER_PROBE_")

    service_name: str = "probe"


def test_defaults_are_safe_and_explicit() -> None:
    settings = ServiceSettings()

    assert settings.host == "127.0.0.1"
    assert settings.grpc_port == 0
    assert settings.port_file is None
    assert settings.metrics_port is None
    assert settings.otlp_endpoint is None
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert settings.max_metadata_bytes == 16 * 1024
    assert settings.max_concurrent_streams == 100
    assert settings.grace_period_s == 10.0
    assert settings.log_level == "INFO"
    assert settings.log_json is True


def test_each_service_reads_its_own_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MATRIXINFER_PROBE_GRPC_PORT", "5070")
    monkeypatch.setenv("MATRIXINFER_PROBE_PORT_FILE", str(tmp_path / "probe.port"))
    monkeypatch.setenv("MATRIXINFER_PROBE_LOG_LEVEL", "debug")
    monkeypatch.setenv("MATRIXINFER_OTHER_GRPC_PORT", "6000")

    settings = ProbeSettings()

    assert settings.service_name == "probe"
    assert settings.grpc_port == 5070
    assert settings.port_file == tmp_path / "probe.port"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    "field, value",
    [
        ("grpc_port", 70000),
        ("grpc_port", -1),
        ("max_message_bytes", 0),
        ("grace_period_s", -1.0),
        ("log_level", "LOUD"),
    ],
)
def test_nonsense_is_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        ProbeSettings.model_validate({field: value})


def test_every_field_documents_itself() -> None:
    undocumented = [
        name
        for name, info in ServiceSettings.model_fields.items()
        if not info.description
    ]

    assert undocumented == []
