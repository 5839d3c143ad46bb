"""Run KServe models over V2 REST and gRPC on a configurable address, loading them in the background.

KServe's ``ModelServer`` binds 0.0.0.0 / [::] unconditionally and refuses to start before a model is
ready. Here the same KServe pieces (data plane, REST app, gRPC servicer and interceptors) are assembled
so that the listeners bind ``ServerConfig.host`` and come up at once: liveness answers while the
weights load, and readiness (server and model) turns true only when ``load()`` has finished.
"""

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc

from musicrl.config import ServerConfig
from musicrl.errors import MusicRLError
from musicrl.serving.errors import RetryLater, retry_later_handler
from musicrl.serving.kserve_compat import (
    FASTAPI_APP_IMPORT_STRING,
    DataPlane,
    ExceptionToStatusInterceptor,
    InferenceError,
    InferenceServicer,
    InvalidInput,
    LoggingInterceptor,
    Model,
    ModelRepository,
    ModelRepositoryExtension,
    RESTServer,
    grpc_predict_v2_pb2_grpc,
)
from musicrl.serving.torch_thread import configure_torch_threads


logger = logging.getLogger(__name__)

GRPC_WORKER_THREADS = 4  # the servicer is async; threads only serve blocking interceptors


class PlatformDataPlane(DataPlane):
    """KServe's data plane with two corrections.

    * Server readiness means every registered model has loaded (KServe always answers ready).
    * A request body that cannot be decoded is the client's fault: KServe raises ``InferenceError`` (500)
      for, e.g., binary BYTES that are not UTF-8; here it becomes ``InvalidInput`` (400).
    """

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all([await m.healthy() for m in models])

    def decode_inference_request(self, body: Any, headers: dict[str, str], model_name: str) -> Any:
        try:
            return super().decode_inference_request(body, headers, model_name)
        except (InferenceError, ValueError, TypeError) as e:
            if "UTF-8" in str(e):
                raise InvalidInput("an input of datatype BYTES holds bytes that are not valid UTF-8 text") from e
            raise InvalidInput(f"the request body cannot be decoded: {e}") from e


class PlatformRESTServer(RESTServer):
    """KServe's REST server, whose 503s carry ``Retry-After`` (:class:`~musicrl.serving.errors.RetryLater`)."""

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(RetryLater, retry_later_handler)  # the subclass's handler wins over KServe's


class ModelLoadFailed(MusicRLError):
    """A model's ``load()`` failed for a reason that is not itself a platform error."""

    exit_code = 6


def serve(models: Sequence[Model], config: ServerConfig) -> None:
    """Serve ``models`` until SIGINT or SIGTERM; blocks.

    Args:
        models: KServe models, not yet loaded; each one's ``load()`` runs in a background thread.
        config: Bind address, ports and gRPC limits.

    Raises:
        MusicRLError: A model failed to load (the loader's own error, e.g. ModelNotFound, or
            ModelLoadFailed); the process should exit so that the orchestrator restarts it.
    """
    loaded = asyncio.run(_serve(list(models), config))
    if not loaded:
        # Stopped while the weights were still loading. A load cannot be cancelled, and waiting for it at
        # interpreter exit would hold a terminating pod for the whole download: leave now.
        logger.info("exiting before the model finished loading")
        logging.shutdown()
        os._exit(0)


async def _serve(models: list[Model], config: ServerConfig) -> bool:
    """Serve until stopped; returns whether every model finished loading."""
    registry = ModelRepository()
    for model in models:
        registry.update(model)
    dataplane = PlatformDataPlane(model_registry=registry)
    extension = ModelRepositoryExtension(model_registry=registry)
    stop = _install_stop_signals()
    grace = math.ceil(config.shutdown_grace_s)
    rest = PlatformRESTServer(FASTAPI_APP_IMPORT_STRING, dataplane, extension, config.http_port, grace_period=grace)
    rest.config.host = config.host
    _forward_exit_signals(rest, stop)
    rest_task = asyncio.create_task(rest.start())
    grpc_server = await _start_grpc(dataplane, extension, config) if config.enable_grpc else None
    load_task = _start_loading(models, config.torch_threads)
    logger.info(
        "serving %s on %s (http %d, grpc %s)",
        [m.name for m in models],
        config.host,
        config.http_port,
        config.grpc_port if config.enable_grpc else "off",
    )
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({rest_task, stop_task, load_task}, return_when=asyncio.FIRST_COMPLETED)
    if load_task.done() and load_task.exception() is None:
        await asyncio.wait({rest_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    await _shutdown(rest, rest_task, grpc_server, models, config.shutdown_grace_s)
    error = load_task.exception() if load_task.done() else None
    if isinstance(error, MusicRLError):
        raise error
    if error is not None:
        raise ModelLoadFailed(f"loading the model failed: {error}") from error
    return load_task.done()


def _start_loading(models: list[Model], torch_threads: int) -> asyncio.Future[None]:
    """Load the models on a daemon thread, so that a stop during a long download need not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_result(None) if error is None else future.set_exception(error)

    def work() -> None:
        error: BaseException | None = None
        try:
            _load_all(models, torch_threads)
        except BaseException as e:  # handed to the event loop, which ends the server with it
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is already closed: the server has stopped
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name="model-loader", daemon=True).start()
    return future


def _install_stop_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM. Uvicorn re-raises the signals it captured into these handlers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    return stop


def _forward_exit_signals(rest: RESTServer, stop: asyncio.Event) -> None:
    """Start the drain when uvicorn catches SIGTERM, not when it has finished its own shutdown.

    While it serves, uvicorn installs its own signal handlers (``Server.handle_exit``) and re-raises the signal
    only after its last connection closed; gRPC and the models would not hear of it until then.
    """
    loop = asyncio.get_running_loop()
    server = rest._server
    uvicorn_handle_exit = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        uvicorn_handle_exit(sig, frame)
        loop.call_soon_threadsafe(stop.set)

    server.handle_exit = handle_exit


def _load_all(models: list[Model], torch_threads: int) -> None:
    logger.info("torch runs %d intra-op threads", configure_torch_threads(torch_threads))
    for model in models:
        logger.info("loading model %s", model.name)
        model.load()
        if not model.ready:
            raise ModelLoadFailed(f"model {model.name} finished load() without becoming ready")
        logger.info("model %s is ready", model.name)


async def _start_grpc(
    dataplane: DataPlane, extension: ModelRepositoryExtension, config: ServerConfig
) -> grpc.aio.Server:
    server = grpc.aio.server(
        futures.ThreadPoolExecutor(max_workers=GRPC_WORKER_THREADS),
        interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
        options=[
            ("grpc.max_send_message_length", config.grpc_max_message_bytes),
            ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, extension), server
    )
    host = f"[{config.host}]" if ":" in config.host else config.host
    server.add_insecure_port(f"{host}:{config.grpc_port}")
    await server.start()
    return server


async def _shutdown(
    rest: RESTServer,
    rest_task: asyncio.Task[None],
    grpc_server: grpc.aio.Server | None,
    models: list[Model],
    grace_s: float,
) -> None:
    """Drain: refuse new requests, let accepted ones finish for up to ``grace_s``, then stop the models."""
    logger.info("shutting down: accepted requests get up to %.0f s to finish", grace_s)
    for model in models:
        drain = getattr(model, "drain", None)  # models that can refuse new work while finishing the rest
        if drain is not None:
            drain()
    rest._server.should_exit = True  # uvicorn's documented way to stop a Server from code: it stops accepting
    stops = [asyncio.wait({rest_task}, timeout=grace_s + 5)]  # uvicorn waits up to the grace, then cancels
    if grpc_server is not None:
        stops.append(grpc_server.stop(grace=grace_s))
    await asyncio.gather(*stops)  # both protocols drain at once, within one grace
    for model in models:
        model.stop()
