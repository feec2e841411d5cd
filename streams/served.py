"""The conversion model a worker serves (SPEC 12): read at start, replaced without a restart.

    served = ServedModel.configured(settings, rules)  # None without LEADSCORE_MODEL
    served.explain(state, at_ms)    # p_convert and p_factors: the API, the notifications
    served.check()                  # every LEADSCORE_MODEL_RELOAD seconds (a worker timer)

At start a model that cannot be used (unreadable, damaged, trained for another
rules_version) is a ``ModelError``: the worker refuses to start, saying why. A file
that does not exist yet is no model yet: leads are served without a probability until
the file appears (a deployment whose training job has not run yet: deploy/k8s). Later, a
check reads the file and compares its SHA-256 with the served model's: a model file is
a few kilobytes, so hashing it costs less than trusting its mtime, whose granularity
can hide a rewrite. A new valid model is swapped in (one attribute: a reader sees the
old model or the new, never a mix of them); an unusable one is refused with one log
line and the model in use stays; the same refused content is not reported again. Both
outcomes are counted (``leadscore_model_reloads_total{outcome}``).

Nothing here runs per event: the stores call ``explain`` for each notification only,
and the API for each lead it shows.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

from scoring.engine import LeadState
from scoring.errors import ModelError
from scoring.model import Model, model_path, parse_model
from scoring.rules import Ruleset
from scoring.views import Explain
from streams import metrics
from streams.settings import Settings

__all__ = ["ServedModel"]

log = logging.getLogger("leadscore")


class ServedModel:
    """The model read from ``path`` for ``rules``, and the version of the file it is."""

    def __init__(self, path: Path, rules: Ruleset) -> None:
        self.path, self.rules = path, rules
        self.model: Model | None = None  # None: no file yet
        self.digest: str | None = None
        self.refused: str | None = None  # the digest (or error) of the last file refused
        if not path.exists():
            log.warning("leadscore: no model file at %s yet: leads are served without "
                        "p_convert until one appears (checked every LEADSCORE_MODEL_RELOAD)",
                        path)
            return
        data = _read(path)
        self.model = parse_model(data, str(path), rules)  # ModelError: refused at start
        self.digest = hashlib.sha256(data).hexdigest()

    @classmethod
    def configured(cls, settings: Settings, rules: Ruleset) -> ServedModel | None:
        """The model LEADSCORE_MODEL names, for ``rules`` (``{rules_version}`` in it is
        theirs: scoring.model.model_path); None when it names none."""
        return None if settings.model is None else cls(model_path(settings.model, rules),
                                                        rules)

    def explain(self, state: LeadState, at: int) -> dict[str, Any]:
        """``p_convert`` and ``p_factors`` of the lead at ``at`` (epoch ms), by the model
        served now (``Model.explain``); nothing before there is a model."""
        model = self.model
        return {} if model is None else model.explain(state, at, self.rules)

    def current(self) -> Explain | None:
        """``explain`` by the model served now, whatever is served later: for an answer
        that explains many leads (a list), so that a reload cannot split it; None
        before there is a model."""
        model = self.model
        return None if model is None else functools.partial(model.explain, rules=self.rules)

    def describe(self) -> str:
        """One line for the start-up log."""
        model, digest = self.model, self.digest
        if model is None or digest is None:
            return f"model {self.path} (no file yet)"
        return (f"model {self.path} (horizon {model.horizon}, rules_version "
                f"{model.rules_version}, sha256 {digest[:12]})")

    def check(self) -> str:
        """Look at the file now: ``"unchanged"``, ``"loaded"`` (a new model is served from
        now on) or ``"refused"`` (the file cannot be used; the model in use stays, and
        one line says why, once per version of the file). A model served is logged at
        WARNING, the worker's default level, so that the log says when it changed."""
        if self.model is None and not self.path.exists():
            return "unchanged"  # still no model
        try:
            data = _read(self.path)
        except ModelError as exc:  # (gone, or being replaced: said once)
            return self._refuse(str(exc), exc)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self.digest:
            self.refused = None  # (put back as it was: a later bad copy is news again)
            return "unchanged"
        if digest == self.refused:
            return "refused"
        try:
            model = parse_model(data, str(self.path), self.rules)
        except ModelError as exc:
            return self._refuse(digest, exc)
        self.model, self.digest, self.refused = model, digest, None
        metrics.MODEL_RELOADS.labels("loaded").inc()
        log.warning("leadscore: serving the new %s", self.describe())
        return "loaded"

    def _refuse(self, seen: str, exc: ModelError) -> str:
        if seen != self.refused:
            self.refused = seen
            metrics.MODEL_RELOADS.labels("refused").inc()
            kept = "no model is served" if self.digest is None else \
                f"the model in use (sha256 {self.digest[:12]}) stays"
            log.error("leadscore: the new model file is refused, %s: %s", kept, exc)
        return "refused"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror}); check "
                         "LEADSCORE_MODEL / --model") from None

