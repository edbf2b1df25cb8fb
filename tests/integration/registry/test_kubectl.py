"""The registry's Kubernetes API, driven by the real kubectl (.venv/bin/kubectl) and
the official kubernetes Python client against a real registry (SQLite, ephemeral
ports): what a user types and sees."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, UnprocessibleEntityError

from matrixinfer.cli import render
from matrixinfer.core import pki
from matrixinfer.registry.kube.resources import proto_json
from matrixinfer.registry.main import RegistryApp
from tests.conftest import ROOT, registry_settings

KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"
IRIS_ONNX = ROOT / "examples/iris/model.onnx"
BAD_MANIFEST = """
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {name: bad}
spec:
  modelRef: {name: iris}
  replicas: 5000
"""


def model_manifest(name: str, labels: dict[str, str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "registry.matrixinfer.ai/v1alpha1",
            "kind": "Model",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "modelSpec": {
                    "modelId": name,
                    "framework": "onnx",
                    "version": "1",
                    "source": {"uri": f"file://{IRIS_ONNX}"},
                }
            },
        }
    )


@dataclass
class Kube:
    """kubectl pointed at one registry, reading no user configuration."""

    app: RegistryApp
    loop: asyncio.AbstractEventLoop
    tmp: pathlib.Path

    @property
    def url(self) -> str:
        return self.app.kube_url

    def argv(self, *args: str) -> list[str]:
        return [
            str(KUBECTL),
            "--kubeconfig",
            str(self.tmp / "kubeconfig"),
            "--cache-dir",
            str(self.tmp / "kube-cache"),
            "--server",
            self.url,
            *args,
        ]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        return {**env, "HOME": str(self.tmp), **extra}

    def run(
        self, *args: str, stdin: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=60,
        )

    def ok(self, *args: str, stdin: str | None = None, **env: str) -> str:
        result = self.run(*args, stdin=stdin, **env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def apply_iris(self) -> str:
        return self.ok("apply", "-f", "-", stdin=iris_manifests())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def http(
        self, method: str, path: str, body: Any = None, content_type: str = ""
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())


def iris_manifests(**replace: str) -> str:
    text = (ROOT / "examples/quickstart/iris.yaml").read_text()
    text = text.replace("file://${IRIS_MODEL}", f"file://{IRIS_ONNX}")
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


@pytest.fixture
def kube(tmp_path: pathlib.Path) -> Iterator[Kube]:
    """A registry on ephemeral ports, served from its own event loop so kubectl
    can run as a plain blocking subprocess."""
    (tmp_path / "kubeconfig").write_text("")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = registry_settings(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    app = asyncio.run_coroutine_threadsafe(RegistryApp.start(settings), loop).result(60)
    try:
        yield Kube(app, loop, tmp_path)
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def cells(line: str) -> list[str]:
    return re.split(r"\s{3,}", line.strip())


# ------------------------------------------------------------------ kubectl


def test_apply_creates_every_kind_of_the_quickstart(kube: Kube) -> None:
    out = kube.apply_iris()

    assert out.splitlines() == [
        "model.registry.matrixinfer.ai/iris created",
        "modelinfer.workload.matrixinfer.ai/iris created",
        "modelserver.networking.matrixinfer.ai/iris created",
        "modelroute.networking.matrixinfer.ai/iris created",
        "autoscalingpolicy.registry.matrixinfer.ai/iris created",
    ]
    assert (
        kube.apply_iris().splitlines()[0]
        == "model.registry.matrixinfer.ai/iris unchanged"
    )


def test_api_resources_from_aggregated_discovery(kube: Kube) -> None:
    result = kube.run("api-resources", "-v=6")

    assert result.returncode == 0, result.stderr
    rows = sorted(cells(line) for line in result.stdout.splitlines()[1:])
    reg, work, net = (
        f"{g}.matrixinfer.ai/v1alpha1" for g in ("registry", "workload", "networking")
    )
    assert rows == [
        ["autoscalingpolicies", "asp", reg, "true", "AutoscalingPolicy"],
        ["modelinfers", "mi", work, "true", "ModelInfer"],
        ["modelroutes", "mr", net, "true", "ModelRoute"],
        ["models", reg, "true", "Model"],
        ["modelservers", "ms", net, "true", "ModelServer"],
    ]
    # One answer for /api and one for /apis: no request per group/version.
    paths = re.findall(r'verb="GET" url="http://[^/]+(/[^?"]*)', result.stderr)
    assert sorted(paths) == ["/api", "/apis"]


def test_get_modelinfers_shows_the_cli_columns(kube: Kube) -> None:
    kube.apply_iris()

    lines = kube.ok("get", "modelinfers").splitlines()
    wide = kube.ok("get", "mi", "-o", "wide").splitlines()

    assert cells(lines[0]) == [h for h, _ in render.columns("ModelInfer", False, False)]
    assert cells(lines[0]) == ["NAME", "MODEL", "READY", "REVISION", "AGE"]
    assert cells(lines[1])[:4] == ["iris", "iris", "0/1", "-"]
    assert re.fullmatch(r"\d+s", cells(lines[1])[4])
    assert cells(wide[0]) == [h for h, _ in render.columns("ModelInfer", True, False)]
    assert len(lines) == 2


def test_get_prints_what_the_cli_prints(kube: Kube) -> None:
    """Same columns, same cells, same spacing: the CLI's table of the stored
    objects, with AGE (the only time-dependent cell) taken from kubectl's."""
    kube.apply_iris()
    kube.ok("apply", "-f", "-", stdin=model_manifest("resnet-fifty", {"app": "x"}))
    items, _, _ = kube.call(kube.app.service.list("Model", "default", "", 0, ""))

    out = kube.ok("get", "models").rstrip("\n")
    ages = [cells(line)[-1] for line in out.splitlines()[1:]]
    expected = render.table(
        "Model", [proto_json(r) for r in items], datetime.datetime.now(datetime.UTC)
    )
    expected_lines = expected.splitlines()
    for i, age in enumerate(ages, start=1):
        expected_lines[i] = re.sub(r"\S+$", age, expected_lines[i])
    assert out == "\n".join(expected_lines)


def test_get_yaml_shows_the_stored_object(kube: Kube) -> None:
    kube.apply_iris()

    doc = yaml.safe_load(kube.ok("get", "modelinfer", "iris", "-o", "yaml"))

    assert doc["apiVersion"] == "workload.matrixinfer.ai/v1alpha1"
    assert doc["kind"] == "ModelInfer"
    assert doc["metadata"]["name"] == "iris"
    assert doc["metadata"]["namespace"] == "default"
    assert doc["metadata"]["generation"] == 1
    assert doc["spec"]["replicas"] == 1
    assert doc["spec"]["batching"]["maxQueueDelayMicroseconds"] == 200  # int64
    assert doc["metadata"]["resourceVersion"].isdigit()


def test_get_watch_prints_a_line_per_change(kube: Kube) -> None:
    kube.apply_iris()
    watcher = subprocess.Popen(
        kube.argv("get", "modelinfers", "-w"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kube.env(),
    )
    try:
        assert watcher.stdout is not None
        header, first = watcher.stdout.readline(), watcher.stdout.readline()
        kube.ok(
            "patch", "mi", "iris", "--type", "merge", "-p", '{"spec":{"replicas":7}}'
        )
        changed = watcher.stdout.readline()
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)

    assert cells(header) == ["NAME", "MODEL", "READY", "REVISION", "AGE"]
    assert cells(first)[:3] == ["iris", "iris", "0/1"]
    assert cells(changed)[:3] == ["iris", "iris", "0/7"]


def test_describe_shows_metadata_and_spec(kube: Kube) -> None:
    kube.apply_iris()

    out = kube.ok("describe", "modelinfer", "iris")

    assert "Name:         iris" in out
    assert "Labels:       app=iris" in out
    assert "API Version:  workload.matrixinfer.ai/v1alpha1" in out
    assert re.search(r"Replicas:\s+1\n", out)


def test_edit_through_an_editor_script(kube: Kube) -> None:
    kube.apply_iris()

    out = kube.ok(
        "edit", "modelinfer", "iris", EDITOR="sed -i 's/^  replicas: 1$/  replicas: 4/'"
    )

    assert out.strip() == "modelinfer.workload.matrixinfer.ai/iris edited"
    assert kube.ok("get", "mi", "iris", "-o", "jsonpath={.spec.replicas}") == "4"
    assert kube.ok("get", "mi", "iris", "-o", "jsonpath={.metadata.generation}") == "2"


def test_replace_puts_the_whole_object(kube: Kube) -> None:
    kube.apply_iris()
    manifest = yaml.safe_load(model_manifest("iris", {"app": "replaced"}))
    missing = yaml.safe_load(model_manifest("nowhere", {}))

    out = kube.ok("replace", "-f", "-", stdin=yaml.safe_dump(manifest))
    absent = kube.run("replace", "-f", "-", stdin=yaml.safe_dump(missing))

    assert out.strip() == "model.registry.matrixinfer.ai/iris replaced"
    assert kube.ok("get", "model", "iris", "-o", "jsonpath={.metadata.labels.app}") == (
        "replaced"
    )
    assert absent.returncode == 1
    assert "(NotFound)" in absent.stderr


def test_patch_merge_changes_the_spec_strategic_and_json_are_refused(
    kube: Kube,
) -> None:
    kube.apply_iris()

    out = kube.ok(
        "patch", "mi", "iris", "--type", "merge", "-p", '{"spec":{"replicas":2}}'
    )
    strategic = kube.run("patch", "mi", "iris", "-p", '{"spec":{"replicas":3}}')

    assert out.strip() == "modelinfer.workload.matrixinfer.ai/iris patched"
    assert kube.ok("get", "mi", "iris", "-o", "jsonpath={.spec.replicas}") == "2"
    assert strategic.returncode == 1
    assert "application/strategic-merge-patch+json" in strategic.stderr
    json_patch = kube.run(
        "patch", "mi", "iris", "--type", "json",
        "-p", '[{"op":"replace","path":"/spec/replicas","value":5}]',
    )  # fmt: skip
    assert json_patch.returncode == 1
    assert "application/json-patch+json is not supported" in json_patch.stderr


def test_patch_of_the_status_subresource(kube: Kube) -> None:
    kube.apply_iris()
    status = {
        "status": {"readyReplicas": 1, "desiredReplicas": 1, "observedGeneration": 1}
    }

    kube.ok(
        "patch", "mi", "iris", "--subresource=status", "--type", "merge",
        "-p", json.dumps(status),
    )  # fmt: skip
    # The main resource ignores status; the spec stays as applied.
    kube.ok(
        "patch", "mi", "iris", "--type", "merge", "-p", '{"status":{"readyReplicas":0}}'
    )

    assert cells(kube.ok("get", "mi").splitlines()[1])[:3] == ["iris", "iris", "1/1"]


def test_delete_then_get_is_not_found(kube: Kube) -> None:
    kube.apply_iris()

    out = kube.ok("delete", "modelroute", "iris")
    gone = kube.run("get", "modelroute", "iris")

    assert out.startswith('modelroute.networking.matrixinfer.ai "iris" deleted')
    assert gone.returncode == 1
    assert gone.stderr.startswith("Error from server (NotFound):")


def test_explain_modelinfer_spec(kube: Kube) -> None:
    out = kube.ok("explain", "modelinfer.spec")

    assert "KIND:       ModelInfer" in out
    assert "FIELD: spec <ModelInferSpec>" in out
    assert re.search(r"^  replicas\t<integer>$", out, re.M)
    assert re.search(r"^  modelRef\t<ModelRef>$", out, re.M)
    assert re.search(r"^  instanceGroups\t<\[\]InstanceGroup>$", out, re.M)


def test_apply_dry_run_server_stores_nothing(kube: Kube) -> None:
    kube.apply_iris()

    changed = kube.ok(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=iris_manifests(**{"replicas: 1": "replicas: 3"}),
    )
    created = kube.ok(
        "apply", "--dry-run=server", "-f", "-", stdin=model_manifest("new", {"a": "b"})
    )

    assert (
        "modelinfer.workload.matrixinfer.ai/iris configured (server dry run)" in changed
    )
    assert (
        created.strip() == "model.registry.matrixinfer.ai/new created (server dry run)"
    )
    assert kube.ok("get", "mi", "iris", "-o", "jsonpath={.spec.replicas}") == "1"
    assert kube.run("get", "model", "new").returncode == 1


def test_apply_server_side(kube: Kube) -> None:
    kube.apply_iris()

    out = kube.ok(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=iris_manifests(**{"replicas: 1": "replicas: 2"}),
    )

    assert "modelinfer.workload.matrixinfer.ai/iris serverside-applied" in out
    assert kube.ok("get", "mi", "iris", "-o", "jsonpath={.spec.replicas}") == "2"


def test_a_large_object_needs_server_side_apply(kube: Kube) -> None:
    manifest = yaml.safe_load(model_manifest("large", {"app": "x"}))
    manifest["metadata"]["annotations"] = {"note": "x" * 4000}
    text = yaml.safe_dump(manifest)

    client_side = kube.run("apply", "-f", "-", stdin=text)
    server_side = kube.run("apply", "--server-side", "-f", "-", stdin=text)

    assert client_side.returncode == 1
    assert (
        "metadata.annotations[kubectl.kubernetes.io/last-applied-configuration]: "
        "longer than 4096 characters" in client_side.stderr
    )
    assert server_side.returncode == 0, server_side.stderr
    assert (
        server_side.stdout.strip()
        == "model.registry.matrixinfer.ai/large serverside-applied"
    )


def test_get_with_a_label_selector(kube: Kube) -> None:
    for name, app in (("alpha", "iris"), ("beta", "other"), ("gamma", "iris")):
        kube.ok("apply", "-f", "-", stdin=model_manifest(name, {"app": app}))

    out = kube.ok("get", "models", "-l", "app=iris", "-o", "name")

    assert out.split() == [
        "model.registry.matrixinfer.ai/alpha",
        "model.registry.matrixinfer.ai/gamma",
    ]


def test_get_all_namespaces_and_by_field(kube: Kube) -> None:
    kube.ok("apply", "-f", "-", stdin=model_manifest("alpha", {"app": "x"}))
    kube.ok(
        "apply", "-n", "other", "-f", "-", stdin=model_manifest("beta", {"app": "x"})
    )

    every = kube.ok("get", "models", "-A").splitlines()
    by_name = kube.ok("get", "models", "-A", "--field-selector", "metadata.name=beta")

    assert [cells(line)[:2] for line in every] == [
        ["NAMESPACE", "NAME"],
        ["default", "alpha"],
        ["other", "beta"],
    ]
    assert [cells(line)[:2] for line in by_name.splitlines()[1:]] == [["other", "beta"]]


def test_chunk_size_pages_with_limit_and_continue(kube: Kube) -> None:
    for name in ("a1", "a2", "a3"):
        kube.ok("apply", "-f", "-", stdin=model_manifest(name, {"app": "x"}))

    result = kube.run("get", "models", "--chunk-size=1", "-o", "name", "-v=6")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        f"model.registry.matrixinfer.ai/a{i}" for i in (1, 2, 3)
    ]
    pages = re.findall(
        r'verb="GET" url="[^"]+/models\?([^"]*)" status="200 OK"', result.stderr
    )
    assert len(pages) == 3
    assert all("limit=1" in page for page in pages)
    assert ["continue=" in page for page in pages] == [False, True, True]


def test_a_bad_manifest_is_refused_naming_the_field(kube: Kube) -> None:
    kube.apply_iris()

    result = kube.run("apply", "-f", "-", stdin=BAD_MANIFEST)
    unknown = kube.run(
        "apply", "-f", "-", stdin=BAD_MANIFEST.replace("replicas", "replica")
    )

    assert result.returncode == 1
    assert result.stderr.startswith('The ModelInfer "bad" is invalid: spec.replicas: ')
    assert unknown.returncode == 1
    assert "spec.replica: unknown field" in unknown.stderr
    assert kube.run("get", "mi", "bad").returncode == 1


def test_a_finalizer_holds_a_delete_until_a_patch_removes_it(kube: Kube) -> None:
    manifest = yaml.safe_load(model_manifest("held", {"app": "x"}))
    manifest["metadata"]["finalizers"] = ["example.com/hold"]
    kube.ok("apply", "-f", "-", stdin=yaml.safe_dump(manifest))

    deleted = kube.ok("delete", "model", "held", "--wait=false")
    held = kube.run(
        "get", "model", "held", "-o", "jsonpath={.metadata.deletionTimestamp}"
    )
    kube.ok(
        "patch",
        "model",
        "held",
        "--type",
        "merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    gone = kube.run("get", "model", "held")

    assert deleted.startswith('model.registry.matrixinfer.ai "held" deleted')
    assert held.returncode == 0
    assert held.stdout != ""
    assert gone.returncode == 1
    assert "(NotFound)" in gone.stderr


# ------------------------------------------------------------------ HTTP details


def test_errors_are_status_objects(kube: Kube) -> None:
    code, body = kube.http(
        "GET",
        "/apis/workload.matrixinfer.ai/v1alpha1/namespaces/default/modelinfers/nope",
    )

    assert code == 404
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["reason"] == "NotFound"
    assert body["code"] == 404
    assert body["details"] == {
        "name": "nope",
        "group": "workload.matrixinfer.ai",
        "kind": "modelinfers",
    }


def test_a_create_that_exists_is_already_exists(kube: Kube) -> None:
    kube.apply_iris()
    doc = yaml.safe_load(model_manifest("iris", {}))

    code, body = kube.http(
        "POST",
        "/apis/registry.matrixinfer.ai/v1alpha1/namespaces/default/models",
        doc,
        "application/json",
    )

    assert (code, body["reason"]) == (409, "AlreadyExists")


def test_watch_from_a_compacted_resource_version_is_gone(kube: Kube) -> None:
    kube.apply_iris()
    kube.ok("patch", "mi", "iris", "--type", "merge", "-p", '{"spec":{"replicas":2}}')
    kube.call(kube.app.store.compact(0, 0.0))

    code, body = kube.http(
        "GET",
        "/apis/workload.matrixinfer.ai/v1alpha1/namespaces/default/modelinfers"
        "?watch=1&resourceVersion=1",
    )

    assert code == 410
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Expired", 410)


def test_watch_with_initial_events_ends_them_with_a_bookmark(kube: Kube) -> None:
    kube.apply_iris()
    path = (
        "/apis/workload.matrixinfer.ai/v1alpha1/namespaces/default/modelinfers"
        "?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
        "&resourceVersionMatch=NotOlderThan"
    )

    with urllib.request.urlopen(kube.url + path, timeout=30) as response:
        added = json.loads(response.readline())
        bookmark = json.loads(response.readline())

    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "iris")
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"
    }
    assert bookmark["object"]["metadata"]["resourceVersion"].isdigit()


def test_an_idle_watch_gets_bookmarks_and_ends_at_its_timeout(kube: Kube) -> None:
    kube.apply_iris()
    _, listed = kube.http(
        "GET", "/apis/workload.matrixinfer.ai/v1alpha1/namespaces/default/modelinfers"
    )
    rv = listed["metadata"]["resourceVersion"]
    path = (
        "/apis/workload.matrixinfer.ai/v1alpha1/namespaces/default/modelinfers"
        f"?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
    )

    with urllib.request.urlopen(kube.url + path, timeout=30) as response:
        lines = response.read().splitlines()

    events = [json.loads(line) for line in lines]
    assert events != []
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"]["kind"] == "ModelInfer"
    assert events[0]["object"]["metadata"]["resourceVersion"] == rv


# ------------------------------------------------------------------ kubernetes client


def test_the_kubernetes_dynamic_client(kube: Kube) -> None:
    config = kube_client.Configuration()
    config.host = kube.url
    with kube_client.ApiClient(config) as api:
        dynamic = DynamicClient(  # type: ignore[no-untyped-call]
            api, cache_file=str(kube.tmp / "discovery.json")
        )
        models = dynamic.resources.get(
            api_version="registry.matrixinfer.ai/v1alpha1", kind="Model"
        )
        body = yaml.safe_load(model_manifest("dyn", {"app": "dyn"}))

        created = models.create(body=body, namespace="default")
        listed = models.get(namespace="default", label_selector="app=dyn")
        fetched = models.get(name="dyn", namespace="default")
        with pytest.raises(UnprocessibleEntityError) as invalid:
            models.create(
                body={**body, "metadata": {"name": "dyn2"}, "spec": {"modelSpec": {}}},
                namespace="default",
            )
        models.delete(name="dyn", namespace="default")
        with pytest.raises(NotFoundError):
            models.get(name="dyn", namespace="default")

    assert created.metadata.name == "dyn"
    assert created.status.currentRevision == 1
    assert [item.metadata.name for item in listed.items] == ["dyn"]
    assert fetched.spec.modelSpec.framework == "onnx"
    causes = json.loads(str(invalid.value.body))["details"]["causes"]
    assert {
        "reason": "FieldValueInvalid",
        "message": "required",
        "field": "spec.modelSpec.modelId",
    } in causes


# ------------------------------------------------------------------ TLS


def self_signed(tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A server certificate for 127.0.0.1 (core's PKI; kubectl is not told its CA)."""
    authority = pki.create_ca(tmp / "ca")
    files = pki.issue(
        authority, "kube", tmp, sans=["127.0.0.1"], ip_addresses=True, usage="server"
    )
    return files.cert, files.key


def test_kubectl_over_https(tmp_path: pathlib.Path) -> None:
    """With a certificate the port serves HTTPS, as API aggregation needs."""
    (tmp_path / "kubeconfig").write_text("")
    cert_file, key_file = self_signed(tmp_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = registry_settings(
        f"sqlite+aiosqlite:///{tmp_path}/registry.db",
        kube_tls_cert_file=cert_file,
        kube_tls_key_file=key_file,
    )
    app = asyncio.run_coroutine_threadsafe(RegistryApp.start(settings), loop).result(60)
    try:
        kube = Kube(app, loop, tmp_path)
        # Over HTTPS kubectl asks for credentials unless it has some; the
        # registry ignores them (docs/kubernetes-api.md, "Security").
        tls = ("--insecure-skip-tls-verify", "--token", "unused")
        applied = kube.ok(*tls, "apply", "-f", "-", stdin=iris_manifests())
        listed = kube.ok(*tls, "get", "models", "-o", "name")
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    assert app.kube_url.startswith("https://127.0.0.1:")
    assert "model.registry.matrixinfer.ai/iris created" in applied
    assert listed.split() == ["model.registry.matrixinfer.ai/iris"]
