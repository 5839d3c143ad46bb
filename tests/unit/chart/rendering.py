"""Render charts/musicrl with the Helm SDK (no helm binary, no cluster) and read the objects back as dicts."""

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml


REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "musicrl"
CI_VALUES_DIR = CHART_DIR / "ci"
BAD_VALUES_DIR = Path(__file__).resolve().parent / "bad_values"
RELEASE, NAMESPACE = "demo", "music"
KUBE_VERSION = "v1.30.0"

# Values of every matrix case: each file of charts/musicrl/ci, by the name before "-values.yaml".
MATRIX = sorted(path.name.removesuffix("-values.yaml") for path in CI_VALUES_DIR.glob("*-values.yaml"))


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: every object, and NOTES.txt."""

    objects: tuple[dict[str, Any], ...]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        return found

    def workload(self, component: str) -> dict[str, Any]:
        """The Deployment or StatefulSet of a component (``gateway``, ``recorder``, ...)."""
        (found,) = [
            obj
            for obj in self.objects
            if obj["kind"] in ("Deployment", "StatefulSet")
            and obj["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        return found


def values_file(case: str) -> dict[str, Any]:
    """The values of the matrix case ``case`` (``charts/musicrl/ci/<case>-values.yaml``)."""
    loaded: dict[str, Any] = yaml.safe_load((CI_VALUES_DIR / f"{case}-values.yaml").read_text())
    return loaded


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render(values: dict[str, Any]) -> Rendered:
    """Render the chart as an install of release ``demo`` into namespace ``music``.

    Raises:
        helm_python.HelmError: The values break the schema or a template's ``fail``.
    """
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(tuple(objects), manifests.get(f"{CHART_DIR.name}/templates/NOTES.txt", ""))


@functools.cache
def _render_case_json(case: str) -> str:
    rendered = render(values_file(case))
    return json.dumps({"objects": rendered.objects, "notes": rendered.notes})


def render_case(case: str) -> Rendered:
    """The matrix case rendered once per test session (a fresh copy each call: tests may not share mutations)."""
    data = json.loads(_render_case_json(case))
    return Rendered(tuple(data["objects"]), data["notes"])


def with_values(case: str, **overrides: Any) -> dict[str, Any]:
    """The values of ``case`` with dotted-path ``overrides`` (``gateway__ingress__enabled=True``) applied."""
    values = values_file(case)
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload, Job or Pod."""
    if obj["kind"] == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
