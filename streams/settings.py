"""All configuration, in one object read from LEADSCORE_* variables and validated at start.

Every default is stated here once; the rest of Leadscore reads it from ``Settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring import history
from scoring.errors import SettingsError
from scoring.events import MAX_EVENT_BYTES
from scoring.rules import parse_duration
from scoring.store import keys

__all__ = ["CLUSTER_SCHEMES", "DEMO_MODEL", "DEMO_RULES", "Settings", "load_settings"]


def _seconds(value: object) -> object:
    """A duration as the rules file writes it (``30s``, ``15m``, ``1h``, ``7d``), or a
    number of seconds, as seconds."""
    if isinstance(value, str) and value and value[-1] in "smhdw":
        return parse_duration(value) / 1000
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]

ROOT = Path(__file__).resolve().parent.parent
# The default rules file, relative to the working directory; when there is none there,
# the bundled one (ROOT / DEFAULT_RULES). The same for DEMO_RULES, `leadscore dev
# --demo`'s unless LEADSCORE_RULES is set: the default rules with a half-life of
# minutes (streams.dev).
DEFAULT_RULES = Path("config/rules.yaml")
DEMO_RULES = Path("config/demo-rules.yaml")
# The conversion model `leadscore dev --demo` serves for DEMO_RULES when LEADSCORE_MODEL
# names none (python -m bench.demo_model trains it), found like DEMO_RULES.
DEMO_MODEL = Path("config/demo-model.json")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")  # a Redis Cluster, found from one node
# Transaction shards for new data when LEADSCORE_REDIS_SHARDS is unset: on a cluster, a
# few per master, so that the shards spread over the masters; on one Redis, a few let
# the worker apply one shard's events while Redis commits another's (docs/performance.md,
# "What changed, each measured on its own").
CLUSTER_SHARDS = 32
SINGLE_SHARDS = 4


class _Secrets(BaseSettings):
    """Where setting files are mounted: read first, since it says where the rest are."""

    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", extra="ignore")

    secrets_dir: Path = Field(Path("/run/secrets"), description="any setting may also be a "
                              "file here named like its variable in lower case "
                              "(leadscore_admin_token): how Kubernetes and Docker mount secrets")


class Settings(_Secrets):
    """Leadscore's settings; every field is ``LEADSCORE_<NAME>`` in the environment, or a
    file in ``secrets_dir``."""

    broker: str = Field("kafka://localhost:9092", description="Kafka bootstrap URL(s)")
    redis_url: SecretStr = Field(SecretStr("redis://localhost:6379/0"),
                                 description="Redis URL (redis+cluster:// for a cluster); may "
                                 "carry a password, so kept secret")
    redis_shards: int | None = Field(None, ge=1, le=16384, description="transaction shards "
                                     "(scoring.store.keys); default: the data's, or "
                                     f"{SINGLE_SHARDS} ({CLUSTER_SHARDS} on a cluster) for "
                                     "new data")
    rules: Path = Field(DEFAULT_RULES, description="the rules file")
    topic_events: str = "lead-events"
    topic_hot: str = "lead-hot"
    topic_dlq: str = "lead-events-dlq"
    topic_account_awards: str = Field("lead-account-awards", description="the internal "
                                      "topic that carries member awards and account events "
                                      "to the account side (SPEC 11); create it with the "
                                      "events topic's partition count")
    web_port: int = Field(6066, ge=1, le=65535)
    web_host: str = "0.0.0.0"
    max_event_bytes: int = Field(MAX_EVENT_BYTES, ge=256,
                                 description="larger events are dead-lettered")
    max_clock_skew: Seconds = Field(3600.0, ge=0, description="events dated further ahead "
                                    "of the worker's clock are dead-lettered (future_ts)")
    dlq_max_bytes: int = Field(1_000_000, ge=1024, le=100 * 1024 * 1024,
                               description="a dead letter's value is cut to this size "
                               "(keep it under the DLQ topic's max.message.bytes)")
    stall_seconds: Seconds = Field(60.0, gt=0, description="a partition that cannot "
                                   "progress this long makes /readyz fail")
    sweep_interval: float = Field(60.0, gt=0, description="seconds between cooling sweeps")
    outbox_interval: float = Field(5.0, gt=0, description="seconds between outbox re-sends")
    batch_size: int = Field(1000, ge=1, le=100_000, description="events per Redis round trip")
    rebuild_batch_size: int = Field(20_000, ge=1, le=100_000, description="events per Redis "
                                    "round trip while a generation rebuilds")
    account_batch_wait: Seconds = Field(0.25, ge=0, le=10, description="seconds the "
                                        "account side gathers member awards into one batch "
                                        "(fewer, larger account steps; 0 = none)")
    rebuild_processes: int = Field(0, ge=0, le=64, description="processes a rebuild runs "
                                   "on, this worker's included (streams.rebuilders); 0 = one "
                                   "per CPU this process may use, at most 8")
    generation_keep: Seconds = Field(86_400.0, ge=0, description="how long a generation is "
                                     "kept after it stopped being active (rollback window)")
    partitions: int = Field(8, ge=1, description="partitions when Leadscore creates topics")
    key_prefix: str = Field(keys.PREFIX, description="prefix of every Redis key")
    history_size: int = Field(history.SIZE, ge=0, le=10_000,
                              description="changes kept per lead for its history (0 = none)")
    group_id: str = "leadscore"
    broker_session_timeout: float = Field(10.0, gt=0, description="seconds; shorter means "
                                          "faster fail-over")
    stop_timeout: float = Field(30.0, gt=0, le=3600, description="seconds a stop may take "
                                "before the worker exits anyway (exit code 1)")
    # Kafka security (aiokafka's names). SASL needs a username and a password.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = \
        "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mTLS)")
    kafka_ssl_keyfile: Path | None = None
    # HTTP API bearer tokens: with api_token set, reading leads needs it (or the admin
    # token); DELETE /leads/{id} needs admin_token and is refused while it is unset.
    api_token: SecretStr | None = None
    admin_token: SecretStr | None = None
    api_rate_limit: float = Field(50.0, gt=0, description="requests per second per client")
    # leadscore notify, the delivery sink (README.md, "Delivering notifications to people").
    destinations: Path | None = Field(None, description="the destinations file of leadscore "
                                      "notify; when set, leadscore dev runs the sink too")
    notify_group: str = Field("leadscore-notify", description="the sink's consumer group")
    topic_undeliverable: str = Field("lead-hot-undeliverable", description="notifications "
                                     "a destination refused or that used up their retries")
    dashboard_url: str | None = Field(None, description="the dashboard's address "
                                      "(https://host/), for links in Slack messages")
    notify_port: int = Field(6067, ge=1, le=65535, description="the sink's /metrics, "
                             "/healthz and /readyz (on web_host)")
    notify_start: Literal["latest", "earliest"] = Field(
        "latest", description="where a sink group with no committed offsets starts: the "
        "end of the notifications topic, or everything it holds")
    notify_dedupe_window: Seconds = Field(7 * 86_400.0, gt=0, description="how long each "
                                          "destination remembers the notifications it had")
    notify_backlog: int = Field(10_000, ge=1, description="notifications waiting for one "
                                "destination before the sink stops reading for all")
    # The conversion model (SPEC 12), from `leadscore model train`: p_convert and
    # p_factors in the API, notifications and `leadscore lead` (streams.served).
    model: Path | None = Field(None, description="a conversion model file; trained for "
                               "another rules_version, it is refused at start")
    model_reload: Seconds = Field(60.0, gt=0, description="how often the worker checks the "
                                  "model file for a new version, and serves it")

    def kafka_options(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka's clients."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value()
                if self.kafka_sasl_password else None)
        if self.kafka_security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile, certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile)
        return options

    @property
    def broker_heartbeat_interval(self) -> float:
        """Seconds between a consumer's heartbeats: a tenth of the session timeout, at
        least 0.1."""
        return max(self.broker_session_timeout / 10, 0.1)

    @property
    def redis_cluster(self) -> bool:
        """Whether ``redis_url`` names a Redis Cluster."""
        return self.redis_url.get_secret_value().split("://", 1)[0] in CLUSTER_SCHEMES

    def default_shards(self) -> int:
        """The shard count of data not yet in Redis, when ``redis_shards`` is unset."""
        return CLUSTER_SHARDS if self.redis_cluster else SINGLE_SHARDS

    def generation_group(self, rules_version: str) -> str:
        """The consumer group of a generation: each rules version reads the events topic
        at its own pace (docs/generations.md)."""
        return f"{self.group_id}.{rules_version}"

    def account_group(self, rules_version: str) -> str:
        """The consumer group of a generation's account side, on the account topic."""
        return f"{self.group_id}.{rules_version}.accounts"

    def rules_path(self) -> Path:
        """The rules file; the bundled one when a default path (DEFAULT_RULES, or
        DEMO_RULES for ``dev --demo``) is not here."""
        if self.rules in (DEFAULT_RULES, DEMO_RULES) and not self.rules.exists():
            return ROOT / self.rules
        return self.rules

    def describe(self) -> str:
        """One line per setting, secrets masked, for the start-up log."""
        return "\n".join(f"  {name} = {value}" for name, value in self.model_dump().items())


def load_settings() -> Settings:
    """Read the environment once; a bad value stops start-up with a message per problem."""
    try:
        secrets = _Secrets().secrets_dir
        settings = Settings(_secrets_dir=secrets if secrets.is_dir() else None)
    except ValidationError as exc:
        lines = [f"  LEADSCORE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                 for e in exc.errors()]
        raise SettingsError("bad LEADSCORE_* settings:\n" + "\n".join(lines)) from None
    problems = []
    if settings.kafka_security_protocol.startswith("SASL") and not (
            settings.kafka_sasl_username and settings.kafka_sasl_password):
        problems.append("  LEADSCORE_KAFKA_SASL_USERNAME and LEADSCORE_KAFKA_SASL_PASSWORD: "
                        f"{settings.kafka_security_protocol} needs both")
    for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            problems.append(f"  LEADSCORE_{name.upper()}: no such file {path}")
    if settings.dashboard_url is not None and not settings.dashboard_url.startswith(
            ("http://", "https://")):
        problems.append("  LEADSCORE_DASHBOARD_URL: must start with http:// or https://")
    if problems:
        raise SettingsError("bad LEADSCORE_* settings:\n" + "\n".join(problems))
    return settings
