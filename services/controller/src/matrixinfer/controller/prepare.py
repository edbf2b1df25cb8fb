"""``python -m matrixinfer.controller.prepare``: builds one Triton model repository
from a serialized :class:`~matrixinfer.controller.domain.serving.RepositoryPlan`.

The init container of every Kubernetes replica runs it (the controller's own image)
to fill the pod's model repository (an emptyDir) before Triton starts. It calls the
same :func:`~matrixinfer.controller.domain.serving.prepare_repository` the
reconciler calls for local replicas: the artifact fetcher (digest check, safe
unpacking, size limits, SSRF guard) and ``config.pbtxt`` from the typed config.

Input, from the environment:

- ``MATRIXINFER_REPOSITORY_PLAN``: the plan's JSON (required);
- ``MATRIXINFER_REPOSITORY_DIR``: where the repository goes (default
  ``/models/repository``);
- ``MATRIXINFER_ARTIFACT_CACHE``: download and unpack space (default
  ``/artifacts``), outside the repository so Triton never sees it;
- ``MATRIXINFER_TRITON_BACKENDS``: the Triton image's backends, comma-separated;
- the controller's own ``MATRIXINFER_CONTROLLER_*`` artifact settings (limits,
  default store endpoints), and the stores' credentials (AWS_*, ...).

A failure is written to ``/dev/termination-log`` (Kubernetes shows it in the pod's
status, and the controller in the ModelInfer's Degraded condition) and exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import sys

from matrixinfer.controller.adapters.artifacts.fetcher import (
    ArtifactFetcher,
    ArtifactLimits,
)
from matrixinfer.controller.domain.serving import RepositoryPlan, prepare_repository
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core.errors import InvalidArgument, MatrixInferError

log = logging.getLogger(__name__)

ENV_PLAN = "MATRIXINFER_REPOSITORY_PLAN"
ENV_TARGET = "MATRIXINFER_REPOSITORY_DIR"
ENV_CACHE = "MATRIXINFER_ARTIFACT_CACHE"
ENV_BACKENDS = "MATRIXINFER_TRITON_BACKENDS"
TERMINATION_LOG = pathlib.Path("/dev/termination-log")


def artifact_fetcher(
    settings: ControllerSettings, cache_dir: pathlib.Path
) -> ArtifactFetcher:
    """The fetcher the settings describe (the controller's and the init
    container's alike)."""
    return ArtifactFetcher(
        cache_dir,
        ArtifactLimits(
            max_bytes=settings.artifact_max_bytes,
            allow_link_local=settings.artifact_allow_link_local,
        ),
        {
            scheme: url
            for scheme, url in (
                ("s3", settings.s3_endpoint_url),
                ("gs", settings.gcs_endpoint_url),
                ("az", settings.azure_endpoint_url),
            )
            if url
        },
    )


async def prepare_from_env(env: dict[str, str]) -> pathlib.Path:
    text = env.get(ENV_PLAN, "")
    if not text:
        raise InvalidArgument(f"{ENV_PLAN} is not set")
    plan = RepositoryPlan.from_json(text)
    target = pathlib.Path(env.get(ENV_TARGET, "/models/repository"))
    cache = pathlib.Path(env.get(ENV_CACHE, "/artifacts"))
    backends = [b for b in env.get(ENV_BACKENDS, "").split(",") if b]
    fetcher = artifact_fetcher(ControllerSettings(), cache)
    await prepare_repository(fetcher, plan, target, backends, python_paths=[])
    log.info("repository for %s written to %s", plan.model_name, target)
    return target


def main(
    env: dict[str, str] | None = None, termination_log: pathlib.Path = TERMINATION_LOG
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        asyncio.run(prepare_from_env(dict(os.environ) if env is None else env))
    except MatrixInferError as e:
        message = f"{type(e).__name__}: {e.message}"
        log.error("%s", message)
        try:
            termination_log.write_text(message[:4000])
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
