"""`matrixinfer up --auth --tls`, as a user runs it: the admin API key is printed
once and kept (mode 0600) in the state folder, the printed commands (curl, the
matrixinfer CLI, tritonclient) work over TLS with it, a call without it is refused,
and a second start reuses the key without printing it."""

from __future__ import annotations

import os
import pathlib
import re
import stat
import subprocess

import pytest

from matrixinfer.cli.up import ADMIN_KEY_FILE, EDGE_TLS_DIR
from tests.conftest import ROOT
from tests.e2e.test_quickstart import Run, port_in_use, printed_commands, shell

pytestmark = pytest.mark.timeout(500)

PORTS = {
    "--grpc-port": 28001,
    "--http-port": 28000,
    "--registry-port": 28051,
    "--kube-port": 28053,
    "--controller-port": 28052,
    "--autoscaler-port": 28054,
}
SECRET = re.compile(r"mik_[A-Za-z0-9]+_[A-Za-z0-9_-]+")
BODY = (
    '{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[6.7,3,5.2,2.3]}]}'
)


def up(state: pathlib.Path, config_home: pathlib.Path, *flags: str) -> Run:
    args = [".venv/bin/matrixinfer", "up", "--state-dir", str(state)]
    for option, port in PORTS.items():
        args += [option, str(port)]
    process = subprocess.Popen(
        [*args, *flags],
        cwd=ROOT,
        # The CLI's record of a running `up` goes to this test's folder.
        env={**os.environ, "XDG_CONFIG_HOME": str(config_home), "COLUMNS": "400"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Run.attach(process)


def status_of(command: str) -> str:
    return shell(command + " -s -o /dev/null -w '%{http_code}'").strip()


def test_up_auth_and_tls(tmp_path: pathlib.Path) -> None:
    busy = [p for p in PORTS.values() if port_in_use(p)]
    if busy:
        pytest.fail(f"ports in use here: {busy}")
    state = tmp_path / "state"
    run = up(state, tmp_path, "--auth", "--tls")
    try:
        text = "".join(run.read_until("Press Ctrl-C", timeout_s=300))
        secrets = SECRET.findall(text)
        assert len(secrets) == 1, text  # printed once, and only once
        secret = secrets[0]
        key_file = state.resolve() / ADMIN_KEY_FILE
        assert key_file.read_text().strip() == secret
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        ca = state.resolve() / EDGE_TLS_DIR / "ca.crt"
        assert f"TLS (local CA for clients):       {ca}" in text

        curl, cli, snippet = printed_commands(run.output)
        assert f"--cacert {ca}" in curl and "https://" in curl
        assert '"label"' in shell(curl) and ',"data":[2]' in shell(curl)
        assert "[[2]]" in shell(cli)
        assert "ssl=True" in snippet and shell(snippet).strip() == "[[2]]"

        url = f"https://127.0.0.1:{PORTS['--http-port']}/v2/models/iris/infer"
        post = f"curl --cacert {ca} -X POST {url} -d '{BODY}'"
        assert status_of(post) == "401"  # no key
        assert status_of(post + " -H 'x-api-key: mik_wrong_key'") == "401"
        assert status_of(post + f" -H 'x-api-key: {secret}'") == "200"
        # The public ports speak TLS only.
        plain = url.replace("https://", "http://")
        done = subprocess.run(
            ["curl", "-s", "-X", "POST", plain, "-d", BODY],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0 and '"outputs"' not in done.stdout
        # The admin scope: the REST admin API with the same key.
        admin = f"curl --cacert {ca} https://127.0.0.1:{PORTS['--http-port']}"
        admin += "/apis/v1/namespaces/default/models"
        assert status_of(admin + f" -H 'x-api-key: {secret}'") == "200"
        assert status_of(admin) == "401"
    finally:
        if run.process.poll() is None:
            run.ctrl_c()

    # The second start reuses the key and does not print it.
    again = up(state, tmp_path, "--auth", "--tls")
    try:
        text = "".join(again.read_until("Press Ctrl-C", timeout_s=300))
        assert secret not in text
        assert SECRET.findall(text) == []
        assert f"in {key_file} (not shown again)" in text
        curl, _, _ = printed_commands(again.output)
        assert ',"data":[2]' in shell(curl)
        assert key_file.read_text().strip() == secret
    finally:
        if again.process.poll() is None:
            again.ctrl_c()
