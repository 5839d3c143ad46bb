"""Run a process's main function: configure logging once, turn platform errors into exit codes."""

import logging
import sys
from collections.abc import Callable

from musicrl.errors import MusicRLError
from musicrl.logs import configure_logging


logger = logging.getLogger("musicrl")


def run_main(main: Callable[[], None]) -> None:
    """Call ``main``; a :class:`MusicRLError` ends the process with a sentence and its class's exit code.

    Args:
        main: The process's work.
    """
    configure_logging()
    _quiet_known_noise()
    try:
        main()
    except MusicRLError as e:
        logger.error("%s", e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def _quiet_known_noise() -> None:
    # MusicGen uses id == vocab size for its pad and start tokens; transformers warns about it for every
    # checkpoint, including the released ones, so the warning says nothing about a given model.
    logging.getLogger("transformers.configuration_utils").addFilter(
        _DropMessages("must be `None` or an integer within the vocabulary")
    )
