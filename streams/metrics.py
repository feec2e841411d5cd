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
ACCOUNT_FORWARDS = Counter("leadscore_account_forwards_total", "Messages sent to the account "
                           "topic (SPEC 11): member awards and account events", ["kind"],
                           registry=REGISTRY)
ACCOUNT_CONSUMED = Counter("leadscore_account_messages_consumed_total", "Messages read from "
                           "the account topic by the account side", registry=REGISTRY)
ACCOUNT_APPLIED = Counter("leadscore_account_messages_applied_total", "Member awards and "
                          "account events applied to accounts (repeats and other "
                          "generations' messages not counted)", registry=REGISTRY)
BATCHES = Counter("leadscore_batches_total", "Batches applied to Redis", registry=REGISTRY)
# By type and by score group (SPEC 10): group "" is the lead's own score (and any
# notification without a group: accounts', or one written before groups). A label
# added, not a counter: sum(...{type="lead.hot"}) counts what it always did.
NOTIFICATIONS = Counter("leadscore_notifications_total",
                        "Notifications sent, by type and score group (\"\" for the lead's "
                        "own score)", ["type", "group"], registry=REGISTRY)
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

# Generations (docs/generations.md).
GENERATION_ACTIVE = Gauge("leadscore_generation_active", "1 when this worker's generation "
                          "(rules version) is active, 0 while it rebuilds", registry=REGISTRY)
REBUILD_EVENTS = Counter("leadscore_rebuild_events_total", "Events consumed while rebuilding "
                         "(sending nothing)", registry=REGISTRY)
REBUILD_APPLIED = Gauge("leadscore_rebuild_applied_events", "Events the rebuilding generation "
                        "has applied, summed over partitions", registry=REGISTRY)
REBUILD_TARGET = Gauge("leadscore_rebuild_target_events", "Events the active generation has "
                       "applied, summed over partitions", registry=REGISTRY)
REBUILD_PROCESSES = Gauge("leadscore_rebuild_processes", "Processes this worker's rebuild "
                          "runs on, itself included (streams.rebuilders)", registry=REGISTRY)
CUTOVERS = Counter("leadscore_cutovers_total", "Cutovers this worker ran", registry=REGISTRY)
RESCORES = Counter("leadscore_rescore_notifications_total", "Notifications with cause rescore "
                   "sent at cutovers", registry=REGISTRY)
GENERATIONS_DELETED = Counter("leadscore_generations_deleted_total", "Generations deleted "
                              "after LEADSCORE_GENERATION_KEEP", registry=REGISTRY)

# The conversion model (SPEC 12, streams.served): a new file served, or refused.
MODEL_RELOADS = Counter("leadscore_model_reloads_total", "Changes of the model file "
                        "(LEADSCORE_MODEL) seen by the worker, by outcome: loaded (served "
                        "from then on) or refused (damaged, or trained for other rules: the "
                        "model in use stays)", ["outcome"], registry=REGISTRY)

# leadscore notify (streams/notify.py): labelled by destination id, never by its URL.
# Latency up to half an hour: a delivery that waits out an endpoint's outage takes minutes.
NOTIFY_BUCKETS = (*LATENCY_BUCKETS, 120, 300, 600, 1800)
NOTIFY_DELIVERED = Counter("leadscore_notify_delivered_total",
                           "Notifications delivered (answered 2xx), by destination",
                           ["destination"], registry=REGISTRY)
NOTIFY_FAILURES = Counter("leadscore_notify_failures_total",
                          "Delivery tries that failed, by destination and reason (http_5xx, "
                          "http_429, http_408, http_4xx, http_3xx, timeout, connection, tls)",
                          ["destination", "reason"], registry=REGISTRY)
NOTIFY_UNDELIVERABLE = Counter("leadscore_notify_undeliverable_total",
                               "Notifications sent to the undeliverable topic, by destination "
                               "and reason (rejected, retries_exhausted, not_a_notification)",
                               ["destination", "reason"], registry=REGISTRY)
NOTIFY_DUPLICATES = Counter("leadscore_notify_duplicates_total",
                            "Repeats of a notification the destination already had, dropped",
                            ["destination"], registry=REGISTRY)
NOTIFY_LATENCY = Histogram("leadscore_notify_latency_seconds",
                           "Notification emitted (emitted_at) to delivered (2xx answer), by "
                           "destination", ["destination"], buckets=NOTIFY_BUCKETS,
                           registry=REGISTRY)
NOTIFY_BACKLOG = Gauge("leadscore_notify_backlog",
                       "Notifications waiting for a destination or being sent to it",
                       ["destination"], registry=REGISTRY)



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
