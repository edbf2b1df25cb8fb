"""The Kubernetes objects of the Kubernetes runtime, as plain JSON-ready dicts, and
what a pod's status means as a :class:`Replica`.

Per ModelInfer: one owner ConfigMap (``<slug>-<key>``), which owns (ownerReferences)
one Deployment per template (``<slug>-<key6>-<template>``). Deleting the owner
deletes everything through the garbage collector; every object also carries the
``app.kubernetes.io/managed-by`` label and the ModelInfer's key as labels, so a
controller lists what is its own on start.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

from matrixinfer.controller.domain.runtime import Phase, Replica, ReplicaSpec

JSON = dict[str, Any]

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "matrixinfer-controller"
SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY}"
LABEL_INFER = "matrixinfer.ai/model-infer"  # sha256 of "<namespace>/<name>", 16 hex
LABEL_TEMPLATE = "matrixinfer.ai/template"
LABEL_REVISION = "matrixinfer.ai/revision"
LABEL_DEPLOYMENT = "matrixinfer.ai/deployment"
ANNOTATION_OWNER = "matrixinfer.ai/owner"  # "<namespace>/<name>" (not label-safe)
ANNOTATION_MODELS = "matrixinfer.ai/models"
ANNOTATION_GPUS = "matrixinfer.ai/gpus"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: The lowest pod-deletion-cost (int32): the ReplicaSet removes this pod first.
LOWEST_COST = str(-(2**31))
GPU_RESOURCE = "nvidia.com/gpu"

GRPC_PORT = 8001
HTTP_PORT = 8000
METRICS_PORT = 8002
MODELS_DIR = "/models"
REPOSITORY = f"{MODELS_DIR}/repository"
ARTIFACTS_DIR = "/artifacts"
#: Where a replica mounts its TLS Secret (cert-manager's file names).
TLS_DIR = "/etc/matrixinfer/tls"
#: What the init container may build for (the backends of NVIDIA's Triton images).
TRITON_IMAGE_BACKENDS = (
    "onnxruntime",
    "python",
    "pytorch",
    "tensorflow",
    "tensorrt",
    "openvino",
)
_STUCK = {
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


def infer_key(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def _slug(owner: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", owner.lower()).strip("-")
    return slug[:limit].rstrip("-") or "mi"


def owner_object_name(owner: str) -> str:
    return f"{_slug(owner, 40)}-{infer_key(owner)[:10]}"


def deployment_name(owner: str, template: str) -> str:
    """At most 48 characters: the pods' names (plus 17) stay within a hostname."""
    return f"{_slug(owner, 28)}-{infer_key(owner)[:6]}-{template[:12]}"


def placeholder_name(deployment: str, index: int) -> str:
    """A replica the Deployment is asked for whose pod is not there (yet)."""
    return f"{deployment}-pending-{index}"


def owner_labels(owner: str) -> dict[str, str]:
    return {MANAGED_BY_KEY: MANAGED_BY, LABEL_INFER: infer_key(owner)}


def owner_object(owner: str, namespace: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": owner_object_name(owner),
            "namespace": namespace,
            "labels": owner_labels(owner),
            "annotations": {ANNOTATION_OWNER: owner},
        },
        "data": {"owner": owner},
    }


def owner_reference(owner_object: JSON) -> JSON:
    meta = owner_object["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
    }


@dataclass(frozen=True)
class PodSettings:
    """What every replica's pod gets from the controller's settings."""

    namespace: str
    triton_image: str
    fetcher_image: str
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[JSON, ...] = ()
    #: The init container's environment beyond the plan (artifact limits, store
    #: endpoints: the controller's own MATRIXINFER_CONTROLLER_* values).
    fetcher_env: tuple[tuple[str, str], ...] = ()
    artifact_secret: str = ""
    #: A Secret (tls.crt, tls.key, ca.crt) the replicas mount: Triton's gRPC port
    #: then takes mutual TLS only. "": plaintext.
    replica_tls_secret: str = ""
    stop_grace_s: float = 10.0


@dataclass(frozen=True)
class Placement:
    """What the ModelInfer itself asks of its pods' placement and size."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[JSON, ...] = ()
    #: Kubernetes quantities (requests and limits), "" for none.
    cpu: str = ""
    memory: str = ""


def _env(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> list[JSON]:
    return [{"name": name, "value": value} for name, value in pairs]


#: Memory-backed /dev/shm of a replica (counted against its memory limit).
SHM_SIZE = "1Gi"
#: The user a replica's containers run as (triton-server in NVIDIA's image).
REPLICA_UID = 1000


def _locked_down() -> JSON:
    """A container that cannot gain privileges or write its image."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def deployment(
    spec: ReplicaSpec,
    replicas: int,
    settings: PodSettings,
    owner_ref: JSON,
    placement: Placement | None = None,
) -> JSON:
    """The Deployment running ``replicas`` pods of one template of one ModelInfer.

    ``placement``: the ModelInfer's own node selector and tolerations (added to the
    GPU ones from the settings) and cpu/memory."""
    placement = placement or Placement()
    name = deployment_name(spec.owner, spec.template)
    selector = {
        **owner_labels(spec.owner),
        LABEL_TEMPLATE: spec.template,
    }
    labels = {
        **selector,
        LABEL_REVISION: str(spec.revision),
        LABEL_DEPLOYMENT: name,
    }
    annotations = {
        ANNOTATION_OWNER: spec.owner,
        ANNOTATION_MODELS: ",".join(spec.models),
        ANNOTATION_GPUS: str(spec.gpus),
    }
    fetcher_env = [
        ("MATRIXINFER_REPOSITORY_PLAN", spec.plan),
        ("MATRIXINFER_REPOSITORY_DIR", REPOSITORY),
        ("MATRIXINFER_ARTIFACT_CACHE", ARTIFACTS_DIR),
        ("MATRIXINFER_TRITON_BACKENDS", ",".join(TRITON_IMAGE_BACKENDS)),
        *settings.fetcher_env,
    ]
    init: JSON = {
        "name": "prepare",
        "image": settings.fetcher_image,
        "command": ["python", "-m", "matrixinfer.controller.prepare"],
        "env": _env(fetcher_env),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR},
            {"name": "artifacts", "mountPath": ARTIFACTS_DIR},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # The controller's image runs as its own non-root user.
        "securityContext": _locked_down(),
    }
    if settings.artifact_secret:
        init["envFrom"] = [{"secretRef": {"name": settings.artifact_secret}}]
    args = [
        "tritonserver",
        f"--model-repository={REPOSITORY}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in spec.models),
        f"--grpc-port={GRPC_PORT}",
        f"--http-port={HTTP_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
    ]
    if settings.replica_tls_secret:
        args += [
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={TLS_DIR}/tls.crt",
            f"--grpc-server-key={TLS_DIR}/tls.key",
            f"--grpc-root-cert={TLS_DIR}/ca.crt",
        ]
    args += spec.args
    triton: JSON = {
        "name": "triton",
        "image": settings.triton_image,
        "args": args,
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Loading (and warming up) a large model may take minutes: liveness starts
        # counting only once the server has answered live once.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            # The Python backend's stubs exchange tensors with the server through
            # shared memory; a container's default /dev/shm (64 MiB) is too small.
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _locked_down(),
    }
    if settings.replica_tls_secret:
        triton["volumeMounts"].append(
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True}
        )
    if spec.env:
        triton["env"] = _env(spec.env)
    requests = {
        k: v for k, v in (("cpu", placement.cpu), ("memory", placement.memory)) if v
    }
    limits = {**requests, **({GPU_RESOURCE: str(spec.gpus)} if spec.gpus else {})}
    if limits:
        triton["resources"] = {"limits": limits}
        if requests:
            triton["resources"]["requests"] = requests
    pod_spec: JSON = {
        "initContainers": [init],
        "containers": [triton],
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "artifacts", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
            {"name": "tmp", "emptyDir": {}},
        ],
        "terminationGracePeriodSeconds": max(1, round(settings.stop_grace_s)),
        # Replicas never talk to the Kubernetes API.
        "automountServiceAccountToken": False,
        # NVIDIA's Triton image has the user triton-server (uid 1000); the
        # controller's image runs as a non-root user too. fsGroup lets both write
        # the shared volumes.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": REPLICA_UID,
            "runAsGroup": REPLICA_UID,
            "fsGroup": REPLICA_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "enableServiceLinks": False,
    }
    if settings.replica_tls_secret:
        # Readable by the pod's group (fsGroup) only, as the services mount theirs.
        pod_spec["volumes"].append(
            {
                "name": "tls",
                "secret": {
                    "secretName": settings.replica_tls_secret,
                    "defaultMode": 0o440,
                },
            }
        )
    selector_terms = {
        **(settings.gpu_node_selector if spec.gpus else {}),
        **placement.node_selector,
    }
    if selector_terms:
        pod_spec["nodeSelector"] = selector_terms
    all_tolerations = [
        *(settings.gpu_tolerations if spec.gpus else ()),
        *placement.tolerations,
    ]
    if all_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in all_tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_ref],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def spec_of_deployment(obj: JSON) -> ReplicaSpec | None:
    """The replica spec a Deployment of ours was made from (adoption on restart);
    None for what is not ours."""
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    owner = annotations.get(ANNOTATION_OWNER, "")
    template = labels.get(LABEL_TEMPLATE, "")
    if labels.get(MANAGED_BY_KEY) != MANAGED_BY or not owner or not template:
        return None
    models = tuple(m for m in annotations.get(ANNOTATION_MODELS, "").split(",") if m)
    return ReplicaSpec(
        owner=owner,
        revision=int(labels.get(LABEL_REVISION, "0") or 0),
        template=template,
        repository=pathlib.Path(REPOSITORY),
        models=models,
        gpus=int(annotations.get(ANNOTATION_GPUS, "0") or 0),
    )


def _container_trouble(statuses: list[JSON]) -> str:
    for status in statuses:
        state = status.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _STUCK:
            last = (status.get("lastState") or {}).get("terminated") or {}
            detail = last.get("message") or waiting.get("message") or ""
            return f"{status.get('name', '?')}: {waiting['reason']} {detail}".strip()
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            detail = terminated.get("message") or terminated.get("reason") or ""
            return (
                f"{status.get('name', '?')} exited with code "
                f"{terminated.get('exitCode')}: {detail}"
            ).strip()
    return ""


def is_live(pod: JSON) -> bool:
    """Counts towards its Deployment: not being deleted, not finished."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def is_ready(pod: JSON) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return bool(status.get("podIP")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def replica_of_pod(pod: JSON, spec: ReplicaSpec) -> Replica:
    """What a pod's status means: Ready (with its IP as the address), Pending
    (unschedulable), Failed (a container stuck or exiting), else Starting."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    init_statuses = status.get("initContainerStatuses") or []
    statuses = status.get("containerStatuses") or []
    replica = Replica(
        name=meta.get("name", ""),
        spec=spec,
        address=status.get("podIP", ""),
        grpc_port=GRPC_PORT,
        http_port=HTTP_PORT,
        metrics_port=METRICS_PORT,
        restarts=sum(s.get("restartCount", 0) for s in (*init_statuses, *statuses)),
    )
    scheduled = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"),
        None,
    )
    trouble = _container_trouble(init_statuses) or _container_trouble(statuses)
    if is_ready(pod):
        replica.phase = Phase.READY
    elif status.get("phase") == "Failed":
        replica.phase = Phase.FAILED
        replica.message = status.get("message") or status.get("reason") or "failed"
    elif trouble:
        replica.phase = Phase.FAILED
        replica.message = trouble
    elif scheduled is not None and scheduled.get("status") == "False":
        replica.phase = Phase.PENDING
        replica.message = (
            f"{scheduled.get('reason', 'Unschedulable')}: "
            f"{scheduled.get('message', '')}"
        ).strip()
    else:
        replica.phase = Phase.STARTING
    return replica
