"""The relay's Prometheus metrics (default registry). The autoscaler and alerts read these names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from chat_shared.observability.dependencies import dependency_gauge
from chat_shared.observability.loop_lag import event_loop_lag_histogram

PENDING = Gauge("outbox_pending_count", "Unpublished rows in the outbox (all partitions)")
OLDEST_PENDING_AGE = Gauge("outbox_oldest_pending_age_seconds",
                           "Age of the oldest unpublished outbox row, seconds (0 when none)")
PROCESSED = Counter("outbox_processed_total", "Events published to Redis Streams")
PUBLISH_ERRORS = Counter(
    "outbox_publish_errors_total",
    "Failed event publications; reason=unavailable (Redis down, not counted toward retries) "
    "or rejected (counted toward the event's retries)",
    ["reason"],
)
PRUNED = Counter("outbox_pruned_total",
                 "Published outbox rows deleted after OUTBOX_RETENTION by this relay")
DLQ = Counter("outbox_dlq_total", "Events moved to the dead-letter table")
PUBLISH_LAG = Histogram(
    "outbox_publish_lag_seconds", "Outbox row creation to XADD acknowledged, seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_DURATION = Histogram(
    "outbox_batch_duration_seconds", "Claim + publish + commit of one non-empty batch, seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OWNED_PARTITIONS = Gauge("outbox_owned_partitions", "Outbox partitions this relay owns")
DEPENDENCY_UP = dependency_gauge("outbox_relay")
EVENT_LOOP_LAG = event_loop_lag_histogram("outbox_relay")

for _reason in ("unavailable", "rejected"):
    PUBLISH_ERRORS.labels(_reason)
