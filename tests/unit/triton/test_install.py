"""`make setup` leaves a Triton server this machine can run."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from matrixinfer.core.errors import FailedPrecondition
from matrixinfer.triton.install import ENV_BINARY, find_tritonserver


def test_tritonserver_from_the_wheel_runs() -> None:
    install = find_tritonserver()
    assert "python" in install.backends
    assert install.python_stub is not None and install.python_stub.is_file()
    result = subprocess.run(
        [str(install.binary), "--help"], capture_output=True, timeout=60, check=False
    )
    # tritonserver --help exits 1 after printing its usage; the usage is the proof
    # that the binary and its shared libraries load on this machine.
    output = result.stdout + result.stderr
    assert b"Usage: tritonserver" in output
    assert b"--model-control-mode" in output


def test_a_wrong_override_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv(ENV_BINARY, str(tmp_path / "bin" / "tritonserver"))
    with pytest.raises(FailedPrecondition, match="not found or not executable"):
        find_tritonserver()
