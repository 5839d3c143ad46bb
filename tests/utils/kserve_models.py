"""What KServe's Python package knows, read in a subprocess.

KServe's V2 gRPC protos and tritonclient's share the protobuf package ``inference``: once a test module has
imported ``tritonclient.grpc``, importing ``kserve`` in the same process fails ("duplicate symbol
'inference.ServerLiveRequest'"). Tests that only need KServe's API models or routes ask a fresh interpreter.
"""

import functools
import json
import subprocess
import sys


_ATTRIBUTE_MAPS = """
import inspect, json, sys
sys.argv = sys.argv[:1]  # kserve parses sys.argv when first imported
import kserve.models, kubernetes.client.models
maps = {}
for module in (kubernetes.client.models, kserve.models):
    for name, cls in inspect.getmembers(module, inspect.isclass):
        if hasattr(cls, "attribute_map") and hasattr(cls, "openapi_types"):
            maps[name] = {key: cls.openapi_types[attr] for attr, key in cls.attribute_map.items()}
print(json.dumps(maps))
"""

_V2_PATHS = """
import json, sys
sys.argv = sys.argv[:1]
from fastapi import FastAPI
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
app = FastAPI()
register_v2_endpoints(app, None, None)
print(json.dumps(sorted(app.openapi()["paths"])))
"""


def _run(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"reading KServe's package failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.cache
def attribute_maps() -> dict[str, dict[str, str]]:
    """Per API model class name (KServe's, then Kubernetes' where KServe has none): JSON key → OpenAPI type."""
    return _run(_ATTRIBUTE_MAPS)  # type: ignore[return-value]


@functools.cache
def v2_paths() -> frozenset[str]:
    """The REST paths KServe's V2 (Open Inference Protocol) server registers."""
    return frozenset(_run(_V2_PATHS))  # type: ignore[arg-type]
