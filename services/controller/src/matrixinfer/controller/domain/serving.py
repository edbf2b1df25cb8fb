"""From a Model and a ModelInfer to a Triton model repository for one revision.

Framework → backend mapping follows what the server actually has (DESIGN.md §5): an
``onnx`` Model runs on the ``onnxruntime`` backend where it exists and otherwise on
the Python backend with ONNX Runtime (same artifact). Inputs and outputs come from the
Model when it lists them, else from the ONNX graph itself.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
from dataclasses import dataclass

import onnx
from google.protobuf import json_format

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.domain.artifacts import Artifact, ArtifactSource
from matrixinfer.core.errors import FailedPrecondition, InvalidArgument
from matrixinfer.triton import config as tc
from matrixinfer.triton.python_models import (
    ARTIFACT_LOADER,
    artifact_model_loader,
    onnx_runtime_model,
)
from matrixinfer.triton.repository import write_model

_ONNX_TYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32",
    7: "INT64", 8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32",
    13: "UINT64", 16: "BF16",
}  # fmt: skip
#: Framework → the Triton backend that serves it natively.
NATIVE_BACKENDS = {
    "onnx": "onnxruntime",
    "pytorch": "pytorch",
    "tensorflow": "tensorflow",
    "tensorrt": "tensorrt",
    "openvino": "openvino",
}
DEFAULT_MAX_BATCH = 32


def _onnx_tensors(
    values: list[onnx.ValueInfoProto], batched: bool, what: str
) -> tuple[tc.Tensor, ...]:
    tensors = []
    for value in values:
        kind = value.type.tensor_type
        data_type = _ONNX_TYPES.get(kind.elem_type)
        if data_type is None:
            raise InvalidArgument(f"ONNX {what} {value.name!r} has an unsupported type")
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in kind.shape.dim]
        if batched:
            if not dims or dims[0] != -1:
                raise InvalidArgument(
                    f"ONNX {what} {value.name!r} has no variable batch dimension; set "
                    "batching.maxBatchSize: 0"
                )
            dims = dims[1:]
        reshape = None
        if not dims:  # a [batch] vector: Triton wants at least one dimension
            dims, reshape = [1], ()
        tensors.append(tc.Tensor(value.name, data_type, tuple(dims), reshape))
    return tuple(tensors)


def _spec_tensors(tensors: list[pb.TensorSpec]) -> tuple[tc.Tensor, ...]:
    return tuple(tc.Tensor(t.name, t.data_type, tuple(t.dims)) for t in tensors)


def gpus_needed(spec: pb.ModelInferSpec) -> int:
    """How many GPUs one replica takes from the inventory.

    The rule: ``resources.gpu`` if set; a GPU instance group needs at least one GPU,
    and one naming ``gpus`` needs as many as its highest id + 1, because ids name
    the replica's own devices: a replica given inventory GPUs 4 and 7 sees them
    as 0 and 1 (``CUDA_VISIBLE_DEVICES=4,7``), and its ``config.pbtxt`` keeps the
    ids as written. A replica with no GPU group and no ``resources.gpu`` sees none.
    """
    needed = spec.resources.gpu
    for group in spec.instance_groups:
        if group.kind == "GPU":
            needed = max(needed, max(group.gpus) + 1 if group.gpus else 1)
    return needed


def build_repository(
    target: pathlib.Path,
    model_name: str,
    model: pb.Model,
    infer: pb.ModelInfer,
    artifact: Artifact,
    available_backends: list[str],
    python_paths: list[str],
    version: int = 1,
    python_models: bool = False,
) -> pathlib.Path:
    """Write ``<target>/<model_name>/{config.pbtxt,<version>/...}``; returns
    ``target``. ``version`` is the Model's revision, so a request's
    ``model_version`` (gRPC field 2, REST ``/versions/{v}``) names a revision.
    ``python_models``: run a ``framework: python`` artifact's own ``model.py``
    (code from the Model's source: an operator's choice to trust it)."""
    details = model.spec.model_spec
    framework = details.framework
    backend = model.spec.runtime.backend or NATIVE_BACKENDS.get(framework, framework)
    files: dict[str, bytes | pathlib.Path] = {}
    batching = infer.spec.batching
    if batching.HasField("max_batch_size"):
        max_batch = batching.max_batch_size
    elif details.HasField("max_batch_size"):
        max_batch = details.max_batch_size
    else:
        max_batch = DEFAULT_MAX_BATCH
    inputs = _spec_tensors(list(details.inputs))
    outputs = _spec_tensors(list(details.outputs))
    shipped = artifact.path / "config.pbtxt"
    if shipped.is_file() and not (inputs and outputs):
        # The artifact's own config says what the model takes and gives.
        shipped_in, shipped_out, shipped_batch = tc.io_from_pbtxt(shipped.read_text())
        inputs, outputs = inputs or shipped_in, outputs or shipped_out
        if not (
            batching.HasField("max_batch_size") or details.HasField("max_batch_size")
        ):
            max_batch = shipped_batch
    if framework == "onnx":
        found = artifact.find(".onnx")
        if found is None:
            raise InvalidArgument(
                f"no .onnx file in the artifact {details.source.uri} (expected "
                "model.onnx or exactly one .onnx file)"
            )
        try:
            graph = onnx.load(str(found), load_external_data=False).graph
        except Exception as e:
            raise InvalidArgument(
                f"{found.name} is not a readable ONNX model: {e}"
            ) from e
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
            raise InvalidArgument(
                "ONNX models with external data are not supported (they can point "
                "outside the model folder)"
            )
        initializers = {t.name for t in graph.initializer}
        graph_inputs = [i for i in graph.input if i.name not in initializers]
        if not inputs:
            inputs = _onnx_tensors(graph_inputs, max_batch > 0, "input")
        if not outputs:
            outputs = _onnx_tensors(list(graph.output), max_batch > 0, "output")
        if backend == "onnxruntime" and "onnxruntime" not in available_backends:
            backend = "python"
            files["model.py"] = onnx_runtime_model(python_paths).encode()
        files["model.onnx"] = found
    elif backend == "python" and not python_models:
        raise FailedPrecondition(
            "framework 'python' runs code from the artifact; this controller runs "
            "none unless MATRIXINFER_CONTROLLER_PYTHON_MODELS=true (set it only where "
            "every Model's source is trusted)"
        )
    else:
        if backend == "python" and not (artifact.path / "model.py").is_file():
            raise InvalidArgument(
                f"no model.py at the top of the artifact {details.source.uri} (a "
                "Python-backend model is a folder or archive holding model.py)"
            )
        if backend not in available_backends:
            raise FailedPrecondition(
                f"framework {framework!r} needs Triton's {backend!r} backend; this "
                f"server has only {', '.join(available_backends) or 'none'}"
            )
        for path in artifact.path.iterdir():
            if path.name != "config.pbtxt":  # ours is written from the manifests
                files[path.name] = path
        if backend == "python":
            files[ARTIFACT_LOADER] = artifact_model_loader(python_paths).encode()
    if not inputs or not outputs:
        raise InvalidArgument(
            "the Model lists no inputs/outputs and the artifact has none"
        )
    groups = tuple(
        tc.InstanceGroup(g.kind or "CPU", g.count or 1, tuple(g.gpus))
        for g in infer.spec.instance_groups
    ) or (tc.InstanceGroup("GPU" if infer.spec.resources.gpu else "CPU", 1),)
    qp = batching.queue_policy
    serving = tc.ServingConfig(
        name=model_name,
        backend=backend,
        max_batch_size=max_batch,
        inputs=inputs,
        outputs=outputs,
        dynamic_batching=max_batch > 0,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        queue_policy=(
            tc.QueuePolicy(
                qp.max_queue_size,
                qp.timeout_action or "REJECT",
                qp.default_timeout_microseconds,
            )
            if batching.HasField("queue_policy")
            else None
        ),
        instance_groups=groups,
        warmup=(
            tc.Warmup(
                infer.spec.warmup.batch_size or 1, infer.spec.warmup.data or "zero"
            )
            if infer.spec.warmup.enabled
            else None
        ),
        parameters=dict(model.spec.runtime.parameters),
        decoupled=details.transaction_policy.decoupled,
        model_filename=ARTIFACT_LOADER if ARTIFACT_LOADER in files else "",
    )
    shutil.rmtree(target, ignore_errors=True)
    write_model(target, serving, max(1, version), files)
    return target


@dataclass(frozen=True)
class RepositoryPlan:
    """Everything that decides one template's model repository: what
    :func:`prepare_repository` builds, in the controller (local runtime) or in a
    replica's init container (``python -m matrixinfer.controller.prepare``, the
    Kubernetes runtime), from the same serialized form."""

    model: pb.Model
    infer: pb.ModelInfer
    revision: int
    python_models: bool = False

    @classmethod
    def of(
        cls, model: pb.Model, infer: pb.ModelInfer, revision: int, python_models: bool
    ) -> RepositoryPlan:
        """Keeps only what the repository and the pod depend on (no status, no
        replica count), so the serialized plan is the same for every replica of a
        template."""
        kept_model = pb.Model()
        kept_model.metadata.name = model.metadata.name
        kept_model.metadata.namespace = model.metadata.namespace
        kept_model.spec.CopyFrom(model.spec)
        kept_infer = pb.ModelInfer()
        kept_infer.metadata.name = infer.metadata.name
        kept_infer.metadata.namespace = infer.metadata.namespace
        kept_infer.spec.CopyFrom(infer.spec)
        kept_infer.spec.ClearField("replicas")  # counts and rollout pace: not
        kept_infer.spec.ClearField("rollout")  # what a replica serves
        return cls(kept_model, kept_infer, revision, python_models)

    @property
    def model_name(self) -> str:
        return self.model.metadata.name

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": json_format.MessageToDict(self.model),
                "infer": json_format.MessageToDict(self.infer),
                "revision": self.revision,
                "pythonModels": self.python_models,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> RepositoryPlan:
        try:
            data = json.loads(text)
            return cls(
                json_format.ParseDict(data["model"], pb.Model()),
                json_format.ParseDict(data["infer"], pb.ModelInfer()),
                int(data["revision"]),
                bool(data.get("pythonModels", False)),
            )
        except (ValueError, KeyError, TypeError, json_format.ParseError) as e:
            raise InvalidArgument(f"not a repository plan: {e}") from e


async def prepare_repository(
    fetcher: ArtifactSource,
    plan: RepositoryPlan,
    target: pathlib.Path,
    available_backends: list[str],
    python_paths: list[str],
) -> pathlib.Path:
    """Fetch the Model's artifact (digest checked, archives unpacked safely) and
    write the Triton repository for ``plan`` at ``target``. The one way a
    repository is made: the reconciler calls it for local replicas, the init
    container of a Kubernetes replica calls it in the pod."""
    source = plan.model.spec.model_spec.source
    artifact = await fetcher.fetch(source.uri, source.sha256, source.endpoint_url)
    return await asyncio.to_thread(
        build_repository,
        target,
        plan.model_name,
        plan.model,
        plan.infer,
        artifact,
        available_backends,
        python_paths,
        plan.revision,
        plan.python_models,
    )


def placement_fields(spec: pb.ModelInferSpec) -> list[str]:
    """The ModelInfer fields that place replicas on Kubernetes nodes, where set: a
    runtime without nodes (local) must refuse them, not ignore them."""
    return [
        name
        for name, present in (
            ("spec.nodeSelector", bool(spec.node_selector)),
            ("spec.tolerations", bool(spec.tolerations)),
        )
        if present
    ]
