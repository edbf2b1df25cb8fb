"""``config.pbtxt`` from a typed description, through tritonclient's ModelConfig.

The controller describes what it wants in plain dataclasses (no tritonclient types
outside this package); this module turns that into ``model_config_pb2.ModelConfig``
and its text form. Never string templates: the message type catches unknown fields
and wrong types before Triton ever sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from matrixinfer.core.errors import InvalidArgument

INSTANCE_KINDS = {
    "CPU": mc.ModelInstanceGroup.KIND_CPU,
    "GPU": mc.ModelInstanceGroup.KIND_GPU,
}
TIMEOUT_ACTIONS = {
    "REJECT": mc.ModelQueuePolicy.REJECT,
    "DELAY": mc.ModelQueuePolicy.DELAY,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    #: Triton data type without the TYPE_ prefix: FP32, INT64, BYTES, ...
    data_type: str
    #: Without the batch dimension; -1 for a variable size.
    dims: tuple[int, ...]
    #: The shape the model actually produces, when it differs from ``dims`` (an ONNX
    #: label vector of shape [batch] is declared as dims [1] with reshape []).
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class QueuePolicy:
    max_queue_size: int = 0
    timeout_action: str = "REJECT"
    default_timeout_microseconds: int = 0


@dataclass(frozen=True)
class InstanceGroup:
    kind: str = "CPU"
    count: int = 1
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Warmup:
    batch_size: int = 1
    #: zero | random
    data: str = "zero"


@dataclass(frozen=True)
class ServingConfig:
    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    priority_levels: int = 0
    #: 0: the middle level
    default_priority_level: int = 0
    queue_policy: QueuePolicy | None = None
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    warmup: Warmup | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    #: The model may send any number of responses per request.
    decoupled: bool = False
    #: The file the backend loads instead of its default (model.py).
    model_filename: str = ""


def _data_type(name: str) -> int:
    # The wire protocol says BYTES where model configs say TYPE_STRING.
    return int(mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"))


def _tensor(message: mc.ModelInput | mc.ModelOutput, tensor: Tensor) -> None:
    message.name = tensor.name
    message.data_type = _data_type(tensor.data_type)
    message.dims.extend(tensor.dims)
    if tensor.reshape is not None:
        message.reshape.shape.extend(tensor.reshape)


def build_model_config(spec: ServingConfig) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=spec.name, backend=spec.backend, max_batch_size=spec.max_batch_size
    )
    for tensor in spec.inputs:
        _tensor(config.input.add(), tensor)
    for tensor in spec.outputs:
        _tensor(config.output.add(), tensor)
    if spec.dynamic_batching and spec.max_batch_size > 0:
        batching = config.dynamic_batching
        batching.SetInParent()
        batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = spec.max_queue_delay_microseconds
        if spec.priority_levels:
            batching.priority_levels = spec.priority_levels
            batching.default_priority_level = (
                spec.default_priority_level or (spec.priority_levels + 1) // 2
            )
        if spec.queue_policy is not None:
            policy = batching.default_queue_policy
            policy.max_queue_size = spec.queue_policy.max_queue_size
            policy.timeout_action = TIMEOUT_ACTIONS[spec.queue_policy.timeout_action]
            policy.default_timeout_microseconds = (
                spec.queue_policy.default_timeout_microseconds
            )
    for group in spec.instance_groups:
        message = config.instance_group.add(
            kind=INSTANCE_KINDS[group.kind], count=group.count
        )
        message.gpus.extend(group.gpus)
    if spec.warmup is not None:
        sample = config.model_warmup.add(
            name="matrixinfer-warmup", batch_size=max(1, spec.warmup.batch_size)
        )
        for tensor in spec.inputs:
            data = sample.inputs[tensor.name]
            data.data_type = _data_type(tensor.data_type)
            data.dims.extend(d if d > 0 else 1 for d in tensor.dims)
            if spec.warmup.data == "random":
                data.random_data = True
            else:
                data.zero_data = True
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = value
    if spec.decoupled:
        config.model_transaction_policy.decoupled = True
    if spec.model_filename:
        config.default_model_filename = spec.model_filename
    return config


def io_from_pbtxt(text: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], int]:
    """Inputs, outputs and max batch size from a ``config.pbtxt`` an artifact ships.
    Only these are taken: everything else about serving is ours to decide."""
    try:
        config = text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise InvalidArgument(f"the artifact's config.pbtxt does not parse: {e}") from e

    def tensors(items: Any) -> tuple[Tensor, ...]:
        out = []
        for item in items:
            name = mc.DataType.Name(item.data_type).removeprefix("TYPE_")
            reshape = tuple(item.reshape.shape) if item.HasField("reshape") else None
            out.append(
                Tensor(
                    item.name,
                    "BYTES" if name == "STRING" else name,
                    tuple(item.dims),
                    reshape,
                )
            )
        return tuple(out)

    return tensors(config.input), tensors(config.output), config.max_batch_size


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)
