"""The README's configuration reference lists every setting, and its examples pass
admission, so the docs cannot silently fall behind the code."""

from __future__ import annotations

import re

from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core.settings import ServiceSettings
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.registry.domain.admission import admit
from matrixinfer.registry.domain.manifest import parse_manifest
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


def test_every_autoscaler_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    own = set(AutoscalerSettings.model_fields) - set(ServiceSettings.model_fields)
    missing = [
        f"MATRIXINFER_AUTOSCALER_{name.upper()}"
        for name in sorted(own | {"grpc_port"})
        if f"`MATRIXINFER_AUTOSCALER_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_the_five_kinds_example_passes_admission() -> None:
    """The README's one-of-each block is valid as shown (with the canary's
    iris-v2 ModelServer it refers to)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The five kinds", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    canary = (ROOT / "examples/walkthroughs/canary.yaml").read_text()
    canary = canary.replace("${IRIS_MODEL}", str(ROOT / "examples/iris/model.onnx"))
    documents = parse_manifest(block + "\n---\n" + canary)
    kinds = {type(admit(doc)).__name__ for doc in documents}
    assert kinds == {
        "Model",
        "ModelInfer",
        "ModelServer",
        "ModelRoute",
        "AutoscalingPolicy",
    }


def test_every_module_the_architecture_page_names_exists() -> None:
    """docs/architecture.md names modules as `<service>/<layer>/<file>`: each must
    be there, so the page cannot drift from the tree."""
    text = (ROOT / "docs/architecture.md").read_text()
    roots = {
        name: ROOT / "services" / name / "src/matrixinfer" / name
        for name in ("registry", "controller", "gateway", "autoscaler")
    }
    named = re.findall(r"`((?:registry|controller|gateway|autoscaler)/[\w/.]+)`", text)
    assert len(named) >= 10
    missing = []
    for path in named:
        service, _, rest = path.partition("/")
        if not (roots[service] / rest).exists():
            missing.append(path)
    assert missing == []
