"""One `matrixinfer up` per state folder: a second one on the same folder stops at
once with an error naming the folder and the process that holds it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from matrixinfer.cli.up import EXIT_USAGE, _lock_state


def test_a_second_up_on_the_same_state_folder_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    held = _lock_state(tmp_path)  # this process holds the folder, as `up` does
    try:
        # flock is per open file description: another process is refused.
        code = (
            "import pathlib, sys; from matrixinfer.cli.up import _lock_state; "
            f"_lock_state(pathlib.Path({str(tmp_path)!r}))"
        )
        other = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    finally:
        held.close()
    assert other.returncode == EXIT_USAGE
    assert other.stderr.strip() == (
        f"error: {tmp_path} is in use by another `matrixinfer up` "
        f"(pid {os.getpid()}); stop it first, or pass a different --state-dir"
    )


def test_the_folder_is_free_again_once_up_has_stopped(tmp_path: pathlib.Path) -> None:
    _lock_state(tmp_path).close()
    again = _lock_state(tmp_path)
    assert (tmp_path / "up.lock").read_text() == f"pid {os.getpid()}\n"
    again.close()
