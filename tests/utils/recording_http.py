"""A real HTTP server on loopback that records every request and answers through a routing function.

Stand-ins for APIs that cannot run here (the Kubernetes API server, the Kubeflow Pipelines API) are built
on it: the code under test talks HTTP through its real client library, and the test reads what arrived.
"""

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One request as it arrived."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lowercased: HTTP header names are case-insensitive
    body: bytes
    json: Any = field(default=None)

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


Route = Callable[[Recorded], tuple[int, Any]]  # request -> (status, JSON-able body)


@contextmanager
def recording_server(route: Route) -> Iterator[tuple[str, list[Recorded]]]:
    """Serve ``route`` on a free loopback port; yields ``(base URL, recorded requests)``."""
    recorded: list[Recorded] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            request = Recorded(
                self.command, url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()}, raw
            )
            if "json" in (self.headers.get("Content-Type") or "") and raw:
                request.json = json.loads(raw)
            with lock:
                recorded.append(request)
                status, body = route(request)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # the test asserts on the recorded requests; access logs would only be noise

    # a short poll interval: shutdown() waits for one, and tests start a server each
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorded
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
