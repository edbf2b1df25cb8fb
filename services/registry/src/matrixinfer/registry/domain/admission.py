"""Admission: a manifest document becomes a validated, defaulted typed resource.

Validation names every wrong field (``spec.replicas: must be 0..1000``) so a user can
fix a manifest in one round trip. Server-owned metadata (uid, generation, timestamps)
and status are never taken from the manifest.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from datetime import datetime
from ipaddress import ip_address
from typing import Any

from google.protobuf import json_format

from matrixinfer.api.kinds import BY_NAME, Kind, Object, kind_of
from matrixinfer.api.names import (
    LABEL_MAX_LENGTH,
    SUBDOMAIN_MAX_LENGTH,
    is_dns1123_label,
    is_dns1123_subdomain,
)
from matrixinfer.api.v1 import meta_pb2
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument, ViolationCollector
from matrixinfer.core.scopes import GRANTABLE_SCOPE
from matrixinfer.registry.domain import structure
from matrixinfer.registry.domain.kinds import unknown_kind

# re.fullmatch everywhere: re.match with "$" accepts a trailing newline ("resnet\n").
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
# Names Triton sees (model names, tensor names): no path separators, no dot-dot.
_TRITON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_TENSOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,62}")
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_TRITON_VERSION = re.compile(r"[1-9][0-9]{0,18}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_QUANTITY = re.compile(
    r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", re.ASCII
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,511}")

MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_LABELS = 64

FRAMEWORKS = ("onnx", "pytorch", "tensorflow", "tensorrt", "python", "openvino")
TRITON_DATA_TYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)
URI_SCHEMES = ("file", "s3", "gs", "az", "http", "https")
METRIC_TYPES = (
    "Concurrency",
    "RequestsPerSecond",
    "QueueTimeMs",
    "PendingRequests",
    "GpuUtilization",
)
LOAD_BALANCERS = ("LEAST_REQUEST", "ROUND_ROBIN", "CONSISTENT_HASH")
RETRYABLE_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED", "DEADLINE_EXCEEDED")
_METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data")


def admit(doc: dict[str, Any], where: str = "") -> Object:
    """Validate and default one document. ``where`` prefixes paths in multi-document
    manifests (``manifest[2].``)."""
    errors = ViolationCollector()
    kind = _check_envelope(doc, where, errors)
    if kind is None:
        errors.raise_if_any()
        raise AssertionError("unreachable")
    body = {k: v for k, v in doc.items() if k != "status"}
    structure.check_message(body, kind.message.DESCRIPTOR, where.rstrip("."), errors)
    errors.raise_if_any()
    obj = kind.message()
    try:
        json_format.ParseDict(body, obj)
    except json_format.ParseError as e:  # the walk above should have caught it
        raise InvalidArgument.field(where.rstrip(".") or "manifest", str(e)) from e
    return validate(obj, where)


def validate(obj: Object, where: str = "", typed: bool = False) -> Object:
    """Validate and default a typed object (from a manifest or, ``typed``, from a gRPC
    request, whose strings were not checked on the way in)."""
    errors = ViolationCollector()
    if typed:
        obj.ClearField("status")
        structure.check_strings(obj, where.rstrip("."), errors)
        errors.raise_if_any()
    kind = kind_of(obj)
    obj.api_version = obj.api_version or kind.api_version
    obj.kind = obj.kind or kind.name
    if obj.api_version != kind.api_version:
        errors.add(
            f"{where}apiVersion", f"must be {kind.api_version!r} for {kind.name}"
        )
    if obj.kind != kind.name:
        errors.add(f"{where}kind", f"must be {kind.name!r}")
    _check_metadata(obj.metadata, f"{where}metadata", errors)
    obj.ClearField("status")
    _RULES[kind.name](obj, f"{where}spec", errors)
    errors.raise_if_any()
    return obj


# ------------------------------------------------------------------ envelope, metadata


def _check_envelope(
    doc: dict[str, Any], where: str, errors: ViolationCollector
) -> Kind | None:
    kind_name = doc.get("kind")
    if not isinstance(kind_name, str) or not kind_name:
        errors.add(f"{where}kind", "required")
        return None
    kind = BY_NAME.get(kind_name)
    if kind is None:
        errors.add(f"{where}kind", unknown_kind(kind_name))
        return None
    if doc.get("apiVersion") != kind.api_version:
        errors.add(
            f"{where}apiVersion", f"must be {kind.api_version!r} for {kind.name}"
        )
    if not isinstance(doc.get("metadata"), dict):
        errors.add(f"{where}metadata", "required (with at least a name)")
    if not isinstance(doc.get("spec"), dict):
        errors.add(f"{where}spec", "required")
    return kind


def check_name(
    value: str, path: str, errors: ViolationCollector, required: bool = True
) -> None:
    if not value:
        if required:
            errors.add(path, "required")
        return
    if len(value) > LABEL_MAX_LENGTH:
        errors.add(path, f"at most {LABEL_MAX_LENGTH} characters")
    elif not is_dns1123_label(value, max_length=LABEL_MAX_LENGTH):
        errors.add(
            path,
            "must be a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )


def _check_metadata(
    meta: meta_pb2.ObjectMeta, path: str, errors: ViolationCollector
) -> None:
    check_name(meta.name, f"{path}.name", errors)
    meta.namespace = meta.namespace or "default"
    check_name(meta.namespace, f"{path}.namespace", errors)
    if len(meta.labels) > MAX_LABELS:
        errors.add(f"{path}.labels", f"at most {MAX_LABELS} labels")
    for key, value in meta.labels.items():
        _check_qualified_key(key, f"{path}.labels", errors)
        if not _LABEL_VALUE.fullmatch(value):
            errors.add(
                f"{path}.labels[{key}]",
                "must be at most 63 characters of letters, digits, '-', '_' or '.'",
            )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in meta.annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        errors.add(f"{path}.annotations", f"larger than {MAX_ANNOTATIONS_BYTES} bytes")
    for key in meta.annotations:
        _check_qualified_key(key, f"{path}.annotations", errors)
    for i, finalizer in enumerate(meta.finalizers):
        _check_finalizer(finalizer, f"{path}.finalizers[{i}]", errors)
    # Server-owned fields are never taken from a manifest.
    for server_field in (
        "uid",
        "generation",
        "creation_timestamp",
        "deletion_timestamp",
    ):
        meta.ClearField(server_field)


def _check_qualified_key(key: str, path: str, errors: ViolationCollector) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns1123_subdomain(prefix, max_length=SUBDOMAIN_MAX_LENGTH):
        errors.add(f"{path}[{key[:80]}]", "prefix must be a DNS subdomain")
    elif not _LABEL_NAME.fullmatch(name):
        errors.add(
            f"{path}[{key[:80]}]",
            "name must be at most 63 characters of letters, digits, '-', '_' or '.'",
        )


def _check_finalizer(value: str, path: str, errors: ViolationCollector) -> None:
    prefix, _, name = value.rpartition("/")
    if not value or len(value) > 316 or not _LABEL_NAME.fullmatch(name):
        errors.add(path, "must be a qualified name such as 'matrixinfer.ai/replicas'")
    elif prefix and not is_dns1123_subdomain(prefix, max_length=SUBDOMAIN_MAX_LENGTH):
        errors.add(path, "prefix must be a DNS subdomain")


def check_finalizers(values: Iterable[str], path: str) -> None:
    errors = ViolationCollector()
    for i, value in enumerate(values):
        _check_finalizer(value, f"{path}[{i}]", errors)
    errors.raise_if_any()


# ------------------------------------------------------------------ helpers


def _one_of(
    value: str, allowed: tuple[str, ...], path: str, errors: ViolationCollector
) -> None:
    if value not in allowed:
        errors.add(path, f"must be one of {', '.join(allowed)}")


def _range(
    value: int | float,
    low: int | float,
    high: int | float,
    path: str,
    errors: ViolationCollector,
) -> None:
    if not low <= value <= high:
        errors.add(path, f"must be {low}..{high}")


def _pattern(
    value: str,
    pattern: re.Pattern[str],
    path: str,
    what: str,
    errors: ViolationCollector,
    required: bool = False,
) -> None:
    if not value:
        if required:
            errors.add(path, "required")
        return
    if not value.isascii() or not pattern.fullmatch(value):
        errors.add(path, f"must be {what}")


def check_uri(uri: str, path: str, errors: ViolationCollector) -> None:
    """Syntax and obvious abuse; the controller checks again after DNS resolution."""
    if not uri:
        errors.add(path, "required")
        return
    if len(uri) > 2048:
        errors.add(path, "longer than 2048 characters")
        return
    if not uri.isascii() or any(
        c.isspace() or ord(c) < 32 or ord(c) == 127 for c in uri
    ):
        errors.add(path, "must be ASCII without spaces or control characters")
        return
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme not in URI_SCHEMES:
        errors.add(
            path, f"scheme must be one of {', '.join(s + '://' for s in URI_SCHEMES)}"
        )
        return
    parsed = urllib.parse.urlsplit(uri)
    if "@" in parsed.netloc:
        errors.add(path, "must not carry credentials; use source.credentialsRef")
        return
    decoded = parsed.path
    for _ in range(3):  # %252e%252e decodes twice
        decoded = urllib.parse.unquote(decoded)
    if any(part in ("..", ".") for part in re.split(r"[/\\]", decoded)):
        errors.add(path, "must not contain '.' or '..' path segments")
        return
    if scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            errors.add(path, "file:// URIs must be absolute: file:///path/to/model")
        return
    if not parsed.hostname:
        errors.add(path, f"{scheme}:// URIs need a bucket or host")
        return
    if scheme in ("http", "https"):
        host = parsed.hostname
        try:
            address = ip_address(host)
        except ValueError:
            if host in _METADATA_HOSTS:
                errors.add(path, "cloud metadata hosts are not allowed")
        else:
            if address.is_link_local or address.is_multicast or address.is_unspecified:
                errors.add(
                    path,
                    "link-local, multicast and unspecified addresses are not allowed",
                )


# ------------------------------------------------------------------ per kind


def _model(obj: pb.Model, path: str, errors: ViolationCollector) -> None:
    if not obj.spec.HasField("model_spec"):
        errors.add(f"{path}.modelSpec", "required")
        return
    ms = obj.spec.model_spec
    p = f"{path}.modelSpec"
    _pattern(
        ms.model_id,
        _MODEL_ID,
        f"{p}.modelId",
        "letters, digits, '.', '_' or '-' (at most 128)",
        errors,
        required=True,
    )
    if not ms.framework:
        errors.add(f"{p}.framework", f"required: one of {', '.join(FRAMEWORKS)}")
    else:
        _one_of(ms.framework, FRAMEWORKS, f"{p}.framework", errors)
    _pattern(
        ms.version,
        _VERSION,
        f"{p}.version",
        "ASCII letters, digits, '.', '+', '_' or '-' (at most 64)",
        errors,
    )
    check_uri(ms.source.uri, f"{p}.source.uri", errors)
    if ms.source.sha256 and not _SHA256.fullmatch(ms.source.sha256):
        errors.add(f"{p}.source.sha256", "must be 64 lowercase hex characters")
    if ms.source.credentials_ref:
        check_name(ms.source.credentials_ref, f"{p}.source.credentialsRef", errors)
    if ms.source.endpoint_url:
        check_uri(ms.source.endpoint_url, f"{p}.source.endpointUrl", errors)
        if not ms.source.endpoint_url.startswith(("http://", "https://")):
            errors.add(f"{p}.source.endpointUrl", "must be an http:// or https:// URL")
    for name, tensors in (("inputs", ms.inputs), ("outputs", ms.outputs)):
        seen: set[str] = set()
        for i, t in enumerate(tensors):
            tp = f"{p}.{name}[{i}]"
            _pattern(t.name, _TENSOR_NAME, f"{tp}.name", "a tensor name", errors, True)
            if t.name in seen:
                errors.add(f"{tp}.name", f"duplicate {name[:-1]} name {t.name!r}")
            seen.add(t.name)
            _one_of(t.data_type, TRITON_DATA_TYPES, f"{tp}.dataType", errors)
            for j, d in enumerate(t.dims):
                if d < -1 or d == 0 or d > 2**31 - 1:
                    errors.add(
                        f"{tp}.dims[{j}]", "must be -1 (variable) or 1..2147483647"
                    )
    if ms.HasField("max_batch_size"):
        _range(ms.max_batch_size, 0, 65536, f"{p}.maxBatchSize", errors)
    if ms.transaction_policy.decoupled and ms.framework == "onnx":
        errors.add(
            f"{p}.transactionPolicy.decoupled",
            "an onnx model answers once per request; decoupled is for models "
            "that stream their responses (framework python, for one)",
        )
    rt = obj.spec.runtime
    _pattern(
        rt.image, _IMAGE, f"{path}.runtime.image", "a container image reference", errors
    )
    _pattern(
        rt.backend,
        _TRITON_NAME,
        f"{path}.runtime.backend",
        "a Triton backend name",
        errors,
    )
    for key in rt.parameters:
        _pattern(
            key,
            _ENV_NAME,
            f"{path}.runtime.parameters[{key[:64]}]",
            "letters, digits and '_'",
            errors,
        )


def _model_infer(obj: pb.ModelInfer, path: str, errors: ViolationCollector) -> None:
    spec = obj.spec
    check_name(spec.model_ref.name, f"{path}.modelRef.name", errors)
    if spec.model_ref.revision < 0:
        errors.add(
            f"{path}.modelRef.revision", "must be 0 (current) or a revision number"
        )
    if not spec.HasField("replicas"):
        spec.replicas = 1
    _range(spec.replicas, 0, 1000, f"{path}.replicas", errors)
    res = spec.resources
    for name, value in (("cpu", res.cpu), ("memory", res.memory)):
        if value:
            _pattern(
                value,
                _QUANTITY,
                f"{path}.resources.{name}",
                "a quantity such as '500m', '2' or '512Mi'",
                errors,
            )
    _range(res.gpu, 0, 64, f"{path}.resources.gpu", errors)
    b = spec.batching
    bp = f"{path}.batching"
    _range(b.max_batch_size, 0, 65536, f"{bp}.maxBatchSize", errors)
    for i, size in enumerate(b.preferred_batch_sizes):
        top = b.max_batch_size or 65536
        _range(size, 1, top, f"{bp}.preferredBatchSizes[{i}]", errors)
    if list(b.preferred_batch_sizes) != sorted(set(b.preferred_batch_sizes)):
        errors.add(f"{bp}.preferredBatchSizes", "must be increasing without duplicates")
    _range(
        b.max_queue_delay_microseconds,
        0,
        60_000_000,
        f"{bp}.maxQueueDelayMicroseconds",
        errors,
    )
    _range(b.priority_levels, 0, 100, f"{bp}.priorityLevels", errors)
    if b.default_priority_level and not b.priority_levels:
        errors.add(f"{bp}.defaultPriorityLevel", "needs priorityLevels")
    elif b.priority_levels:
        _range(
            b.default_priority_level,
            0,
            b.priority_levels,
            f"{bp}.defaultPriorityLevel",
            errors,
        )
    qp = b.queue_policy
    if b.HasField("queue_policy"):
        qp.timeout_action = qp.timeout_action or "REJECT"
        _one_of(
            qp.timeout_action,
            ("REJECT", "DELAY"),
            f"{bp}.queuePolicy.timeoutAction",
            errors,
        )
        _range(
            qp.max_queue_size, 0, 1_000_000, f"{bp}.queuePolicy.maxQueueSize", errors
        )
        _range(
            qp.default_timeout_microseconds,
            0,
            3_600_000_000,
            f"{bp}.queuePolicy.defaultTimeoutMicroseconds",
            errors,
        )
    for i, group in enumerate(spec.instance_groups):
        gp = f"{path}.instanceGroups[{i}]"
        group.kind = group.kind or ("GPU" if res.gpu > 0 else "CPU")
        _one_of(group.kind, ("CPU", "GPU"), f"{gp}.kind", errors)
        group.count = group.count or 1
        _range(group.count, 1, 64, f"{gp}.count", errors)
        if group.gpus and group.kind != "GPU":
            errors.add(f"{gp}.gpus", "only for kind GPU")
        for j, gpu in enumerate(group.gpus):
            _range(gpu, 0, 63, f"{gp}.gpus[{j}]", errors)
            # gpus are the replica's own devices, numbered 0..resources.gpu-1 once
            # it is given its GPUs (docs/decisions.md, "GPUs").
            if res.gpu and gpu >= res.gpu:
                errors.add(
                    f"{gp}.gpus[{j}]",
                    f"the replica has resources.gpu={res.gpu} GPU(s), numbered "
                    f"0..{res.gpu - 1}",
                )
    if spec.HasField("warmup"):
        spec.warmup.data = spec.warmup.data or "zero"
        _one_of(spec.warmup.data, ("zero", "random"), f"{path}.warmup.data", errors)
        _range(spec.warmup.batch_size, 0, 65536, f"{path}.warmup.batchSize", errors)
    ro = spec.rollout
    if not ro.HasField("max_surge"):
        ro.max_surge = 1
    if not ro.HasField("max_unavailable"):
        ro.max_unavailable = 0
    _range(ro.max_surge, 0, 100, f"{path}.rollout.maxSurge", errors)
    _range(ro.max_unavailable, 0, 100, f"{path}.rollout.maxUnavailable", errors)
    if ro.max_surge == 0 and ro.max_unavailable == 0:
        errors.add(f"{path}.rollout", "maxSurge and maxUnavailable cannot both be 0")
    rt = spec.runtime
    _pattern(
        rt.image, _IMAGE, f"{path}.runtime.image", "a container image reference", errors
    )
    for i, env in enumerate(rt.env):
        _pattern(
            env.name,
            _ENV_NAME,
            f"{path}.runtime.env[{i}].name",
            "an environment variable name",
            errors,
            required=True,
        )
    _placement(spec, path, errors)


_TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


def _placement(spec: pb.ModelInferSpec, path: str, errors: ViolationCollector) -> None:
    """nodeSelector and tolerations, checked as Kubernetes checks a pod's."""
    if len(spec.node_selector) > MAX_LABELS:
        errors.add(f"{path}.nodeSelector", f"at most {MAX_LABELS} entries")
    for key, value in spec.node_selector.items():
        _check_qualified_key(key, f"{path}.nodeSelector", errors)
        if not _LABEL_VALUE.fullmatch(value):
            errors.add(
                f"{path}.nodeSelector[{key[:80]}]",
                "must be at most 63 characters of letters, digits, '-', '_' or '.'",
            )
    for i, t in enumerate(spec.tolerations):
        tp = f"{path}.tolerations[{i}]"
        t.operator = t.operator or "Equal"
        _one_of(t.operator, ("Equal", "Exists"), f"{tp}.operator", errors)
        _one_of(t.effect, _TOLERATION_EFFECTS, f"{tp}.effect", errors)
        if t.key:
            _check_qualified_key(t.key, f"{tp}.key", errors)
        elif t.operator != "Exists":
            errors.add(f"{tp}.key", "required unless operator is Exists")
        if t.operator == "Exists" and t.value:
            errors.add(f"{tp}.value", "must be empty when operator is Exists")
        elif t.value and not _LABEL_VALUE.fullmatch(t.value):
            errors.add(
                f"{tp}.value",
                "must be at most 63 characters of letters, digits, '-', '_' or '.'",
            )
        if t.HasField("toleration_seconds") and t.effect != "NoExecute":
            errors.add(f"{tp}.tolerationSeconds", "only with effect NoExecute")


def _model_server(obj: pb.ModelServer, path: str, errors: ViolationCollector) -> None:
    spec = obj.spec
    # Nothing the API accepts may be ignored: what the data plane does not do yet
    # is refused, naming the field.
    if spec.workload_selector.match_labels:
        errors.add(
            f"{path}.workloadSelector",
            "not supported yet: name the ModelInfer in modelInferRef",
        )
    if not spec.model_infer_ref:
        errors.add(f"{path}.modelInferRef", "required: the ModelInfer to expose")
    else:
        check_name(spec.model_infer_ref, f"{path}.modelInferRef", errors)
    _check_triton_model_name(spec.model, f"{path}.model", errors, required=False)
    spec.protocol = spec.protocol or "grpc"
    if spec.protocol != "grpc":
        errors.add(
            f"{path}.protocol",
            "only grpc is supported (gRPC calls reach the replicas' gRPC port, REST "
            "calls their HTTP port)",
        )
    tp = spec.traffic_policy
    pp = f"{path}.trafficPolicy"
    tp.timeout_ms = tp.timeout_ms or 30_000
    _range(tp.timeout_ms, 1, 3_600_000, f"{pp}.timeoutMs", errors)
    if not tp.HasField("retry"):
        tp.retry.attempts = 2
    _range(tp.retry.attempts, 0, 10, f"{pp}.retry.attempts", errors)
    if tp.retry.per_try_timeout_ms:
        errors.add(
            f"{pp}.retry.perTryTimeoutMs",
            "not supported yet: timeoutMs bounds the whole call, retries included",
        )
    if not tp.retry.retry_on:
        tp.retry.retry_on.append("UNAVAILABLE")
    for i, code in enumerate(tp.retry.retry_on):
        _one_of(code, RETRYABLE_CODES, f"{pp}.retry.retryOn[{i}]", errors)
    lb = tp.load_balancer
    lb.type = lb.type or "LEAST_REQUEST"
    _one_of(lb.type, LOAD_BALANCERS, f"{pp}.loadBalancer.type", errors)
    if lb.type == "CONSISTENT_HASH":
        _pattern(
            lb.consistent_hash.header,
            _HEADER_NAME,
            f"{pp}.loadBalancer.consistentHash.header",
            "a lowercase header name (letters, digits, '-')",
            errors,
            required=True,
        )
    od = tp.outlier_detection
    od.consecutive_errors = od.consecutive_errors or 5
    od.base_ejection_seconds = od.base_ejection_seconds or 30
    _range(
        od.consecutive_errors,
        1,
        1000,
        f"{pp}.outlierDetection.consecutiveErrors",
        errors,
    )
    _range(
        od.base_ejection_seconds,
        1,
        3600,
        f"{pp}.outlierDetection.baseEjectionSeconds",
        errors,
    )
    _range(
        tp.max_concurrent_requests_per_replica,
        0,
        100_000,
        f"{pp}.maxConcurrentRequestsPerReplica",
        errors,
    )


def _check_triton_model_name(
    value: str, path: str, errors: ViolationCollector, required: bool
) -> None:
    _pattern(
        value,
        _TRITON_NAME,
        path,
        "a model name: letters, digits, '.', '_' or '-' (at most 63), "
        "starting with a letter or digit",
        errors,
        required,
    )
    if value.startswith("triton_") or ".." in value:
        errors.add(
            path, "names starting with 'triton_' or containing '..' are reserved"
        )


def _model_route(obj: pb.ModelRoute, path: str, errors: ViolationCollector) -> None:
    spec = obj.spec
    _check_triton_model_name(
        spec.model_name, f"{path}.modelName", errors, required=True
    )
    if not spec.rules:
        errors.add(f"{path}.rules", "at least one rule is required")
    names: set[str] = set()
    for i, rule in enumerate(spec.rules):
        rp = f"{path}.rules[{i}]"
        rule.name = rule.name or f"rule-{i}"
        check_name(rule.name, f"{rp}.name", errors)
        if rule.name in names:
            errors.add(f"{rp}.name", f"duplicate rule name {rule.name!r}")
        names.add(rule.name)
        if rule.match.version:
            _pattern(
                rule.match.version,
                _TRITON_VERSION,
                f"{rp}.match.version",
                "a positive integer in ASCII digits without leading zeros",
                errors,
            )
            if (
                rule.match.version.isascii()
                and len(rule.match.version) >= 19
                and (int(rule.match.version) > 2**63 - 1)
            ):
                errors.add(f"{rp}.match.version", "must be below 2**63")
        for header, match in rule.match.headers.items():
            hp = f"{rp}.match.headers[{header[:64]}]"
            if not _HEADER_NAME.fullmatch(header):
                errors.add(hp, "header names are lowercase letters, digits and '-'")
            which = match.WhichOneof("match")
            if which is None:
                errors.add(hp, "set one of exact, prefix or regex")
            elif which == "regex":
                try:
                    re.compile(match.regex)
                except re.error as e:
                    errors.add(f"{hp}.regex", f"not a valid regular expression: {e}")
        for j, tenant in enumerate(rule.match.tenants):
            if not _TENANT.fullmatch(tenant):
                errors.add(
                    f"{rp}.match.tenants[{j}]",
                    "at most 64 letters, digits, '.', '_' or '-'",
                )
        if not rule.targets:
            errors.add(f"{rp}.targets", "at least one target is required")
        weighted = [t.HasField("weight") for t in rule.targets]
        if rule.targets and not any(weighted):
            share, extra = divmod(100, len(rule.targets))
            for j, target in enumerate(rule.targets):
                target.weight = share + (1 if j < extra else 0)
        elif not all(weighted):
            errors.add(f"{rp}.targets", "give every target a weight, or none")
        total = 0
        for j, target in enumerate(rule.targets):
            check_name(target.model_server, f"{rp}.targets[{j}].modelServer", errors)
            _range(target.weight, 0, 100, f"{rp}.targets[{j}].weight", errors)
            total += target.weight
        if rule.targets and all(weighted) and total != 100:
            errors.add(f"{rp}.targets", f"weights must add up to 100, not {total}")
        if rule.HasField("mirror"):
            check_name(rule.mirror.model_server, f"{rp}.mirror.modelServer", errors)
            _range(rule.mirror.percent, 0, 100, f"{rp}.mirror.percent", errors)
        _range(rule.timeout_ms, 0, 3_600_000, f"{rp}.timeoutMs", errors)
        _range(rule.priority, 0, 100, f"{rp}.priority", errors)
    if spec.HasField("rate_limit"):
        rl = spec.rate_limit
        lp = f"{path}.rateLimit"
        if not 0 < rl.requests_per_second <= 1_000_000:
            errors.add(f"{lp}.requestsPerSecond", "must be above 0 and at most 1000000")
        elif rl.burst == 0:
            rl.burst = max(1, int(rl.requests_per_second + 0.999999))
        _range(rl.burst, 1, 10_000_000, f"{lp}.burst", errors)
        rl.per = rl.per or "route"
        _one_of(rl.per, ("route", "tenant"), f"{lp}.per", errors)


def _autoscaling_policy(
    obj: pb.AutoscalingPolicy, path: str, errors: ViolationCollector
) -> None:
    spec = obj.spec
    spec.target_ref.kind = spec.target_ref.kind or "ModelInfer"
    _one_of(spec.target_ref.kind, ("ModelInfer",), f"{path}.targetRef.kind", errors)
    check_name(spec.target_ref.name, f"{path}.targetRef.name", errors)
    if not spec.HasField("min_replicas"):
        spec.min_replicas = 1
    if not spec.HasField("max_replicas"):
        spec.max_replicas = max(10, spec.min_replicas)
    _range(spec.min_replicas, 0, 1000, f"{path}.minReplicas", errors)
    _range(spec.max_replicas, 1, 1000, f"{path}.maxReplicas", errors)
    if spec.min_replicas > spec.max_replicas:
        errors.add(f"{path}.maxReplicas", "must be at least minReplicas")
    if not spec.metrics:
        spec.metrics.add(type="Concurrency", target=10)
    seen: set[str] = set()
    for i, metric in enumerate(spec.metrics):
        mp = f"{path}.metrics[{i}]"
        _one_of(metric.type, METRIC_TYPES, f"{mp}.type", errors)
        if metric.type in seen:
            errors.add(f"{mp}.type", f"duplicate metric {metric.type!r}")
        seen.add(metric.type)
        if not metric.target > 0:
            errors.add(f"{mp}.target", "must be above 0")
        elif metric.type == "GpuUtilization" and metric.target > 100:
            errors.add(f"{mp}.target", "a utilization target is a percentage: 1..100")
    if not spec.HasField("tolerance_percent"):
        spec.tolerance_percent = 10
    _range(spec.tolerance_percent, 0, 100, f"{path}.tolerancePercent", errors)
    bh = spec.behavior
    bp = f"{path}.behavior"
    defaults = (
        ("stable_window_seconds", "stableWindowSeconds", 60, 6, 3600),
        ("panic_window_seconds", "panicWindowSeconds", 6, 1, 3600),
        ("panic_threshold_percent", "panicThresholdPercent", 200, 110, 10000),
        (
            "scale_to_zero_grace_period_seconds",
            "scaleToZeroGracePeriodSeconds",
            30,
            0,
            86400,
        ),
    )
    for field, json_name, default, low, high in defaults:
        if not bh.HasField(field):  # type: ignore[arg-type]
            setattr(bh, field, default)
        _range(getattr(bh, field), low, high, f"{bp}.{json_name}", errors)
    if bh.panic_window_seconds > bh.stable_window_seconds:
        errors.add(f"{bp}.panicWindowSeconds", "must not exceed stableWindowSeconds")
    for name, rules, pct, period, window in (
        ("scaleUp", bh.scale_up, 1000, 1, 0),
        ("scaleDown", bh.scale_down, 50, 60, 60),
    ):
        sp = f"{bp}.{name}"
        for field, json_name, default, low, high in (
            ("max_percent", "maxPercent", pct, 1, 100_000),
            ("period_seconds", "periodSeconds", period, 1, 3600),
            (
                "stabilization_window_seconds",
                "stabilizationWindowSeconds",
                window,
                0,
                3600,
            ),
        ):
            if not rules.HasField(field):  # type: ignore[arg-type]
                setattr(rules, field, default)
            _range(getattr(rules, field), low, high, f"{sp}.{json_name}", errors)
        if rules.HasField("max_replicas"):
            _range(rules.max_replicas, 1, 1000, f"{sp}.maxReplicas", errors)


def _api_key(obj: pb.ApiKey, path: str, errors: ViolationCollector) -> None:
    errors.add(
        "kind",
        "ApiKeys are created with CreateApiKey (matrixinfer apikey create), which "
        "shows the secret once; they cannot be applied",
    )


# The grammar is core's (matrixinfer.core.scopes; docs/security.md).
_SCOPE = GRANTABLE_SCOPE
_SCOPES_SAID = (
    "infer:*, infer:<model name>, read, read:ns/<namespace>, admin or "
    "admin:ns/<namespace>"
)
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_api_key_request(
    namespace: str, subject: str, scopes: list[str], tenant: str, expires_at: str
) -> float | None:
    """Validate a CreateApiKey request; returns the expiry in epoch seconds."""
    errors = ViolationCollector()
    check_name(namespace, "namespace", errors)
    if not subject or len(subject) > 253 or not subject.isprintable():
        errors.add("subject", "required: at most 253 printable characters")
    if not scopes:
        errors.add("scopes", f"at least one: {_SCOPES_SAID}")
    for i, scope in enumerate(scopes):
        if not scope.isascii() or not _SCOPE.fullmatch(scope):
            errors.add(f"scopes[{i}]", f"must be {_SCOPES_SAID}")
    if tenant and not _TENANT.fullmatch(tenant):
        errors.add("tenant", "at most 64 letters, digits, '.', '_' or '-'")
    expires_s: float | None = None
    if expires_at:
        try:
            when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no time zone")
            expires_s = when.timestamp()
        except ValueError:
            errors.add(
                "expiresAt", "must be an RFC 3339 time such as 2027-01-31T00:00:00Z"
            )
    errors.raise_if_any()
    return expires_s


_RULES: dict[str, Any] = {
    "ApiKey": _api_key,
    "Model": _model,
    "ModelInfer": _model_infer,
    "ModelServer": _model_server,
    "ModelRoute": _model_route,
    "AutoscalingPolicy": _autoscaling_policy,
}
