"""The gateway's settings refuse what would corrupt provenance or unbound its work."""

import pytest

from musicrl.errors import InvalidRequest
from musicrl.gateway.config import GatewayConfig, GatewayLimits
from musicrl.settings import config_from


BASE = {
    "MUSICRL_GENERATOR_URL": "127.0.0.1:8080",
    "MUSICRL_CLIP_STORE_URL": "/tmp/clips",
    "MUSICRL_SECRET_KEY": "k" * 32,
    "MUSICRL_NATS_URL": "nats://127.0.0.1:4222",
}


def test_the_stable_model_uri_is_required_so_events_never_say_unknown():
    with pytest.raises(InvalidRequest, match="stable-model-uri.*MUSICRL_STABLE_MODEL_URI.*required"):
        config_from(GatewayConfig, environ=BASE)
    with pytest.raises(InvalidRequest, match="stable_model_uri must name"):
        config_from(GatewayConfig, environ={**BASE, "MUSICRL_STABLE_MODEL_URI": "  "})
    config = config_from(GatewayConfig, environ={**BASE, "MUSICRL_STABLE_MODEL_URI": "s3://policies/v3"})
    assert config.stable_model_uri == "s3://policies/v3"


@pytest.mark.parametrize(
    "field, value",
    [("max_body_bytes", 0), ("max_inflight_generations", 0), ("min_listened_share", 1.5), ("session_max_age_s", 0)],
)
def test_limits_refuse_values_that_unbound_or_break_them(field, value):
    with pytest.raises(InvalidRequest, match=field):
        GatewayLimits(**{field: value})
