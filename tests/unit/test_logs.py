"""Logs are JSON lines off a terminal, and carry the request id."""

import io
import json
import logging

from musicrl.logs import configure_logging, request_id_from, request_id_var


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_record_is_a_json_line_with_the_request_id():
    stream = io.StringIO()
    configure_logging(stream)
    token = request_id_var.set("req-7")
    try:
        logging.getLogger("musicrl.test").warning("clip %s stored", "abc")
    finally:
        request_id_var.reset(token)
    logging.getLogger("musicrl.test").info("outside a request")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "clip abc stored" and first["level"] == "WARNING"
    assert first["request_id"] == "req-7" and first["logger"] == "musicrl.test"
    assert "request_id" not in second


def test_on_a_terminal_lines_are_plain():
    stream = Terminal()
    configure_logging(stream)
    logging.getLogger("musicrl.test").warning("hello")
    assert stream.getvalue().rstrip().endswith("musicrl.test: hello")
    configure_logging()  # back to stderr for the other tests


def test_an_unsafe_request_id_is_replaced():
    assert request_id_from("abc-123.x") == "abc-123.x"
    assert len(request_id_from("a b")) == 32 and len(request_id_from("x" * 200)) == 32
    assert request_id_from(None) != request_id_from(None)
