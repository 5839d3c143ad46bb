"""The NetworkPolicies' intent, read as data: who may reach each component of the release.

A tiny evaluator of the rendered policies (pod and namespace label selectors, ports) answers "may a pod with these
labels, in a namespace with these labels, reach this pod on this port?", so the tests state the intent as facts.
"""

from typing import Any

import pytest

from tests.unit.chart.rendering import MATRIX, NAMESPACE, RELEASE, Rendered, render_case


OWN_NAMESPACE = {"kubernetes.io/metadata.name": NAMESPACE}
PIPELINE = {"musicrl.io/role": "pipeline"}  # pipeline.podLabels


def component(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "musicrl",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": name,
    }


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        present = labels.get(expression["key"])
        if expression["operator"] == "In" and present not in expression["values"]:
            return False
        if expression["operator"] not in ("In",):
            raise NotImplementedError(expression["operator"])
    return True


def _peer_admits(peer: dict[str, Any], labels: dict[str, str], namespace: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:  # pods (all, or the selected ones) of the selected namespaces
        return _matches(peer["namespaceSelector"], namespace) and _matches(peer.get("podSelector"), labels)
    return namespace == OWN_NAMESPACE and _matches(peer["podSelector"], labels)  # same namespace only


def _port_matches(rule: dict[str, Any], port: int | str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port for p in ports)


def admitted(
    rendered: Rendered,
    target: dict[str, str],
    source: dict[str, str],
    port: int | str,
    namespace: dict[str, str] = OWN_NAMESPACE,
) -> bool:
    """Whether the policies let ``source`` reach ``target`` on ``port`` (a pod no policy selects admits anything)."""
    policies = [p for p in rendered.of_kind("NetworkPolicy") if _matches(p["spec"]["podSelector"], target)]
    if not policies:
        return True
    return any(
        _port_matches(rule, port)
        and (not rule.get("from") or any(_peer_admits(peer, source, namespace) for peer in rule["from"]))
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
    )


OUTSIDE = ({"app": "something-else"}, {"kubernetes.io/metadata.name": "elsewhere"})


@pytest.mark.parametrize("case", MATRIX)
def test_only_gateway_rollout_and_pipeline_reach_the_generator(case: str) -> None:
    rendered = render_case(case)
    generator = component("generator")
    allowed = {"gateway", "rollout", "test"}  # test: the `helm test` pod's readiness check
    for name in ("gateway", "rollout", "recorder", "nats", "provision", "rewards", "test"):
        assert admitted(rendered, generator, component(name), 8080) is (name in allowed), name
    pipeline_namespace = _pipeline_namespace(case)
    assert admitted(rendered, generator, PIPELINE, 8080, pipeline_namespace)
    assert not admitted(rendered, generator, *OUTSIDE[:1], 8080, OUTSIDE[1])
    assert not admitted(rendered, generator, {"app": "other"}, 8080)  # another pod of the same namespace


def _pipeline_namespace(case: str) -> dict[str, str]:
    return (
        {"kubernetes.io/metadata.name": "kubeflow-musicrl"} if case in ("production", "ingress-off") else OWN_NAMESPACE
    )


@pytest.mark.parametrize("case", MATRIX)
def test_only_the_gateway_takes_ingress_from_outside(case: str) -> None:
    rendered = render_case(case)
    ingress_namespace = {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert admitted(rendered, component("gateway"), {"app": "ingress-nginx"}, "http", ingress_namespace)
    assert not admitted(rendered, component("gateway"), {"app": "ingress-nginx"}, 9999, ingress_namespace)
    for name, port in (("generator", 8080), ("recorder", "metrics"), ("rollout", "metrics"), ("nats", 4222)):
        assert not admitted(rendered, component(name), {"app": "ingress-nginx"}, port, ingress_namespace), name


@pytest.mark.parametrize("case", MATRIX)
def test_only_the_services_and_the_pipeline_reach_nats(case: str) -> None:
    rendered = render_case(case)
    if not rendered.of_kind("StatefulSet"):
        pytest.skip("external NATS: its own release's policies apply")
    nats = component("nats")
    for name in ("gateway", "recorder", "rollout", "provision"):
        assert admitted(rendered, nats, component(name), 4222), name
    for name in ("generator", "rewards", "test"):
        assert not admitted(rendered, nats, component(name), 4222), name
    # the pipeline's canary step hands the candidate over, and its exit handler publishes a failed run
    assert admitted(rendered, nats, PIPELINE, 4222, _pipeline_namespace(case))
    assert not admitted(rendered, nats, PIPELINE, 4222, OUTSIDE[1])
    assert not admitted(rendered, nats, {"app": "other"}, 4222)
    assert admitted(rendered, nats, nats, 6222)  # cluster routes between the servers
    assert not admitted(rendered, nats, component("gateway"), 6222)


def test_production_scopes_ingress_and_scraping_to_their_namespaces() -> None:
    rendered = render_case("production")
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert admitted(rendered, component("recorder"), {"app": "prometheus"}, "metrics", monitoring)
    assert admitted(rendered, component("generator"), {"app": "prometheus"}, 8080, monitoring)
    assert not admitted(rendered, component("gateway"), {"app": "x"}, "http", OUTSIDE[1])
    assert not admitted(rendered, component("recorder"), {"app": "prometheus"}, "metrics", OUTSIDE[1])


def test_every_pod_of_the_release_is_under_a_default_deny() -> None:
    rendered = render_case("minimal")
    (deny,) = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("default-deny")]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    for name in ("gateway", "recorder", "rollout", "nats", "generator", "rewards", "provision", "test"):
        assert _matches(deny["spec"]["podSelector"], component(name))
