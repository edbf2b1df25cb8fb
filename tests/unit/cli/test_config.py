"""Where the CLI's settings come from: flags > environment > config file > defaults."""

from __future__ import annotations

import pathlib

import pytest
from click.testing import CliRunner

from matrixinfer.cli.config import ConfigError, config_path, resolve
from matrixinfer.cli.main import cli


def test_defaults_without_a_file(tmp_path: pathlib.Path) -> None:
    config = resolve({}, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert config.server == "127.0.0.1:50051"
    assert config.controller == "127.0.0.1:50052"
    assert config.gateway == "http://127.0.0.1:8000"
    assert config.namespace == "default"
    assert config.token == ""
    assert config.source is None


def test_flags_override_env_override_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "matrixinfer" / "config.yaml"
    path.parent.mkdir()
    path.write_text(
        "server: file:1\ngateway: gw.example:8000/\ncontroller: file:3\n"
        "token: from-file\nnamespace: team-a\n"
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path), "MATRIXINFER_SERVER": "env:1",
           "MATRIXINFER_TOKEN": "from-env"}  # fmt: skip
    config = resolve({"server": "flag:1", "controller": None}, env)
    assert config.server == "flag:1"
    assert config.token == "from-env"
    assert config.controller == "file:3"
    assert config.gateway == "http://gw.example:8000"
    assert config.namespace == "team-a"
    assert config.source == path


def test_matrixinfer_config_names_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("namespace: prod\n")
    env = {"MATRIXINFER_CONFIG": str(path)}
    assert config_path(env) == path
    assert resolve({}, env).namespace == "prod"
    with pytest.raises(ConfigError, match="no such file"):
        resolve({}, {"MATRIXINFER_CONFIG": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servr: x\n", "unknown key 'servr'"),
        ("- a\n", "must be a mapping"),
        ("server: [1]\n", "server must be a string"),
        ("server: {\n", "not valid YAML"),
    ],
)
def test_bad_files_are_named_with_the_fix(
    tmp_path: pathlib.Path, text: str, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        resolve({}, {"MATRIXINFER_CONFIG": str(path)})
    assert str(path) in str(info.value)


def test_a_bad_config_file_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("colour: blue\n")
    result = CliRunner().invoke(
        cli, ["get", "models"], env={"MATRIXINFER_CONFIG": str(path)}
    )
    assert result.exit_code == 2
    assert "unknown key 'colour'" in result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(
        cli, ["completion", shell], env={"MATRIXINFER_CONFIG": ""}
    )
    assert result.exit_code == 0
    assert "_MATRIXINFER_COMPLETE" in result.stdout


def test_unreachable_registry_exits_3_and_says_what_to_do() -> None:
    result = CliRunner().invoke(
        cli, ["--server", "127.0.0.1:1", "--timeout", "2", "get", "models"]
    )
    assert result.exit_code == 3
    assert "cannot reach the registry at 127.0.0.1:1" in result.stderr
    assert "make run" in result.stderr


def test_unreachable_gateway_exits_3() -> None:
    result = CliRunner().invoke(
        cli,
        ["--gateway", "http://127.0.0.1:1", "infer", "iris", "--input", "X=[1]"],
    )
    assert result.exit_code == 3
    assert "cannot reach the gateway at http://127.0.0.1:1" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "-f", "x.yaml", "--wait", "--dry-run"], "--wait cannot be used"),
        (["apply", "-f", "/nonexistent/x.yaml"], "no such file or folder"),
        (
            ["apikey", "create", "--subject", "s", "--scope", "infer:*",
             "--expires", "tomorrow"],
            "expected an RFC 3339 time",
        ),
        (
            ["apikey", "create", "--subject", "s", "--scope", "infer:*",
             "--expires", "2001-01-01T00:00:00Z"],
            "must be in the future",
        ),
        (["infer", "iris"], "give the inputs"),
        (["infer", "iris", "--input", "X=[1]", "--data", "b.json"], "either --data"),
        (["get", "mi", "iris", "-l", "app=x"], "either NAME or -l"),
        (["logs", "iris", "--tail", "-2"], "--tail"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_any_call(args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        cli, ["--server", "127.0.0.1:1", *args], env={"MATRIXINFER_CONFIG": ""}
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_up_without_haproxy_stops_at_once_with_the_command_to_run(
    tmp_path: pathlib.Path,
) -> None:
    result = CliRunner().invoke(
        cli,
        ["up", "--state-dir", str(tmp_path / "state")],
        env={"MATRIXINFER_GATEWAY_HAPROXY_BINARY": str(tmp_path / "no-haproxy")},
    )
    assert result.exit_code != 0
    assert "sudo apt-get install haproxy" in result.output
    assert not (tmp_path / "state").exists()  # nothing was started or written
