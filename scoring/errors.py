"""The exceptions Leadscore raises, one job each.

    LeadscoreError            anything Leadscore refuses, with a message for a person
    ├── RulesError            a rules file is unusable; ``problems`` lists every one
    ├── EventError            one event is unusable; ``reason`` goes to the dead-letter topic
    ├── SettingsError         the LEADSCORE_* environment is unusable
    └── StoreError            the data in Redis cannot be used as found
        └── DataLost          Redis lost Leadscore's data under a running deployment

Messages name the file, field or event and say what to do about it.
"""

from __future__ import annotations


class LeadscoreError(Exception):
    """Base class: something Leadscore refuses, explained for a person."""


class RulesError(LeadscoreError):
    """A rules file with one or more problems, each ``"<location>: <what is wrong>"``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}\n{listing}")


class EventError(LeadscoreError):
    """An event that cannot be scored; ``reason`` is one line for the dead-letter record."""

    def __init__(self, reason: str, kind: str) -> None:
        self.reason = reason
        self.kind = kind  # short, stable label for metrics: "not_json", "bad_ts", "too_large", ...
        super().__init__(reason)


class SettingsError(LeadscoreError):
    """The LEADSCORE_* settings are unusable."""


class StoreError(LeadscoreError):
    """The data in Redis cannot be used as found (another shard count, a newer format,
    writers that keep conflicting)."""


class DataLost(StoreError):
    """Leadscore's keys are gone while the deployment has consumed events (Redis restarted
    without persistence, or was flushed): scoring on would restart every lead from
    nothing and reuse notification ids, so the worker stops instead."""
