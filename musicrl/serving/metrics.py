"""Prometheus metrics shared by every model server, labelled by model name.

They live in the default registry, which KServe's ``/metrics`` endpoint already exposes.
"""

from prometheus_client import Counter, Histogram


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
