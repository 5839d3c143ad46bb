"""values.schema.json accepts every shipped values file and refuses wrong ones, each for its intended reason; the
templates' ``fail`` refuses the combinations a schema cannot express, with a sentence that names the fix."""

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.unit.chart.rendering import BAD_VALUES_DIR, CHART_DIR, MATRIX, chart, render, values_file, with_values


BAD_VALUES = sorted(BAD_VALUES_DIR.glob("*.yaml"))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def _schema_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as raised:
        chart().validate_schema(chart().merge_values(values))
    return str(raised.value)


def test_schema_refuses_unknown_keys_at_every_level() -> None:
    schema = chart().schema
    assert schema is not None

    def objects(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
        if not isinstance(node, dict):
            return []
        found = [(path, node)] if node.get("type") == "object" and "properties" in node else []
        for key, sub in node.get("properties", {}).items():
            found += objects(sub, f"{path}.{key}")
        return found

    found = objects(schema, "") + [
        item for name, sub in schema["$defs"].items() for item in objects(sub, f"$defs.{name}")
    ]
    assert len(found) > 30  # every section and sub-section of values.yaml
    loose = [path for path, node in found if node.get("additionalProperties") is not False]
    assert loose == []


def test_values_yaml_has_no_key_the_schema_lacks() -> None:
    # the schema refuses unknown keys, so the chart's own defaults passing it means every key is described
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    message = _schema_error({})  # defaults alone miss the required values, and only those
    assert set(re.findall(r"at '(/[^']+)'", message)) <= {
        "/config",
        "/config/clipStoreUrl",
        "/config/datasetUrl",
        "/generator/storageUri",
        "/secrets/secretKey/name",
    }
    assert "additional properties" not in message
    assert defaults["nats"]["mode"] == "bundled"  # the default


@pytest.mark.parametrize("case", MATRIX)
def test_every_shipped_values_file_fits_the_schema(case: str) -> None:
    chart().validate_schema(chart().merge_values(values_file(case)))


@pytest.mark.parametrize("path", BAD_VALUES, ids=[p.stem for p in BAD_VALUES])
def test_schema_refuses_wrong_values_for_the_intended_reason(path: Path) -> None:
    text = path.read_text()
    (expected,) = re.findall(r"^# expect: (.+)$", text, flags=re.MULTILINE)
    values = _merge(values_file("minimal"), yaml.safe_load(text))
    message = _schema_error(values)
    assert expected in message
    # and for that reason only: every complaint is about the intended path (or the object holding it)
    intended = re.search(r"at '([^']*)'", expected)
    if intended is not None:
        for path_in_message in re.findall(r"at '([^']*)'", message):
            assert intended.group(1).startswith(path_in_message), message
    # a render refuses it too, with Helm's own wording
    with pytest.raises(helm.HelmValuesError, match="values don't meet the specifications of the schema"):
        render(values)


FAILS = {
    "canary without its checkpoint": (
        {"generator__canary__enabled": True},
        "generator.canary.enabled is true but generator.canary.storageUri is empty",
    ),
    "canary serving the stable checkpoint": (
        {"generator__canary__enabled": True, "generator__canary__storageUri": "s3://musicrl/policies/stable"},
        "a canary must serve another checkpoint",
    ),
    "stream replicas 3 on one bundled server": (
        {"nats__streamReplicas": 3},
        "nats.streamReplicas is 3 but bundled NATS runs 1 server(s): set nats.bundled.replicas to at least 3",
    ),
    "a two-server JetStream cluster": (
        {"nats__bundled__replicas": 2},
        "a JetStream cluster of 2 loses its quorum",
    ),
    "external NATS without a URL": (
        {"nats__mode": "external"},
        "neither nats.external.url nor nats.external.urlSecret.name is set",
    ),
    "ingress without a host": (
        {"gateway__ingress__enabled": True},
        "gateway.ingress.enabled is true but gateway.ingress.host is empty: set the host name",
    ),
    "an HTTPRoute attached to no Gateway": (
        {"gateway__httpRoute__enabled": True},
        "gateway.httpRoute.enabled is true but gateway.httpRoute.parentRefs is empty",
    ),
    "a Triton runtime under another model name": (
        {"generator__runtime__kind": "triton", "generator__modelName": "policy"},
        'generator.runtime.kind triton serves the model as "generator"',
    ),
    "an existing runtime without its name": (
        {"generator__runtime__create": False},
        "generator.runtime.create is false but generator.runtime.name is empty",
    ),
    "a Standard canary bigger than the stable predictor": (
        {
            "generator__canary__enabled": True,
            "generator__canary__storageUri": "s3://musicrl/policies/v7",
            "generator__canary__replicas": 2,
        },
        "generator.canary.replicas (2) exceeds generator.minReplicas (1)",
    ),
    "a rollout that stops counting before it may promote": (
        {"rollout__decision__minVotes": 300, "rollout__decision__maxVotes": 200},
        "rollout.decision.maxVotes (200) is below minVotes (300): every canary would be rolled back",
    ),
    "a reward without its checkpoint": (
        {"rewards__models__quality__enabled": True},
        "rewards.models.quality.enabled is true but its storageUri is empty",
    ),
}


@pytest.mark.parametrize("overrides, message", FAILS.values(), ids=FAILS.keys())
def test_invalid_combinations_fail_with_a_sentence(overrides: dict[str, Any], message: str) -> None:
    values = with_values("minimal", **overrides)
    chart().validate_schema(chart().merge_values(values))  # the schema passes them: only the template can tell
    with pytest.raises(helm.HelmRenderError) as raised:
        render(values)
    assert message in str(raised.value)


def test_serverless_canary_may_exceed_the_stable_replicas_rule() -> None:
    # the replica rule is Standard mode's: a Serverless canary is a revision of the same predictor
    values = with_values("canary-serverless", generator__canary__replicas=5, generator__minReplicas=1)
    assert render(values).one("InferenceService", "demo-musicrl-generator")
