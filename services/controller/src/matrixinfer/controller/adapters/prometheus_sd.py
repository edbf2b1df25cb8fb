"""Prometheus file-based service discovery of the Triton replicas.

The local runtime starts each replica on ephemeral ports, so no static scrape config
can name them. With ``prometheus_sd_file`` set, the controller keeps a file in
Prometheus' ``file_sd`` format (a JSON list of ``{"targets": [...], "labels": {...}}``
groups) listing every replica's Triton metrics endpoint, and rewrites it whenever a
replica starts, changes ports after a restart, or stops. Prometheus re-reads the file
when it changes; the write goes to a temporary file that is then renamed over the old
one, so Prometheus never reads half a file.

Labels on each target: ``namespace`` and ``model_infer`` (the owning ModelInfer),
``replica`` (the replica's name, as in status endpoints) and ``revision`` (the Model
revision it serves). Triton's own series already carry ``model`` and ``version``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from dataclasses import dataclass

from matrixinfer.controller.domain.runtime import OnChange, Phase, Runtime

log = logging.getLogger(__name__)

TargetGroup = dict[str, object]


def target_groups(runtime: Runtime) -> list[TargetGroup]:
    """One group per replica that has a metrics port, in a stable order."""
    groups: list[TargetGroup] = []
    for owner in sorted(runtime.owners()):
        namespace, _, name = owner.partition("/")
        for replica in sorted(runtime.replicas(owner), key=lambda r: r.name):
            if not replica.metrics_port or replica.phase is Phase.STOPPED:
                continue
            groups.append(
                {
                    "targets": [f"{replica.address}:{replica.metrics_port}"],
                    "labels": {
                        "namespace": namespace,
                        "model_infer": name,
                        "replica": replica.name,
                        "revision": str(replica.spec.revision),
                    },
                }
            )
    return groups


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over
    ``path``. The file is made world-readable: Prometheus usually runs as another
    user (in docker-compose, another container sharing the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w") as tmp:
            tmp.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise


@dataclass
class PrometheusSD:
    """Keeps ``path`` equal to the runtime's replicas; writes only on a change."""

    path: pathlib.Path
    runtime: Runtime
    _written: str | None = None

    def write(self) -> bool:
        """Rewrite the file if the replica set changed; True when it was written."""
        text = json.dumps(target_groups(self.runtime), indent=2, sort_keys=True) + "\n"
        if text == self._written:
            return False
        write_atomically(self.path, text)
        self._written = text
        return True

    def chain(self, callback: OnChange) -> OnChange:
        """A runtime change callback that calls ``callback`` and then refreshes the
        file. A failed write is logged, never raised into the runtime; the next
        change tries again."""

        def on_change(owner: str) -> None:
            callback(owner)
            try:
                self.write()
            except OSError:
                log.warning(
                    "cannot write Prometheus service discovery file %s",
                    self.path,
                    exc_info=True,
                )

        return on_change
