"""The edges of Leadscore: Kafka and Redis around the pure domain in ``scoring``.

    settings.py     Settings: every LEADSCORE_* variable, validated, with its default
    runtime.py      connected(): settings -> rules -> Redis -> settled layout -> store;
                    the clock (now_ms), the brokers, Kafka producers
    connect.py      Redis or Redis Cluster, and the store built only once settled
    app.py          the worker process: the Faust app, its lifecycle and logging
    consume.py      the consume loop: events topic -> store, poison messages isolated
    delivery.py     the producer: notifications (outbox), dead letters, tombstones
    deadletters.py  a bad message's dead letter, each message once
    jobs.py         the periodic jobs: cooling sweep, outbox re-send
    health.py       what makes a worker unready: stalled partitions, lost data
    erasure.py      forgetting a lead (GDPR): its keys, then a tombstone
    web.py          the HTTP endpoints, one function each over an Api object
    feed.py         Redis pub/sub -> the dashboards' live streams
    metrics.py      Prometheus metrics
    cli.py          the leadscore command     client.py  produce, lead, forget
    dev.py          leadscore dev             embedded.py  its broker and Redis
    demo.py         synthetic traffic

Importing ``streams`` does not import Faust; ``streams.app`` does.
"""

from streams.runtime import Runtime, bootstrap_servers, connected, now_ms
from streams.settings import Settings, load_settings

__all__ = ["Runtime", "Settings", "bootstrap_servers", "connected", "load_settings", "now_ms"]
