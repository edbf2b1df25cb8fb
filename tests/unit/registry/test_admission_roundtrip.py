"""What `matrixinfer get -o yaml|json` prints (proto3 JSON: 64-bit integers as
strings, server-set metadata included) applies again unchanged."""

from __future__ import annotations

import json

import pytest
import yaml
from google.protobuf import json_format

from matrixinfer.core.errors import InvalidArgument
from matrixinfer.registry.domain.admission import admit
from matrixinfer.registry.domain.manifest import parse_manifest
from tests.conftest import ROOT

QUICKSTART = (ROOT / "examples/quickstart/iris.yaml").read_text()


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_printed_objects_apply_again(form: str) -> None:
    text = QUICKSTART.replace("${IRIS_MODEL}", "/models/iris/model.onnx")
    for doc in parse_manifest(text):
        obj = admit(doc)
        obj.metadata.generation = 3
        obj.metadata.resource_version = "12"
        obj.metadata.uid = "0b7c6d2e-6f1a-4f1e-9a57-3c1d2b0e9f10"
        printed = json_format.MessageToDict(obj)
        dumped = yaml.safe_dump(printed) if form == "yaml" else json.dumps(printed)
        (again,) = parse_manifest(dumped)
        assert json_format.MessageToDict(admit(again))["spec"] == printed["spec"]


def test_integer_strings_must_still_be_integers() -> None:
    doc = parse_manifest(
        "apiVersion: workload.matrixinfer.ai/v1alpha1\nkind: ModelInfer\n"
        "metadata: {name: a}\nspec: {modelRef: {name: m}, replicas: 'two'}\n"
    )[0]
    with pytest.raises(InvalidArgument) as info:
        admit(doc)
    assert "spec.replicas" in str(info.value.violations)
