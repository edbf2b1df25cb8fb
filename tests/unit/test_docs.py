"""The README's configuration reference lists every registry setting, so the docs
cannot silently fall behind the code."""

from __future__ import annotations

from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core.settings import ServiceSettings
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.registry.settings import RegistrySettings
from tests.conftest import ROOT


def test_every_registry_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"MATRIXINFER_REGISTRY_{name.upper()}"
        for name in RegistrySettings.model_fields
        if f"`MATRIXINFER_REGISTRY_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_every_controller_setting_is_documented() -> None:
    """The common settings are documented once (with the registry's prefix)."""
    readme = (ROOT / "README.md").read_text()
    own = set(ControllerSettings.model_fields) - set(ServiceSettings.model_fields)
    missing = [
        f"MATRIXINFER_CONTROLLER_{name.upper()}"
        for name in sorted(own | {"grpc_port"})
        if f"`MATRIXINFER_CONTROLLER_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_every_gateway_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    own = set(GatewaySettings.model_fields) - set(ServiceSettings.model_fields)
    missing = [
        f"MATRIXINFER_GATEWAY_{name.upper()}"
        for name in sorted(own | {"grpc_port", "max_message_bytes"})
        if f"`MATRIXINFER_GATEWAY_{name.upper()}`" not in readme
    ]
    assert missing == []
