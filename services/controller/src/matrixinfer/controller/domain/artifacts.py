"""A fetched model artifact, and the interface of what fetches one
(:class:`matrixinfer.controller.adapters.artifacts.fetcher.ArtifactFetcher`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Artifact:
    digest: str
    path: pathlib.Path

    def find(self, suffix: str) -> pathlib.Path | None:
        """The model file with this suffix (``.onnx``): ``model<suffix>`` if present,
        else the only such file."""
        preferred = self.path / f"model{suffix}"
        if preferred.is_file():
            return preferred
        found = sorted(p for p in self.path.rglob(f"*{suffix}") if p.is_file())
        return found[0] if len(found) == 1 else None


class ArtifactSource(Protocol):
    async def fetch(
        self, uri: str, sha256: str = "", endpoint_url: str = ""
    ) -> Artifact:
        """The artifact's content in the cache (downloaded and unpacked if needed)."""
        ...
