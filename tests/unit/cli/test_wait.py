"""`apply --wait`'s decisions on scripted Watch events."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from rich.console import Console

from matrixinfer.api.v1 import meta_pb2
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.cli.client import CliError
from matrixinfer.cli.wait import Target, is_done, wait_available


class Deadline(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "deadline"

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()


def infer(
    ready: int,
    desired: int = 1,
    generation: int = 1,
    revision: int = 1,
    rolling: bool = False,
    degraded: str = "",
) -> pb.ModelInfer:
    message = pb.ModelInfer()
    message.metadata.name, message.metadata.namespace = "iris", "default"
    message.metadata.generation = generation
    status = message.status
    status.observed_generation = generation
    status.ready_replicas, status.desired_replicas = ready, desired
    status.model_revision = revision
    available = "True" if ready >= desired else "False"
    progressing = ("True", "Rolling") if rolling else ("False", "Complete")
    bad = ("True", "FailedPrecondition") if degraded else ("False", "AsExpected")
    for kind, (value, reason), text in [
        ("Available", (available, "R"), f"{ready} of {desired} ready"),
        ("Progressing", progressing, "1 of 1 updated"),
        ("Degraded", bad, degraded),
    ]:
        status.conditions.append(
            meta_pb2.Condition(type=kind, status=value, reason=reason, message=text)
        )
    return message


class Script:
    address = "registry:1"

    def __init__(self, *events: tuple[str, pb.ModelInfer]) -> None:
        self.events = events

    def watch(
        self, kind: str, namespace: str, selector: str, resource_version: str,
        initial: bool = False, timeout_s: float | None = None,
    ) -> Iterator[rpb.WatchEvent]:  # fmt: skip
        assert (kind, namespace, initial) == ("ModelInfer", "default", True)
        for kind_of_event, obj in self.events:
            yield rpb.WatchEvent(
                type=kind_of_event, object=pb.Resource(model_infer=obj)
            )
        time.sleep(timeout_s or 0)
        raise Deadline()


def test_done_needs_generation_revision_rollout_and_ready() -> None:
    target = Target("default", "iris", generation=2, model_revision=3)
    for candidate, done in [
        (infer(1, generation=1, revision=3), False),  # old generation
        (infer(1, generation=2, revision=2), False),  # old model revision
        (infer(1, generation=2, revision=3, rolling=True), False),
        (infer(0, generation=2, revision=3), False),
        (infer(1, generation=2, revision=3), True),
        (infer(0, desired=0, generation=2, revision=3), True),  # scaled to zero
    ]:
        target.infer = candidate
        assert is_done(target) is done, candidate


def test_waits_through_events_with_a_live_progress_display() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    target = Target("default", "iris", 1)
    script = Script(("ADDED", infer(0)), ("MODIFIED", infer(1)))
    wait_available(script, [target], 5.0, console)
    assert target.infer is not None and is_done(target)
    assert "modelinfer/iris" in out.getvalue() and "1/1 ready" in out.getvalue()


def test_timeout_reports_the_degraded_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = Console(file=io.StringIO())
    target = Target("default", "iris", 1)
    script = Script(("ADDED", infer(0, degraded="file:///x.onnx: no such file")))
    with pytest.raises(CliError) as info:
        wait_available(script, [target], 0.2, console)
    assert info.value.exit_code == 1
    assert info.value.message == (
        "error: modelinfer/iris not available after 0.2 s (0/1 ready): "
        "Degraded (FailedPrecondition): file:///x.onnx: no such file"
    )
    assert "modelinfer/iris: 0/1 ready, Degraded" in capsys.readouterr().err


def test_deleted_while_waiting_fails_at_once() -> None:
    target = Target("default", "iris", 1)
    script = Script(("ADDED", infer(0)), ("DELETED", infer(0)))
    with pytest.raises(CliError, match="it was deleted"):
        wait_available(script, [target], 5.0, Console(file=io.StringIO()))
