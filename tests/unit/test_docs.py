"""The README's configuration reference lists every registry setting, so the docs
cannot silently fall behind the code."""

from __future__ import annotations

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
