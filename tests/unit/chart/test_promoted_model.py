"""`helm upgrade` keeps the model the rollout controller promoted (generator.keepPromotedModel).

The chart reads the live InferenceService with `lookup`, which a render without a cluster answers with nothing, and
the Helm SDK offers no way to answer it. So the helper that decides, ``musicrl.generatorStorageUri``, is rendered
here with live objects handed to it: a copy of the chart gains one template that calls the helper with an object
read from a file beside it. Each live object is the chart's own InferenceService after the controller's real
patches (musicrl.rollout.isvc_patches); its ``managedFields`` entry, which an API server records for the
controller's field manager, is written here by hand in the API's fieldsV1 format, as there is no API server here.
What is not exercised: the `lookup` call itself against a cluster, and Helm applying the result there.
"""

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from musicrl.rollout import isvc_patches as patches
from musicrl.rollout.kserve_target import KServeTargetConfig
from tests.unit.chart.rendering import CHART_DIR, NAMESPACE, RELEASE, render, with_values


ISVC = f"{RELEASE}-musicrl-generator"
STABLE = "s3://musicrl/policies/stable"  # generator.storageUri of the matrix cases
PROMOTED = "s3://musicrl/policies/v7"
PROBE = """\
{{- $live := .Files.Get "probe/live.json" | fromJson -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: storage-uri-probe
data:
  storageUri: {{ include "musicrl.generatorStorageUri" (dict "root" . "live" $live) | quote }}
"""
# What an API server lists for a manager that wrote spec.predictor.model.storageUri last (fieldsV1, "f:" per key).
OWNS_STORAGE_URI = {"f:spec": {"f:predictor": {"f:model": {"f:storageUri": {}}}}}


def _controller_manager() -> str:
    return KServeTargetConfig(namespace=NAMESPACE, isvc_name=ISVC, model_name="generator").field_manager


def _installed(case: str) -> dict[str, Any]:
    """The InferenceService as a first install of ``case`` (no canary) leaves it, as the API server returns it."""
    live = render(with_values(case, generator__canary__enabled=False)).one("InferenceService", ISVC)
    live["metadata"].update(namespace=NAMESPACE, resourceVersion="1")
    live["metadata"]["managedFields"] = [_entry("helm", OWNS_STORAGE_URI)]
    return live


def _entry(manager: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"manager": manager, "operation": "Update", "apiVersion": "serving.kserve.io/v1beta1", "fieldsV1": fields}


def _apply(live: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    assert patch is not None, "the controller found nothing to do"
    patches.check_patch(live, patch)  # what the controller checks before it sends one
    patched: dict[str, Any] = patches.apply_merge_patch(live, patch)
    patched["metadata"]["resourceVersion"] = str(int(live["metadata"]["resourceVersion"]) + 1)
    return patched


def _promoted(case: str) -> dict[str, Any]:
    """The live object after the controller started a canary of PROMOTED and promoted it, in the case's mode."""
    live = _installed(case)
    if live["metadata"]["annotations"][patches.DEPLOYMENT_MODE] == "Serverless":
        live = _apply(live, patches.serverless_start_patch(live, model_uri=PROMOTED, traffic_percent=10))
        live = _apply(live, patches.serverless_promote_patch(live, model_uri=PROMOTED))
    else:
        start = patches.standard_start_patch(live, name="r7", model_uri=PROMOTED, traffic_percent=10, replicas=1)
        live = _apply(live, start)
        promote, _ = patches.standard_promote_patch(live, model_uri=PROMOTED)
        live = _apply(live, promote)
    assert patches.storage_uri(live["spec"]["predictor"]) == PROMOTED
    # the API server moves the field's ownership to whoever changed its value last
    live["metadata"]["managedFields"] = [
        _entry("helm", {"f:metadata": {}}),
        _entry(_controller_manager(), OWNS_STORAGE_URI),
    ]
    return live


def _upgrade_uri(tmp_path: Path, live: dict[str, Any], values: dict[str, Any]) -> str:
    """The stable storageUri an upgrade with ``values`` renders when `lookup` returns ``live``."""
    chart_copy = tmp_path / "musicrl"
    shutil.copytree(CHART_DIR, chart_copy)
    (chart_copy / "probe").mkdir()
    (chart_copy / "probe" / "live.json").write_text(json.dumps(live))
    (chart_copy / "templates" / "zz-probe.yaml").write_text(PROBE)
    manifests = helm.Chart.load(chart_copy).render(values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    probe = manifests[f"{chart_copy.name}/templates/zz-probe.yaml"]
    (line,) = [line for line in probe.splitlines() if line.strip().startswith("storageUri:")]
    return str(json.loads(line.split(":", 1)[1]))


@pytest.mark.parametrize("case", ["minimal", "canary-serverless"])
def test_an_upgrade_keeps_the_model_the_controller_promoted(case: str, tmp_path: Path) -> None:
    values = with_values(case, generator__canary__enabled=False)
    assert _upgrade_uri(tmp_path, _promoted(case), values) == PROMOTED


def test_a_first_install_uses_the_values(tmp_path: Path) -> None:
    assert _upgrade_uri(tmp_path, {}, with_values("minimal")) == STABLE


def test_a_new_storage_uri_in_the_values_wins_over_the_promoted_one(tmp_path: Path) -> None:
    chosen = "s3://musicrl/policies/retrained-by-hand"
    values = with_values("minimal", generator__storageUri=chosen)
    assert _upgrade_uri(tmp_path, _promoted("minimal"), values) == chosen


def test_the_switch_off_puts_the_values_back(tmp_path: Path) -> None:
    values = with_values("minimal", generator__keepPromotedModel=False)
    assert _upgrade_uri(tmp_path, _promoted("minimal"), values) == STABLE


def test_a_uri_someone_else_wrote_is_not_kept(tmp_path: Path) -> None:
    live = _promoted("minimal")
    live["metadata"]["managedFields"] = [_entry("kubectl-edit", OWNS_STORAGE_URI)]
    assert _upgrade_uri(tmp_path, live, with_values("minimal")) == STABLE


def test_an_object_without_the_installed_uri_annotation_uses_the_values(tmp_path: Path) -> None:
    live = _promoted("minimal")
    del live["metadata"]["annotations"]["musicrl.io/installed-storage-uri"]  # written by an older chart
    assert _upgrade_uri(tmp_path, live, with_values("minimal")) == STABLE


def test_a_render_without_a_cluster_is_the_same_with_the_switch_on_or_off() -> None:
    # `lookup` finds nothing here (and under `helm template`): the values' storageUri, and no other difference
    kept = render(with_values("minimal")).one("InferenceService", ISVC)
    plain = render(with_values("minimal", generator__keepPromotedModel=False)).one("InferenceService", ISVC)
    assert kept == plain
    assert kept["spec"]["predictor"]["model"]["storageUri"] == STABLE
    assert kept["metadata"]["annotations"]["musicrl.io/installed-storage-uri"] == STABLE


def test_the_promoted_object_really_differs_from_a_fresh_render() -> None:
    # the premise: without the helper, an upgrade would render STABLE over the controller's PROMOTED
    live = _promoted("minimal")
    fresh = copy.deepcopy(render(with_values("minimal")).one("InferenceService", ISVC))
    assert patches.storage_uri(fresh["spec"]["predictor"]) == STABLE != patches.storage_uri(live["spec"]["predictor"])
