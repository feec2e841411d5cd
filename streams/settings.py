"""All configuration, in one object read from LEADSCORE_* variables and validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.errors import SettingsError

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_RULES = ROOT / "config" / "rules.yaml"


class Settings(BaseSettings):
    """Leadscore's settings; every field is ``LEADSCORE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", extra="ignore")

    broker: str = Field("kafka://localhost:9092", description="Kafka bootstrap URL(s)")
    redis_url: SecretStr = Field(SecretStr("redis://localhost:6379/0"),
                                 description="Redis URL; may carry a password, so kept secret")
    rules: Path = Field(Path("config/rules.yaml"), description="the rules file")
    topic_events: str = "lead-events"
    topic_hot: str = "lead-hot"
    topic_dlq: str = "lead-events-dlq"
    web_port: int = Field(6066, ge=1, le=65535)
    web_host: str = "0.0.0.0"
    max_event_bytes: int = Field(64 * 1024, ge=256, description="larger events are dead-lettered")
    sweep_interval: float = Field(60.0, gt=0, description="seconds between cooling sweeps")
    outbox_interval: float = Field(5.0, gt=0, description="seconds between outbox re-sends")
    batch_size: int = Field(1000, ge=1, le=100_000, description="events per Redis round trip")
    partitions: int = Field(8, ge=1, description="partitions when Leadscore creates topics")
    key_prefix: str = Field("ls", description="prefix of every Redis key")
    history_size: int = Field(50, ge=0, le=10_000,
                              description="changes kept per lead for its history (0 = none)")
    group_id: str = "leadscore"
    broker_session_timeout: float = Field(10.0, gt=0)

    def rules_path(self) -> Path:
        """The rules file; the bundled default when the default path is not here."""
        if self.rules == Path("config/rules.yaml") and not self.rules.exists():
            return BUNDLED_RULES
        return self.rules

    def describe(self) -> str:
        """One line per setting, secrets masked, for the start-up log."""
        return "\n".join(f"  {name} = {value}" for name, value in self.model_dump().items())


def load_settings() -> Settings:
    """Read the environment once; a bad value stops start-up with a message per problem."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  LEADSCORE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                 for e in exc.errors()]
        raise SettingsError("bad LEADSCORE_* settings:\n" + "\n".join(lines)) from None
