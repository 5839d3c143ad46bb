"""One router per resource."""

from musicrl.gateway.schemas import ErrorPublic, ValidationErrorPublic


DESCRIPTIONS = {
    400: "The request cannot be acted on (for example, a clip that is not part of the comparison).",
    401: "Missing, unknown, forged or expired credentials.",
    403: "The credentials lack the scope this call needs, or a page session sent feedback on another "
    "session's comparison.",
    404: "No such resource.",
    409: "A request with this Idempotency-Key is still in progress; retry after Retry-After seconds.",
    413: "The request body is larger than the gateway accepts.",
    422: "The request breaks the schema or a configured limit (`errors` names each field), or its "
    "Idempotency-Key was already used with a different request. Final: do not retry unchanged.",
    429: "Rate limit exceeded; see Retry-After.",
    503: "The event bus or the generator is unavailable, or the gateway is at its bound of generations in "
    "flight; nothing was accepted. Retry after Retry-After seconds.",
}


def errors(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error replies a route can give (every one has an ErrorPublic body)."""
    return {
        code: {"model": ValidationErrorPublic if code == 422 else ErrorPublic, "description": DESCRIPTIONS[code]}
        for code in codes
    }


AUTHENTICATED = (401, 403, 429)
WITH_BODY = (413, 422)  # every route that takes a body or parameters
