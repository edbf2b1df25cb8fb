"""Writing a Triton model repository: ``<repo>/<model>/config.pbtxt`` and
``<repo>/<model>/<version>/<files>``, atomically per model so a server never sees a
half-written model."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from matrixinfer.core.errors import InvalidArgument
from matrixinfer.triton.config import ServingConfig, build_model_config, to_pbtxt


def _safe_relative(path: str) -> pathlib.PurePosixPath:
    relative = pathlib.PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise InvalidArgument.field(
            "files", f"{path!r} must be a relative path inside the model"
        )
    return relative


def write_model(
    repository: pathlib.Path,
    config: ServingConfig,
    version: int,
    files: dict[str, bytes | pathlib.Path],
) -> pathlib.Path:
    """Write (or replace) one model; ``files`` go into the version folder, copied
    from paths or written from bytes. Returns the model folder."""
    if version < 1:
        raise InvalidArgument.field("version", "Triton versions start at 1")
    repository.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{config.name}-", dir=repository))
    try:
        (staging / "config.pbtxt").write_text(to_pbtxt(build_model_config(config)))
        version_dir = staging / str(version)
        version_dir.mkdir()
        for name, content in files.items():
            target = version_dir / _safe_relative(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif content.is_dir():
                shutil.copytree(content, target)
            else:
                shutil.copy2(content, target)
        final = repository / config.name
        old = None
        if final.exists():
            old = repository / f".{config.name}-old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        staging.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
