"""Prometheus metrics shared by every model server, labelled by model name.

They live in the default registry, which KServe's ``/metrics`` endpoint already exposes.
"""

from prometheus_client import Counter, Gauge, Histogram


REQUESTS = Counter(
    "musicrl_inference_requests_total",
    "Inference requests by outcome (ok, invalid, error).",
    ["model", "outcome"],
)
ITEMS = Counter(
    "musicrl_inference_items_total",
    "Rows (clips) processed, across all requests.",
    ["model"],
)
REQUEST_LATENCY = Histogram(
    "musicrl_inference_request_latency_seconds",
    "Wall time of one inference request, from arrival to reply.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
QUEUE_WAIT = Histogram(
    "musicrl_batch_queue_wait_seconds",
    "Time a row waited in the batcher before its batch started.",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "musicrl_batch_size",
    "Rows per engine call.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_LATENCY = Histogram(
    "musicrl_batch_latency_seconds",
    "Wall time of one engine call.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
AUDIO_SECONDS = Counter(
    "musicrl_generated_audio_seconds_total",
    "Seconds of audio generated.",
    ["model"],
)
OVERLOADED = Counter(
    "musicrl_batch_overloaded_total",
    "Requests refused because the batcher's queue was full (answered 503).",
    ["model"],
)
QUEUE_DEPTH = Gauge(
    "musicrl_generation_queue_depth",
    "Rows waiting to join the running decode batch.",
    ["model"],
)
ROWS_IN_FLIGHT = Gauge(
    "musicrl_generation_rows_in_flight",
    "Rows in the running decode batch.",
    ["model"],
)
TIME_TO_FIRST_STEP = Histogram(
    "musicrl_generation_time_to_first_step_seconds",
    "From a row's arrival to its first decode step (its wait to join the batch, and its prefill).",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DECODE_STEPS = Counter(
    "musicrl_generation_decode_steps_total",
    "Decoder forward passes of the running batch (its steps, and the first steps of rows joining it).",
    ["model"],
)
ROW_STEPS = Counter(
    "musicrl_generation_row_steps_total",
    "Rows advanced by those passes; divided by the passes, the mean batch.",
    ["model"],
)
