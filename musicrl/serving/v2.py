"""Helpers for reading and writing Open Inference Protocol (V2) tensors and parameters.

They turn whatever KServe hands over (REST JSON, REST binary, gRPC) into plain Python / NumPy values and
raise :class:`musicrl.errors.InvalidRequest` with a sentence for anything malformed.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from musicrl.errors import InvalidRequest
from musicrl.serving.kserve_compat import InferInput, InferOutput, InferRequest


# Parameters the V2 protocol and its clients reserve; accepted and ignored by every model.
RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
)


def parameter_value(name: str, value: Any) -> Any:
    """A request parameter as a Python value (gRPC ``InferParameter`` or a REST JSON value).

    Raises:
        InvalidRequest: A gRPC parameter with no value KServe can read. KServe's V2 gRPC schema has only
            bool, int64 and string parameters, so a client's double parameter arrives empty.
    """
    which = getattr(value, "WhichOneof", None)
    if which is None:
        return value
    field = which("parameter_choice")
    if field is None:
        raise InvalidRequest(
            f"parameter {name!r} arrived without a value: the V2 gRPC schema carries only bool, int64 and "
            "string parameters; send a floating-point value as a string or as an input tensor"
        )
    return getattr(value, field)


def request_parameters(request: InferRequest, known: Iterable[str]) -> dict[str, Any]:
    """The request-level parameters, refusing names that are neither ``known`` nor V2-reserved.

    Raises:
        InvalidRequest: An unknown parameter name.
    """
    raw: Mapping[str, Any] = request.parameters or {}
    known = frozenset(known)
    unknown = sorted(set(raw) - known - RESERVED_PARAMETERS)
    if unknown:
        raise InvalidRequest(f"unknown parameter(s) {unknown}; this model accepts {sorted(known)}")
    return {name: parameter_value(name, raw[name]) for name in raw if name in known}


def inputs_by_name(request: InferRequest, known: Iterable[str], required: Iterable[str]) -> dict[str, InferInput]:
    """The request's input tensors by name.

    Raises:
        InvalidRequest: An unknown, duplicated or missing input.
    """
    known = frozenset(known)
    tensors: dict[str, InferInput] = {}
    for tensor in request.inputs:
        if tensor.name not in known:
            raise InvalidRequest(f"unknown input {tensor.name!r}; this model accepts {sorted(known)}")
        if tensor.name in tensors:
            raise InvalidRequest(f"input {tensor.name!r} is given twice")
        tensors[tensor.name] = tensor
    missing = sorted(set(required) - set(tensors))
    if missing:
        raise InvalidRequest(f"missing required input(s) {missing}")
    return tensors


def as_numpy(tensor: InferInput) -> np.ndarray:
    """The tensor's data as an array of its declared shape.

    Raises:
        InvalidRequest: Data that does not match the declared datatype or shape.
    """
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError) as e:
        raise InvalidRequest(
            f"input {tensor.name!r}: data does not match datatype {tensor.datatype} and shape {tensor.shape}"
        ) from e


def utf8_strings(tensor: InferInput) -> list[str]:
    """A BYTES tensor of shape [B] decoded as UTF-8 text.

    Raises:
        InvalidRequest: Not BYTES, not one-dimensional, or an element that is not valid UTF-8.
    """
    if tensor.datatype != "BYTES":
        raise InvalidRequest(f"input {tensor.name!r} must have datatype BYTES, got {tensor.datatype}")
    array = as_numpy(tensor)
    if array.ndim != 1:
        raise InvalidRequest(f"input {tensor.name!r} must have shape [B], got {list(array.shape)}")
    strings = []
    for index, element in enumerate(array.tolist()):
        try:
            text = element.decode("utf-8") if isinstance(element, bytes) else str(element)
            text.encode("utf-8")  # a JSON string can carry lone surrogates, which are not UTF-8
        except UnicodeError as e:
            raise InvalidRequest(f"input {tensor.name!r}[{index}] is not valid UTF-8 text") from e
        strings.append(text)
    return strings


def per_row_numbers(tensor: InferInput, rows: int, kind: type) -> list[Any]:
    """A numeric tensor of shape [B] (or [1], broadcast) as Python numbers.

    Raises:
        InvalidRequest: Wrong datatype, shape, or a NaN / infinite value.
    """
    integer_types = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
    allowed = integer_types if kind is int else integer_types + ("FP16", "FP32", "FP64")
    if tensor.datatype not in allowed:
        raise InvalidRequest(f"input {tensor.name!r} must be numeric ({', '.join(allowed)}), got {tensor.datatype}")
    array = as_numpy(tensor).reshape(-1) if list(tensor.shape) in ([rows], [1]) else None
    if array is None:
        raise InvalidRequest(f"input {tensor.name!r} must have shape [{rows}] (one per prompt), got {tensor.shape}")
    values = [kind(v) for v in array.tolist()]
    if kind is float and not all(math.isfinite(v) for v in values):
        raise InvalidRequest(f"input {tensor.name!r} holds NaN or infinite values")
    return values * rows if len(values) == 1 else values


def output_tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> InferOutput:
    """An output tensor holding ``array`` (BYTES arrays must be object arrays of ``bytes``)."""
    output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    output.set_data_from_numpy(array, binary_data=binary)
    return output
