"""Where the kserve target finds its Kubernetes credentials when none are passed."""

import json
from pathlib import Path

import pytest

from musicrl.errors import InvalidRequest

# imported at collection, long before a test sets KUBECONFIG: the kubernetes client reads it at its own import
from musicrl.rollout.kserve_target import default_configuration


def write_kubeconfig(path: Path, server: str) -> None:
    cluster = {"name": "c", "cluster": {"server": server}}
    context = {"name": "c", "context": {"cluster": "c", "user": "u"}}
    config = {"clusters": [cluster], "users": [{"name": "u", "user": {"token": "t0"}}], "contexts": [context]}
    path.write_text(json.dumps(config | {"apiVersion": "v1", "kind": "Config", "current-context": "c"}))


def test_kubeconfig_is_read_when_the_configuration_is_built_not_when_the_client_was_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # off any pod's service account
    first, second = tmp_path / "first", tmp_path / "second"
    write_kubeconfig(first, "http://127.0.0.1:6443")
    write_kubeconfig(second, "http://127.0.0.1:7443")
    monkeypatch.setenv("KUBECONFIG", str(first))
    assert default_configuration().host == "http://127.0.0.1:6443"
    monkeypatch.setenv("KUBECONFIG", str(second))
    assert default_configuration().host == "http://127.0.0.1:7443"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(InvalidRequest, match="no Kubernetes credentials .* point KUBECONFIG at a config"):
        default_configuration()
