"""Model code for Triton's Python backend: ONNX Runtime for frameworks whose own
backend the server lacks (the nvidia-pytriton server ships only the Python
backend), and the loader for a ``framework: python`` artifact's own ``model.py``.

The generated files are executable code placed in the model repository, so they are
produced only from our templates, never taken from an artifact.
"""

from __future__ import annotations

import importlib.resources

_MARKER = "_EXTRA_PATHS: list[str] = []"
#: The file Triton loads for an artifact's model (config.pbtxt names it); the
#: artifact's model.py sits beside it.
ARTIFACT_LOADER = "matrixinfer_model.py"


def _render(template_name: str, python_paths: list[str]) -> str:
    template = (
        importlib.resources.files("matrixinfer.triton")
        .joinpath(template_name)
        .read_text()
    )
    if _MARKER not in template:  # pragma: no cover - guards the templates themselves
        raise RuntimeError(f"{template_name} lost its path marker")
    return template.replace(_MARKER, f"_EXTRA_PATHS: list[str] = {python_paths!r}")


def onnx_runtime_model(python_paths: list[str]) -> str:
    """``model.py`` that serves ``model.onnx`` beside it with ONNX Runtime (CPU)."""
    return _render("onnx_model.py.in", python_paths)


def artifact_model_loader(python_paths: list[str]) -> str:
    """:data:`ARTIFACT_LOADER`: puts ``python_paths`` on the stub's path, then serves
    the ``model.py`` beside it."""
    return _render("artifact_model.py.in", python_paths)
