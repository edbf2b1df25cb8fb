"""Deployment files refer to things that exist."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT


def test_dockerfile_copies_existing_paths() -> None:
    for dockerfile in (ROOT / "deploy" / "docker").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"COPY (?!--from)(\S+) ", line)
            if m:
                assert (ROOT / m.group(1)).exists(), f"{dockerfile.name}: {m.group(1)}"


def test_kustomization_lists_existing_manifests() -> None:
    base = ROOT / "deploy" / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        docs = list(yaml.safe_load_all((base / resource).read_text()))
        assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
