"""The conversion model as it is served (SPEC 12): a lead's features, read from its state
at an instant, and the calibrated probability and top factors a model file gives them.

Pure and cheap: a few dozen multiplications per read, no scikit-learn (training is
scoring.training's). The features are what the state keeps anyway, so serving costs
nothing per event; it runs when someone reads a lead, ranks leads by probability or is
sent a notification.

The model is a logistic regression over standardised features, then a sigmoid
calibration of its log-odds (Platt scaling, fitted on held-out data):

    z_i   = (x_i - mean_i) / scale_i
    raw   = intercept + sum_i coef_i * z_i
    p     = 1 / (1 + exp(-(slope * raw + offset)))

A factor is one feature's term of the calibrated log-odds, ``slope * coef_i * z_i``:
how far this lead's value of the feature moves its log-odds away from the average
training example's. ``p_factors`` are the three largest by absolute value, signed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from scoring.decay import factor
from scoring.engine import STAGES, LeadState
from scoring.errors import ModelError
from scoring.rules import Ruleset

__all__ = ["FORMAT", "TOP_FACTORS", "Model", "feature_names", "features_at", "load_model",
           "model_path", "parse_model"]

FORMAT = "leadscore-model/1"
TOP_FACTORS = 3  # SPEC 12: "the three features with the largest effect"
# Stages as one-hot features; prospect, the first, is the baseline every lead starts at.
MODEL_STAGES = STAGES[1:]
CUSTOMER = STAGES[-1]


def feature_names(rules: Ruleset) -> list[str]:
    """The features of a ruleset, in this order: each engagement rule's contribution
    (``rule:<id>``), each fit rule holding (``fit:<id>``, 1 or 0), the stage
    (``stage:<name>``, 1 or 0, prospect being none of them), and the engagement E."""
    return ([f"rule:{r.id}" for r in rules.engagement] + [f"fit:{r.id}" for r in rules.fit]
            + [f"stage:{s}" for s in MODEL_STAGES] + ["engagement"])


def features_at(state: LeadState, at: float, rules: Ruleset,
                holds: Sequence[bool] | None = None) -> list[float]:
    """The lead's features at ``at``, in ``feature_names`` order: contributions and E
    decayed from T to ``at`` (an instant before T reads as T, as ``engagement_at``).
    ``holds``: the fit rules' results on the lead's profile, if the caller has them
    (training computes them once per profile, not once per example)."""
    f = 1.0
    if state.t_ref is not None and at > state.t_ref:
        f = factor(at - state.t_ref, rules.half_life_ms)
    contributions = state.contributions
    out = [contributions.get(r.id, 0.0) * f for r in rules.engagement]
    if holds is None:
        profile = state.profile
        holds = [r.test(profile) for r in rules.fit]
    out += [1.0 if held else 0.0 for held in holds]
    out += [1.0 if state.stage == stage else 0.0 for stage in MODEL_STAGES]
    out.append(state.engagement * f)
    return out


@dataclass(frozen=True, slots=True)
class Model:
    """A trained model file (README, "Conversion probability"), validated."""

    rules_version: str
    horizon: str  # as given to training, e.g. "90d"
    horizon_ms: int
    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]  # per standardised feature
    intercept: float
    slope: float  # the calibration of the raw log-odds
    offset: float
    # Everything else the file says (training window, metrics, example counts), for people.
    info: dict[str, Any]
    # Folded once for serving: each feature's term of the calibrated log-odds is
    # weights[i] * (x_i - means[i]), with weights[i] = slope * coefficients[i] / scales[i],
    # and the log-odds is base + the sum of the terms, base = slope * intercept + offset.
    weights: tuple[float, ...] = field(init=False, repr=False, compare=False)
    base: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(
            self.slope * c / s for c, s in zip(self.coefficients, self.scales, strict=True)))
        object.__setattr__(self, "base", self.slope * self.intercept + self.offset)

    def check(self, rules: Ruleset, source: str = "the model") -> None:
        """Refuse a model trained under other rules: its features would mean other things."""
        if rules.version != self.rules_version:
            raise ModelError(
                f"{source}: trained for rules_version {self.rules_version}, but the rules in "
                f"use are {rules.version} ({rules.name}); retrain it with "
                "`leadscore model train --rules <the rules file> EVENTS` (README, "
                "\"Conversion probability\")")
        names = feature_names(rules)
        if list(self.features) != names:
            raise ModelError(f"{source}: its features do not match the rules' "
                             f"({len(self.features)} against {len(names)}); retrain it")

    def explain(self, state: LeadState, at: float, rules: Ruleset) -> dict[str, Any]:
        """``p_convert`` (4 decimals) and ``p_factors`` of the lead at ``at``: the three
        features with the largest effect on its log-odds, signed, largest first.

        A customer (stage ``customer``: it has converted) has ``p_convert`` null and no
        factors: the model answers "will its first conversion come within the horizon?",
        which a customer has settled, and it never saw one in training (SPEC 12's
        examples all come before the conversion). Null also ranks it after every lead
        still to convert in ``/leads?order=p_convert``."""
        if state.stage == CUSTOMER:
            return {"p_convert": None, "p_factors": []}
        x = features_at(state, at, rules)
        terms = [w * (v - m) for w, v, m in zip(self.weights, x, self.means, strict=True)]
        # (A stable sort: equal terms stay in feature order.)
        sizes = list(map(abs, terms))
        top = sorted(range(len(terms)), key=sizes.__getitem__, reverse=True)[:TOP_FACTORS]
        factors = [{"feature": self.features[i], "effect": round(terms[i], 4)}
                   for i in top if round(terms[i], 4) != 0.0]
        return {"p_convert": round(_sigmoid(self.base + sum(terms)), 4), "p_factors": factors}

    def probability(self, x: Sequence[float]) -> float:
        """The calibrated probability of a feature vector, unrounded."""
        return _sigmoid(self.base + sum(w * (v - m) for w, v, m
                                        in zip(self.weights, x, self.means, strict=True)))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "rules_version": self.rules_version, "horizon": self.horizon,
            "horizon_ms": self.horizon_ms,
            "features": [{"name": n, "mean": m, "scale": s, "coefficient": c}
                         for n, m, s, c in zip(self.features, self.means, self.scales,
                                               self.coefficients, strict=True)],
            "intercept": self.intercept,
            "calibration": {"method": "sigmoid", "slope": self.slope, "offset": self.offset},
            **self.info,
        }

    @staticmethod
    def from_json(data: Any, source: str = "the model") -> Model:
        """A model from its JSON; ``ModelError`` saying what is wrong and where."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"{source}: not a Leadscore model file (\"format\" is not "
                             f"{FORMAT!r}); train one with `leadscore model train`")
        try:
            features = data["features"]
            calibration = data["calibration"]
            fields: dict[str, Any] = {
                "rules_version": str(data["rules_version"]), "horizon": str(data["horizon"]),
                "horizon_ms": int(data["horizon_ms"]),
                "features": tuple(str(f["name"]) for f in features),
                "means": tuple(float(f["mean"]) for f in features),
                "scales": tuple(float(f["scale"]) for f in features),
                "coefficients": tuple(float(f["coefficient"]) for f in features),
                "intercept": float(data["intercept"]), "slope": float(calibration["slope"]),
                "offset": float(calibration["offset"]),
                "info": {k: v for k, v in data.items() if k not in _OWN}}
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: a damaged model file ({type(exc).__name__}: {exc}); "
                             "train it again with `leadscore model train`") from None
        numbers = (*fields["means"], *fields["scales"], *fields["coefficients"],
                   fields["intercept"], fields["slope"], fields["offset"])
        if not all(math.isfinite(n) for n in numbers) or not all(
                s > 0 for s in fields["scales"]):
            raise ModelError(f"{source}: a damaged model file (a number that is not finite, "
                             "or a scale that is not positive); train it again")
        model = Model(**fields)
        return model


_OWN = {"format", "rules_version", "horizon", "horizon_ms", "features", "intercept",
        "calibration"}


def model_path(path: str | Path, rules: Ruleset) -> Path:
    """A model file's path with ``{rules_version}`` replaced by the rules' version: one
    file per rules version (``/models/{rules_version}.json``), so that while a rules
    change rebuilds, the old rules' workers read their model and the new ones theirs,
    and the training job writes the file of the rules it ran under (deploy/k8s)."""
    return Path(str(path).replace("{rules_version}", rules.version))


def load_model(path: str | Path, rules: Ruleset | None = None) -> Model:
    """Read a model file; with ``rules``, refuse it unless it was trained for them."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror}); check "
                         "LEADSCORE_MODEL / --model") from None
    return parse_model(data, str(path), rules)


def parse_model(data: bytes, source: str, rules: Ruleset | None = None) -> Model:
    """The model in a file's bytes; with ``rules``, refused unless trained for them."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ModelError(f"{source}: not JSON ({exc}); give a file written by "
                         "`leadscore model train`") from None
    model = Model.from_json(doc, source)
    if rules is not None:
        model.check(rules, source)
    return model


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
