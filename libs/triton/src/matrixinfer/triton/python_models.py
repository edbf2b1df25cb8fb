"""Model code for Triton's Python backend, for frameworks whose own backend the
server lacks (the nvidia-pytriton server ships only the Python backend).

The generated ``model.py`` is executable code placed in the model repository, so it
is produced only from our template, never taken from an artifact.
"""

from __future__ import annotations

import importlib.resources

_MARKER = "_EXTRA_PATHS: list[str] = []"


def onnx_runtime_model(python_paths: list[str]) -> str:
    """``model.py`` that serves ``model.onnx`` beside it with ONNX Runtime (CPU)."""
    template = (
        importlib.resources.files("matrixinfer.triton")
        .joinpath("onnx_model.py.in")
        .read_text()
    )
    if _MARKER not in template:  # pragma: no cover - guards the template itself
        raise RuntimeError("onnx_model.py.in lost its path marker")
    return template.replace(_MARKER, f"_EXTRA_PATHS: list[str] = {python_paths!r}")
