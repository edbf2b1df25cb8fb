"""Where the CLI's servers are: flags override environment variables, which override
the config file, which overrides the built-in defaults.

The file is ``$MATRIXINFER_CONFIG`` or ``~/.config/matrixinfer/config.yaml``
(``$XDG_CONFIG_HOME`` when set), a YAML mapping of the keys in :data:`DEFAULTS`.

Credentials: ``token`` (an API key or a JWT, sent as ``authorization: Bearer``)
and, for services that speak mTLS, ``tls_ca``, ``tls_cert`` and ``tls_key`` (PEM
files; the CLI checks that each server's certificate names the service it calls, e.g.
``registry.matrixinfer.internal``). When none of the three is set and a running
``matrixinfer up`` serves the registry address in use, the CLI takes the admin
client certificate ``up`` made (``up`` records where in :func:`local_up_path`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

CONFIG_ENV = "MATRIXINFER_CONFIG"

#: Keys of the config file, their environment variables and built-in defaults.
DEFAULTS: dict[str, str] = {
    "server": "127.0.0.1:50051",
    "gateway": "http://127.0.0.1:8000",
    "gateway_grpc": "127.0.0.1:8001",
    "controller": "127.0.0.1:50052",
    "token": "",
    "namespace": "default",
    "tls_ca": "",
    "tls_cert": "",
    "tls_key": "",
}
ENV_VARS: dict[str, str] = {key: f"MATRIXINFER_{key.upper()}" for key in DEFAULTS}


class ConfigError(Exception):
    """The config file cannot be used; the message says why and where."""


def config_path(env: Mapping[str, str] | None = None) -> pathlib.Path:
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return pathlib.Path(env[CONFIG_ENV]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(pathlib.Path.home() / ".config")
    return pathlib.Path(base) / "matrixinfer" / "config.yaml"


def load_file(path: pathlib.Path, required: bool = False) -> dict[str, str]:
    """The file's settings; a missing file is empty unless ``required`` (a path the
    user named in $MATRIXINFER_CONFIG)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"{path}: no such file (named by ${CONFIG_ENV})"
            ) from None
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from e
    import yaml  # here, not at the top: only a file to parse needs PyYAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of {', '.join(DEFAULTS)}")
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in DEFAULTS:
            raise ConfigError(
                f"{path}: unknown key {key!r}; known keys: {', '.join(DEFAULTS)}"
            )
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be a string")
        out[key] = str(value)
    return out


@dataclass(frozen=True)
class Config:
    server: str
    gateway: str
    gateway_grpc: str
    controller: str
    token: str
    namespace: str
    #: PEM files for mTLS (all three, or none: plaintext).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: The file that was read, when there was one.
    source: pathlib.Path | None = None

    @property
    def tls(self) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path] | None:
        """(CA, certificate, key) when mTLS is configured."""
        if not (self.tls_ca and self.tls_cert and self.tls_key):
            return None
        return (
            pathlib.Path(self.tls_ca).expanduser(),
            pathlib.Path(self.tls_cert).expanduser(),
            pathlib.Path(self.tls_key).expanduser(),
        )


def resolve(
    flags: Mapping[str, str | None], env: Mapping[str, str] | None = None
) -> Config:
    """Flags (None: not given) > environment > file > defaults."""
    env = os.environ if env is None else env
    path = config_path(env)
    from_file = load_file(path, required=bool(env.get(CONFIG_ENV)))
    values: dict[str, str] = {}
    for key, default in DEFAULTS.items():
        flag = flags.get(key)
        if flag is not None:
            values[key] = flag
        elif env.get(ENV_VARS[key]):
            values[key] = env[ENV_VARS[key]]
        else:
            values[key] = from_file.get(key, default)
    values["gateway"] = values["gateway"].rstrip("/")
    if "://" not in values["gateway"]:
        values["gateway"] = "http://" + values["gateway"]
    tls_keys = ("tls_ca", "tls_cert", "tls_key")
    given = [values[k] for k in tls_keys if values[k]]
    if given and len(given) != len(tls_keys):
        raise ConfigError(
            "set all of tls_ca, tls_cert and tls_key (or MATRIXINFER_TLS_CA, "
            "MATRIXINFER_TLS_CERT, MATRIXINFER_TLS_KEY), or none"
        )
    if not given:
        values.update(local_up_tls(values["server"], env))
    return Config(**values, source=path if from_file else None)


def local_up_path(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """Where a running ``matrixinfer up`` records its registry address and the
    admin client certificate it made (beside the default config file)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(pathlib.Path.home() / ".config")
    return pathlib.Path(base) / "matrixinfer" / "up.yaml"


def local_up_tls(server: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The admin certificate of the running ``up`` serving ``server``, or nothing."""
    try:
        text = local_up_path(env).read_text()
    except OSError:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(data, dict) or data.get("server") != server:
        return {}
    out = {k: str(data.get(k, "")) for k in ("tls_ca", "tls_cert", "tls_key")}
    if not all(out.values()) or not all(pathlib.Path(v).exists() for v in out.values()):
        return {}
    return out
