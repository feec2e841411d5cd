"""Prometheus metrics (served at GET /metrics), named by Prometheus conventions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

EVENTS_CONSUMED = Counter("leadscore_events_consumed_total", "Messages read from the events topic",
                          registry=REGISTRY)
EVENTS_DEAD = Counter("leadscore_events_dead_lettered_total",
                      "Messages sent to the dead-letter topic, by reason", ["reason"],
                      registry=REGISTRY)
EVENTS_APPLIED = Counter("leadscore_events_applied_total",
                         "Valid events whose batch is in Redis (duplicates included)",
                         registry=REGISTRY)
BATCHES = Counter("leadscore_batches_total", "Batches applied to Redis", registry=REGISTRY)
NOTIFICATIONS = Counter("leadscore_notifications_total", "Notifications sent, by type",
                        ["type"], registry=REGISTRY)
BATCH_SIZE = Histogram("leadscore_batch_size", "Events per batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000), registry=REGISTRY)
APPLY_SECONDS = Histogram("leadscore_apply_seconds", "Consume to state in Redis, per batch",
                          registry=REGISTRY)
OUTBOX_PENDING = Gauge("leadscore_outbox_pending", "Notifications recorded but not yet sent",
                       registry=REGISTRY)
