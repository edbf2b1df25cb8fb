"""Where the local Triton server lives.

Locally the ``tritonserver`` binary, its Python backend and the per-Python backend
stubs come from the ``nvidia-pytriton`` wheel; production images carry their own
Triton, found through ``MATRIXINFER_TRITONSERVER`` instead.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from dataclasses import dataclass

from matrixinfer.core.errors import FailedPrecondition

ENV_BINARY = "MATRIXINFER_TRITONSERVER"


@dataclass(frozen=True)
class TritonInstall:
    binary: pathlib.Path
    backends_dir: pathlib.Path
    #: The Python-backend stub built for this interpreter's version, when shipped.
    python_stub: pathlib.Path | None

    @property
    def backends(self) -> list[str]:
        """Backends this server has (DESIGN.md §5: frameworks map onto these)."""
        if not self.backends_dir.is_dir():
            return []
        return sorted(p.name for p in self.backends_dir.iterdir() if p.is_dir())


def find_tritonserver() -> TritonInstall:
    override = os.environ.get(ENV_BINARY)
    if override:
        binary = pathlib.Path(override)
        root = binary.parent.parent
    else:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise FailedPrecondition(
                "no tritonserver: install nvidia-pytriton (make setup does) or set "
                f"{ENV_BINARY} to the binary"
            )
        root = (
            pathlib.Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        )
        binary = root / "bin" / "tritonserver"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise FailedPrecondition(
            f"tritonserver not found or not executable at {binary}"
        )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    return TritonInstall(binary, root / "backends", stub if stub.is_file() else None)
