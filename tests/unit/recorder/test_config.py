"""Tests of the recorder's settings: derived from MUSICRL_* variables, checked at start-up."""

import pytest

from musicrl.errors import InvalidRequest
from musicrl.recorder.config import RecorderConfig
from musicrl.settings import config_from


def test_settings_come_from_the_environment():
    config = config_from(
        RecorderConfig,
        environ={
            "MUSICRL_NATS_URL": "nats://nats:4222",
            "MUSICRL_DATASET_URL": "s3://bucket/events",
            "MUSICRL_BATCH_MAX_EVENTS": "50",
            "MUSICRL_ACK_WAIT_S": "30",
        },
    )
    assert (config.bus.nats_url, config.dataset_url) == ("nats://nats:4222", "s3://bucket/events")
    assert (config.batch_max_events, config.ack_wait_s, config.durable_name) == (50, 30.0, "recorder")
    assert config.max_ack_pending >= config.batch_max_events


def test_the_dataset_url_is_required():
    with pytest.raises(InvalidRequest, match="MUSICRL_DATASET_URL"):
        config_from(RecorderConfig, environ={"MUSICRL_NATS_URL": "nats://nats:4222"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ack_wait_s": 1.0, "batch_max_wait_s": 2.0}, "ack_wait_s .* must exceed batch_max_wait_s"),
        ({"ack_wait_s": 2.5, "batch_max_wait_s": 2.0}, r"must exceed batch_max_wait_s \(2.0\) by at least 1.0 s"),
        ({"batch_max_events": 0}, "batch_max_events must be >= 1"),
        ({"durable_name": "a.b"}, "durable_name must be"),
        ({"metrics_port": 70000}, "metrics_port must be between"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence(overrides, message):
    from musicrl.config import BusConfig

    with pytest.raises(InvalidRequest, match=message):
        RecorderConfig(dataset_url="/tmp/x", bus=BusConfig(nats_url="nats://n:4222"), **overrides)


def test_a_crashed_recorders_batch_returns_within_seconds_and_slow_writes_are_renewed_in_time():
    from musicrl.config import BusConfig

    config = RecorderConfig(dataset_url="/tmp/x", bus=BusConfig(nats_url="nats://n:4222"))
    assert config.ack_wait_s <= 10  # JetStream re-delivers a crashed recorder's batch after this long
    # A message waits up to batch_max_wait_s before its write starts; the first renewal must still beat the deadline.
    assert config.batch_max_wait_s + config.progress_interval_s < config.ack_wait_s
    assert config.progress_interval_s >= 0.5  # not a flood of in-progress acks
