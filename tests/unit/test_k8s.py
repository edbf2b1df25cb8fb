"""The Kubernetes manifests of deploy/k8s hold together, without a cluster.

- every YAML file parses; every kustomization's resources, patches, transformer
  configurations and their targets, image and replica entries refer to what exists;
- each target (the base and every overlay) is built twice: by a small structural
  kustomize here (resources, generators, strategic-merge patches, namespace, images
  with the configured extra image fields, replicas), and by ``kubectl kustomize`` or
  ``kustomize build`` when either binary is installed; both builds must be the same
  objects;
- with ``kubernetes-validate`` importable, every built object, and the replica
  Deployments the controller's kubernetes runtime would create from each target's
  settings (built by the controller's own code), match the Kubernetes OpenAPI
  schema (strict: unknown fields are errors), offline;
- each service runs in a Deployment of its own (the gateway with HAProxy beside
  it), each Deployment has one PodDisruptionBudget, and the controller's settings
  select the kubernetes runtime in its own namespace, with its own image for the
  replicas' init container and the Triton release its image is built on; only the
  gpu overlay gives replicas a GPU node selector and tolerations;
- MatrixInfer containers run images that deploy/docker builds (named as
  docker-compose.yml names them); every ``MATRIXINFER_*`` variable is a settings
  field of that container's service, and each service's settings load from the
  environment the container gets (image ENV, then the manifest's env with ConfigMap,
  Secret and Downward API references resolved); containerPorts are exactly the ports
  those settings bind, and probes, Services, NetworkPolicies and Prometheus
  annotations use them;
- the NetworkPolicies admit, on every port of every pod and replica pod, exactly
  the callers of docs/architecture.md's flows (FLOWS);
- Service, PodDisruptionBudget and NetworkPolicy selectors select pods; addresses
  point at a Service port or at a port of the same pod;
- no Secret value is written in the base, no generated Secret carries a password,
  database and Redis URLs come from Secrets; pods run as non-root, without
  privilege escalation or capabilities, on read-only root filesystems, with
  requests and limits, and only the controller mounts a service-account token;
- deploy/README.md and the README's "Production on Kubernetes" name what exists,
  and the README's overlay builds.

Nothing here talks to a cluster or the network: the manifests were never applied.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.controller.adapters.kubernetes import PodSettings
from matrixinfer.controller.adapters.kubernetes import objects as replica_objects
from matrixinfer.controller.domain.runtime import ReplicaSpec
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core import pki
from matrixinfer.core.settings import ServiceSettings
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.registry.settings import RegistrySettings
from matrixinfer.triton.install import ENV_BINARY
from tests.conftest import ROOT
from tests.kubernetes import KUBERNETES_VERSIONS

K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
TARGETS = ("base", "overlays/dev", "overlays/gpu")
#: Folders an overlay adds by choice (not a platform on their own).
OPT_IN = ("kube-api", "cert-manager")
CERT_MANAGER = "cert-manager.io/"
#: The namespace each target sets ("": the one `kubectl apply` is given).
NS = {"base": "", "overlays/dev": "matrixinfer-dev", "overlays/gpu": ""}
SETTINGS: dict[str, type[ServiceSettings]] = {
    "registry": RegistrySettings,
    "controller": ControllerSettings,
    "gateway": GatewaySettings,
    "autoscaler": AutoscalerSettings,
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
CLUSTER_SCOPED = {
    "APIService",
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
}
# Strategic-merge keys of the lists our patches touch (from the Kubernetes API).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
SECRET_PLACEHOLDER = "value-of-a-secret-created-outside"
# Names whose values are credentials or carry them: never a literal `value:`.
SECRET_NAME = re.compile(
    r"PASSWORD|SECRET|TOKEN|CREDENTIAL|_KEY$|DATABASE_URL|REDIS_URL"
)
#: Settings whose value is the *name* of a Secret (an object name, no content).
NAMES_A_SECRET = {
    "MATRIXINFER_CONTROLLER_KUBE_ARTIFACT_SECRET",
    "MATRIXINFER_CONTROLLER_KUBE_REPLICA_TLS_SECRET",
}
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

Doc = dict[str, Any]

# Pods that mount a service-account token: the controller's kubernetes runtime
# creates the replicas through the API server; nothing else talks to it.
TOKEN_HOLDERS = {"matrixinfer-controller"}
# What overlays/gpu gives GPU replicas: the label NVIDIA's GPU Feature Discovery
# puts on GPU nodes, and the usual taint of those nodes.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# Who may open a connection to which port (docs/architecture.md's flows). REPLICA is
# a replica pod as the controller's kubernetes runtime creates it; PROMETHEUS a pod
# labelled app.kubernetes.io/name=prometheus in another namespace.
REPLICA = "replica"
PROMETHEUS = "prometheus"
OUTSIDE = "outside the cluster"
EVERYONE = frozenset({"everyone, outside the cluster too"})
CONTROLLER, GATEWAY = "matrixinfer-controller", "matrixinfer-gateway"
AUTOSCALER, REGISTRY = "matrixinfer-autoscaler", "matrixinfer-registry"
FLOWS: dict[tuple[str, int], frozenset[str]] = {
    # Watch, UpdateStatus; the gateway's admin API (REST) calls the registry too.
    (REGISTRY, 50051): frozenset({CONTROLLER, GATEWAY, AUTOSCALER}),
    (REGISTRY, 9090): frozenset({PROMETHEUS}),
    # Its Kubernetes API, which answers whoever reaches it: only the cluster's API
    # server may (API aggregation), whose addresses an overlay adds (the README's
    # ipBlock rule).
    (REGISTRY, 50053): frozenset(),
    # Plaintext grpc.health.v1 for the kubelet's probes: no pod (probes come from
    # the node, which NetworkPolicies do not restrict).
    (REGISTRY, 50061): frozenset(),
    (CONTROLLER, 50062): frozenset(),
    (AUTOSCALER, 50064): frozenset(),
    # Scale, GetReplicas.
    (CONTROLLER, 50052): frozenset({AUTOSCALER}),
    (CONTROLLER, 9092): frozenset({PROMETHEUS}),
    # KServe v2 for every client (the gateway authenticates each call), /metrics.
    (GATEWAY, 8000): EVERYONE,
    (GATEWAY, 8001): EVERYONE,
    # The gateway's own HTTP: only HAProxy in the same pod, over loopback.
    (GATEWAY, 8080): frozenset(),
    # ReportLoad, Activate.
    (AUTOSCALER, 50054): frozenset({GATEWAY}),
    (AUTOSCALER, 9094): frozenset({PROMETHEUS}),
    # Inference through HAProxy; Triton's metrics for the autoscaler and Prometheus.
    (REPLICA, replica_objects.HTTP_PORT): frozenset({GATEWAY}),
    (REPLICA, replica_objects.GRPC_PORT): frozenset({GATEWAY}),
    (REPLICA, replica_objects.METRICS_PORT): frozenset({AUTOSCALER, PROMETHEUS}),
}
# overlays/dev's PostgreSQL.
DEV_FLOWS = {("postgres", 5432): frozenset({REGISTRY})}

# ----------------------------------------------------------------------- reading


def yaml_files() -> list[pathlib.Path]:
    found = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    assert found, "no YAML under deploy/k8s"
    return found


def load_docs(path: pathlib.Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return docs


def kustomization(folder: pathlib.Path) -> Doc:
    (doc,) = load_docs(folder / "kustomization.yaml")
    assert doc.get("kind") == "Kustomization", folder
    return doc


def key(doc: Doc) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], str(meta.get("namespace", "")), meta["name"]


# ---------------------------------------------------- a small structural kustomize


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge of ``patch`` into ``base`` (in place): maps merge, lists with
    a merge key in MERGE_KEYS merge by it, anything else is replaced."""
    for name, value in patch.items():
        current = base.get(name)
        if value is None:
            base.pop(name, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            merge(current, value)
        elif (
            isinstance(value, list)
            and isinstance(current, list)
            and name in MERGE_KEYS
            and all(isinstance(v, dict) and MERGE_KEYS[name] in v for v in value)
        ):
            merge_key = MERGE_KEYS[name]
            added = []
            for item in value:
                match = next(
                    (c for c in current if c.get(merge_key) == item[merge_key]), None
                )
                if match is None:
                    added.append(copy.deepcopy(item))
                else:
                    merge(match, item)
            current[:0] = added  # new items come first, as kustomize puts them
        else:
            base[name] = copy.deepcopy(value)
    return base


def matches_target(doc: Doc, target: Doc) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
        "group": group,
        "version": version,
        "namespace": doc["metadata"].get("namespace", ""),
    }
    unsupported = set(target) - set(wanted)
    assert not unsupported, f"patch target fields {unsupported}: extend the test"
    return all(wanted[field] == value for field, value in target.items())


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def pod_specs(doc: Doc) -> Iterator[Doc]:
    if doc["kind"] in WORKLOAD_KINDS:
        yield doc["spec"]["template"]["spec"]
    elif doc["kind"] == "Pod":
        yield doc["spec"]


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def generated(folder: pathlib.Path, k: Doc) -> list[Doc]:
    docs = []
    for kind, field in (
        ("Secret", "secretGenerator"),
        ("ConfigMap", "configMapGenerator"),
    ):
        for generator in k.get(field, []):
            assert set(generator) <= {"name", "literals", "type"}, (
                f"{folder}: only literals are supported here: extend the test"
            )
            assert k.get("generatorOptions", {}).get("disableNameSuffixHash"), (
                f"{folder}: generated names keep no hash suffix, so references "
                "stay as written (and this builder needs no name rewriting)"
            )
            pairs = dict(item.split("=", 1) for item in generator.get("literals", []))
            doc: Doc = {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"name": generator["name"]},
            }
            if kind == "Secret":
                doc["type"] = generator.get("type", "Opaque")
                doc["data"] = {
                    name: base64.b64encode(value.encode()).decode()
                    for name, value in pairs.items()
                }
            else:
                doc["data"] = pairs
            docs.append(doc)
    return docs


def transformer_configs(folder: pathlib.Path, k: Doc) -> list[pathlib.Path]:
    return [folder / entry for entry in k.get("configurations", [])]


def image_field_specs(folder: pathlib.Path, k: Doc) -> list[Doc]:
    """The extra places kustomize's ``images:`` rewrites (``configurations``
    files: only ``images`` field specs are supported here)."""
    specs: list[Doc] = []
    for path in transformer_configs(folder, k):
        (config,) = load_docs(path)
        assert set(config) == {"images"}, f"{path}: extend the test"
        for spec in config["images"]:
            assert set(spec) <= {"path", "kind"}, f"{path}: {spec}"
            specs.append(spec)
    return specs


def fields_at(node: Any, parts: list[str]) -> Iterator[tuple[Doc, str]]:
    """(mapping, key) of every string at a kustomize field-spec path (lists are
    walked through, as kustomize does)."""
    if isinstance(node, list):
        for item in node:
            yield from fields_at(item, parts)
    elif isinstance(node, dict) and parts and parts[0] in node:
        if len(parts) == 1:
            if isinstance(node[parts[0]], str):
                yield node, parts[0]
        else:
            yield from fields_at(node[parts[0]], parts[1:])


def image_fields(docs: list[Doc], specs: list[Doc]) -> Iterator[tuple[Doc, str]]:
    """Every field kustomize's ``images:`` may rewrite: container images, and the
    configured field specs."""
    for doc in docs:
        for spec in pod_specs(doc):
            for container in all_containers(spec):
                yield container, "image"
        for field_spec in specs:
            if field_spec.get("kind", doc["kind"]) == doc["kind"]:
                yield from fields_at(doc, field_spec["path"].split("/"))


def set_namespace(doc: Doc, namespace: str) -> None:
    """kustomize's ``namespace:``: every namespaced object moves (a kube-system one
    too), and so do the references to this namespace it knows of: an APIService's
    Service and the ServiceAccount subjects of role bindings that say
    ``default``."""
    if doc["kind"] not in CLUSTER_SCOPED:
        doc["metadata"]["namespace"] = namespace
    if doc["kind"] == "APIService":
        doc["spec"]["service"]["namespace"] = namespace
    for subject in doc.get("subjects", []):
        if subject["kind"] == "ServiceAccount" and subject.get(
            "namespace", "default"
        ) in ("", "default"):
            subject["namespace"] = namespace


def structural_build(folder: pathlib.Path) -> list[Doc]:
    docs, _ = _structural_build(folder)
    return docs


def _structural_build(folder: pathlib.Path) -> tuple[list[Doc], list[Doc]]:
    """(objects, image field specs): a base's transformer configurations apply in
    the overlays built on it too, as kustomize does."""
    k = kustomization(folder)
    known = {
        "apiVersion",
        "kind",
        "resources",
        "patches",
        "images",
        "replicas",
        "namespace",
        "secretGenerator",
        "configMapGenerator",
        "generatorOptions",
        "configurations",
    }
    assert set(k) <= known, f"{folder}: {set(k) - known} not supported here"
    docs: list[Doc] = []
    specs = image_field_specs(folder, k)
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            base_docs, base_specs = _structural_build(path)
            docs += base_docs
            specs += base_specs
        else:
            docs += load_docs(path)
    docs += generated(folder, k)
    for patch in k.get("patches", []):
        assert set(patch) == {"path", "target"}, f"{folder}: {patch}"
        (body,) = load_docs(folder / patch["path"])
        targets = [d for d in docs if matches_target(d, patch["target"])]
        assert targets, f"{folder}: patch {patch['path']} matches nothing"
        for doc in targets:
            merge(doc, body)
    for entry in k.get("replicas", []):
        found = [
            d
            for d in docs
            if d["kind"] in WORKLOAD_KINDS and d["metadata"]["name"] == entry["name"]
        ]
        assert found, f"{folder}: replicas for unknown {entry['name']}"
        for doc in found:
            doc["spec"]["replicas"] = entry["count"]
    for entry in k.get("images", []):
        used = False
        for holder, field in image_fields(docs, specs):
            name, tag, digest = split_image(holder[field])
            if name != entry["name"]:
                continue
            used = True
            name = entry.get("newName", name)
            tag = entry.get("newTag", tag)
            digest = entry.get("digest", digest)
            image = name + (f":{tag}" if tag else "")
            holder[field] = image + (f"@{digest}" if digest else "")
        assert used, f"{folder}: image {entry['name']} is used nowhere"
    if "namespace" in k:
        for doc in docs:
            set_namespace(doc, k["namespace"])
    keys = [key(d) for d in docs]
    assert len(keys) == len(set(keys)), f"{folder}: duplicate objects"
    return docs, specs


@functools.cache
def _build(target: str) -> str:
    return json.dumps(structural_build(K8S / target))


def build(target: str) -> list[Doc]:
    """The target's objects (a fresh copy each time)."""
    docs: list[Doc] = json.loads(_build(target))
    return docs


def kustomize_command(folder: pathlib.Path) -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(folder)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(folder)]
    return None


# ------------------------------------------------------------------ build helpers


def find(docs: list[Doc], kind: str, name: str, namespace: str = "") -> Doc | None:
    return next((d for d in docs if key(d) == (kind, namespace, name)), None)


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def namespace_of(doc: Doc) -> str:
    return str(doc["metadata"].get("namespace", ""))


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only) or a Service's plain selector."""
    assert "matchExpressions" not in selector, "extend the test for matchExpressions"
    wanted = selector.get("matchLabels", selector)
    return all(labels.get(k) == v for k, v in wanted.items())


def selected(docs: list[Doc], namespace: str, selector: Doc) -> list[Doc]:
    return [
        w
        for w in workloads(docs)
        if namespace_of(w) == namespace and selects(selector, pod_labels(w))
    ]


def service_of(container: Doc) -> str | None:
    """The MatrixInfer service a container runs, from its image
    (``[registry/]matrixinfer/<service>[:tag]``)."""
    name, _, _ = split_image(container["image"])
    parts = name.split("/")
    if len(parts) >= 2 and parts[-2] == "matrixinfer" and parts[-1] in SETTINGS:
        return parts[-1]
    return None


def matrixinfer_containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, str]]:
    """(workload, container, service) of every MatrixInfer container."""
    for workload in workloads(docs):
        for container in all_containers(workload["spec"]["template"]["spec"]):
            service = service_of(container)
            if service is not None:
                yield workload, container, service


def prefix_of(service: str) -> str:
    prefix = SETTINGS[service].model_config.get("env_prefix")
    assert isinstance(prefix, str)
    return prefix


def container_ports(container: Doc) -> dict[str, int]:
    """containerPort by name (unnamed ones under their number)."""
    return {
        str(p.get("name", p["containerPort"])): int(p["containerPort"])
        for p in container.get("ports", [])
    }


def resolve_port(port: int | str, containers: list[Doc]) -> int | None:
    """A number, or a port name of one of ``containers``."""
    for container in containers:
        ports = container_ports(container)
        if isinstance(port, int):
            if port in ports.values():
                return port
        elif port in ports:
            return ports[port]
    return None


def dockerfile_env(service: str) -> dict[str, str]:
    """ENV of the service's image (``ENV k=v ...`` with continuation lines)."""
    text = (DOCKER / f"{service}.Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "ENV":
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def secret_value(docs: list[Doc], namespace: str, name: str, item: str) -> str | None:
    secret = find(docs, "Secret", name, namespace)
    if secret is None:
        return None
    if item in secret.get("stringData", {}):
        return str(secret["stringData"][item])
    encoded = secret.get("data", {}).get(item)
    return None if encoded is None else base64.b64decode(encoded).decode()


def container_env(docs: list[Doc], namespace: str, container: Doc) -> dict[str, str]:
    """What the container's process sees: image ENV, then the manifest's env with
    ConfigMap and Secret references and the pod's namespace (Downward API)
    resolved. A required Secret that the build does not create (the base expects it
    to exist) gets a placeholder; a build without a namespace runs in the one
    `kubectl apply` is given, ``default`` here."""
    service = service_of(container)
    env = dockerfile_env(service) if service else {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"] == {"fieldPath": "metadata.namespace"}, name
            env[name] = namespace or "default"
            continue
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            config = find(docs, "ConfigMap", ref["name"], namespace)
            value = None if config is None else config.get("data", {}).get(ref["key"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = secret_value(docs, namespace, ref["name"], ref["key"])
            if value is None and not ref.get("optional", False):
                value = SECRET_PLACEHOLDER
        else:
            raise AssertionError(f"{name}: unsupported valueFrom {source}")
        if value is None:
            assert ref.get("optional", False), f"{name}: {ref} does not exist"
            continue
        env[name] = str(value)
    return env


def load_settings(
    service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("MATRIXINFER_"):
                patch.delenv(name)
        for name, value in env.items():
            if name.startswith(prefix_of(service)):
                patch.setenv(name, value)
        return SETTINGS[service]()


def bound_ports(service: str, settings: ServiceSettings) -> dict[str, int]:
    """What the service listens on, by role. The gateway process binds only its slow
    path (HAProxy, a container of its own, binds the public gRPC and HTTP ports); the
    registry also serves its Kubernetes API."""
    if isinstance(settings, GatewaySettings):
        return {"http": settings.slow_http_port}
    ports = {"grpc": settings.grpc_port}
    if isinstance(settings, RegistrySettings):
        ports["kube-api"] = settings.kube_port
    if settings.metrics_port is not None:
        ports["metrics"] = settings.metrics_port
    if settings.health_port is not None:
        ports["health"] = settings.health_port
    return ports


def metrics_port(service: str, settings: ServiceSettings) -> int:
    """Where Prometheus scrapes the service: the gateway's /metrics is on the public
    HTTP port (HAProxy hands it to the gateway); the others on metrics_port."""
    if isinstance(settings, GatewaySettings):
        return settings.http_port
    assert settings.metrics_port is not None, f"{service}: no metrics port"
    return settings.metrics_port


def services_ports(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Doc, Doc, str, ServiceSettings]]:
    for workload, container, service in matrixinfer_containers(docs):
        env = container_env(docs, namespace_of(workload), container)
        yield workload, container, service, load_settings(service, env, monkeypatch)


# ------------------------------------------------------------------------- files


def kustomize_configs() -> set[pathlib.Path]:
    """Transformer configuration files (``configurations``): not objects."""
    return {
        path.resolve()
        for folder in kustomization_folders()
        for path in transformer_configs(folder, kustomization(folder))
    }


def test_every_yaml_file_parses_into_kubernetes_objects() -> None:
    configs = kustomize_configs()
    for path in yaml_files():
        if path.resolve() in configs:
            continue
        docs = load_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), path


def kustomization_folders() -> list[pathlib.Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def test_every_target_is_a_kustomization() -> None:
    found = {str(p.relative_to(K8S)) for p in kustomization_folders()}
    assert found == {*TARGETS, *OPT_IN}


@pytest.mark.parametrize("target", TARGETS + OPT_IN)
def test_kustomization_refers_to_what_exists(target: str) -> None:
    folder = K8S / target
    k = kustomization(folder)
    for entry in k.get("resources", []):
        path = folder / entry
        assert path.exists(), f"{target}: resource {entry} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{target}: {entry}"
    for patch in k.get("patches", []):
        assert (folder / patch["path"]).is_file(), f"{target}: {patch['path']}"
    for path in transformer_configs(folder, k):
        assert path.is_file(), f"{target}: configuration {path.name}"
    # Every YAML file beside it is used (a forgotten file is never applied).
    used = {(folder / e).resolve() for e in k.get("resources", [])}
    used |= {(folder / p["path"]).resolve() for p in k.get("patches", [])}
    used |= {p.resolve() for p in transformer_configs(folder, k)}
    for path in folder.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in used, f"{target}: {path.name} is not listed"
    # Building checks the rest: patch targets, image and replica entries match.
    assert build(target)


def kustomize_build(folder: pathlib.Path) -> list[Doc] | None:
    """The objects kustomize builds (sorted), or None without a kustomize."""
    command = kustomize_command(folder)
    if command is None:
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=key)
    for doc in theirs:  # kustomize wraps long base64 values
        if doc["kind"] == "Secret":
            data = doc.get("data", {})
            doc["data"] = {k: re.sub(r"\s", "", v) for k, v in data.items()}
    return theirs


@pytest.mark.parametrize("target", TARGETS + OPT_IN)
def test_kustomize_builds_the_same_objects(target: str) -> None:
    theirs = kustomize_build(K8S / target)
    if theirs is None:
        pytest.skip("neither kustomize nor kubectl is installed: structural build only")
    ours = sorted(build(target), key=key)
    assert [key(d) for d in theirs] == [key(d) for d in ours]
    for their, our in zip(theirs, ours, strict=True):
        assert their == our, key(our)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS + OPT_IN)
def test_objects_match_the_kubernetes_schema(target: str, version: str) -> None:
    validator = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (offline OpenAPI schemas) is not installed",
    )
    errors = []
    for doc in build(target):
        if doc["apiVersion"].startswith(CERT_MANAGER):
            continue  # not Kubernetes' own: test_cert_manager_issues_each_identity
        try:
            validator.validate(doc, version, strict=True)
        except validator.ValidationError as error:
            path = "/".join(map(str, error.absolute_path))
            errors.append(f"{key(doc)} {path}: {error.message}")
    assert errors == []


# ------------------------------------------------------------------------ images


def compose_images() -> dict[str, str | None]:
    """Image (without tag) -> the Dockerfile stem docker-compose.yml builds it from
    (None for images it pulls)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images: dict[str, str | None] = {}
    for service in compose["services"].values():
        build_ = service.get("build")
        stem = None
        if isinstance(build_, dict):
            stem = pathlib.PurePosixPath(build_["dockerfile"]).name
            stem = stem.removesuffix(".Dockerfile")
        if "image" in service:
            images[service["image"]] = stem
    return images


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_the_ones_deploy_docker_builds(target: str) -> None:
    built = {
        split_image(image)[0]: stem
        for image, stem in compose_images().items()
        if stem is not None
    }
    pulled = {image for image, stem in compose_images().items() if stem is None}
    dockerfiles = {
        p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")
    }
    seen = set()
    for workload in workloads(build(target)):
        for container in all_containers(workload["spec"]["template"]["spec"]):
            image = container["image"]
            service = service_of(container)
            if service is None:
                # Third-party images (HAProxy, the data plane) are the very ones
                # docker-compose.yml runs.
                assert image in pulled, f"{image}: not the one docker-compose.yml uses"
                continue
            name, _, _ = split_image(image)
            assert service in dockerfiles, image
            # Named as docker-compose.yml names the image it builds from
            # deploy/docker/<service>.Dockerfile (matrixinfer/<service>).
            assert built.get(f"matrixinfer/{service}") == service
            assert name.endswith(f"matrixinfer/{service}"), image
            seen.add(service)
    assert seen == set(SETTINGS), f"{target}: services without a container"


def test_an_overlay_s_images_retarget_the_replicas_too(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/README.md's `images:` example: every MatrixInfer container and the
    images the controller gives replicas (its own for the init container, Triton's)
    follow an overlay's `images:`."""
    mirror = "registry.example.com"
    entries = [
        {"name": f"matrixinfer/{s}", "newName": f"{mirror}/matrixinfer/{s}"}
        for s in SETTINGS
    ]
    entries = [{**e, "newTag": "0.1.0"} for e in entries]
    triton = {"name": "nvcr.io/nvidia/tritonserver", "newTag": "25.10-py3"}
    triton["newName"] = f"{mirror}/nvidia/tritonserver"
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", tmp_path)],
        "images": [*entries, triton],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    for docs in builds_of(tmp_path):
        for _, container, service in matrixinfer_containers(docs):
            assert container["image"] == f"{mirror}/matrixinfer/{service}:0.1.0"
        _, container, settings = controller_of(docs, monkeypatch)
        assert settings.kube_fetcher_image == container["image"]
        assert settings.kube_triton_image == f"{mirror}/nvidia/tritonserver:25.10-py3"


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("target", TARGETS)
def test_every_matrixinfer_variable_is_a_settings_field(target: str) -> None:
    unknown = []
    for workload, container, service in matrixinfer_containers(build(target)):
        for item in container.get("env", []):
            name = item["name"]
            if not name.startswith("MATRIXINFER_") or name == ENV_BINARY:
                continue
            where = f"{workload['metadata']['name']}/{container['name']}: {name}"
            if not name.startswith(prefix_of(service)):
                unknown.append(f"{where} (not {prefix_of(service)}*: ignored)")
            elif name.removeprefix(prefix_of(service)).lower() not in (
                SETTINGS[service].model_fields
            ):
                unknown.append(where)
    assert unknown == []


@pytest.mark.parametrize("target", TARGETS)
def test_settings_load_and_ports_are_the_ones_bound(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    for _, container, service, settings in services_ports(docs, monkeypatch):
        assert settings.host == "0.0.0.0", service
        ports = sorted(container_ports(container).values())
        assert ports == sorted(bound_ports(service, settings).values()), service
        names = [str(p.get("name", "")) for p in container.get("ports", [])]
        assert all(0 < len(n) <= 15 for n in names), f"{service}: port names"


@pytest.mark.parametrize("target", TARGETS)
def test_pod_port_names_and_numbers_are_unique(target: str) -> None:
    for workload in workloads(build(target)):
        ports = [
            p
            for c in all_containers(workload["spec"]["template"]["spec"])
            for p in c.get("ports", [])
        ]
        names = [p["name"] for p in ports if "name" in p]
        numbers = [p["containerPort"] for p in ports]
        assert len(names) == len(set(names)), workload["metadata"]["name"]
        assert len(numbers) == len(set(numbers)), workload["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_requires_authentication(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateways = [
        s
        for _, _, _, s in services_ports(build(target), monkeypatch)
        if isinstance(s, GatewaySettings)
    ]
    assert gateways
    assert all(g.auth_mode == "required" for g in gateways)


@pytest.mark.parametrize("target", TARGETS)
def test_each_service_runs_in_a_deployment_of_its_own(target: str) -> None:
    docs = build(target)
    hosts: dict[str, set[str]] = {}
    for workload, _, service in matrixinfer_containers(docs):
        assert workload["kind"] == "Deployment", key(workload)
        hosts.setdefault(service, set()).add(workload["metadata"]["name"])
    assert hosts == {s: {f"matrixinfer-{s}"} for s in SETTINGS}
    # HAProxy, the gateway's data plane, is the one container beside a service.
    for service in SETTINGS:
        deployment = find(docs, "Deployment", f"matrixinfer-{service}", NS[target])
        assert deployment is not None, service
        containers = deployment["spec"]["template"]["spec"]["containers"]
        names = [c["name"] for c in containers]
        assert names == (["gateway", "haproxy"] if service == "gateway" else [service])


@pytest.mark.parametrize("target", TARGETS)
def test_controller_runs_replicas_as_pods_in_its_own_namespace(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, container, settings = controller_of(build(target), monkeypatch)
    assert settings.runtime == "kubernetes"
    # Replicas land in the controller's namespace, where the matrixinfer-replica
    # NetworkPolicy is (the Downward API gives the namespace it runs in).
    assert settings.kube_namespace == (namespace_of(controller) or "default")
    # The in-cluster API server, with the pod's own token.
    assert settings.kube_api_url == ""
    # The init container runs the controller's own image (as the overlay names
    # it), Triton the release controller.Dockerfile is built on.
    assert settings.kube_fetcher_image == container["image"]
    assert settings.kube_triton_image == controller_base_image()
    assert settings.gpus == [], "no local GPUs: replicas get theirs from Kubernetes"


def controller_base_image() -> str:
    """The image deploy/docker/controller.Dockerfile's final stage is built FROM,
    with its ARG defaults."""
    text = (DOCKER / "controller.Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    image = re.findall(r"^FROM (\S+)", text, re.MULTILINE)[-1]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def controller_of(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> tuple[Doc, Doc, ControllerSettings]:
    (found,) = [
        (w, c, s)
        for w, c, _, s in services_ports(docs, monkeypatch)
        if isinstance(s, ControllerSettings)
    ]
    return found


def replica_deployment(settings: ControllerSettings, gpus: int) -> Doc:
    """A replica's Deployment as the controller's kubernetes runtime writes it from
    these settings (one model, ``gpus`` GPUs)."""
    spec = ReplicaSpec(
        owner=f"{settings.kube_namespace}/iris",
        revision=1,
        template="0123456789ab",
        repository=pathlib.Path("/models/repository"),
        models=("iris",),
        gpus=gpus,
    )
    pods = PodSettings(
        namespace=settings.kube_namespace,
        triton_image=settings.kube_triton_image,
        fetcher_image=settings.kube_fetcher_image,
        gpu_node_selector=dict(settings.kube_gpu_node_selector),
        gpu_tolerations=tuple(settings.kube_gpu_tolerations),
        replica_tls_secret=settings.kube_replica_tls_secret,
    )
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "iris", "uid": "1"}
    return replica_objects.deployment(spec, 1, pods, {**owner, "controller": True})


@pytest.mark.parametrize("target", TARGETS)
def test_gpu_nodes_are_for_replicas_only(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    _, _, settings = controller_of(docs, monkeypatch)
    gpu = target == "overlays/gpu"
    # The gpu overlay places GPU replicas on GPU nodes, tolerating their taint...
    assert settings.kube_gpu_node_selector == (GPU_NODE_SELECTOR if gpu else {})
    assert settings.kube_gpu_tolerations == ([GPU_TOLERATION] if gpu else [])
    pod = replica_deployment(settings, gpus=1)["spec"]["template"]["spec"]
    assert pod.get("nodeSelector", {}) == settings.kube_gpu_node_selector
    assert pod.get("tolerations", []) == settings.kube_gpu_tolerations
    (triton,) = pod["containers"]
    assert triton["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # ... and a CPU-only replica anywhere.
    cpu_pod = replica_deployment(settings, gpus=0)["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_pod and "tolerations" not in cpu_pod
    # The platform's own pods ask for no GPU and stay off tainted GPU nodes.
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        assert "tolerations" not in spec, key(workload)
        assert "nodeSelector" not in spec, key(workload)
        for container in all_containers(spec):
            for field in ("requests", "limits"):
                wanted = container["resources"].get(field, {})
                assert "nvidia.com/gpu" not in wanted, key(workload)


@pytest.mark.parametrize("target", TARGETS)
def test_replicas_take_grpc_over_mtls_from_the_gateway(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica pods mount the Secret cert-manager issues for
    replica.matrixinfer.internal and Triton's gRPC port demands a client
    certificate; the gateway, with its own, speaks mTLS to them."""
    docs = build(target)
    _, _, settings = controller_of(docs, monkeypatch)
    assert settings.kube_replica_tls_secret == f"matrixinfer-{pki.REPLICA}-tls"
    pod = replica_deployment(settings, gpus=0)["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert "--grpc-use-ssl-mutual=true" in triton["args"]
    (gateway,) = [
        s
        for _, _, _, s in services_ports(docs, monkeypatch)
        if isinstance(s, GatewaySettings)
    ]
    assert gateway.replica_tls_files() == gateway.tls_files() is not None


def test_replica_pods_are_found_by_label_and_metrics_port_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What deploy/README.md tells a Prometheus job to select: replica pods carry
    no prometheus.io annotations, the controller's managed-by label and a port
    named ``metrics``."""
    _, _, settings = controller_of(build("base"), monkeypatch)
    pod = replica_deployment(settings, gpus=0)["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "matrixinfer-controller"
    notes = pod["metadata"].get("annotations", {})
    assert [n for n in notes if n.startswith("prometheus.io/")] == []
    (triton,) = pod["spec"]["containers"]
    assert container_ports(triton)["metrics"] == replica_objects.METRICS_PORT


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_replica_deployments_match_the_kubernetes_schema(
    target: str, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the controller creates from each target's settings (with the GPU node
    selector and tolerations for a GPU replica) is a valid object."""
    validator = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (offline OpenAPI schemas) is not installed",
    )
    _, _, settings = controller_of(build(target), monkeypatch)
    for gpus in (0, 1):
        validator.validate(replica_deployment(settings, gpus), version, strict=True)


# ------------------------------------------------------------ probes and services


def probes(container: Doc) -> Iterator[tuple[str, Doc]]:
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name in container:
            yield name, container[name]


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_the_container_s_own_ports(target: str) -> None:
    for workload in workloads(build(target)):
        for container in all_containers(workload["spec"]["template"]["spec"]):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where
            for name, probe in probes(container):
                handler = next(
                    h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in probe
                )
                if handler == "exec":
                    continue
                port = probe[handler]["port"]
                if handler == "grpc":
                    assert isinstance(port, int), f"{where} {name}: grpc needs a number"
                assert resolve_port(port, [container]) is not None, (
                    f"{where} {name}: port {port} is not a port of this container"
                )


@pytest.mark.parametrize("target", TARGETS)
def test_matrixinfer_probes_are_grpc_health_or_gateway_http(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_source = "\n".join(
        p.read_text()
        for p in (ROOT / "services/gateway/src/matrixinfer/gateway").rglob("*.py")
    )
    for _, container, service, settings in services_ports(build(target), monkeypatch):
        for name, probe in probes(container):
            if isinstance(settings, GatewaySettings):
                http = probe["httpGet"]
                assert http["port"] == settings.slow_http_port, name
                expected = "/readyz" if name == "readinessProbe" else "/healthz"
                assert http["path"] == expected, f"gateway {name}"
                assert f'"{expected}"' in gateway_source, f"no {expected} route"
            else:
                # The gRPC port takes mTLS only; grpc.health.v1 is also served in
                # plaintext on the health port (core.grpc.server), for the kubelet.
                assert settings.health_port is not None, service
                assert probe["grpc"] == {"port": settings.health_port}, (service, name)


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_select_pods_and_ports_exist(target: str) -> None:
    docs = build(target)
    for workload in workloads(docs):
        selector = workload["spec"]["selector"]
        assert selects(selector, pod_labels(workload)), workload["metadata"]["name"]
    for doc in docs:
        namespace = namespace_of(doc)
        if doc["kind"] == "Service":
            pods = selected(docs, namespace, doc["spec"]["selector"])
            assert pods, f"Service {doc['metadata']['name']} selects no pod"
            for port in doc["spec"]["ports"]:
                for pod in pods:
                    containers = all_containers(pod["spec"]["template"]["spec"])
                    target_port = port.get("targetPort", port["port"])
                    assert resolve_port(target_port, containers) is not None, (
                        f"Service {doc['metadata']['name']}: {target_port}"
                    )
        elif doc["kind"] == "PodDisruptionBudget":
            assert selected(docs, namespace, doc["spec"]["selector"]), key(doc)
        elif doc["kind"] == "StatefulSet":
            service = find(docs, "Service", doc["spec"]["serviceName"], namespace)
            assert service is not None, key(doc)
        if doc["kind"] in WORKLOAD_KINDS:
            spec = doc["spec"]["template"]["spec"]
            account = spec.get("serviceAccountName")
            if account:
                assert find(docs, "ServiceAccount", account, namespace), account


@pytest.mark.parametrize("target", TARGETS)
def test_addresses_point_at_a_service_or_the_same_pod(target: str) -> None:
    docs = build(target)
    for workload, container, _ in matrixinfer_containers(docs):
        namespace = namespace_of(workload)
        env = container_env(docs, namespace, container)
        siblings = all_containers(workload["spec"]["template"]["spec"])
        for name, value in env.items():
            if name.endswith("_ADDRESS"):
                host, _, port_text = value.rpartition(":")
            elif name.endswith(("_DATABASE_URL", "_REDIS_URL")):
                if value == SECRET_PLACEHOLDER:
                    continue
                url = urlsplit(value)
                host, port_text = str(url.hostname), str(url.port)
            else:
                continue
            port = int(port_text)
            if host == "127.0.0.1":
                assert resolve_port(port, siblings) is not None, f"{name}={value}"
                continue
            service = find(docs, "Service", host, namespace)
            assert service is not None, f"{name}={value}: no Service {host}"
            assert port in [p["port"] for p in service["spec"]["ports"]], value


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_scrapes_every_service_on_its_metrics_port(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    annotated: set[tuple[str, int]] = set()
    for doc in docs:
        notes = doc["metadata"].get("annotations", {})
        if doc["kind"] != "Service" or notes.get("prometheus.io/scrape") != "true":
            continue
        port = int(notes["prometheus.io/port"])
        assert notes.get("prometheus.io/path", "/metrics") == "/metrics"
        assert port in [p["port"] for p in doc["spec"]["ports"]], key(doc)
        for pod in selected(docs, namespace_of(doc), doc["spec"]["selector"]):
            annotated.add((pod["metadata"]["name"], port))
    for workload, _, service, settings in services_ports(docs, monkeypatch):
        wanted = (workload["metadata"]["name"], metrics_port(service, settings))
        assert wanted in annotated, f"{service}: metrics port not scraped"


# ------------------------------------------------------------------ network policy


@dataclass(frozen=True)
class Peer:
    """Who might connect: a pod (its namespace and labels) or, with namespace
    None, something outside the cluster."""

    name: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()


def pods_and_replica(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, Doc]]:
    """(name, pod-owning Deployment) of every workload of the build and of a
    replica Deployment the controller would create from its settings."""
    controller, _, settings = controller_of(docs, monkeypatch)
    replica = replica_deployment(settings, gpus=0)
    # Created in the controller's namespace (the kubernetes-runtime test checks
    # the setting); a build without a namespace has none written either.
    replica["metadata"]["namespace"] = namespace_of(controller)
    found = [(w["metadata"]["name"], w) for w in workloads(docs)]
    return [*found, (REPLICA, replica)]


def peers(pods: list[tuple[str, Doc]], namespace: str) -> list[Peer]:
    return [
        *(
            Peer(name, namespace_of(w), tuple(sorted(pod_labels(w).items())))
            for name, w in pods
        ),
        Peer(PROMETHEUS, "monitoring", (("app.kubernetes.io/name", "prometheus"),)),
        Peer("another pod of the namespace", namespace, (("app", "other"),)),
        Peer("a pod of another namespace", "elsewhere", (("app", "other"),)),
        Peer(OUTSIDE, None),
    ]


def peer_matches(entry: Doc, policy_namespace: str, peer: Peer) -> bool:
    """Whether a ``from`` entry admits the peer; an ipBlock stands for addresses
    outside the cluster (the API server's, say)."""
    kinds = set(entry)
    assert kinds == {"ipBlock"} or kinds <= {"podSelector", "namespaceSelector"}, entry
    if "ipBlock" in entry:
        return peer.namespace is None
    if peer.namespace is None:
        return False
    if "namespaceSelector" in entry:
        labels = {"kubernetes.io/metadata.name": peer.namespace}
        in_namespace = selects(entry["namespaceSelector"], labels)
    else:
        in_namespace = peer.namespace == policy_namespace
    pod_selector = entry.get("podSelector", {})
    return in_namespace and selects(pod_selector, dict(peer.labels))


def admitted(docs: list[Doc], pod: Doc, port: int, candidates: list[Peer]) -> set[str]:
    """Who the NetworkPolicies of the build let reach ``port`` of ``pod``."""
    namespace = namespace_of(pod)
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and namespace_of(d) == namespace
        and selects(d["spec"]["podSelector"], pod_labels(pod))
    ]
    if not policies:
        return {p.name for p in candidates}
    containers = all_containers(pod["spec"]["template"]["spec"])
    names = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [resolve_port(p["port"], containers) for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for peer in candidates:
                entries = rule.get("from")
                if entries is None or any(
                    peer_matches(entry, namespace, peer) for entry in entries
                ):
                    names.add(peer.name)
    return names


def flows_of(
    docs: list[Doc], namespace: str, monkeypatch: pytest.MonkeyPatch
) -> dict[tuple[str, int], frozenset[str]]:
    """Who may reach each port of each pod (replicas included), as FLOWS says it."""
    pods = pods_and_replica(docs, monkeypatch)
    candidates = peers(pods, namespace)
    everyone = frozenset(p.name for p in candidates)
    found = {}
    for name, pod in pods:
        for container in all_containers(pod["spec"]["template"]["spec"]):
            for port in container_ports(container).values():
                allowed = frozenset(admitted(docs, pod, port, candidates))
                found[(name, port)] = EVERYONE if allowed == everyone else allowed
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_allow_only_the_architecture_s_flows(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every port of every pod (the replicas' too) admits exactly the callers of
    docs/architecture.md: apply -> registry -> controller -> status -> gateway ->
    HAProxy -> replicas; gateway -> autoscaler -> controller; the autoscaler reads
    the replicas' Triton metrics; Prometheus scrapes metrics ports."""
    found = flows_of(build(target), NS[target], monkeypatch)
    assert found == {**FLOWS, **(DEV_FLOWS if target == "overlays/dev" else {})}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_select_pods_and_their_ports(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    pods = [pod for _, pod in pods_and_replica(docs, monkeypatch)]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        namespace = namespace_of(policy)
        chosen = [
            p
            for p in pods
            if namespace_of(p) == namespace
            and selects(policy["spec"]["podSelector"], pod_labels(p))
        ]
        assert chosen, f"{key(policy)} selects no pod"
        assert policy["spec"]["policyTypes"] == ["Ingress"], key(policy)
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert all(
                    resolve_port(
                        port["port"], all_containers(p["spec"]["template"]["spec"])
                    )
                    for p in chosen
                ), f"{key(policy)}: port {port['port']}"


# ------------------------------------------------------------------------ secrets


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_is_written_in_the_manifests(target: str) -> None:
    docs = build(target)
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if target == "base":
        assert secrets == [], "the base references Secrets, it never contains one"
    for secret in secrets:
        values = [
            *secret.get("stringData", {}).values(),
            *(base64.b64decode(v).decode() for v in secret.get("data", {}).values()),
        ]
        for value in values:
            assert urlsplit(value).password is None, f"{key(secret)}: a password"
    for workload in workloads(docs):
        for container in all_containers(workload["spec"]["template"]["spec"]):
            for item in container.get("env", []):
                if item["name"] in NAMES_A_SECRET:
                    assert OBJECT_NAME.match(item["value"]), item["name"]
                elif SECRET_NAME.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]
                if "value" in item:
                    password = urlsplit(str(item["value"])).password
                    assert password is None, f"{item['name']}: a password"


TLS_MOUNT = pathlib.Path("/etc/matrixinfer/tls")


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_speaks_mtls_with_its_own_secret(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's TLS settings name the files of the Secret
    matrixinfer-<service>-tls, mounted read-only and readable by its group only."""
    docs = build(target)
    found = set()
    for workload, container, service, settings in services_ports(docs, monkeypatch):
        files = settings.tls_files()
        assert files is not None, f"{service}: no TLS files: plaintext"
        assert (files.cert, files.key, files.ca) == (
            TLS_MOUNT / "tls.crt",
            TLS_MOUNT / "tls.key",
            TLS_MOUNT / "ca.crt",
        ), service
        pod = workload["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        mount = mounts[str(TLS_MOUNT)]
        assert mount.get("readOnly") is True, service
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"] == {
            "secretName": f"matrixinfer-{service}-tls",
            "defaultMode": 0o440,
        }
        assert pod["securityContext"]["fsGroup"] == container_group(pod, container)
        found.add(service)
    assert found == {"registry", "controller", "gateway", "autoscaler"}


def container_group(pod: Doc, container: Doc) -> int:
    group: int = container.get("securityContext", {}).get(
        "runAsGroup", pod["securityContext"]["runAsGroup"]
    )
    return group


def test_cert_manager_issues_each_identity() -> None:
    """deploy/k8s/cert-manager issues, from one CA of the namespace, a certificate
    per service into the Secret the base mounts, naming the identity clients check
    (core.pki.identity_name), for both ends of mTLS; and the CLI's admin one."""
    docs = build("cert-manager")
    by_kind: dict[str, dict[str, Doc]] = {}
    for doc in docs:
        assert doc["apiVersion"] == "cert-manager.io/v1", key(doc)
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    assert set(by_kind) == {"Issuer", "Certificate"}
    ca = by_kind["Certificate"].pop("matrixinfer-ca")["spec"]
    assert ca["isCA"] is True
    (ca_issuer,) = [
        name
        for name, issuer in by_kind["Issuer"].items()
        if issuer["spec"].get("ca") == {"secretName": ca["secretName"]}
    ]
    assert by_kind["Issuer"][ca["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    mounted = {
        volume["secret"]["secretName"]
        for workload in workloads(build("base"))
        for volume in workload["spec"]["template"]["spec"]["volumes"]
        if "secret" in volume and volume["secret"]["secretName"].endswith("-tls")
    }
    issued = {}
    for cert in by_kind["Certificate"].values():
        spec = cert["spec"]
        service = spec["secretName"].removeprefix("matrixinfer-").removesuffix("-tls")
        assert spec["dnsNames"] == [pki.identity_name(service)], service
        assert spec["issuerRef"] == {"name": ca_issuer, "kind": "Issuer"}
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        usages = set(spec["usages"])
        wanted = {"admin": {"client auth"}, pki.REPLICA: {"server auth"}}
        assert usages == wanted.get(service, both), service
        issued[spec["secretName"]] = service
    # The replicas' Secret is mounted by the pods the controller creates.
    replicas = f"matrixinfer-{pki.REPLICA}-tls"
    assert set(issued) == mounted | {"matrixinfer-admin-tls", replicas}


both = {"server auth", "client auth"}


def test_secrets_the_base_expects_are_documented() -> None:
    docs = build("base")
    readme = (ROOT / "deploy" / "README.md").read_text()
    for _, container, _ in matrixinfer_containers(docs):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert f"`{ref['name']}`" in readme, f"{ref['name']} is undocumented"


# ----------------------------------------------------------------------- security


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_locked_down_with_resources(target: str) -> None:
    docs = build(target)
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            assert doc.get("automountServiceAccountToken") is False, key(doc)
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        where = workload["metadata"]["name"]
        # Only the controller talks to the API server (its kubernetes runtime).
        mounts = where in TOKEN_HOLDERS
        assert spec.get("automountServiceAccountToken") is mounts, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in all_containers(spec):
            context = container["securityContext"]
            name = f"{where}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "privileged" not in context, name
            resources = container["resources"]
            for field in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[field]), f"{name} {field}"


@pytest.mark.parametrize("target", TARGETS)
def test_controller_alone_mounts_a_token_for_its_own_account(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    # The replica pods it creates mount none either.
    _, _, settings = controller_of(docs, monkeypatch)
    replica = replica_deployment(settings, gpus=1)["spec"]["template"]["spec"]
    assert replica["automountServiceAccountToken"] is False
    ns = NS[target]
    (holder,) = TOKEN_HOLDERS
    controller = find(docs, "Deployment", holder, ns)
    assert controller is not None
    spec = controller["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    account = find(docs, "ServiceAccount", spec["serviceAccountName"], ns)
    assert account is not None
    # ... bound, in its namespace, to the Role of controller-rbac.yaml.
    roles = [
        b["roleRef"]["name"]
        for b in docs
        if b["kind"] == "RoleBinding"
        and namespace_of(b) == ns
        and b["roleRef"]["kind"] == "Role"
        and ("ServiceAccount", spec["serviceAccountName"], ns)
        in [(s["kind"], s["name"], s.get("namespace", ns)) for s in b["subjects"]]
    ]
    assert roles == ["matrixinfer-controller"]
    assert find(docs, "Role", roles[0], ns) is not None
    # Every other pod runs under an account of its own, never the controller's.
    accounts = [
        w["spec"]["template"]["spec"].get("serviceAccountName")
        for w in workloads(docs)
        if w is not controller
    ]
    assert spec["serviceAccountName"] not in accounts


@pytest.mark.parametrize("target", TARGETS)
def test_replicas_and_disruption_budgets(target: str) -> None:
    docs = build(target)
    ns = NS[target]
    dev = target == "overlays/dev"
    # Registries share one PostgreSQL and gateways are stateless: two of each
    # (one in dev). The controller and the autoscaler must be alone: replaced
    # with Recreate, never two at once.
    replicas = {
        "matrixinfer-registry": 1 if dev else 2,
        "matrixinfer-gateway": 1 if dev else 2,
        "matrixinfer-controller": 1,
        "matrixinfer-autoscaler": 1,
    }
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments} == (
        replicas
    )
    for name in ("matrixinfer-controller", "matrixinfer-autoscaler"):
        deployment = find(docs, "Deployment", name, ns)
        assert deployment is not None
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, name
    # One PodDisruptionBudget per Deployment, letting a drain take one pod at a
    # time (never blocking it: minAvailable on a single pod would).
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for deployment in deployments:
        mine = [
            b
            for b in budgets
            if namespace_of(b) == ns
            and selects(b["spec"]["selector"], pod_labels(deployment))
        ]
        assert len(mine) == 1, key(deployment)
        assert mine[0]["spec"]["maxUnavailable"] == 1, key(deployment)
        assert "minAvailable" not in mine[0]["spec"], key(deployment)
    assert len(budgets) == len(deployments)
    assert (find(docs, "Namespace", ns) is not None) == dev
    assert (find(docs, "StatefulSet", "postgres", ns) is not None) == dev


@pytest.mark.parametrize("target", TARGETS)
def test_haproxy_threads_fit_its_cpu_limit(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HAProxy's default is a thread per core of the node; the gateway sets as
    many as its container may use."""
    (gateway,) = [
        (w, s)
        for w, _, _, s in services_ports(build(target), monkeypatch)
        if isinstance(s, GatewaySettings)
    ]
    workload, settings = gateway
    containers = workload["spec"]["template"]["spec"]["containers"]
    (haproxy,) = [c for c in containers if c["name"] == "haproxy"]
    assert settings.dataplane_threads == int(haproxy["resources"]["limits"]["cpu"])


def test_readme_describes_the_kubernetes_deployment() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "## Kubernetes" in readme
    assert "kubectl apply -k deploy/k8s/overlays/dev" in readme
    dev = build("overlays/dev")
    deployments = {d["metadata"]["name"] for d in dev if d["kind"] == "Deployment"}
    assert set(re.findall(r"rollout status deploy/([\w-]+)", readme)) == deployments
    for path in re.findall(r"deploy/k8s/[\w./-]+", readme):
        assert (ROOT / path.rstrip(".")).exists(), path


def readme_production_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Production on Kubernetes\n", 1)[1].split("\n## ", 1)[0]


def test_readme_production_walkthrough_matches_the_manifests() -> None:
    section = readme_production_section()
    base = build("base")
    # Every link and repository path it names exists.
    for link in re.findall(r"\]\(([^)#]+)", section):
        assert (ROOT / link).exists(), link
    for path in re.findall(r"deploy/k8s/[\w./-]+", section):
        assert (ROOT / path.rstrip(".")).exists(), path
    # It waits for every Deployment, and creates exactly the Secrets the base
    # references.
    deployments = {d["metadata"]["name"] for d in base if d["kind"] == "Deployment"}
    assert set(re.findall(r"rollout status deploy/([\w-]+)", section)) == deployments
    referenced = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for _, container, _ in matrixinfer_containers(base)
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert set(re.findall(r"create secret generic ([\w-]+)", section)) == referenced
    # The Secrets the base mounts come from deploy/k8s/cert-manager
    # (test_cert_manager_issues_each_identity), which it applies and waits for.
    assert "kubectl -n matrixinfer apply -k matrixinfer/deploy/k8s/cert-manager" in (
        section
    )
    assert "wait --for=condition=Ready certificate --all" in section
    # The gateway is reached on its Service's ports.
    gateway = find(base, "Service", "matrixinfer-gateway")
    assert gateway is not None
    ports = sorted(p["port"] for p in gateway["spec"]["ports"])
    assert "svc/matrixinfer-gateway 8000:8000 8001:8001" in section
    assert ports == [8000, 8001]


def readme_prod_files() -> dict[str, list[str]]:
    """The README's ``# prod/<file>`` blocks by file name, in order (the
    kustomization: step 3's, then step 8's additions)."""
    files: dict[str, list[str]] = {}
    for block in re.findall(r"```yaml\n(.*?)```", readme_production_section(), re.S):
        found = re.match(r"# prod/([\w.-]+)", block)
        assert found is not None, f"a yaml block that is no prod/ file: {block[:60]}"
        files.setdefault(found.group(1), []).append(block)
    return files


def write_prod(tmp_path: pathlib.Path, step: int, target: str = "base") -> pathlib.Path:
    """The README's overlay as of ``step`` (3 or 8) on ``target`` (the base, or
    the gpu overlay as step 7 says), beside a "clone" (this repository, through a
    relative path as in the README)."""
    files = readme_prod_files()
    overlay = tmp_path / "prod"
    overlay.mkdir()
    clone = os.path.relpath(ROOT, overlay)
    first, *additions = files.pop("kustomization.yaml")
    first = first.replace("deploy/k8s/base", f"deploy/k8s/{target}")
    k = yaml.safe_load(first.replace("../matrixinfer/", f"{clone}/"))
    assert k["resources"] == [f"{clone}/deploy/k8s/{target}"]
    for addition in additions[: len(additions) if step >= 8 else 0]:
        addition = addition.replace("../matrixinfer/", f"{clone}/")
        for field, items in yaml.safe_load(addition).items():
            k[field] = [*k.get(field, []), *items]
        for name, (text,) in files.items():
            (overlay / name).write_text(text)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return overlay


def builds_of(folder: pathlib.Path) -> list[list[Doc]]:
    """The structural build and, when a kustomize is installed, kustomize's."""
    builds = [structural_build(folder)]
    return builds + [b for b in [kustomize_build(folder)] if b is not None]


@pytest.mark.parametrize("target", ["base", "overlays/gpu"])
def test_readme_production_overlay_builds(
    target: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's overlay, placed beside a clone (``prod/`` next to
    ``matrixinfer/``), builds on the base or the gpu overlay: every object in its
    namespace, every image retargeted, the replicas' init container on the
    retargeted controller image, GPU placement from the gpu overlay."""
    for docs in builds_of(write_prod(tmp_path, step=3, target=target)):
        assert sorted(map(key, docs)) == sorted(
            (kind, "" if kind in CLUSTER_SCOPED else "matrixinfer", name)
            for kind, _, name in map(key, build(target))
        )
        for _, container, service in matrixinfer_containers(docs):
            wanted = f"registry.example.com/matrixinfer/{service}:0.1.0"
            assert container["image"] == wanted
        _, container, settings = controller_of(docs, monkeypatch)
        assert settings.kube_fetcher_image == container["image"]
        assert settings.kube_namespace == "matrixinfer"
        gpu = target == "overlays/gpu"
        assert settings.kube_gpu_node_selector == (GPU_NODE_SELECTOR if gpu else {})
        assert flows_of(docs, "matrixinfer", monkeypatch) == FLOWS


def test_readme_api_aggregation_step(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 8: the registry serves its Kubernetes API with the certificate of the
    Secret the README creates, as docs/kubernetes-api.md's patch mounts it; the
    APIServices reach that port through their Service in the overlay's namespace;
    only addresses outside the cluster (the ipBlock) reach it."""
    section = readme_production_section()
    (secret,) = re.findall(r"create secret tls ([\w-]+)", section)
    doc_patch = next(
        yaml.safe_load(block)
        for block in re.findall(
            r"```yaml\n(.*?)```", (ROOT / "docs/kubernetes-api.md").read_text(), re.S
        )
        if "KUBE_TLS_CERT_FILE" in block
    )
    for docs in builds_of(write_prod(tmp_path, step=8)):
        flows = flows_of(docs, "matrixinfer", monkeypatch)
        assert flows == {**FLOWS, (REGISTRY, 50053): frozenset({OUTSIDE})}
        registry = find(docs, "Deployment", REGISTRY, "matrixinfer")
        assert registry is not None
        # docs/kubernetes-api.md's patch adds nothing the README's did not.
        assert merge(copy.deepcopy(registry), doc_patch) == registry
        (found,) = [
            (c, s)
            for w, c, _, s in services_ports(docs, monkeypatch)
            if isinstance(s, RegistrySettings)
        ]
        container, settings = found
        pod = registry["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for path in (settings.kube_tls_cert_file, settings.kube_tls_key_file):
            assert path is not None
            volume = volumes[mounts[str(path.parent)]]
            assert volume["secret"]["secretName"] == secret
        # The API server's front-proxy CA, from the ConfigMap the README creates.
        (config_map,) = re.findall(r"create configmap ([\w-]+)", section)
        ca = settings.kube_requestheader_ca_file
        assert ca is not None
        volume = volumes[mounts[str(ca.parent)]]
        assert volume["configMap"]["name"] == config_map
        apis = [d for d in docs if d["kind"] == "APIService"]
        assert len(apis) == 3
        for api in apis:
            ref = api["spec"]["service"]
            assert ref["namespace"] == "matrixinfer"
            service = find(docs, "Service", ref["name"], "matrixinfer")
            assert service is not None
            (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
            assert resolve_port(port["targetPort"], [container]) == settings.kube_port


@pytest.mark.parametrize("target", TARGETS)
def test_aggregation_is_opt_in(target: str) -> None:
    """No platform target registers an APIService: one the API server cannot reach
    (before the registry has a certificate and a NetworkPolicy admits the API
    server) would make cluster-wide discovery report errors. kube-api adds them."""
    assert [key(d) for d in build(target) if d["kind"] == "APIService"] == []
    registered = [d for d in build("kube-api") if d["kind"] == "APIService"]
    assert len(registered) == 3
