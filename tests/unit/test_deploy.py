"""Deployment files refer to things that exist, and agree with each other.

- docker-compose.yml (and the GPU override) pass ``docker-compose config`` when the
  binary is here (``make setup`` installs Debian's, which needs no engine) and the
  compose specification's JSON schema;
- each Dockerfile copies paths that exist and that .dockerignore keeps, installs every
  local distribution its service needs, generates the protobuf code, and starts a
  console script some pyproject.toml declares;
- every ``MATRIXINFER_*`` variable set in the compose files or the Dockerfiles is a
  real settings field of its service, and each service's environment validates;
- Prometheus scrapes every service and reads the replica file the controller writes;
  Grafana's dashboard uses the provisioned datasource and metrics that exist.

Nothing here starts a container: no Docker engine is needed (or used).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import importlib.util
import json
import os
import pathlib
import posixpath
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from matrixinfer.core.settings import ServiceSettings
from tests.conftest import ROOT

DOCKER = ROOT / "deploy" / "docker"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml")
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
SERVICES = ("registry", "controller", "gateway", "autoscaler")
# Debian's docker-compose package (see the Makefile's setup) ships the compose
# specification's JSON schema; docker compose v2 (Go) embeds its copy in the binary.
COMPOSE_SCHEMAS = (
    pathlib.Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json"),
)

# ---------------------------------------------------------------------------- helpers


def dockerfiles() -> list[pathlib.Path]:
    found = sorted(DOCKER.glob("*.Dockerfile"))
    assert found, "no Dockerfiles in deploy/docker"
    return found


def instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def exec_form(args: str) -> list[str]:
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(args)


def copy_sources(dockerfile: pathlib.Path) -> Iterator[str]:
    """Sources from the build context of every COPY/ADD (not --from a stage)."""
    for keyword, args in instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = exec_form(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"{dockerfile.name}: {keyword} {args}"
        yield from (p.rstrip("/") or "." for p in paths[:-1])


def dockerfile_env(dockerfile: pathlib.Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions(dockerfile):
        if keyword != "ENV":
            continue
        words = shlex.split(args)
        if words and "=" not in words[0]:  # legacy `ENV key value`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def entry_point(dockerfile: pathlib.Path) -> str:
    entries = [exec_form(a) for k, a in instructions(dockerfile) if k == "ENTRYPOINT"]
    assert entries, f"{dockerfile.name}: no ENTRYPOINT"
    return entries[-1][0]


def run_lines(dockerfile: pathlib.Path) -> list[str]:
    return [args for keyword, args in instructions(dockerfile) if keyword == "RUN"]


@functools.cache
def pyprojects() -> dict[pathlib.Path, dict[str, Any]]:
    """Every distribution of the repository, by its folder."""
    return {
        p.parent.relative_to(ROOT): tomllib.loads(p.read_text())
        for p in sorted(ROOT.glob("*/*/pyproject.toml")) + [ROOT / "cli/pyproject.toml"]
        if "project" in tomllib.loads(p.read_text())
    }


def console_scripts() -> set[str]:
    return {
        name
        for data in pyprojects().values()
        for name in data["project"].get("scripts", {})
    }


def local_closure(folder: pathlib.Path) -> set[pathlib.Path]:
    """``folder`` and every repository distribution it needs, transitively."""
    by_name = {data["project"]["name"]: path for path, data in pyprojects().items()}
    wanted, todo = set(), [folder]
    while todo:
        current = todo.pop()
        if current in wanted:
            continue
        wanted.add(current)
        for requirement in pyprojects()[current]["project"].get("dependencies", []):
            name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
            if name in by_name:
                todo.append(by_name[name])
    return wanted


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith("#")]


def ignored(source: str, patterns: list[str]) -> bool:
    """Close enough to Docker's matching for the plain patterns used here; '!'
    exceptions are not supported and refused."""
    for pattern in patterns:
        assert not pattern.startswith("!"), "extend ignored() for '!' patterns"
        if source == pattern or source.startswith(pattern + "/"):
            return True
        if fnmatch.fnmatch(source, pattern):
            return True
        if pattern.startswith("**/") and any(
            fnmatch.fnmatch(part, pattern[3:]) for part in source.split("/")
        ):
            return True
    return False


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def image_service(service: dict[str, Any]) -> str | None:
    """Which MatrixInfer service a compose service builds, from its Dockerfile."""
    build = service.get("build")
    if not isinstance(build, dict):
        return None
    stem = pathlib.PurePosixPath(build["dockerfile"]).name.removesuffix(".Dockerfile")
    return stem if stem in SERVICES else None


def full_environment(name: str) -> dict[str, str]:
    """A compose service's environment as its container sees it: image ENV first,
    compose's on top."""
    service = services()[name]
    image = image_service(service)
    env = dockerfile_env(DOCKER / f"{image}.Dockerfile") if image else {}
    env.update(environment(service))
    return env


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume; source is a named volume or a bind path."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, target, *_ = str(volume).split(":")
            mounts.append((source, target))
    return mounts


def netns(name: str) -> str:
    """The service whose network namespace ``name`` lives in."""
    mode = str(services()[name].get("network_mode", ""))
    return mode.removeprefix("service:") if mode.startswith("service:") else name


def prefix_of(service: str) -> str:
    return f"MATRIXINFER_{service.upper()}_"


def settings_class(service: str) -> type[ServiceSettings] | None:
    """The service's settings class; None while its module does not exist yet."""
    module_name = f"matrixinfer.{service}.settings"
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except ModuleNotFoundError:
        return None
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, ServiceSettings)
            and value.model_config.get("env_prefix") == prefix_of(service)
        ):
            return value
    raise AssertionError(
        f"{module_name} has no settings class for {prefix_of(service)}"
    )


def missing_services() -> dict[str, str]:
    """Services whose settings module is not written yet, with the reason."""
    return {
        s: f"matrixinfer.{s}.settings does not exist yet: its {prefix_of(s)}* names "
        "and entry point are not checked"
        for s in SERVICES
        if settings_class(s) is None
    }


# ---------------------------------------------------------------------------- compose


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]]
)
def test_docker_compose_config_accepts_the_files(files: list[str]) -> None:
    command = compose_command()
    if command is None:
        pytest.skip(
            "neither docker-compose nor `docker compose` is installed (make setup "
            "installs Debian's docker-compose when run as root)"
        )
    args = [*command, *(a for f in files for a in ("-f", f)), "config", "-q"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_specification_schema(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = next((p for p in COMPOSE_SCHEMAS if p.exists()), None)
    if schema_path is None:
        pytest.skip(
            "no copy of the compose specification JSON schema here (Debian's "
            "docker-compose package ships one; make setup installs it as root)"
        )
    schema = json.loads(schema_path.read_text())
    # Debian's copy names its draft as http://json-schema.org/draft/2019-09/schema#,
    # which jsonschema does not recognise; newer copies name draft-07.
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft201909Validator
    )
    validator_class.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator_class(schema).iter_errors(compose(name))
    ]
    assert errors == []


def test_compose_services_refer_to_what_exists() -> None:
    volumes = set(compose().get("volumes") or {})
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            assert build["context"] == ".", name
            assert (ROOT / build["dockerfile"]).is_file(), name
        else:
            assert service.get("image"), f"{name}: neither build nor image"
        for source, _ in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source}"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {other: {} for other in depends}
        condition: dict[str, str]
        for other, condition in depends.items():
            assert other in services(), f"{name} depends on unknown {other}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services()[other], f"{other} has no healthcheck"
        if netns(name) != name:
            assert "ports" not in service, f"{name}: publish on {netns(name)} instead"
            assert netns(name) in depends, f"{name} must depend on {netns(name)}"


# ---------------------------------------------------------------------------- images


def test_dockerfile_copies_existing_paths() -> None:
    patterns = dockerignore_patterns()
    for dockerfile in dockerfiles():
        for source in copy_sources(dockerfile):
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"
            assert not ignored(source, patterns), (
                f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
            )


def test_each_service_has_an_image_that_compose_builds() -> None:
    built = {image_service(s) for s in services().values()} - {None}
    assert built == set(SERVICES)
    assert {p.name for p in dockerfiles()} == {f"{s}.Dockerfile" for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_image_installs_its_distributions_and_generates_protos(service: str) -> None:
    dockerfile = DOCKER / f"{service}.Dockerfile"
    copied = set(copy_sources(dockerfile))
    install = " ".join(run_lines(dockerfile))
    for folder in sorted(local_closure(pathlib.Path("services") / service)):
        assert str(folder) in copied, f"{dockerfile.name}: does not copy {folder}"
        assert f"./{folder}" in install, f"{dockerfile.name}: does not install {folder}"
    assert {"protos", "tools", "constraints.txt"} <= copied
    assert "tools/genproto.py" in install
    # genproto imports google.api (googleapis-common-protos) and runs protoc plugins.
    before = install.split("tools/genproto.py", 1)[0]
    for tool in ("grpcio-tools", "mypy-protobuf", "googleapis-common-protos"):
        assert tool in before, f"{dockerfile.name}: {tool} missing before genproto"


@pytest.mark.parametrize("service", SERVICES)
def test_image_entry_point_is_a_console_script(service: str) -> None:
    if service in missing_services():
        pytest.skip(missing_services()[service])
    command = entry_point(DOCKER / f"{service}.Dockerfile")
    assert command == f"matrixinfer-{service}"
    assert command in console_scripts(), f"{command} is declared by no pyproject.toml"


def test_controller_image_is_triton_with_tritonserver_on_path() -> None:
    dockerfile = DOCKER / "controller.Dockerfile"
    bases = [a for k, a in instructions(dockerfile) if k == "FROM"]
    assert bases and all(
        b.startswith("nvcr.io/nvidia/tritonserver:") and "-py3" in b for b in bases
    )
    env = dockerfile_env(dockerfile)
    from matrixinfer.triton.install import ENV_BINARY

    binary = pathlib.PurePosixPath(env[ENV_BINARY])
    assert str(binary.parent) in env["PATH"].split(":")


# ---------------------------------------------------------------------------- settings


def matrixinfer_variables() -> Iterator[tuple[str, str]]:
    """(where, NAME) of every MATRIXINFER_* variable the deploy files set."""
    for dockerfile in dockerfiles():
        for key in dockerfile_env(dockerfile):
            yield dockerfile.name, key
    for name in COMPOSE_FILES:
        for service_name, service in (compose(name).get("services") or {}).items():
            for key in environment(service):
                yield f"{name}:{service_name}", key


def test_every_matrixinfer_variable_is_a_settings_field() -> None:
    from matrixinfer.triton.install import ENV_BINARY

    missing = missing_services()
    for reason in missing.values():
        print(f"skipped: {reason}")
    unknown = []
    for where, key in matrixinfer_variables():
        if not key.startswith("MATRIXINFER_") or key == ENV_BINARY:
            continue
        service = next((s for s in SERVICES if key.startswith(prefix_of(s))), None)
        if service is None:
            unknown.append(f"{where}: {key} (no service has this prefix)")
            continue
        if service in missing:
            continue
        cls = settings_class(service)
        assert cls is not None
        if key.removeprefix(prefix_of(service)).lower() not in cls.model_fields:
            unknown.append(f"{where}: {key}")
    assert unknown == []


@pytest.mark.parametrize("service", SERVICES)
def test_compose_environment_is_valid_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's settings load from the environment its container gets (image
    ENV plus both compose files), so values parse too (ports, GPU lists, modes)."""
    cls = settings_class(service)
    if cls is None:
        pytest.skip(missing_services()[service])
    env = full_environment(service)
    gpu = compose("docker-compose.gpu.yml")["services"]
    env.update(environment(gpu.get(service, {})))
    for key in list(os.environ):
        if key.startswith("MATRIXINFER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(prefix_of(service)):
            monkeypatch.setenv(key, value)
    settings = cls()
    assert settings.host == "0.0.0.0"
    assert settings.otlp_endpoint == "http://jaeger:4317"


# ------------------------------------------------------------------------- prometheus


def metrics_address(service: str) -> tuple[str, int]:
    """host:port where Prometheus scrapes ``service``: its metrics port, or the
    HTTP port for services that serve /metrics there (the gateway)."""
    env = full_environment(service)
    prefix = prefix_of(service)
    cls = settings_class(service)
    if cls is not None and "http_port" in cls.model_fields:
        default = cls.model_fields["http_port"].default
        port = int(env.get(f"{prefix}HTTP_PORT", default))
    else:
        assert f"{prefix}METRICS_PORT" in env, f"{service}: no metrics port set"
        port = int(env[f"{prefix}METRICS_PORT"])
    host = "127.0.0.1" if netns(service) == netns("prometheus") else netns(service)
    return host, port


def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_config_is_the_one_compose_mounts() -> None:
    prometheus = services()["prometheus"]
    config_flag = next(
        a for a in prometheus["command"] if a.startswith("--config.file=")
    )
    target = config_flag.split("=", 1)[1]
    mounts = {t: s for s, t in volume_mounts(prometheus)}
    assert (ROOT / mounts[target]).resolve() == PROMETHEUS


@pytest.mark.parametrize("service", SERVICES)
def test_prometheus_scrapes_every_service(service: str) -> None:
    host, port = metrics_address(service)
    job = scrape_jobs()[service]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert f"{host}:{port}" in targets


def test_prometheus_reads_the_replica_file_the_controller_writes() -> None:
    sd_file = full_environment("controller")[
        "MATRIXINFER_CONTROLLER_PROMETHEUS_SD_FILE"
    ]
    # The volume holding that file in the controller …
    volume, inside = next(
        (source, posixpath.relpath(sd_file, target))
        for source, target in volume_mounts(services()["controller"])
        if sd_file.startswith(target.rstrip("/") + "/")
    )
    assert not volume.startswith((".", "/")), "share it through a named volume"
    # … is mounted into Prometheus, and the triton job reads the file there.
    target = next(t for s, t in volume_mounts(services()["prometheus"]) if s == volume)
    expected = posixpath.join(target, inside)
    files = [
        f for sd in scrape_jobs()["triton"]["file_sd_configs"] for f in sd["files"]
    ]
    assert any(fnmatch.fnmatch(expected, pattern) for pattern in files), (
        expected,
        files,
    )
    # Replicas bind 127.0.0.1 inside the controller: Prometheus must share its netns.
    assert netns("prometheus") == "controller"


# ---------------------------------------------------------------------------- grafana


def grafana_mount(folder: str) -> str:
    for source, target in volume_mounts(services()["grafana"]):
        if (ROOT / source).resolve() == (GRAFANA / folder).resolve():
            return target
    raise AssertionError(f"deploy/grafana/{folder} is not mounted into grafana")


def datasource_uids(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and "uid" in source:
            yield str(source["uid"])
        for value in node.values():
            yield from datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_uids(value)


def test_grafana_dashboard_uses_the_provisioned_prometheus() -> None:
    assert grafana_mount("provisioning") == "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load(
        (GRAFANA / "provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    listen = next(
        a for a in services()["prometheus"]["command"] if a.startswith("--web.listen")
    )
    assert url.hostname == netns("prometheus")
    assert url.port == int(listen.rsplit(":", 1)[1])

    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/matrixinfer.yml").read_text()
    )["providers"]
    assert provider["options"]["path"] == grafana_mount("dashboards")

    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels and all(p.get("targets") for p in panels), path.name
        uids = set(datasource_uids(dashboard))
        assert uids == {datasource["uid"]}, path.name


def test_grafana_dashboard_queries_metrics_that_exist() -> None:
    """Our own metric names in the dashboard are defined somewhere in the code."""
    sources = "\n".join(
        p.read_text()
        for folder in ("libs", "services")
        for p in (ROOT / folder).rglob("*.py")
    )
    for path in (GRAFANA / "dashboards").glob("*.json"):
        exprs = [
            t["expr"]
            for p in json.loads(path.read_text())["panels"]
            for t in p.get("targets", [])
        ]
        names = {n for e in exprs for n in re.findall(r"\bmatrixinfer_\w+", e)}
        assert names, path.name
        for name in names:
            base = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
            assert f'"{base}"' in sources, f"{path.name}: {name} is defined nowhere"


# ---------------------------------------------------------------------------- k8s


def test_kustomization_lists_existing_manifests() -> None:
    base = ROOT / "deploy" / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        docs = list(yaml.safe_load_all((base / resource).read_text()))
        assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
