"""Build config dataclasses from CLI flags and environment variables.

The flags and variables are derived from the dataclass fields, so a config has one definition.
Nested config dataclasses are flattened: ``GeneratorServiceConfig.batching.max_batch_size`` becomes
``--max-batch-size`` and ``MUSICRL_MAX_BATCH_SIZE``. Leaf names must therefore be unique within one
config tree; :func:`add_config_flags` raises if two collide.
"""

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from musicrl.errors import InvalidRequest


ConfigT = TypeVar("ConfigT")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True, slots=True)
class _Leaf:
    path: tuple[str, ...]  # attribute path from the root config, e.g. ("batching", "max_batch_size")
    type: type
    optional: bool
    required: bool
    default: Any
    metadata: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def flag(self) -> str:
        return self.metadata.get("flag", "--" + self.name.replace("_", "-"))


def _unwrap_optional(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return annotation, False


def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[_Leaf]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation, optional = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(annotation):
            yield from _leaves(annotation, prefix + (f.name,))
            continue
        default: Any = None
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        yield _Leaf(prefix + (f.name,), annotation, optional, required, default, f.metadata)


def _checked_leaves(cls: type) -> list[_Leaf]:
    leaves = list(_leaves(cls))
    seen: dict[str, _Leaf] = {}
    for leaf in leaves:
        if leaf.name in seen:
            paths = f"{seen[leaf.name].path} and {leaf.path}"
            raise TypeError(f"{cls.__name__}: field name {leaf.name!r} appears twice ({paths})")
        seen[leaf.name] = leaf
    return leaves


def _parse_value(leaf: _Leaf, raw: str, source: str) -> Any:
    if leaf.optional and raw == "":
        return None
    try:
        if leaf.type is bool:
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError(raw)
            return lowered in _TRUE
        return leaf.type(raw)
    except ValueError as e:
        raise InvalidRequest(f"{source}: expected {leaf.type.__name__}, got {raw!r}") from e


def env_names(cls: type, env_prefix: str = "MUSICRL_") -> list[str]:
    """The environment variables :func:`config_from` reads for ``cls``, in field order."""
    return [env_prefix + leaf.name.upper() for leaf in _checked_leaves(cls)]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one kebab-case flag per leaf field of the config dataclass ``cls``.

    Args:
        parser: The parser (or sub-parser) to extend.
        cls: A config dataclass, possibly with nested config dataclasses.
    """
    for leaf in _checked_leaves(cls):
        help_text = leaf.metadata.get("help", leaf.name.replace("_", " "))
        if not leaf.required:
            help_text += f" (default: {leaf.default})"
        parser.add_argument(
            leaf.flag,
            dest=leaf.name,
            metavar=leaf.type.__name__.upper(),
            default=None,  # None = not given; env and dataclass defaults apply in config_from()
            help=help_text,
        )


def config_from(
    cls: type[ConfigT],
    *,
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    env_prefix: str = "MUSICRL_",
) -> ConfigT:
    """Build ``cls`` from flags, then environment variables, then the dataclass defaults.

    Args:
        cls: The config dataclass to build.
        args: Parsed flags from a parser extended with :func:`add_config_flags`, or None.
        environ: Environment to read ``{env_prefix}{FIELD_NAME}`` variables from (default ``os.environ``).
        env_prefix: Prefix of the environment variables.

    Returns:
        The config instance; its ``__post_init__`` checks have run.

    Raises:
        InvalidRequest: A value does not parse, a required value is missing, or a check fails.
    """
    environ = os.environ if environ is None else environ
    values: dict[tuple[str, ...], Any] = {}
    for leaf in _checked_leaves(cls):
        flag_value = getattr(args, leaf.name, None) if args is not None else None
        env_name = env_prefix + leaf.name.upper()
        if flag_value is not None:
            values[leaf.path] = _parse_value(leaf, flag_value, leaf.flag)
        elif env_name in environ:
            values[leaf.path] = _parse_value(leaf, environ[env_name], env_name)
        elif leaf.required:
            raise InvalidRequest(f"{leaf.flag} (or {env_name}) is required")
    return _build(cls, values, ())


def _build(cls: type, values: dict[tuple[str, ...], Any], prefix: tuple[str, ...]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        annotation, _ = _unwrap_optional(hints[f.name])
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(annotation):
            kwargs[f.name] = _build(annotation, values, path)
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)
