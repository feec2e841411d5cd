"""The exceptions Leadscore raises, one job each.

    LeadscoreError            anything Leadscore refuses, with a message for a person
    ├── ConfigError           a configuration file is unusable; ``problems`` lists every one
    │   ├── RulesError          the rules file
    │   └── DestinationsError   the destinations file of ``leadscore notify``
    ├── EventError            one event is unusable; ``reason`` goes to the dead-letter topic
    ├── SettingsError         the LEADSCORE_* environment is unusable
    ├── ModelError            a conversion model file is unusable, or cannot be trained
    └── StoreError            the data in Redis cannot be used as found
        ├── DataLost          Redis lost Leadscore's data under a running deployment
        ├── HandingOver       a cutover fences the shard for a moment: retry soon
        └── Superseded        another generation became active: stop scoring

Messages name the file, field or event and say what to do about it.
"""

from __future__ import annotations


class LeadscoreError(Exception):
    """Base class: something Leadscore refuses, explained for a person."""


class ConfigError(LeadscoreError):
    """A configuration file with one or more problems, each ``"<location>: <what is wrong>"``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}\n{listing}")


class RulesError(ConfigError):
    """A rules file with one or more problems."""


class DestinationsError(ConfigError):
    """A destinations file (``leadscore notify``) with one or more problems; no problem
    shows a URL or a secret, since either may be a credential."""


class EventError(LeadscoreError):
    """An event that cannot be scored; ``reason`` is one line for the dead-letter record."""

    def __init__(self, reason: str, kind: str) -> None:
        self.reason = reason
        self.kind = kind  # short, stable label for metrics: "not_json", "bad_ts", "too_large", ...
        super().__init__(reason)


class SettingsError(LeadscoreError):
    """The LEADSCORE_* settings are unusable."""


class ModelError(LeadscoreError):
    """A conversion model (SPEC 12) that cannot be used (damaged, trained for other rules)
    or trained (too few conversions to learn from)."""


class StoreError(LeadscoreError):
    """The data in Redis cannot be used as found (another shard count, a newer format,
    writers that keep conflicting)."""


class DataLost(StoreError):
    """Leadscore's keys are gone while the deployment has consumed events (Redis restarted
    without persistence, or was flushed): scoring on would restart every lead from
    nothing and reuse notification ids, so the worker rebuilds the generation from the
    events topic instead (docs/generations.md, "Disaster recovery")."""


class HandingOver(StoreError):
    """A cutover to another generation fences the shard for a moment (docs/generations.md):
    the batch is retried like an outage, nothing is dead-lettered."""


class Superseded(StoreError):
    """Another generation (rules version) became active: this worker's generation no
    longer scores live, so it stops (and /readyz says so) instead of sending anything."""
