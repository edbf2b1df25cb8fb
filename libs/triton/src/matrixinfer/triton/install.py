"""Where the local Triton server lives, and what it needs to start.

Locally the ``tritonserver`` binary, its Python backend and the per-Python backend
stubs come from the ``nvidia-pytriton`` wheel; production images carry their own
Triton, found through ``MATRIXINFER_TRITONSERVER`` instead.

Two facts about the wheel shape this module (both seen on this project's machines):
the binaries find their CUDA runtime through an RPATH relative to the wheel
(``nvidia_pytriton.libs``), so a copied stub cannot load it; and the Python-backend
stub embeds the *system* Python of the same minor version, not this interpreter, so
models get this environment's packages by putting its site-packages on ``sys.path``
themselves (see :mod:`matrixinfer.triton.python_models`).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import sysconfig
from dataclasses import dataclass

from matrixinfer.core.errors import FailedPrecondition

ENV_BINARY = "MATRIXINFER_TRITONSERVER"
_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


@dataclass(frozen=True)
class TritonInstall:
    binary: pathlib.Path
    backends_dir: pathlib.Path
    #: The Python-backend stub built for this interpreter's version, when shipped.
    python_stub: pathlib.Path | None
    #: Shared libraries the wheel's binaries need on LD_LIBRARY_PATH.
    library_dirs: tuple[pathlib.Path, ...] = ()

    @property
    def backends(self) -> list[str]:
        """Backends this server has (DESIGN.md §5: frameworks map onto these)."""
        if not self.backends_dir.is_dir():
            return []
        return sorted(p.name for p in self.backends_dir.iterdir() if p.is_dir())

    def prepare_backends(self, target: pathlib.Path) -> pathlib.Path:
        """A backend directory for our servers: the shipped backends, with the
        Python backend completed by the stub for this Python (as symlinks, so the
        wheel's relative RPATHs still resolve). Idempotent."""
        target.mkdir(parents=True, exist_ok=True)
        for backend in self.backends:
            source = self.backends_dir / backend
            dest = target / backend
            if backend != "python":
                if not dest.exists():
                    dest.symlink_to(source, target_is_directory=True)
                continue
            dest.mkdir(exist_ok=True)
            links = {name: source / name for name in _PYTHON_BACKEND_FILES}
            if self.python_stub is not None:
                links["triton_python_backend_stub"] = self.python_stub
            for name, path in links.items():
                link = dest / name
                if link.is_symlink() and link.resolve() == path.resolve():
                    continue
                link.unlink(missing_ok=True)
                link.symlink_to(path)
        return target

    def environment(self) -> dict[str, str]:
        """Environment additions for starting this server."""
        if not self.library_dirs:
            return {}
        dirs = [str(d) for d in self.library_dirs]
        current = os.environ.get("LD_LIBRARY_PATH")
        return {
            "LD_LIBRARY_PATH": os.pathsep.join([*dirs, *([current] if current else [])])
        }


def find_tritonserver() -> TritonInstall:
    override = os.environ.get(ENV_BINARY)
    libs: tuple[pathlib.Path, ...] = ()
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
        package = pathlib.Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        binary = root / "bin" / "tritonserver"
        bundled = package.parent / "nvidia_pytriton.libs"
        libs = (bundled,) if bundled.is_dir() else ()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise FailedPrecondition(
            f"tritonserver not found or not executable at {binary}"
        )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    return TritonInstall(
        binary, root / "backends", stub if stub.is_file() else None, libs
    )


def python_paths() -> list[str]:
    """This environment's package folders, for Python-backend models."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
