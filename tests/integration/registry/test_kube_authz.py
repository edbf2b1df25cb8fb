"""Authentication and authorization of the registry's Kubernetes API port
(docs/security.md, "Control-plane authorization"): the identities and scopes of
the gRPC API, checked with the real kubectl and raw HTTP against a real registry
with auth on (plain HTTP and API keys), and with the registry's mTLS files (HTTPS,
client certificates of its CA)."""

from __future__ import annotations

import asyncio
import io
import json
import pathlib
import shlex
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from rich.console import Console

from matrixinfer.cli.up import EdgeAccess, print_endpoints
from matrixinfer.core import pki
from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings
from tests.idp import Provider, registry_jwt_settings
from tests.integration.registry.test_kubectl import Kube, iris_manifests

pytestmark = pytest.mark.timeout(180)

MODELS = "/apis/registry.matrixinfer.ai/v1alpha1/namespaces/default/models"
REGISTRY_NAME = pki.identity_name("registry")


def started(tmp: pathlib.Path, **settings: Any) -> Iterator[Kube]:
    (tmp / "kubeconfig").write_text("")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = asyncio.run_coroutine_threadsafe(
        RegistryApp.start(
            registry_settings(f"sqlite+aiosqlite:///{tmp}/registry.db", **settings)
        ),
        loop,
    ).result(60)
    try:
        yield Kube(app, loop, tmp)
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def kube(tmp_path: pathlib.Path) -> Iterator[Kube]:
    """Auth on, plain HTTP: API keys are the only way in."""
    yield from started(tmp_path, auth_mode="on")


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> dict[str, pki.CertFiles]:
    return pki.ensure_pki(tmp_path / "pki")


def tls_settings(certs: dict[str, pki.CertFiles]) -> dict[str, Any]:
    """The settings that name the registry's own certificate, key and CA."""
    files = certs["registry"]
    return {
        "tls_cert_file": files.cert,
        "tls_key_file": files.key,
        "tls_ca_file": files.ca,
    }


@pytest.fixture
def kube_tls(tmp_path: pathlib.Path, certs: dict[str, pki.CertFiles]) -> Iterator[Kube]:
    """The registry's mTLS files, as `matrixinfer up` starts it: auth on, HTTPS."""
    yield from started(tmp_path, **tls_settings(certs))


@pytest.fixture(scope="module")
def idp() -> Provider:
    """The identity provider whose JWTs the kube_jwt registries take."""
    return Provider()


@pytest.fixture
def kube_jwt(tmp_path: pathlib.Path, idp: Provider) -> Iterator[Kube]:
    """Auth on, plain HTTP, JWTs of ``idp`` (its JWKS in a file)."""
    jwks = idp.write_jwks(tmp_path / "jwks.json")
    yield from started(tmp_path, auth_mode="on", **registry_jwt_settings(jwks))


@pytest.fixture
def kube_tls_jwt(
    tmp_path: pathlib.Path, certs: dict[str, pki.CertFiles], idp: Provider
) -> Iterator[Kube]:
    """The registry's mTLS files (HTTPS, so kubectl sends a token) and JWTs."""
    jwks = idp.write_jwks(tmp_path / "jwks.json")
    yield from started(tmp_path, **tls_settings(certs), **registry_jwt_settings(jwks))


def new_key(kube: Kube, *scopes: str) -> str:
    _, secret = kube.call(
        kube.app.service.create_api_key("default", "someone", list(scopes), "", "")
    )
    return str(secret)


def key_id(secret: str) -> str:
    return secret.split("_")[1]


def http(
    kube: Kube,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        kube.url + path, data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def yaml_model() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(iris_manifests()) if d]
    return next(d for d in docs if d["kind"] == "Model")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def tls_options(certs: dict[str, pki.CertFiles], client: str = "admin") -> list[str]:
    files = certs[client]
    return [
        "--certificate-authority",
        str(files.ca),
        "--client-certificate",
        str(files.cert),
        "--client-key",
        str(files.key),
        "--tls-server-name",
        REGISTRY_NAME,
    ]


def token_options(certs: dict[str, pki.CertFiles], secret: str) -> list[str]:
    """kubectl sends credentials over HTTPS only: trust the registry's CA."""
    return [
        "--certificate-authority",
        str(certs["admin"].ca),
        "--tls-server-name",
        REGISTRY_NAME,
        "--token",
        secret,
    ]


# ------------------------------------------------------------------ API keys


def test_no_credentials_is_unauthorized(kube: Kube) -> None:
    for path in ("/version", "/apis", MODELS):
        code, body = http(kube, "GET", path)
        assert code == 401, path
        assert body["kind"] == "Status"
        assert body["reason"] == "Unauthorized"
        assert body["code"] == 401
    code, body = http(kube, "GET", MODELS, headers=bearer("mi_nope_nope"))
    assert (code, body["reason"]) == (401, "Unauthorized")

    # kubectl's words for a 401: from discovery, whose body it does not read
    # (kubectl sends credentials over HTTPS only), then with the message of the
    # Status of a request it does read.
    result = kube.run("get", "models")
    assert result.returncode != 0
    assert "error: You must be logged in to the server" in result.stderr
    result = kube.run("get", "--raw", MODELS)
    assert result.returncode != 0
    assert result.stderr == (
        "error: You must be logged in to the server (the registry needs a client "
        "certificate or a credential (Authorization: Bearer <API key>))\n"
    )


def test_a_read_key_gets_but_cannot_apply(
    kube_tls: Kube, certs: dict[str, pki.CertFiles]
) -> None:
    kube = kube_tls
    admin, read = new_key(kube, "admin"), new_key(kube, "read")
    as_admin, as_reader = token_options(certs, admin), token_options(certs, read)
    kube.ok(*as_admin, "apply", "-f", "-", stdin=iris_manifests())

    listed = kube.ok(*as_reader, "get", "models", "-o", "name")
    assert listed.split() == ["model.registry.matrixinfer.ai/iris"]
    assert "iris" in kube.ok(*as_reader, "get", "mi", "--all-namespaces")

    changed = iris_manifests().replace("replicas: 1", "replicas: 2")
    result = kube.run(*as_reader, "apply", "-f", "-", stdin=changed)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr
    assert (
        f"key:{key_id(read)} may not patch ModelInfer in namespace default: needs "
        "scope admin or admin:ns/default"
    ) in result.stderr


def test_the_status_subresource_needs_the_status_scope(kube: Kube) -> None:
    admin, read = new_key(kube, "admin"), new_key(kube, "read")
    code, _ = http(kube, "POST", MODELS, yaml_model(), bearer(admin))
    assert code == 201
    code, body = http(kube, "GET", "/apis", headers=bearer(read))
    assert code == 200 and body["kind"] == "APIGroupList"
    code, body = http(kube, "GET", f"{MODELS}/iris/status", headers=bearer(read))
    assert (code, body["kind"]) == (200, "Model")

    # The status subresource needs the status scope (or write).
    code, body = http(
        kube,
        "PATCH",
        f"{MODELS}/iris/status",
        {"status": {}},
        {**bearer(read), "Content-Type": "application/merge-patch+json"},
    )
    assert (code, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        f"key:{key_id(read)} may not update the status of Model in namespace "
        "default: needs scope admin or admin:ns/default"
    )
    code, body = http(
        kube,
        "PATCH",
        f"{MODELS}/iris/status",
        {"status": {}},
        {**bearer(admin), "Content-Type": "application/merge-patch+json"},
    )
    assert (code, body["kind"]) == (200, "Model")


def test_a_namespace_key_reads_only_its_namespace(kube: Kube) -> None:
    team = new_key(kube, "read:ns/team-a")
    code, body = http(
        kube,
        "GET",
        MODELS.replace("/default/", "/team-a/"),
        headers=bearer(team),
    )
    assert (code, body["kind"]) == (200, "ModelList")
    code, body = http(kube, "GET", MODELS, headers=bearer(team))
    assert (code, body["reason"]) == (403, "Forbidden")
    code, body = http(
        kube,
        "GET",
        "/apis/registry.matrixinfer.ai/v1alpha1/models",
        headers=bearer(team),
    )
    assert code == 403
    assert "may not read Model in every namespace" in body["message"]


def test_an_admin_key_applies_and_the_audit_log_names_it(
    kube_tls: Kube, certs: dict[str, pki.CertFiles]
) -> None:
    kube = kube_tls
    admin = new_key(kube, "admin")

    out = kube.ok(
        *token_options(certs, admin), "apply", "-f", "-", stdin=iris_manifests()
    )

    assert "model.registry.matrixinfer.ai/iris created" in out
    entries, _ = kube.call(kube.app.service.list_audit(kind="Model", name="iris"))
    assert [(e.action, e.actor) for e in entries] == [
        ("create", f"key:{key_id(admin)}")
    ]


# ------------------------------------------------------------------ JWTs


def test_jwts_get_401_and_403_status_objects(kube_jwt: Kube, idp: Provider) -> None:
    kube = kube_jwt
    admin = idp.token("admin", subject="alice")
    read = idp.token("read", subject="bob")
    code, body = http(kube, "POST", MODELS, yaml_model(), bearer(admin))
    assert (code, body["kind"]) == (201, "Model")
    code, body = http(kube, "GET", MODELS, headers=bearer(read))
    assert (code, [m["metadata"]["name"] for m in body["items"]]) == (200, ["iris"])

    other = yaml_model()
    other["metadata"]["name"] = "iris-2"
    code, body = http(kube, "POST", MODELS, other, bearer(read))
    assert (code, body["kind"], body["reason"]) == (403, "Status", "Forbidden")
    assert body["message"] == (
        "jwt:bob may not create Model in namespace default: needs scope admin or "
        "admin:ns/default"
    )
    for token, message in [
        (idp.token("admin", exp=1_000_000, iat=999_000), "token expired"),
        (idp.token("admin", aud="someone-else"), "token audience not accepted"),
        (idp.token("admin", iss="https://evil.example/"), "token issuer not accepted"),
        (Provider(kid="other").token("admin"), "unknown signing key"),
    ]:
        code, body = http(kube, "GET", MODELS, headers=bearer(token))
        assert (code, body["kind"], body["reason"]) == (401, "Status", "Unauthorized")
        assert body["message"] == message

    entries, _ = kube.call(kube.app.service.list_audit(kind="Model", name="iris"))
    assert [(e.action, e.actor) for e in entries] == [("create", "jwt:alice")]


def test_a_jwt_where_jwts_are_not_configured(kube: Kube, idp: Provider) -> None:
    code, body = http(kube, "GET", MODELS, headers=bearer(idp.token("admin")))
    assert (code, body["reason"]) == (401, "Unauthorized")
    assert body["message"] == (
        "JWTs are not configured at the registry: use an API key or a client "
        "certificate"
    )


def test_kubectl_with_a_jwt(
    kube_tls_jwt: Kube, certs: dict[str, pki.CertFiles], idp: Provider
) -> None:
    kube = kube_tls_jwt
    as_admin = token_options(certs, idp.token("admin", subject="alice"))
    as_reader = token_options(certs, idp.token("read", subject="bob"))

    out = kube.ok(*as_admin, "apply", "-f", "-", stdin=iris_manifests())
    assert "model.registry.matrixinfer.ai/iris created" in out
    listed = kube.ok(*as_reader, "get", "models", "-o", "name")
    assert listed.split() == ["model.registry.matrixinfer.ai/iris"]

    changed = iris_manifests().replace("replicas: 1", "replicas: 2")
    result = kube.run(*as_reader, "apply", "-f", "-", stdin=changed)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr
    assert (
        "jwt:bob may not patch ModelInfer in namespace default: needs scope admin "
        "or admin:ns/default"
    ) in result.stderr


# ------------------------------------------------------------------ certificates


def test_kubectl_with_the_admin_client_certificate(
    kube_tls: Kube, certs: dict[str, pki.CertFiles]
) -> None:
    assert kube_tls.url.startswith("https://")
    options = tls_options(certs)

    applied = kube_tls.ok(*options, "apply", "-f", "-", stdin=iris_manifests())
    listed = kube_tls.ok(*options, "get", "models", "-o", "name")

    assert "model.registry.matrixinfer.ai/iris created" in applied
    assert listed.split() == ["model.registry.matrixinfer.ai/iris"]
    entries, _ = kube_tls.call(
        kube_tls.app.service.list_audit(kind="Model", name="iris")
    )
    assert {e.actor for e in entries} == {"cert:admin"}

    # Neither a client certificate nor a key: no one.
    context = ssl.create_default_context(cafile=str(certs["admin"].ca))
    context.check_hostname = False
    code, body = http(kube_tls, "GET", "/version", context=context)
    assert (code, body["reason"]) == (401, "Unauthorized")


def test_a_controller_certificate_writes_status_only(
    kube_tls: Kube, certs: dict[str, pki.CertFiles]
) -> None:
    kube_tls.ok(*tls_options(certs), "apply", "-f", "-", stdin=iris_manifests())
    context = client_context(certs, certs["controller"])
    patch = {"Content-Type": "application/merge-patch+json"}

    status = http(
        kube_tls, "PATCH", f"{MODELS}/iris/status", {"status": {}}, patch, context
    )
    spec = http(
        kube_tls,
        "PATCH",
        f"{MODELS}/iris",
        {"metadata": {"labels": {"a": "b"}}},
        patch,
        context,
    )

    assert (status[0], status[1]["kind"]) == (200, "Model")
    assert (spec[0], spec[1]["reason"]) == (403, "Forbidden")
    assert spec[1]["message"] == (
        "service:controller may not patch Model in namespace default: needs scope "
        "admin or admin:ns/default"
    )


def test_a_certificate_of_another_ca_is_refused(
    kube_tls: Kube, certs: dict[str, pki.CertFiles], tmp_path: pathlib.Path
) -> None:
    other = pki.ensure_pki(tmp_path / "other")

    result = kube_tls.run(
        "--certificate-authority",
        str(certs["admin"].ca),
        "--client-certificate",
        str(other["admin"].cert),
        "--client-key",
        str(other["admin"].key),
        "--tls-server-name",
        REGISTRY_NAME,
        "get",
        "models",
    )

    assert result.returncode != 0
    assert "model" not in result.stdout
    # Refused in the TLS handshake: the CA is not the registry's.
    context = ssl.create_default_context(cafile=str(certs["admin"].ca))
    context.check_hostname = False
    context.load_cert_chain(other["admin"].cert, other["admin"].key)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        http(kube_tls, "GET", "/version", context=context)


def printed_kubectl(kube: Kube, certs: dict[str, pki.CertFiles], **edge: Any) -> str:
    out = io.StringIO()
    console = Console(file=out, width=400, highlight=False, color_system=None)
    print_endpoints(
        console,
        8001,
        8000,
        50051,
        "/state",
        quickstart=False,
        kube_port=kube.app.kube_port,
        kube_client=certs["admin"],
        edge=EdgeAccess(**edge),
    )
    (line,) = [line for line in out.getvalue().splitlines() if "--server" in line]
    return line.strip()


def test_the_kubectl_line_up_prints_works_as_printed(
    kube_tls: Kube, certs: dict[str, pki.CertFiles], tmp_path: pathlib.Path
) -> None:
    kube_tls.ok(*tls_options(certs), "apply", "-f", "-", stdin=iris_manifests())
    key_file = tmp_path / "admin.key"
    key_file.write_text(new_key(kube_tls, "admin") + "\n")

    for line in (
        printed_kubectl(kube_tls, certs),
        printed_kubectl(kube_tls, certs, key_file=key_file),
    ):
        assert line.endswith(" get modelinfers")
        result = subprocess.run(
            ["bash", "-c", line],
            capture_output=True,
            text=True,
            env=kube_tls.env(),
            timeout=60,
        )
        assert result.returncode == 0, (shlex.split(line), result.stderr)
        assert result.stdout.splitlines()[1].startswith("iris ")


# ------------------------------------------------- the API server (aggregation)


@pytest.fixture
def front_proxy(tmp_path: pathlib.Path) -> pki.Authority:
    """The cluster's front-proxy CA (requestheader-client-ca-file): not ours."""
    return pki.create_ca(tmp_path / "front-proxy", "front-proxy-ca")


@pytest.fixture
def kube_aggregated(
    tmp_path: pathlib.Path, certs: dict[str, pki.CertFiles], front_proxy: pki.Authority
) -> Iterator[Kube]:
    """HTTPS with the registry's mTLS files, and the API server's front proxy."""
    yield from started(
        tmp_path,
        **tls_settings(certs),
        kube_requestheader_ca_file=front_proxy.cert_path,
        kube_requestheader_scopes={
            "group:system:masters": ["admin"],
            "user:viewer": ["read"],
        },
    )


def client_context(
    certs: dict[str, pki.CertFiles], client: pki.CertFiles
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["registry"].ca))
    context.check_hostname = False
    context.load_cert_chain(client.cert, client.key)
    return context


def forwarded(user: str, group: str = "") -> dict[str, str]:
    """What the API server adds when it forwards a user's request (one
    X-Remote-Group header per group)."""
    headers = {"X-Remote-User": user}
    if group:
        headers["X-Remote-Group"] = group
    return headers


def front_proxy_certificate(
    front_proxy: pki.Authority, name: str, directory: pathlib.Path, **kwargs: Any
) -> pki.CertFiles:
    """A client certificate of the front-proxy CA (no subjectAltName unless
    ``sans`` says)."""
    kwargs.setdefault("sans", [])
    return pki.issue(front_proxy, name, directory, usage="client", **kwargs)


def test_the_api_server_forwards_its_users_with_their_scopes(
    kube_aggregated: Kube,
    certs: dict[str, pki.CertFiles],
    front_proxy: pki.Authority,
    tmp_path: pathlib.Path,
) -> None:
    kube = kube_aggregated
    proxy = front_proxy_certificate(
        front_proxy, "front-proxy-client", tmp_path / "front-proxy"
    )
    context = client_context(certs, proxy)
    model = yaml_model()

    created = http(
        kube, "POST", MODELS, model, forwarded("alice", "system:masters"), context
    )
    listed = http(kube, "GET", MODELS, None, forwarded("viewer"), context)
    refused = http(kube, "DELETE", f"{MODELS}/iris", None, forwarded("viewer"), context)
    stranger = http(kube, "GET", MODELS, None, forwarded("mallory"), context)
    no_user = http(kube, "GET", MODELS, None, {}, context)

    assert created[0] == 201
    assert [item["metadata"]["name"] for item in listed[1]["items"]] == ["iris"]
    assert (refused[0], refused[1]["message"]) == (
        403,
        "kube:viewer may not delete Model in namespace default: needs scope admin "
        "or admin:ns/default",
    )
    assert (stranger[0], stranger[1]["reason"]) == (403, "Forbidden")
    assert (no_user[0], no_user[1]["message"]) == (
        401,
        "the API server's front proxy sent no X-Remote-User: it forwards for no one",
    )
    entries, _ = kube.call(kube.app.service.list_audit(kind="Model", name="iris"))
    assert [(e.action, e.actor) for e in entries] == [("create", "kube:alice")]


def test_only_the_front_proxy_may_say_who_it_forwards_for(
    kube_aggregated: Kube,
    certs: dict[str, pki.CertFiles],
    front_proxy: pki.Authority,
    tmp_path: pathlib.Path,
) -> None:
    kube = kube_aggregated
    model = yaml_model()
    masters = forwarded("alice", "system:masters")
    # A service certificate of our CA with the headers: the headers mean nothing.
    controller = client_context(certs, certs["controller"])
    as_controller = http(kube, "POST", MODELS, model, masters, controller)
    # The front-proxy CA's certificate with another name than the allowed one.
    other = front_proxy_certificate(front_proxy, "someone", tmp_path / "front-proxy")
    as_other = http(kube, "POST", MODELS, model, masters, client_context(certs, other))
    # Or one that claims to be our admin: its names are never read.
    posing = front_proxy_certificate(
        front_proxy,
        "front-proxy-client",
        tmp_path / "posing",
        sans=[pki.identity_name("admin")],
        common_name="front-proxy-client",
    )
    as_posing = http(kube, "POST", MODELS, model, {}, client_context(certs, posing))

    assert (as_controller[0], as_controller[1]["message"]) == (
        403,
        "service:controller may not create Model in namespace default: needs scope "
        "admin or admin:ns/default",
    )
    assert (as_other[0], as_other[1]["message"]) == (
        401,
        "a front-proxy certificate named 'someone': not one of "
        "kube_requestheader_allowed_names",
    )
    assert as_posing[0] == 401


def test_the_front_proxy_ca_must_not_be_the_registry_s_own(
    tmp_path: pathlib.Path, certs: dict[str, pki.CertFiles]
) -> None:
    with pytest.raises(ValueError, match="is the registry's own CA"):
        next(
            started(
                tmp_path,
                **tls_settings(certs),
                kube_requestheader_ca_file=certs["registry"].ca,
            )
        )
