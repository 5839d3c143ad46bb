"""Import KServe without letting it read our command line.

``kserve.model_server`` parses ``sys.argv`` when it is first imported (a module-level argparse with
prefix matching), so our ``--model`` flag would be taken as its ``--model_name``. Every module of ours
that needs KServe imports it through :func:`import_kserve`, which hides ``sys.argv`` for that import.
"""

import sys
import types


def import_kserve() -> types.ModuleType:
    """Import and return the ``kserve`` package with an empty command line.

    Returns:
        The ``kserve`` module (already imported ones are returned as they are).
    """
    if "kserve.model_server" in sys.modules:
        import kserve

        return kserve
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        import kserve.model_server  # noqa: F401 - the module that parses argv at import
    finally:
        sys.argv = saved
    return kserve


kserve = import_kserve()

# Re-exported so that other modules import KServe only through this one (the imports below run after the
# argv-safe import above, which is why they are not at the top).
from kserve import Model  # noqa: E402
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING  # noqa: E402
from kserve.errors import InferenceError, InvalidInput, ServerNotReady  # noqa: E402
from kserve.model_repository import ModelRepository  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc  # noqa: E402
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor  # noqa: E402
from kserve.protocol.grpc.servicer import InferenceServicer  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402


__all__ = [
    "FASTAPI_APP_IMPORT_STRING",
    "DataPlane",
    "ExceptionToStatusInterceptor",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InferenceError",
    "InferenceServicer",
    "InvalidInput",
    "ServerNotReady",
    "LoggingInterceptor",
    "Model",
    "ModelRepository",
    "ModelRepositoryExtension",
    "RESTServer",
    "grpc_predict_v2_pb2_grpc",
    "import_kserve",
    "kserve",
]
