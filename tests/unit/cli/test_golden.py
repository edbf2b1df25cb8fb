"""`get` and `describe` output, pinned by golden files in golden/.

Regenerate after an intended change with
``MATRIXINFER_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/cli/test_golden.py`` and
review the diff.
"""

from __future__ import annotations

import os
import pathlib

import pytest
from click.testing import CliRunner

from matrixinfer.cli.client import App
from matrixinfer.cli.config import resolve
from matrixinfer.cli.main import cli
from tests.unit.cli.fixtures import NOW, FakeRegistry

GOLDEN = pathlib.Path(__file__).parent / "golden"
UPDATE = os.environ.get("MATRIXINFER_UPDATE_GOLDEN") == "1"
CONFIG = resolve({}, {"MATRIXINFER_CONFIG": "", "XDG_CONFIG_HOME": "/nonexistent"})


def run(*args: str) -> str:
    app = App(CONFIG, now=lambda: NOW, registry_api=FakeRegistry())
    result = CliRunner().invoke(cli, list(args), obj=app, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def check(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with MATRIXINFER_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from {path}"


CASES = {
    "get_models": ["get", "models"],
    "get_models_wide": ["get", "mo", "-o", "wide"],
    "get_modelinfers": ["get", "mi"],
    "get_modelinfers_wide": ["get", "modelinfers", "-o", "wide", "-A"],
    "get_modelinfer_yaml": ["get", "mi", "iris", "-o", "yaml"],
    "get_modelinfer_json": ["get", "ModelInfer", "iris", "-o", "json"],
    "get_modelroutes": ["get", "routes"],
    "get_modelroutes_wide": ["get", "mr", "-o", "wide"],
    "get_autoscalingpolicies": ["get", "asp"],
    "get_apikeys": ["get", "apikeys", "-o", "wide"],
    "get_models_json": ["get", "models", "-o", "json"],
    "get_models_yaml": ["get", "models", "-o", "yaml"],
    "describe_modelinfer": ["describe", "mi", "iris"],
    "describe_model": ["describe", "model", "iris", "--revisions", "2"],
    "describe_apikey": ["describe", "apikey", "ak-3f9a1c"],
    "describe_autoscalingpolicy": ["describe", "asp", "resnet"],
    "apikey_list": ["apikey", "list"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_golden(name: str) -> None:
    check(name, run(*CASES[name]))


def test_empty_list_says_so_on_stderr() -> None:
    app = App(CONFIG, now=lambda: NOW, registry_api=FakeRegistry())
    result = CliRunner().invoke(cli, ["get", "ms"], obj=app)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No ModelServer resources found." in result.stderr


def test_not_found_exits_1_with_the_servers_words() -> None:
    app = App(CONFIG, now=lambda: NOW, registry_api=FakeRegistry())
    result = CliRunner().invoke(cli, ["describe", "mi", "nope"], obj=app)
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr


def test_unknown_kind_is_usage_error() -> None:
    app = App(CONFIG, now=lambda: NOW, registry_api=FakeRegistry())
    result = CliRunner().invoke(cli, ["get", "pods"], obj=app)
    assert result.exit_code == 2
    assert "unknown kind 'pods'" in result.stderr and "mi" in result.stderr
