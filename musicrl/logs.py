"""Process logging: JSON lines when stderr is not a terminal, and the request id on every record.

In a pod, stderr goes to a log collector that parses JSON lines; at a terminal, a person reads plain lines.
The request id is set per request (the gateway mints it or takes the client's ``X-Request-ID``), passed on
to the generator as the same header and written into events, so one id finds a request in every log.
"""

import contextvars
import datetime
import json
import logging
import random
import re
import sys
from typing import IO


REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_FORMAT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # anything else is replaced, never logged verbatim

_HANDLER_NAME = "musicrl"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def request_id_from(header: str | None) -> str:
    """The client's request id if it is a safe token, else a fresh one (32 hex characters)."""
    if header is not None and _REQUEST_ID_FORMAT.match(header):
        return header
    return f"{random.getrandbits(128):032x}"  # not a secret: no os.urandom call on every request


def current_request_id() -> str:
    """The request id of the request being served, or ``""`` outside one."""
    return request_id_var.get()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", ""):
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", "")
        return f"{text} [request {request_id}]" if request_id else text


def configure_logging(stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Send every record to ``stream`` (default stderr) as JSON lines, or plain lines on a terminal.

    Args:
        stream: Where records go.
        level: The root logger's level.
    """
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stream.isatty():
        handler.setFormatter(_PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonLineFormatter())
    handler.addFilter(_RequestIdFilter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # replace only our own handler: others (a test runner's capture, say) keep receiving records
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(level)
