"""A stand-in for the Kubeflow Pipelines REST API (v2beta1): just the endpoints ``kfp.Client`` calls to
upload a pipeline and its versions, find or create an experiment, start a run, and list, create and delete
recurring runs, plus healthz. State lives in memory; serve it with :func:`tests.utils.recording_http.recording_server`.

Field names on the wire are those ``kfp_server_api``'s models read (``recurringRuns`` in a recurring-run
listing, snake_case elsewhere). Listings of recurring runs are paged two at a time whatever page size is
asked for, so a client that stops after the first page is caught.
"""

import json
from itertools import count
from typing import Any

from tests.utils.recording_http import Recorded


API = "/apis/v2beta1"
RECURRING_PAGE = 2


def _matches(item: dict[str, Any], raw_filter: str | None) -> bool:
    """Apply a v2beta1 filter's EQUALS predicates (the only operation the code under test uses)."""
    if not raw_filter:
        return True
    for predicate in json.loads(raw_filter).get("predicates", []):
        if predicate.get("operation") not in ("EQUALS", 1):
            raise ValueError(f"the stand-in implements EQUALS only, got {predicate}")
        value = predicate.get("stringValue", predicate.get("string_value"))
        if item.get(predicate["key"]) != value:
            return False
    return True


class KfpStandIn:
    """Pipelines, versions, experiments, runs and recurring runs of one Kubeflow Pipelines instance."""

    def __init__(self) -> None:
        self._ids = count(1)
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def add_recurring_run(self, display_name: str) -> str:
        """Seed a recurring run (as if made by an earlier deployment); returns its id."""
        recurring_run_id = self.new_id("recurring")
        self.recurring_runs[recurring_run_id] = {"recurring_run_id": recurring_run_id, "display_name": display_name}
        return recurring_run_id

    def __call__(self, request: Recorded) -> tuple[int, Any]:
        method, path = request.method, request.path
        if not path.startswith(API):
            return 404, {"error": f"no route {path}"}
        route = path[len(API) :]
        if (method, route) == ("GET", "/healthz"):
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if route.startswith("/pipelines"):
            return self._pipelines(request, route)
        if route.startswith("/experiments"):
            return self._experiments(request)
        if (method, route) == ("POST", "/runs"):
            run = request.json | {"run_id": self.new_id("run"), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if route.startswith("/recurringruns"):
            return self._recurring_runs(request, route)
        return 404, {"error": f"no route {method} {path}"}

    def _pipelines(self, request: Recorded, route: str) -> tuple[int, Any]:
        if request.method == "GET" and route == "/pipelines":
            found = [p for p in self.pipelines.values() if _matches(p, request.param("filter"))]
            return 200, {"pipelines": found, "total_size": len(found)}
        if request.method == "POST" and route == "/pipelines/upload":
            pipeline_id = self.new_id("pipeline")
            name = request.param("name") or ""
            self.pipelines[pipeline_id] = {"pipeline_id": pipeline_id, "display_name": name}
            # like Kubeflow, the first upload also makes the pipeline's first version, named after it
            self.versions[pipeline_id] = [self._version(pipeline_id, name, request.body)]
            return 200, self.pipelines[pipeline_id]
        if request.method == "POST" and route == "/pipelines/upload_version":
            pipeline_id = request.param("pipelineid") or ""
            if pipeline_id not in self.pipelines:
                return 404, {"error": f"pipeline {pipeline_id} not found"}
            version = self._version(pipeline_id, request.param("name") or "", request.body)
            self.versions[pipeline_id].append(version)
            return 200, version
        parts = route.split("/")  # ["", "pipelines", id, "versions"]
        if request.method == "GET" and len(parts) == 4 and parts[3] == "versions":
            versions = [v for v in reversed(self.versions.get(parts[2], [])) if _matches(v, request.param("filter"))]
            return 200, {"pipeline_versions": versions, "total_size": len(versions)}
        return 404, {"error": f"no route {request.method} {route}"}

    def _version(self, pipeline_id: str, name: str, package: bytes) -> dict[str, Any]:
        return {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self.new_id("version"),
            "display_name": name,
            "package_bytes": len(package),
        }

    def _experiments(self, request: Recorded) -> tuple[int, Any]:
        if request.method == "GET":
            found = [e for e in self.experiments.values() if _matches(e, request.param("filter"))]
            return 200, {"experiments": found, "total_size": len(found)}
        experiment = request.json | {"experiment_id": self.new_id("experiment")}
        self.experiments[experiment["experiment_id"]] = experiment
        return 200, experiment

    def _recurring_runs(self, request: Recorded, route: str) -> tuple[int, Any]:
        if request.method == "GET" and route == "/recurringruns":
            found = [r for r in self.recurring_runs.values() if _matches(r, request.param("filter"))]
            start = int(request.param("page_token") or 0)
            page = found[start : start + RECURRING_PAGE]
            more = start + RECURRING_PAGE < len(found)
            return 200, {
                "recurringRuns": page,
                "total_size": len(found),
                "next_page_token": str(start + RECURRING_PAGE) if more else "",
            }
        if request.method == "POST" and route == "/recurringruns":
            recurring = request.json | {"recurring_run_id": self.new_id("recurring"), "status": "ENABLED"}
            self.recurring_runs[recurring["recurring_run_id"]] = recurring
            return 200, recurring
        recurring_run_id = route.rsplit("/", 1)[-1]
        if request.method == "DELETE" and recurring_run_id in self.recurring_runs:
            del self.recurring_runs[recurring_run_id]
            return 200, {}
        return 404, {"error": f"recurring run {recurring_run_id} not found"}
