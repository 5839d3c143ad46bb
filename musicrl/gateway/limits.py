"""The request limits an operator configures, enforced and documented from one table.

A prompt longer than ``max_prompt_chars`` is the same mistake whether it is one character over or a
megabyte over, so it gets the same reply: a 422 naming the field, shaped like every other validation
error. The same table writes the configured limits into the OpenAPI document, so that a client generated
from ``/openapi.json`` knows the limits this gateway enforces, not the schema's defaults.
"""

import copy
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from musicrl.gateway.config import GatewayLimits
from musicrl.gateway.schemas import ComparisonCreate, GenerationCreate


@dataclass(frozen=True, slots=True)
class FieldLimit:
    """One configured upper bound on one field of a request body.

    Attributes:
        model: The request body type.
        field: The field's name.
        limit: The attribute of :class:`GatewayLimits` that bounds it.
        keyword: The JSON Schema keyword that states it (``maxLength`` for strings, ``maximum`` for numbers).
    """

    model: type[BaseModel]
    field: str
    limit: str
    keyword: str

    def violation(self, body: BaseModel, limits: GatewayLimits) -> dict[str, Any] | None:
        """The validation error for ``body``'s field if it breaks the limit, else None."""
        value, bound = getattr(body, self.field), getattr(limits, self.limit)
        if value is None:  # omitted: the server's default applies, which is within the limit
            return None
        if self.keyword == "maxLength" and len(value) > bound:
            kind, msg = "string_too_long", f"String should have at most {bound} characters (it has {len(value)})"
        elif self.keyword == "maximum" and value > bound:
            kind, msg = "less_than_equal", f"Input should be less than or equal to {bound}"
        else:
            return None
        return {"loc": ("body", self.field), "msg": msg, "type": kind}


FIELD_LIMITS = (
    FieldLimit(GenerationCreate, "prompt", "max_prompt_chars", "maxLength"),
    FieldLimit(GenerationCreate, "duration_s", "max_duration_s", "maximum"),
    FieldLimit(GenerationCreate, "num_clips", "max_clips_per_job", "maximum"),
    FieldLimit(ComparisonCreate, "prompt", "max_prompt_chars", "maxLength"),
)


def check_limits(body: BaseModel, limits: GatewayLimits) -> None:
    """Refuse ``body`` if it breaks a configured limit.

    Raises:
        RequestValidationError: One entry per broken limit (rendered as a 422 like any schema error).
    """
    errors = [v for rule in FIELD_LIMITS if isinstance(body, rule.model) if (v := rule.violation(body, limits))]
    if errors:
        raise RequestValidationError(errors)


def document_limits(openapi: dict[str, Any], limits: GatewayLimits) -> dict[str, Any]:
    """A copy of the OpenAPI document with each configured limit on its field's schema."""
    document = copy.deepcopy(openapi)
    schemas = document.get("components", {}).get("schemas", {})
    for rule in FIELD_LIMITS:
        field_schema = schemas.get(rule.model.__name__, {}).get("properties", {}).get(rule.field)
        if field_schema is not None:
            field_schema[rule.keyword] = getattr(limits, rule.limit)
    return document
