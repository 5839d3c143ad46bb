"""The light services' import graphs: what their entrypoints load, and that their extras declare it.

Each image installs only its role's extra, so a module the entrypoint imports but the extra does not declare
fails only in the image; and a heavy package dragged in by one import grows the image by hundreds of MB.
Checked in a subprocess: this test process has torch and tritonclient loaded already.
"""

import functools
import json
import subprocess
import sys

import pytest

from tests.utils.import_graph import GRAPH_SCRIPT, ROOT, declared_closure


# What each light image must not carry. The gateway talks to the generator with tritonclient's HTTP client (a
# declared dependency of its extra), but not the gRPC half, which would bring grpcio.
MODEL_STACK = {"torch", "transformers", "tokenizers", "kserve"}
FORBIDDEN = {
    "services.gateway.__main__": MODEL_STACK | {"scipy", "grpc", "pyarrow"},
    "services.recorder.__main__": MODEL_STACK | {"scipy", "tritonclient", "fastapi"},
    "services.rollout.__main__": MODEL_STACK | {"tritonclient", "fastapi"},
}
# The module each image runs, and the extra it installs; the chart's provisioning Job runs in the recorder image.
ROLE = {
    "services.gateway.__main__": "gateway",
    "services.recorder.__main__": "recorder",
    "musicrl.bus.provision": "recorder",
    "services.rollout.__main__": "rollout",
}


@functools.cache
def _graph(module: str) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", GRAPH_SCRIPT, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_light_service_loads_no_heavy_package(module: str) -> None:
    graph = _graph(module)
    loaded = set(graph["loaded"])
    assert not loaded & FORBIDDEN[module], f"{module} imports {sorted(loaded & FORBIDDEN[module])}"
    if module == "services.gateway.__main__":
        assert "tritonclient.http" in graph["loaded_modules"]
        assert "tritonclient.grpc" not in graph["loaded_modules"]


@pytest.mark.parametrize("module", sorted(ROLE))
def test_light_service_imports_only_what_its_extra_declares(module: str) -> None:
    imported = _graph(module)["imported_distributions"]
    declared = declared_closure(ROLE[module])
    assert imported, "the graph script found no imports"
    missing = sorted(set(imported) - declared)
    assert not missing, f"{module} imports {missing}, which the {ROLE[module]!r} extra does not install"
