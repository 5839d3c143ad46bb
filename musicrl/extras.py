"""Which extra of the package a command needs, so that a light image answers a missing one with a sentence.

Each image installs one role's extra (``pip install 'musicrl[gateway]'``, README "Images"), and the ``musicrl``
command runs in all of them: its parser imports only the base dependencies, and each command imports what it
needs when it runs. A command marked with :func:`needs_extra` turns the ``ModuleNotFoundError`` of a missing
third-party package into :class:`~musicrl.errors.MissingExtra`, which names the extra to install.
"""

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from musicrl.errors import MissingExtra


P = ParamSpec("P")
R = TypeVar("R")

# A missing module of our own is a packaging bug, not a missing extra: it keeps its traceback.
FIRST_PARTY = frozenset({"musicrl", "services", "pipelines"})


def needs_extra(extra: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a command as needing ``musicrl[extra]``.

    Args:
        extra: The extra of pyproject.toml whose packages the command imports (``serving``, ``train``, ...).

    Returns:
        A decorator; the decorated function raises :class:`~musicrl.errors.MissingExtra` where it (or anything
        it calls) fails to import a third-party package.
    """

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return command(*args, **kwargs)
            except ModuleNotFoundError as e:
                if e.name is None or e.name.split(".")[0] in FIRST_PARTY:
                    raise
                raise MissingExtra(
                    f"this command needs the Python package {e.name.split('.')[0]!r}, which this installation "
                    f"lacks: install musicrl[{extra}] (pip install 'musicrl[{extra}]'), or run it in an image "
                    f"built with that extra"
                ) from e

        run.needs_extra = extra  # type: ignore[attr-defined]  # read by the tests that check each command's extra
        return run

    return decorate
