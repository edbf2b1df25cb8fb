"""The Kubernetes runtime's pieces that need no API server: the objects it sends
(checked against the Kubernetes OpenAPI schema, strict), what a pod's status means
as a replica, the init container's entry point (the same repository builder as the
local runtime), and nodeSelector / tolerations from admission to the pod, or to a
refusal on the local runtime."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import pytest

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller import prepare
from matrixinfer.controller.adapters.kubernetes import objects as ko
from matrixinfer.controller.adapters.kubernetes.client import (
    SERVICE_ACCOUNT,
    KubeConfig,
    RetryPolicy,
)
from matrixinfer.controller.adapters.kubernetes.runtime import placement_of
from matrixinfer.controller.adapters.local_runtime import LocalRuntime
from matrixinfer.controller.domain.reconciler import Reconciler
from matrixinfer.controller.domain.runtime import Phase, ReplicaSpec, Runtime
from matrixinfer.controller.domain.serving import RepositoryPlan
from matrixinfer.controller.main import kubernetes_runtime, replica_tls
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core import pki
from matrixinfer.core.errors import FailedPrecondition, InvalidArgument
from matrixinfer.core.grpc.tls import ClientTls
from matrixinfer.registry.domain.admission import admit
from matrixinfer.triton.server import GrpcTls
from tests.conftest import ROOT
from tests.fakes.controller_runtime import FakeRuntime
from tests.kubernetes import validate_strict

IRIS = ROOT / "examples/iris/model.onnx"
SETTINGS = ko.PodSettings(
    namespace="replicas",
    triton_image="nvcr.io/nvidia/tritonserver:25.10-py3",
    fetcher_image="matrixinfer/controller:test",
    gpu_node_selector={"nvidia.com/gpu.present": "true"},
    gpu_tolerations=(
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ),
    fetcher_env=(("MATRIXINFER_CONTROLLER_ARTIFACT_MAX_BYTES", "1000"),),
    artifact_secret="artifact-credentials",
)
OWNER_REF = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "name": "o",
    "uid": "0b4c2f7e-3f1c-4f5e-9d51-1b2a3c4d5e6f",
    "controller": True,
}


def plan(uri: str = f"file://{IRIS}", sha256: str = "", **spec: Any) -> RepositoryPlan:
    model = pb.Model()
    model.metadata.name = "iris"
    model.spec.model_spec.framework = "onnx"
    model.spec.model_spec.source.uri = uri
    model.spec.model_spec.source.sha256 = sha256
    infer = pb.ModelInfer()
    infer.metadata.namespace, infer.metadata.name = "default", "iris"
    for key, value in spec.items():
        if key == "node_selector":
            infer.spec.node_selector.update(value)
        elif key == "tolerations":
            infer.spec.tolerations.extend(pb.Toleration(**t) for t in value)
        elif key == "resources":
            infer.spec.resources.CopyFrom(pb.Resources(**value))
    return RepositoryPlan.of(model, infer, 3, False)


def replica_spec(gpus: int = 0, repo_plan: RepositoryPlan | None = None) -> ReplicaSpec:
    return ReplicaSpec(
        owner="default/iris",
        revision=3,
        template="0123456789ab",
        repository=pathlib.Path("/unused"),
        models=("iris",),
        gpus=gpus,
        env=(("OMP_NUM_THREADS", "2"),),
        args=("--log-verbose=1",),
        plan=(repo_plan or plan()).to_json(),
    )


def validate(obj: dict[str, Any]) -> None:
    validate_strict(obj)


# ---------------------------------------------------------------- objects


@pytest.mark.parametrize("gpus", [0, 2])
def test_the_deployment_is_a_valid_object(gpus: int) -> None:
    spec = replica_spec(gpus)
    deployment = ko.deployment(spec, 3, SETTINGS, OWNER_REF, placement_of(spec))
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert len(deployment["metadata"]["name"]) <= 48
    limits = triton.get("resources", {}).get("limits", {})
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert ("nodeSelector" in pod, "tolerations" in pod) == (bool(gpus), bool(gpus))
    assert "--load-model=iris" in triton["args"]
    assert "--log-verbose=1" in triton["args"]
    init = pod["initContainers"][0]
    assert init["envFrom"] == [{"secretRef": {"name": "artifact-credentials"}}]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert RepositoryPlan.from_json(env["MATRIXINFER_REPOSITORY_PLAN"]) == plan()
    assert env["MATRIXINFER_CONTROLLER_ARTIFACT_MAX_BYTES"] == "1000"
    # The selector finds exactly this template's pods of this ModelInfer.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[ko.MANAGED_BY_KEY] == ko.MANAGED_BY
    assert ko.spec_of_deployment(deployment) == ReplicaSpec(
        owner="default/iris",
        revision=3,
        template="0123456789ab",
        repository=pathlib.Path(ko.REPOSITORY),
        models=("iris",),
        gpus=gpus,
    )


def test_replica_pods_run_locked_down_with_a_memory_backed_dev_shm() -> None:
    """Non-root, no privilege gain, no capabilities, read-only images (only the
    mounted volumes are writable), seccomp RuntimeDefault, no API token; /dev/shm
    in memory for the Python backend's stubs."""
    spec = replica_spec(0)
    pod = ko.deployment(spec, 1, SETTINGS, OWNER_REF)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in [*pod["initContainers"], *pod["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (triton,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_a_replica_tls_secret_is_mounted_read_only_and_turns_on_grpc_mtls() -> None:
    """With kube_replica_tls_secret the pod mounts the Secret (group-readable
    only) and Triton's gRPC port demands a client certificate of its CA; without,
    neither the volume nor the flags are there."""
    spec = replica_spec(0)
    tls = dataclasses.replace(SETTINGS, replica_tls_secret="matrixinfer-replica-tls")
    deployment = ko.deployment(spec, 1, tls, OWNER_REF)
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    (mount,) = [m for m in triton["volumeMounts"] if m["mountPath"] == ko.TLS_DIR]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"] == {
        "secretName": "matrixinfer-replica-tls",
        "defaultMode": 0o440,
    }
    assert pod["securityContext"]["fsGroup"] == ko.REPLICA_UID
    flags = [a for a in triton["args"] if a.startswith("--grpc-")]
    assert flags == [
        f"--grpc-port={ko.GRPC_PORT}",
        "--grpc-use-ssl-mutual=true",
        "--grpc-server-cert=/etc/matrixinfer/tls/tls.crt",
        "--grpc-server-key=/etc/matrixinfer/tls/tls.key",
        "--grpc-root-cert=/etc/matrixinfer/tls/ca.crt",
    ]
    # The probes stay on Triton's HTTP port, which has no TLS.
    assert triton["readinessProbe"]["httpGet"]["port"] == "http"
    plain = ko.deployment(spec, 1, SETTINGS, OWNER_REF)["spec"]["template"]["spec"]
    (plain_triton,) = plain["containers"]
    assert not [a for a in plain_triton["args"] if "ssl" in a or "-cert" in a]
    assert ko.TLS_DIR not in [m["mountPath"] for m in plain_triton["volumeMounts"]]
    assert "tls" not in [v["name"] for v in plain["volumes"]]


def test_the_owner_object_is_valid_and_long_names_stay_short() -> None:
    owner = f"{'n' * 63}/{'m' * 63}"
    validate(ko.owner_object(owner, "replicas"))
    assert len(ko.owner_object_name(owner)) <= 63
    assert len(ko.deployment_name(owner, "0123456789ab")) <= 48
    assert ko.deployment_name("a/b-c", "t") != ko.deployment_name("a-b/c", "t")


def test_the_model_infers_own_placement_reaches_the_pod() -> None:
    spec = replica_spec(
        1,
        plan(
            node_selector={"pool": "a100"},
            tolerations=[
                {"key": "dedicated", "operator": "Equal", "value": "ml"},
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "toleration_seconds": 30,
                },
            ],
            resources={"cpu": "2", "memory": "4Gi"},
        ),
    )
    deployment = ko.deployment(spec, 1, SETTINGS, OWNER_REF, placement_of(spec))
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "a100"}
    assert pod["tolerations"][1:] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml"},
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 30,
        },
    ]
    assert pod["containers"][0]["resources"] == {
        "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
        "requests": {"cpu": "2", "memory": "4Gi"},
    }


# ---------------------------------------------------------------- pod status


def pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p-1"}, "status": status}


def test_a_ready_pod_is_a_ready_replica_at_its_ip() -> None:
    replica = ko.replica_of_pod(
        pod(
            {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "triton", "restartCount": 2}],
            }
        ),
        replica_spec(),
    )
    assert (replica.phase, replica.address, replica.restarts) == (
        Phase.READY,
        "10.0.0.7",
        2,
    )
    assert (replica.grpc_port, replica.http_port, replica.metrics_port) == (
        8001,
        8000,
        8002,
    )


def test_an_unschedulable_pod_is_pending_with_the_schedulers_reason() -> None:
    replica = ko.replica_of_pod(
        pod(
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes have nvidia.com/gpu",
                    }
                ],
            }
        ),
        replica_spec(),
    )
    assert replica.phase is Phase.PENDING
    assert replica.message == "Unschedulable: 0/3 nodes have nvidia.com/gpu"


def test_a_failing_init_container_fails_the_replica_with_its_message() -> None:
    replica = ko.replica_of_pod(
        pod(
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "prepare",
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "message": "InvalidArgument: sha256 mismatch",
                            }
                        },
                    }
                ],
            }
        ),
        replica_spec(),
    )
    assert replica.phase is Phase.FAILED
    assert (
        replica.message == "prepare: CrashLoopBackOff InvalidArgument: sha256 mismatch"
    )
    assert replica.restarts == 3


def test_a_starting_pod_is_starting() -> None:
    replica = ko.replica_of_pod(
        pod({"phase": "Running", "podIP": "10.0.0.8"}), replica_spec()
    )
    assert replica.phase is Phase.STARTING
    assert not ko.is_ready(pod({"conditions": [{"type": "Ready", "status": "True"}]}))


# ---------------------------------------------------------------- the init container


def test_a_plan_round_trips_and_garbage_is_refused() -> None:
    assert RepositoryPlan.from_json(plan().to_json()) == plan()
    with pytest.raises(InvalidArgument):
        RepositoryPlan.from_json('{"model": 1}')


def env(tmp_path: pathlib.Path, repo_plan: RepositoryPlan) -> dict[str, str]:
    return {
        prepare.ENV_PLAN: repo_plan.to_json(),
        prepare.ENV_TARGET: str(tmp_path / "models/repository"),
        prepare.ENV_CACHE: str(tmp_path / "artifacts"),
        prepare.ENV_BACKENDS: ",".join(ko.TRITON_IMAGE_BACKENDS),
    }


def test_the_init_container_writes_the_repository(tmp_path: pathlib.Path) -> None:
    digest = hashlib.sha256(IRIS.read_bytes()).hexdigest()
    log = tmp_path / "termination-log"

    assert prepare.main(env(tmp_path, plan(sha256=digest)), log) == 0

    model_dir = tmp_path / "models/repository/iris"
    config = (model_dir / "config.pbtxt").read_text()
    assert 'name: "iris"' in config
    assert 'backend: "onnxruntime"' in config
    assert (model_dir / "3/model.onnx").read_bytes() == IRIS.read_bytes()
    assert not log.exists()


def test_the_init_container_refuses_a_wrong_digest(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "termination-log"

    assert prepare.main(env(tmp_path, plan(sha256="0" * 64)), log) == 1

    assert log.read_text().startswith("InvalidArgument: sha256 mismatch")
    assert not (tmp_path / "models/repository/iris").exists()


def test_the_init_container_needs_a_plan(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "termination-log"
    assert prepare.main({}, log) == 1
    assert prepare.ENV_PLAN in log.read_text()


# ---------------------------------------------------------------- placement fields


def model_infer_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "workload.matrixinfer.ai/v1alpha1",
        "kind": "ModelInfer",
        "metadata": {"name": "m"},
        "spec": {"modelRef": {"name": "m"}, **spec},
    }


def violations(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        admit(json.loads(json.dumps(doc)))
    return [v.field for v in caught.value.violations]


def test_placement_fields_are_admitted_and_defaulted() -> None:
    admitted = admit(
        model_infer_doc(
            nodeSelector={"cloud.example.com/pool": "gpu-a100"},
            tolerations=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
        )
    )
    assert isinstance(admitted, pb.ModelInfer)
    assert dict(admitted.spec.node_selector) == {"cloud.example.com/pool": "gpu-a100"}
    assert admitted.spec.tolerations[0].operator == "Equal"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"nodeSelector": {"bad key!": "x"}}, "spec.nodeSelector[bad key!]"),
        ({"nodeSelector": {"pool": "not a value"}}, "spec.nodeSelector[pool]"),
        (
            {"tolerations": [{"key": "k", "operator": "In"}]},
            "spec.tolerations[0].operator",
        ),
        (
            {"tolerations": [{"key": "k", "effect": "Never"}]},
            "spec.tolerations[0].effect",
        ),
        ({"tolerations": [{"value": "v"}]}, "spec.tolerations[0].key"),
        (
            {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            "spec.tolerations[0].value",
        ),
        (
            {"tolerations": [{"key": "k", "tolerationSeconds": 5}]},
            "spec.tolerations[0].tolerationSeconds",
        ),
    ],
)
def test_bad_placement_fields_are_named(spec: dict[str, Any], field: str) -> None:
    assert field in violations(model_infer_doc(**spec))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"node_selector": {"pool": "a100"}}, "spec.nodeSelector"),
        ({"tolerations": [{"key": "k", "operator": "Exists"}]}, "spec.tolerations"),
    ],
)
async def test_the_local_runtime_refuses_placement_fields(
    tmp_path: pathlib.Path, extra: dict[str, Any], named: str
) -> None:
    runtime = LocalRuntime(install=None, state_dir=tmp_path)  # type: ignore[arg-type]
    replica = await runtime.start_replica(replica_spec(repo_plan=plan(**extra)))

    assert replica.phase is Phase.FAILED
    assert named in replica.message
    assert runtime.process_of(replica.name) is None
    assert [r.name for r in runtime.replicas("default/iris")] == [replica.name]
    await runtime.stop_replica(replica.name, 1.0)
    assert runtime.replicas("default/iris") == []


class _Registry:
    """The registry and informer cache a reconcile uses, in memory."""

    def __init__(self, *resources: pb.Resource) -> None:
        self.resources = list(resources)

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        for r in self.resources:
            obj = r.model if kind == "Model" else r.model_infer
            if r.HasField("model" if kind == "Model" else "model_infer") and (
                obj.metadata.namespace,
                obj.metadata.name,
            ) == (namespace, name):
                return r
        return None

    def items(self, kind: str) -> list[pb.Resource]:
        return []

    async def update_status(self, resource: pb.Resource) -> pb.Resource:
        infer = self.get("ModelInfer", "default", "iris")
        assert infer is not None
        infer.model_infer.status.CopyFrom(resource.model_infer.status)
        return resource

    async def update_finalizers(
        self, kind: str, namespace: str, name: str, add: list[str], remove: list[str]
    ) -> pb.Resource | None:
        return None

    async def model_revision(
        self, namespace: str, name: str, revision: int
    ) -> pb.Model:
        raise AssertionError("no pinned revisions here")


def reconciler_of(
    registry: _Registry,
    runtime: Runtime,
    tmp_path: pathlib.Path,
    build_repositories: bool = True,
) -> Reconciler:
    return Reconciler(
        client=registry,
        informer=registry,
        runtime=runtime,
        fetcher=prepare.artifact_fetcher(ControllerSettings(), tmp_path / "cache"),
        repos_dir=tmp_path / "repos",
        backends=["onnxruntime"],
        python_paths=[],
        build_repositories=build_repositories,
    )


async def test_a_local_controller_reports_the_refused_field(
    tmp_path: pathlib.Path,
) -> None:
    repo_plan = plan(node_selector={"pool": "a100"})
    model = pb.Model()
    model.CopyFrom(repo_plan.model)
    model.metadata.namespace = "default"
    model.status.current_revision = 1
    infer = pb.ModelInfer()
    infer.CopyFrom(repo_plan.infer)
    infer.spec.model_ref.name = "iris"
    infer.spec.replicas = 1
    registry = _Registry(pb.Resource(model=model), pb.Resource(model_infer=infer))
    runtime = LocalRuntime(install=None, state_dir=tmp_path)  # type: ignore[arg-type]
    reconciler = reconciler_of(registry, runtime, tmp_path)

    await reconciler.reconcile(("default", "iris"))

    status = registry.get("ModelInfer", "default", "iris")
    assert status is not None
    degraded = {c.type: c for c in status.model_infer.status.conditions}["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "ReplicaFailed")
    assert "spec.nodeSelector set, but the local runtime" in degraded.message
    assert status.model_infer.status.ready_replicas == 0
    await runtime.close()


# ---------------------------------------------------------------- settings


def test_the_settings_deploy_uses_build_the_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "RUNTIME": "kubernetes",
        "KUBE_NAMESPACE": "serving",
        "KUBE_TRITON_IMAGE": "nvcr.io/nvidia/tritonserver:25.10-py3",
        "KUBE_FETCHER_IMAGE": "registry.example/matrixinfer/controller:1.2.3",
        "KUBE_GPU_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
        "KUBE_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
        "KUBE_API_URL": "http://127.0.0.1:8001/prefix/",
        "S3_ENDPOINT_URL": "http://minio:9000",
    }.items():
        monkeypatch.setenv(f"MATRIXINFER_CONTROLLER_{name}", value)
    settings = ControllerSettings()
    assert settings.runtime == "kubernetes"

    runtime = kubernetes_runtime(settings)

    assert runtime.client.config.base_url == "http://127.0.0.1:8001/prefix"
    assert runtime.pods.namespace == "serving"
    assert runtime.pods.triton_image == "nvcr.io/nvidia/tritonserver:25.10-py3"
    assert runtime.pods.fetcher_image == "registry.example/matrixinfer/controller:1.2.3"
    assert runtime.pods.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert runtime.pods.gpu_tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    )
    assert (
        "MATRIXINFER_CONTROLLER_S3_ENDPOINT_URL",
        "http://minio:9000",
    ) in runtime.pods.fetcher_env


def test_replica_tls_settings_reach_the_local_runtime_and_the_pods(
    tmp_path: pathlib.Path,
) -> None:
    files = pki.ensure_pki(tmp_path)
    own: dict[str, Any] = {
        "tls_cert_file": files["controller"].cert,
        "tls_key_file": files["controller"].key,
        "tls_ca_file": files["controller"].ca,
    }
    replica: dict[str, Any] = {
        "replica_tls_cert_file": files["replica"].cert,
        "replica_tls_key_file": files["replica"].key,
        "replica_tls_ca_file": files["replica"].ca,
    }
    settings = ControllerSettings(**own, **replica)
    tls = replica_tls(settings)
    assert tls is not None
    assert (tls.server, tls.client.files) == (files["replica"], files["controller"])
    assert tls.client.server_name == "replica.matrixinfer.internal"
    assert ControllerSettings(**own).replica_tls_files() is None
    assert replica_tls(ControllerSettings(**own)) is None
    with pytest.raises(ValueError, match="set all of replica_tls_cert_file"):
        ControllerSettings(**own, replica_tls_cert_file=files["replica"].cert)
    # Locally the controller's own calls to Triton present its certificate.
    with pytest.raises(ValueError, match="replica_tls_\\* needs tls_cert_file"):
        ControllerSettings(**replica)
    kube = ControllerSettings(
        runtime="kubernetes",
        kube_api_url="http://127.0.0.1:8001",
        kube_replica_tls_secret="matrixinfer-replica-tls",
    )
    assert kubernetes_runtime(kube).pods.replica_tls_secret == "matrixinfer-replica-tls"


def test_in_cluster_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(FailedPrecondition, match="KUBE_API_URL"):
        KubeConfig.of("")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = KubeConfig.of("")
    assert config.base_url == "https://10.96.0.1:443"
    assert config.token_file == SERVICE_ACCOUNT / "token"
    assert config.ca_file == SERVICE_ACCOUNT / "ca.crt"


def test_backoff_doubles_up_to_its_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=8, base_s=0.2, max_s=5.0)
    assert [policy.delay(a) for a in range(6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert policy.delay(0, "2") == 2.0
    assert policy.delay(0, "600") == 5.0


# ------------------------------------------------- the replica certificate's age


def test_a_rotated_replica_certificate_is_a_new_generation(
    tmp_path: pathlib.Path,
) -> None:
    """Triton reads its certificate only at start: the local runtime's generation
    (part of every replica template) changes when the files are rotated, and not
    while a rotation is half done."""
    files = pki.ensure_pki(tmp_path / "pki")
    tls = GrpcTls(files["replica"], ClientTls(files["controller"], pki.REPLICA))
    runtime = LocalRuntime(install=None, state_dir=tmp_path, tls=tls)  # type: ignore[arg-type]
    plain = LocalRuntime(install=None, state_dir=tmp_path)  # type: ignore[arg-type]
    first = runtime.generation()
    assert first != "" and runtime.generation() == first
    assert plain.generation() == ""

    old_key = files["replica"].key.read_bytes()
    authority = pki.Authority(tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "ca.key")
    pki.issue(authority, pki.REPLICA, tmp_path / "pki", usage="server")
    new_key = files["replica"].key.read_bytes()
    files["replica"].key.write_bytes(old_key)  # the certificate is new, its key not
    assert runtime.generation() == first
    files["replica"].key.write_bytes(new_key)
    second = runtime.generation()
    assert second not in ("", first)


async def test_a_new_generation_replaces_the_replicas_as_a_rollout(
    tmp_path: pathlib.Path,
) -> None:
    """The reconciler treats a new runtime generation as a new template: a
    replica more first (surge), then the old one drains."""
    model = pb.Model()
    model.metadata.namespace, model.metadata.name = "default", "iris"
    model.spec.model_spec.framework = "onnx"
    model.status.current_revision = 1
    infer = pb.ModelInfer()
    infer.metadata.namespace, infer.metadata.name = "default", "iris"
    infer.spec.model_ref.name = "iris"
    infer.spec.replicas = 1
    infer.spec.rollout.max_surge = 1
    registry = _Registry(pb.Resource(model=model), pb.Resource(model_infer=infer))
    runtime = FakeRuntime(current_generation="cert-1")
    reconciler = reconciler_of(registry, runtime, tmp_path, build_repositories=False)
    await reconciler.reconcile(("default", "iris"))
    [old] = runtime.replicas("default/iris")

    runtime.current_generation = "cert-2"
    await reconciler.reconcile(("default", "iris"))

    # Surge: a replica of the new template beside the old one, still serving.
    replicas = {r.name: r for r in runtime.replicas("default/iris")}
    [new] = [r for name, r in replicas.items() if name != old.name]
    assert new.spec.template != old.spec.template
    assert replicas[old.name].draining is False
    # The new one is ready: the old one drains.
    await reconciler.reconcile(("default", "iris"))
    assert [(r.name, r.draining) for r in runtime.replicas("default/iris")] == [
        (old.name, True),
        (new.name, False),
    ]
