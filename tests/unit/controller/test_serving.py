"""Model + ModelInfer → the Triton repository the replicas load (no server needed)."""

from __future__ import annotations

import pathlib
import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.domain.artifacts import Artifact
from matrixinfer.controller.domain.serving import build_repository, gpus_needed
from matrixinfer.core.errors import FailedPrecondition, InvalidArgument
from tests.conftest import ROOT


def model(framework: str = "onnx") -> pb.Model:
    m = pb.Model()
    m.metadata.name = "iris"
    m.spec.model_spec.framework = framework
    m.spec.model_spec.source.uri = "file:///models/iris"
    return m


def infer(**batching: object) -> pb.ModelInfer:
    i = pb.ModelInfer()
    for key, value in batching.items():
        if isinstance(value, list):
            getattr(i.spec.batching, key).extend(value)
        else:
            setattr(i.spec.batching, key, value)
    return i


def artifact(
    tmp_path: pathlib.Path, files: dict[str, bytes | pathlib.Path]
) -> Artifact:
    root = tmp_path / "artifact"
    root.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            shutil.copy(content, root / name)
    return Artifact("digest", root)


def read_config(repo: pathlib.Path) -> mc.ModelConfig:
    return text_format.Parse(
        (repo / "iris" / "config.pbtxt").read_text(), mc.ModelConfig()
    )


def test_onnx_on_a_python_only_server(tmp_path: pathlib.Path) -> None:
    art = artifact(tmp_path, {"model.onnx": ROOT / "examples/iris/model.onnx"})
    batching = infer(max_batch_size=16, preferred_batch_sizes=[8])
    repo = build_repository(
        tmp_path / "repo",
        "iris",
        model(),
        batching,
        art,
        ["python"],
        ["/opt/site-packages"],
    )
    config = read_config(repo)
    assert config.backend == "python" and config.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in config.input] == [("X", [4])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("label", [1]),
        ("probabilities", [3]),
    ]
    assert config.output[0].HasField(
        "reshape"
    )  # ONNX gives [batch]; clients see [batch, 1]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    model_py = (repo / "iris" / "1" / "model.py").read_text()
    assert "/opt/site-packages" in model_py and "onnxruntime" in model_py
    assert (repo / "iris" / "1" / "model.onnx").is_file()


def test_priorities_and_the_queue_policy_reach_config_pbtxt(
    tmp_path: pathlib.Path,
) -> None:
    art = artifact(tmp_path, {"model.onnx": ROOT / "examples/iris/model.onnx"})
    spec = infer(max_batch_size=8, priority_levels=3, default_priority_level=3)
    spec.spec.batching.queue_policy.max_queue_size = 5
    spec.spec.batching.queue_policy.timeout_action = "DELAY"
    spec.spec.batching.queue_policy.default_timeout_microseconds = 2000
    repo = build_repository(
        tmp_path / "repo", "iris", model(), spec, art, ["python"], []
    )
    batching = read_config(repo).dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (3, 3)
    policy = batching.default_queue_policy
    assert policy.max_queue_size == 5
    assert policy.timeout_action == mc.ModelQueuePolicy.DELAY
    assert policy.default_timeout_microseconds == 2000
    # Without defaultPriorityLevel, the middle level.
    spec.spec.batching.default_priority_level = 0
    repo = build_repository(
        tmp_path / "repo", "iris", model(), spec, art, ["python"], []
    )
    assert read_config(repo).dynamic_batching.default_priority_level == 2


def test_onnx_on_the_onnxruntime_backend(tmp_path: pathlib.Path) -> None:
    art = artifact(tmp_path, {"model.onnx": ROOT / "examples/iris/model.onnx"})
    repo = build_repository(
        tmp_path / "repo", "iris", model(), infer(), art, ["onnxruntime", "python"], []
    )
    assert read_config(repo).backend == "onnxruntime"
    assert not (repo / "iris" / "1" / "model.py").exists()


def test_io_from_the_artifacts_own_config(tmp_path: pathlib.Path) -> None:
    shipped = (
        'name: "whatever" max_batch_size: 8 '
        'input [{ name: "in" data_type: TYPE_FP32 dims: [3, 224, 224] }] '
        'output [{ name: "out" data_type: TYPE_STRING dims: [1] }]'
    )
    art = artifact(tmp_path, {"model.pt": b"weights", "config.pbtxt": shipped.encode()})
    repo = build_repository(
        tmp_path / "repo", "iris", model("pytorch"), infer(), art, ["pytorch"], []
    )
    config = read_config(repo)
    assert (
        config.name == "iris"
        and config.backend == "pytorch"
        and config.max_batch_size == 8
    )
    assert [(i.name, list(i.dims)) for i in config.input] == [("in", [3, 224, 224])]
    assert config.output[0].data_type == mc.TYPE_STRING
    assert sorted(p.name for p in (repo / "iris" / "1").iterdir()) == ["model.pt"]


@pytest.mark.parametrize(
    ("framework", "backends", "error", "words"),
    [
        ("pytorch", ["python"], FailedPrecondition, "needs Triton's 'pytorch' backend"),
        (
            "python",
            ["python"],
            FailedPrecondition,
            "unless MATRIXINFER_CONTROLLER_PYTHON_MODELS=true",
        ),
    ],
)
def test_frameworks_the_server_cannot_serve(
    tmp_path: pathlib.Path,
    framework: str,
    backends: list[str],
    error: type[Exception],
    words: str,
) -> None:
    art = artifact(tmp_path, {"model.pt": b"weights"})
    with pytest.raises(error, match=words):
        build_repository(
            tmp_path / "repo", "iris", model(framework), infer(), art, backends, []
        )


def test_onnx_without_a_batch_dimension_needs_batching_off(
    tmp_path: pathlib.Path,
) -> None:
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["X"], ["Y"])],
        "fixed",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    art = artifact(tmp_path, {"model.onnx": path})
    with pytest.raises(InvalidArgument, match="maxBatchSize: 0"):
        build_repository(
            tmp_path / "repo", "iris", model(), infer(), art, ["python"], []
        )
    repo = build_repository(
        tmp_path / "repo2",
        "iris",
        model(),
        infer(max_batch_size=0),
        art,
        ["python"],
        [],
    )
    config = read_config(repo)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]


@pytest.mark.parametrize(
    "gpu, groups, needed",
    [
        (0, [], 0),
        (0, [{"kind": "CPU"}], 0),
        (0, [{"kind": "GPU"}], 1),
        (0, [{"kind": "GPU", "gpus": [0]}], 1),
        (0, [{"kind": "GPU", "gpus": [1]}], 2),
        (0, [{"kind": "GPU", "gpus": [0]}, {"kind": "GPU", "gpus": [2, 1]}], 3),
        (4, [{"kind": "GPU", "gpus": [1]}], 4),
        (2, [{"kind": "CPU"}], 2),
    ],
)
def test_gpus_a_replica_takes(
    gpu: int, groups: list[dict[str, object]], needed: int
) -> None:
    spec = pb.ModelInferSpec()
    spec.resources.gpu = gpu
    for group in groups:
        added = spec.instance_groups.add(kind=str(group["kind"]))
        added.gpus.extend(group.get("gpus", []))  # type: ignore[arg-type]
    assert gpus_needed(spec) == needed


def test_a_trusted_python_model_is_served_by_its_own_code_through_a_loader(
    tmp_path: pathlib.Path,
) -> None:
    """framework: python with the controller's opt-in: the artifact's files as they
    are, the generated loader named as the model's file (it puts this environment's
    packages on the stub's path), the decoupled policy and the Model's tensors."""
    code = b"class TritonPythonModel:\n    pass\n"
    art = artifact(tmp_path, {"model.py": code, "vocab.txt": b"a b"})
    m = model("python")
    m.spec.model_spec.transaction_policy.decoupled = True
    m.spec.model_spec.max_batch_size = 0
    m.spec.model_spec.inputs.add(name="text_input", data_type="BYTES", dims=[1])
    m.spec.model_spec.outputs.add(name="text_output", data_type="BYTES", dims=[1])
    repo = build_repository(
        tmp_path / "repo", "iris", m, infer(), art, ["python"], ["/opt/site"], 1, True
    )
    config = read_config(repo)
    assert config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert config.default_model_filename == "matrixinfer_model.py"
    assert [i.name for i in config.input] == ["text_input"]
    version = repo / "iris" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "matrixinfer_model.py",
        "model.py",
        "vocab.txt",
    ]
    assert (version / "model.py").read_bytes() == code
    loader = (version / "matrixinfer_model.py").read_text()
    assert "_EXTRA_PATHS: list[str] = ['/opt/site']" in loader


def test_a_python_artifact_without_model_py_is_refused(tmp_path: pathlib.Path) -> None:
    art = artifact(tmp_path, {"main.py": b""})
    with pytest.raises(InvalidArgument, match="no model.py at the top"):
        build_repository(
            tmp_path / "repo", "iris", model("python"), infer(), art, ["python"], [],
            1, True,
        )  # fmt: skip
