"""The Kubernetes runtime: replicas as pods of a Deployment per ModelInfer template
(see :mod:`.runtime`), over a small API client (:mod:`.client`)."""

from matrixinfer.controller.adapters.kubernetes.client import (
    KubeClient,
    KubeConfig,
    RetryPolicy,
)
from matrixinfer.controller.adapters.kubernetes.objects import PodSettings
from matrixinfer.controller.adapters.kubernetes.runtime import KubernetesRuntime

__all__ = [
    "KubeClient",
    "KubeConfig",
    "KubernetesRuntime",
    "PodSettings",
    "RetryPolicy",
]
