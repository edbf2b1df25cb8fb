"""``apply --wait``: until every applied ModelInfer is available on what was applied.

Done means: the controller has seen the applied generation (and, when the Model was
applied in the same run and the ModelInfer follows its latest revision, serves that
revision), Available is True, the rollout is complete (Progressing is not True) and
ready replicas reach the desired count. Progress comes from the registry's Watch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import click

from matrixinfer.cli.client import CliError, rpc_error

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from matrixinfer.api.v1 import meta_pb2
    from matrixinfer.api.v1 import registry_pb2 as rpb
    from matrixinfer.api.v1 import resources_pb2 as pb


class Watcher(Protocol):
    """The registry's Watch (tests substitute scripted events)."""

    address: str

    def watch(
        self,
        kind: str,
        namespace: str,
        selector: str,
        resource_version: str,
        initial: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[rpb.WatchEvent]: ...


@dataclass
class Target:
    namespace: str
    name: str
    generation: int
    #: The Model revision it must serve (None: whatever it serves).
    model_revision: int | None = None
    infer: pb.ModelInfer | None = None
    deleted: bool = False

    @property
    def label(self) -> str:
        return f"modelinfer/{self.name}"

    def counts(self) -> tuple[int, int]:
        if self.infer is None:
            return 0, 0
        status = self.infer.status
        desired = (
            status.desired_replicas
            if status.observed_generation
            else self.infer.spec.replicas
        )
        return status.ready_replicas, desired


def _condition(infer: pb.ModelInfer, kind: str) -> meta_pb2.Condition | None:
    for c in infer.status.conditions:
        if c.type == kind:
            return c
    return None


def is_done(target: Target) -> bool:
    infer = target.infer
    if infer is None or target.deleted:
        return False
    status = infer.status
    if status.observed_generation < target.generation:
        return False
    if (
        target.model_revision is not None
        and status.model_revision < target.model_revision
    ):
        return False
    available = _condition(infer, "Available")
    progressing = _condition(infer, "Progressing")
    ready, desired = target.counts()
    return (
        available is not None
        and available.status == "True"
        and (progressing is None or progressing.status != "True")
        and ready >= desired
    )


def describe_state(target: Target) -> str:
    """Why a target is not done yet, in the controller's words."""
    if target.deleted:
        return "it was deleted"
    infer = target.infer
    if infer is None:
        return "not seen yet"
    if infer.status.observed_generation < target.generation:
        return "waiting for the controller to pick up generation " + str(
            target.generation
        )
    degraded = _condition(infer, "Degraded")
    if degraded is not None and degraded.status == "True":
        return f"Degraded ({degraded.reason}): {degraded.message}"
    for kind in ("Progressing", "Available"):
        c = _condition(infer, kind)
        if c is not None and c.message and (kind == "Available" or c.status == "True"):
            return f"{kind} ({c.reason}): {c.message}"
    return ""


def wait_available(
    registry: Watcher,
    targets: Sequence[Target],
    timeout_s: float,
    console: Console,
) -> None:
    """Block until every target is done; CliError (exit 1) on timeout or deletion,
    with the Degraded condition's message."""
    import grpc

    from matrixinfer.core.grpc.errors import error_details

    deadline = time.monotonic() + timeout_s
    namespaces = {t.namespace for t in targets}
    namespace = namespaces.pop() if len(namespaces) == 1 else ""
    by_key = {(t.namespace, t.name): t for t in targets}
    view = _View(console, targets)
    with view:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                for event in registry.watch(
                    "ModelInfer", namespace, "", "", initial=True, timeout_s=remaining
                ):
                    if event.type == "BOOKMARK" or not event.HasField("object"):
                        continue
                    infer = event.object.model_infer
                    target = by_key.get((infer.metadata.namespace, infer.metadata.name))
                    if target is None:
                        continue
                    target.infer = infer
                    target.deleted = event.type == "DELETED"
                    view.update(target)
                    if target.deleted:
                        raise CliError(f"error: {target.label}: it was deleted")
                    if all(is_done(t) for t in targets):
                        view.finish()
                        return
            except grpc.RpcError as e:
                code = error_details(e).code
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
                if code not in (
                    grpc.StatusCode.OUT_OF_RANGE,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise rpc_error(e, "registry", registry.address) from None
                # OUT_OF_RANGE: our version expired; watch again from a fresh list.
    pending = [t for t in targets if not is_done(t)]
    lines = [
        f"error: {t.label} not available after {timeout_s:g} s "
        f"({t.counts()[0]}/{t.counts()[1]} ready): {describe_state(t) or 'no status'}"
        for t in pending
    ]
    raise CliError("\n".join(lines))


class _View:
    """A rich progress display of ready/desired replicas on a terminal; plain lines
    on stderr when a target's state changes otherwise (CI logs, pipes)."""

    def __init__(self, console: Console, targets: Sequence[Target]) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.targets = targets
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} ready"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.last: dict[str, str] = {}

    def __enter__(self) -> _View:
        if self.live:
            self.progress.start()
            for t in self.targets:
                self.tasks[t.label] = self.progress.add_task(
                    t.label, total=1, completed=0, message="waiting"
                )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def update(self, target: Target) -> None:
        ready, desired = target.counts()
        message = "available" if is_done(target) else describe_state(target)
        if self.live:
            self.progress.update(
                self.tasks[target.label],
                total=max(desired, 1),
                completed=ready if desired else 1,
                message=message,
            )
            return
        line = f"{target.label}: {ready}/{desired} ready" + (
            f", {message}" if message else ""
        )
        if self.last.get(target.label) != line:
            self.last[target.label] = line
            click.echo(line, err=True)

    def finish(self) -> None:
        for t in self.targets:
            self.update(t)
