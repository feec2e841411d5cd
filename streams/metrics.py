"""Prometheus metrics (served at GET /metrics), named by Prometheus conventions.

The Grafana dashboard in deploy/grafana/ and the alert rules in deploy/ are built
on these names: rename one there too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["REGISTRY", "observe_redis", "watch"]

# The *_created series would double what every scrape returns, for nothing we use.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()

# Latency buckets from 1 ms to 1 min: the hot path is milliseconds, a replay or a
# backlog is seconds to minutes.
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

EVENTS_CONSUMED = Counter("leadscore_events_consumed_total",
                          "Messages read from the events topic", registry=REGISTRY)
EVENTS_APPLIED = Counter("leadscore_events_applied_total",
                         "Events applied to a lead's state (duplicates and replays excluded)",
                         registry=REGISTRY)
EVENTS_DUPLICATE = Counter("leadscore_events_duplicate_total",
                           "Events ignored as repeats of an event_id within the dedupe "
                           "window", registry=REGISTRY)
EVENTS_REPLAYED = Counter("leadscore_events_replayed_total",
                          "Messages skipped because their offset was applied before "
                          "(a replay after a crash or a rebalance)", registry=REGISTRY)
EVENTS_DEAD = Counter("leadscore_events_dead_lettered_total",
                      "Messages sent to the dead-letter topic, by reason", ["reason"],
                      registry=REGISTRY)
BATCHES = Counter("leadscore_batches_total", "Batches applied to Redis", registry=REGISTRY)
NOTIFICATIONS = Counter("leadscore_notifications_total", "Notifications sent, by type",
                        ["type"], registry=REGISTRY)
RULE_AWARDS = Counter("leadscore_rule_awards_total",
                      "Times each rule awarded points (fit rules: when they start to hold)",
                      ["rule"], registry=REGISTRY)
RULE_POINTS = Counter("leadscore_rule_points_total",
                      "Points each rule awarded, by absolute value, at the time of the award",
                      ["rule"], registry=REGISTRY)
BATCH_SIZE = Histogram("leadscore_batch_size", "Messages per batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000), registry=REGISTRY)
APPLY_LATENCY = Histogram("leadscore_apply_latency_seconds",
                          "Consume to state in Redis, per batch", buckets=LATENCY_BUCKETS,
                          registry=REGISTRY)
END_TO_END_LATENCY = Histogram("leadscore_end_to_end_latency_seconds",
                               "Event time to notification acknowledged by the broker, per "
                               "notification caused by an event", buckets=LATENCY_BUCKETS,
                               registry=REGISTRY)
REDIS_ROUNDTRIP = Histogram("leadscore_redis_roundtrip_seconds",
                            "Redis round trips of the batch transaction, by operation",
                            ["op"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
OUTBOX_PENDING = Gauge("leadscore_outbox_pending", "Notifications recorded but not yet sent",
                       registry=REGISTRY)



def observe_redis(op: str, seconds: float) -> None:
    """The store's round-trip observer (RedisStore's ``observe``)."""
    REDIS_ROUNDTRIP.labels(op).observe(seconds)


Lags = Callable[[], Iterable[tuple[str, int, int]]]


class ConsumerLag(Collector):
    """``leadscore_consumer_lag``, read at scrape time from the consumer's own view:
    the partition's high watermark minus the next offset this worker will apply."""

    def __init__(self, lags: Lags) -> None:
        self.lags = lags

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("leadscore_consumer_lag",
                                   "Messages in the partition not yet applied by this worker",
                                   labels=["topic", "partition"])
        for topic, partition, lag in self.lags():
            family.add_metric([topic, str(partition)], lag)
        yield family


Stalls = Callable[[], Iterable[tuple[str, int, float]]]


class PartitionStalls(Collector):
    """``leadscore_partition_failing_seconds``: how long each partition's batches have
    kept failing (an outage being waited out); /readyz fails past LEADSCORE_STALL_SECONDS."""

    def __init__(self, stalls: Stalls) -> None:
        self.stalls = stalls

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("leadscore_partition_failing_seconds",
                                   "Seconds since this partition's batches started failing "
                                   "(absent while it progresses)", labels=["topic", "partition"])
        for topic, partition, seconds in self.stalls():
            family.add_metric([topic, str(partition)], seconds)
        yield family


_collectors: list[Collector] = []


def watch(lags: Lags, stalls: Stalls) -> None:
    """Report consumer lag and stalled partitions from these sources (one worker per
    process: the latest wins)."""
    for collector in _collectors:
        REGISTRY.unregister(collector)
    _collectors[:] = [ConsumerLag(lags), PartitionStalls(stalls)]
    for collector in _collectors:
        REGISTRY.register(collector)
