"""Prometheus metrics of the recorder, in the default registry (served by ``prometheus_client``)."""

from prometheus_client import Counter, Gauge, Histogram


EVENTS_WRITTEN = Counter(
    "musicrl_recorder_events_written_total", "Events written to Parquet (and then acknowledged).", ["kind"]
)
FILES_WRITTEN = Counter("musicrl_recorder_files_written_total", "Parquet files written.", ["kind"])
BATCH_WRITE_SECONDS = Histogram(
    "musicrl_recorder_batch_write_seconds",
    "Wall time to write every file of one batch durably.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEAD_LETTERS = Counter(
    "musicrl_recorder_dead_letters_total", "Undecodable events published to the dead-letter subject."
)
WRITE_FAILURES = Counter(
    "musicrl_recorder_write_failures_total", "Batches whose write failed; their events are re-delivered."
)
BATCH_RENEWALS = Counter(
    "musicrl_recorder_batch_renewals_total",
    "Rounds of in-progress acks sent for batches still being written; a rising count means slow writes.",
)
CONSUMER_PENDING = Gauge(
    "musicrl_recorder_consumer_pending", "Events in the stream the recorder has not fetched yet (consumer lag)."
)
CONSUMER_ACK_PENDING = Gauge("musicrl_recorder_consumer_ack_pending", "Events fetched but not yet acknowledged.")
LAST_WRITE = Gauge(
    "musicrl_recorder_last_write_timestamp_seconds", "Unix time of the last batch written and acknowledged."
)
