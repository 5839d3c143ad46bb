"""Settings of the recorder; flags (``musicrl serve recorder``) and ``MUSICRL_*`` variables derive from them."""

import math
from dataclasses import dataclass, field

from musicrl.config import BusConfig
from musicrl.errors import InvalidRequest


# Seconds of ack wait beyond batch_max_wait_s: the first in-progress ack of a batch then lands at least 0.5 s
# before the deadline, and renewals are at least 0.5 s apart rather than a flood.
MIN_ACK_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    """Everything the recorder needs.

    Attributes:
        dataset_url: Root of the Parquet dataset: a local path or any fsspec URL (``s3://bucket/events``).
        bus: The NATS server and the event streams.
        durable_name: Name of the durable JetStream consumer; replicas sharing it share the work.
        batch_max_events: Most events written in one batch (one Parquet file per kind and day).
        batch_max_wait_s: Longest a batch collects events before it is written, in seconds.
        ack_wait_s: Seconds JetStream waits for an acknowledgement before re-delivering a message: how long
            the batch of a crashed recorder stays away. It must cover collecting a batch; a write that takes
            longer is covered by in-progress acks every ``progress_interval_s``.
        metrics_port: Port of the Prometheus endpoint; 0 disables it.
        metrics_host: Address the Prometheus endpoint binds to.
    """

    dataset_url: str = field(metadata={"flag": "--dataset", "help": "dataset URL (local path, s3://, gs://)"})
    bus: BusConfig
    durable_name: str = "recorder"
    batch_max_events: int = 1000  # ~1 MB of Parquet: few enough files, small enough to write in well under ack_wait
    batch_max_wait_s: float = 2.0  # an event reaches Parquet within ~2 s plus the write
    # Seconds. Short, so that a restarted recorder gets a crashed one's batch back within seconds (JetStream's
    # default is 30 s); slow writes are safe anyway, since in-progress acks renew the wait while they run.
    ack_wait_s: float = 5.0
    metrics_port: int = 9102  # next to the generator's 8080/8081; Prometheus' exporter range starts at 9100
    metrics_host: str = "127.0.0.1"  # loopback locally; the chart sets 0.0.0.0 inside the pod

    def __post_init__(self) -> None:
        if not self.dataset_url:
            raise InvalidRequest("dataset_url is required, for example /var/lib/musicrl/events or s3://bucket/events")
        if not self.durable_name or any(c in self.durable_name for c in ". *>"):
            raise InvalidRequest(
                f"durable_name must be a non-empty name without '.', ' ', '*' or '>', got {self.durable_name!r}"
            )
        if self.batch_max_events < 1:
            raise InvalidRequest(f"batch_max_events must be >= 1, got {self.batch_max_events}")
        if not (math.isfinite(self.batch_max_wait_s) and self.batch_max_wait_s > 0):
            raise InvalidRequest(f"batch_max_wait_s must be a positive number of seconds, got {self.batch_max_wait_s}")
        if not (math.isfinite(self.ack_wait_s) and self.ack_wait_s >= self.batch_max_wait_s + MIN_ACK_MARGIN_S):
            raise InvalidRequest(
                f"ack_wait_s ({self.ack_wait_s}) must exceed batch_max_wait_s ({self.batch_max_wait_s}) by at least "
                f"{MIN_ACK_MARGIN_S} s, or a batch is re-delivered before its first in-progress ack; raise ack_wait_s"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidRequest(f"metrics_port must be between 0 and 65535 (0 disables it), got {self.metrics_port}")

    @property
    def progress_interval_s(self) -> float:
        """Seconds between in-progress acks of a batch being written.

        A message may have waited ``batch_max_wait_s`` before its batch's write starts; half of what the ack
        wait leaves after that is the interval, so a renewal that arrives late still arrives in time.
        """
        return (self.ack_wait_s - self.batch_max_wait_s) / 2

    @property
    def max_ack_pending(self) -> int:
        """Unacknowledged messages the consumer allows: two batches, so that a batch held by a crashed
        instance (until ``ack_wait_s`` re-delivers it) does not stall its replacement."""
        return 2 * self.batch_max_events
