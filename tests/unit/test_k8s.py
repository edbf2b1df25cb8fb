"""The Kubernetes manifests of deploy/k8s hold together, without a cluster.

- every YAML file parses; every kustomization's resources, patches and their targets,
  image and replica entries refer to what exists;
- each target (the base and every overlay) is built twice: by a small structural
  kustomize here (resources, generators, strategic-merge patches, namespace, images,
  replicas), and by ``kubectl kustomize`` or ``kustomize build`` when either binary
  is installed; both builds must be the same objects;
- with ``kubernetes-validate`` importable, every built object matches the Kubernetes
  OpenAPI schema (strict: unknown fields are errors), offline;
- MatrixInfer containers run images that deploy/docker builds (named as
  docker-compose.yml names them); every ``MATRIXINFER_*`` variable is a settings
  field of that container's service, and each service's settings load from the
  environment the container gets (image ENV, then the manifest's env with ConfigMap
  and Secret references resolved); containerPorts are exactly the ports those
  settings bind, and probes, Services, NetworkPolicies and Prometheus annotations
  use them;
- Service, PodDisruptionBudget and NetworkPolicy selectors select pods; addresses
  point at a Service port or at a port of the same pod;
- no Secret value is written in the base, no generated Secret carries a password,
  database and Redis URLs come from Secrets; pods run as non-root, without
  privilege escalation or capabilities, on read-only root filesystems, with
  requests and limits, and mount no service-account token.

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
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core.settings import ServiceSettings
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.registry.settings import RegistrySettings
from matrixinfer.triton.install import ENV_BINARY
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
TARGETS = ("base", "overlays/dev", "overlays/gpu")
SETTINGS: dict[str, type[ServiceSettings]] = {
    "registry": RegistrySettings,
    "controller": ControllerSettings,
    "gateway": GatewaySettings,
    "autoscaler": AutoscalerSettings,
}
# Oldest Kubernetes the manifests are written for: gRPC probes are GA from 1.27.
KUBERNETES_VERSIONS = ("1.27", "1.32")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
CLUSTER_SCOPED = {
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

Doc = dict[str, Any]

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


def structural_build(folder: pathlib.Path) -> list[Doc]:
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
    }
    assert set(k) <= known, f"{folder}: {set(k) - known} not supported here"
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        docs += structural_build(path) if path.is_dir() else load_docs(path)
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
        for doc in docs:
            for spec in pod_specs(doc):
                for container in all_containers(spec):
                    name, tag, digest = split_image(container["image"])
                    if name != entry["name"]:
                        continue
                    used = True
                    name = entry.get("newName", name)
                    tag = entry.get("newTag", tag)
                    digest = entry.get("digest", digest)
                    image = name + (f":{tag}" if tag else "")
                    container["image"] = image + (f"@{digest}" if digest else "")
        assert used, f"{folder}: image {entry['name']} is used by no container"
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    keys = [key(d) for d in docs]
    assert len(keys) == len(set(keys)), f"{folder}: duplicate objects"
    return docs


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
    ConfigMap and Secret references resolved. A required Secret that the build does
    not create (the base expects it to exist) gets a placeholder."""
    service = service_of(container)
    env = dockerfile_env(service) if service else {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item["valueFrom"]
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
    path (HAProxy, a container of its own, binds the public gRPC and HTTP ports)."""
    if isinstance(settings, GatewaySettings):
        return {"http": settings.slow_http_port}
    ports = {"grpc": settings.grpc_port}
    if settings.metrics_port is not None:
        ports["metrics"] = settings.metrics_port
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


def test_every_yaml_file_parses_into_kubernetes_objects() -> None:
    for path in yaml_files():
        docs = load_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), path


def kustomization_folders() -> list[pathlib.Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def test_every_target_is_a_kustomization() -> None:
    assert {str(p.relative_to(K8S)) for p in kustomization_folders()} == set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
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
    # Every YAML file beside it is used (a forgotten file is never applied).
    used = {(folder / e).resolve() for e in k.get("resources", [])}
    used |= {(folder / p["path"]).resolve() for p in k.get("patches", [])}
    for path in folder.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in used, f"{target}: {path.name} is not listed"
    # Building checks the rest: patch targets, image and replica entries match.
    assert build(target)


@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_builds_the_same_objects(target: str) -> None:
    command = kustomize_command(K8S / target)
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: structural build only")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=key)
    for doc in theirs:  # kustomize wraps long base64 values
        if doc["kind"] == "Secret":
            data = doc.get("data", {})
            doc["data"] = {k: re.sub(r"\s", "", v) for k, v in data.items()}
    ours = sorted(build(target), key=key)
    assert [key(d) for d in theirs] == [key(d) for d in ours]
    for their, our in zip(theirs, ours, strict=True):
        assert their == our, key(our)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_objects_match_the_kubernetes_schema(target: str, version: str) -> None:
    validator = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (offline OpenAPI schemas) is not installed",
    )
    errors = []
    for doc in build(target):
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
def test_controller_gpus_match_its_gpu_limit(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    for _, container, _, settings in services_ports(docs, monkeypatch):
        limit = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        if isinstance(settings, ControllerSettings):
            # The device plugin exposes the granted GPUs as 0..n-1 in the container.
            assert settings.gpus == list(range(limit)), target
            assert limit == (1 if target == "overlays/gpu" else 0), target
        else:
            assert limit == 0, "only the controller runs Triton replicas"


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
                # grpc.health.v1 is served on the gRPC port (core.grpc.server).
                assert probe["grpc"] == {"port": settings.grpc_port}, (service, name)


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


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_admit_apis_only_from_the_namespace(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(target)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    covered = set()
    for policy in policies:
        pods = selected(docs, namespace_of(policy), policy["spec"]["podSelector"])
        assert pods, f"{key(policy)} selects no pod"
        assert policy["spec"]["policyTypes"] == ["Ingress"], key(policy)
        covered |= {key(p) for p in pods}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert any(
                    resolve_port(
                        port["port"], all_containers(p["spec"]["template"]["spec"])
                    )
                    for p in pods
                ), f"{key(policy)}: port {port['port']}"
    assert covered == {key(w) for w in workloads(docs)}, "a pod without a policy"

    # The gRPC APIs of the registry, controller and autoscaler: only peers selected
    # by podSelector alone (this namespace), never a namespace or IP block.
    for workload, _, service, settings in services_ports(docs, monkeypatch):
        if service == "gateway":
            continue
        for policy in policies:
            if not selects(policy["spec"]["podSelector"], pod_labels(workload)):
                continue
            for rule in policy["spec"].get("ingress", []):
                numbers = [p["port"] for p in rule.get("ports", [])]
                if numbers and settings.grpc_port not in numbers:
                    continue
                peers = rule.get("from", [])
                assert peers, f"{service}: gRPC port open to everyone"
                assert all(set(peer) == {"podSelector"} for peer in peers), service


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
                if SECRET_NAME.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]
                if "value" in item:
                    password = urlsplit(str(item["value"])).password
                    assert password is None, f"{item['name']}: a password"


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
        assert spec.get("automountServiceAccountToken") is False, where
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
def test_replicas_and_disruption_budget(target: str) -> None:
    docs = build(target)
    ns = "matrixinfer-dev" if target == "overlays/dev" else ""
    registry = find(docs, "Deployment", "matrixinfer-registry", ns)
    serving = find(docs, "Deployment", "matrixinfer-serving", ns)
    assert registry is not None and serving is not None
    # Several registries share one PostgreSQL; the controller must be alone.
    assert registry["spec"]["replicas"] == (1 if target == "overlays/dev" else 2)
    assert serving["spec"]["replicas"] == 1
    assert serving["spec"]["strategy"] == {"type": "Recreate"}
    assert find(docs, "PodDisruptionBudget", "matrixinfer-registry", ns) is not None
    if target == "overlays/dev":
        assert all(w["spec"]["replicas"] == 1 for w in workloads(docs))
        assert find(docs, "Namespace", ns) is not None
        assert find(docs, "StatefulSet", "postgres", ns) is not None


def test_readme_describes_the_kubernetes_deployment() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "## Kubernetes" in readme
    assert "kubectl apply -k deploy/k8s/overlays/dev" in readme
    for path in re.findall(r"deploy/k8s/[\w./-]+", readme):
        assert (ROOT / path.rstrip(".")).exists(), path
