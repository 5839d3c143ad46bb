"""One router per resource."""

from musicrl.gateway.schemas import ErrorPublic


def errors(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error replies a route can give (every one has an ErrorPublic body)."""
    descriptions = {
        400: "The request is invalid.",
        401: "Missing or unknown credentials.",
        403: "The credentials lack the scope this call needs.",
        404: "No such resource.",
        409: "The Idempotency-Key was used with another request, or its request is still running.",
        429: "Rate limit exceeded; see Retry-After.",
        503: "The event bus or the generator is unavailable; nothing was accepted. Safe to retry.",
    }
    return {code: {"model": ErrorPublic, "description": descriptions[code]} for code in codes}


AUTHENTICATED = (401, 403, 429)
