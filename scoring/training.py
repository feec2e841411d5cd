"""Learning the conversion model from history (``leadscore model train``, SPEC 12), and
turning what it learned back into points (``leadscore model suggest``).

Examples. Each lead's events are replayed in time order through the engine's ``apply``
(so the state after an event at t holds exactly the events at or before t: no example
can see its own future, whatever order the events arrived in). After each event before
the lead's first ``converted`` (at c_l), the state at t is an example, labelled 1 when
c_l - t <= horizon. An example whose horizon runs past the end of the data (t + horizon
> the last event) is left out, converted or not: keeping only those that converted
would make the latest examples look like conversions.

Split, by time only. The test set is the examples in the latest 20% of the examples'
time span. Training uses the examples whose horizon ended before the split instant
(t + horizon <= split), so that no label of a training example comes from the test
period. A quarter of the training leads (chosen by a hash of the lead id, so the same
history always splits the same way) is held out to calibrate (Platt scaling of the
log-odds) the regression fitted on the others.

The model: scikit-learn's L2-regularised logistic regression on standardised features
(scoring.model says how it is served).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring.engine import LeadState, apply, score_at
from scoring.errors import EventError, ModelError
from scoring.events import MAX_EVENT_BYTES, Event, format_ts
from scoring.model import Model, feature_names, features_at
from scoring.offline import first_conversion, parsed
from scoring.rules import Ruleset
from scoring.suggest import scale_points

__all__ = ["MIN_CONVERSIONS", "Evaluation", "Examples", "Trained", "build_examples",
           "expected_calibration_error", "lift", "reliability", "split_parts", "train"]

TEST_SHARE = 0.2  # SPEC 12: "the test set is the latest 20% of time"
CALIBRATION_SHARE = 0.25  # of the training leads: held out to calibrate
BINS = 10  # SPEC 12: expected calibration error over 10 bins
# Below these many converted leads in a part, the fit, the calibration or the test
# metrics would mostly measure noise (a lead's examples are alike: leads are what count),
# so training refuses and says so.
MIN_CONVERSIONS = {"fit": 30, "calibration": 10, "test": 10}
REGULARISATION = 1.0  # scikit-learn's C: the inverse strength of the L2 penalty

Progress = Callable[[str, int, int], None]  # (phase, done, total)
Floats = npt.NDArray[np.float64]


@dataclass
class Examples:
    """Every example of a history, as arrays in one order (by time, then lead)."""

    names: list[str]  # feature names (scoring.model.feature_names)
    x: Floats  # (n, features)
    y: npt.NDArray[np.int8]  # 1: converted within the horizon after the instant
    t: npt.NDArray[np.int64]  # the instant (event time, epoch ms)
    score: Floats  # the rules' own score at the instant (the baseline ranker)
    lead: npt.NDArray[np.int32]  # index into ``lead_ids``
    lead_ids: list[str]
    start: int  # the first and last event times of the history
    end: int
    events: int  # events applied
    conversions: int  # leads with a `converted` event
    unlabelled: int  # examples left out: their horizon runs past the end of the data
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)


@dataclass(frozen=True)
class Evaluation:
    """The test set's numbers (SPEC 12) and what the report draws."""

    examples: int
    positives: int
    auc: float
    brier: float
    ece: float
    rules_auc: float  # the rules' own score, as a ranker of the same examples
    # Per bin of predicted probability: (mean predicted, observed rate, examples)
    reliability: list[tuple[float, float, int]]
    # Per tenth of the test set, best first: the positive rate over the base rate
    lift_model: list[float]
    lift_rules: list[float]


@dataclass(frozen=True)
class Trained:
    model: Model
    evaluation: Evaluation


def build_examples(lines: Iterable[bytes | None], rules: Ruleset, horizon_ms: int, *,
                   max_event_bytes: int = MAX_EVENT_BYTES, latest_ms: int | None = None,
                   progress: Progress | None = None) -> Examples:
    """Every labelled example of a history (the module's docstring says which). A line
    the worker would dead-letter is listed in ``bad_lines`` and skipped, as offline."""
    events: list[Event] = []
    bad: list[tuple[int, str]] = []
    conversions: dict[str, int] = {}
    for number, event in parsed(lines, bad, max_event_bytes, latest_ms):
        events.append(event)
        first_conversion(conversions, event)
        if progress is not None and number % 50_000 == 0:
            progress("reading", number, 0)
    if not events:
        refused = "" if not bad else \
            f" ({len(bad)} lines refused, the first at line {bad[0][0]}: {bad[0][1]})"
        raise ModelError(f"no event to learn from{refused}: give a history of events (a "
                         "file or --topic) that the rules can score")
    # Time order; a stable sort keeps each lead's events of one instant in arrival order.
    events.sort(key=lambda e: e.ts)
    start, end = events[0].ts, events[-1].ts
    names = feature_names(rules)
    x = np.empty((len(events), len(names)), dtype=np.float64)
    y = np.empty(len(events), dtype=np.int8)
    t = np.empty(len(events), dtype=np.int64)
    score = np.empty(len(events), dtype=np.float64)
    lead_index = np.empty(len(events), dtype=np.int32)
    states: dict[str, LeadState] = {}
    index_of: dict[str, int] = {}
    # lead -> (its profile, the fit rules' results on it): a profile_update replaces the
    # profile dict (never changes it in place), so the same object has the same results.
    holds: dict[str, tuple[dict[str, Any], list[bool]]] = {}
    n = unlabelled = applied = 0
    total = len(events)
    for i, event in enumerate(events):
        if progress is not None and i % 20_000 == 0:
            progress("examples", i, total)
        lead = event.lead_id
        state = states.get(lead)
        if state is None:
            state = states[lead] = LeadState(lead)
        try:
            outcome = apply(state, event, rules)
        except EventError as exc:  # refused before it changed anything
            bad.append((0, f"{exc.reason} (event {event.event_id} of lead {lead})"))
            continue
        if outcome.duplicate:
            continue
        applied += 1
        c = conversions.get(lead)
        at = event.ts
        if c is not None and at >= c:
            continue  # the lead has converted: nothing left to predict
        if at + horizon_ms > end:
            unlabelled += 1  # its horizon runs past the data: its label is not known
            continue
        label = 1 if c is not None and c - at <= horizon_ms else 0
        cached = holds.get(lead)
        if cached is None or cached[0] is not state.profile:
            cached = holds[lead] = (state.profile, [r.test(state.profile) for r in rules.fit])
        x[n] = features_at(state, at, rules, cached[1])
        y[n], t[n] = label, at
        score[n] = score_at(state, at, rules)
        lead_index[n] = index_of.setdefault(lead, len(index_of))
        n += 1
    if progress is not None:
        progress("examples", total, total)
    return Examples(names=names, x=x[:n], y=y[:n], t=t[:n],
                    score=score[:n], lead=lead_index[:n], lead_ids=list(index_of),
                    start=start, end=end, events=applied, conversions=len(conversions),
                    unlabelled=unlabelled, bad_lines=sorted(bad))


def train(examples: Examples, rules: Ruleset, horizon: str, horizon_ms: int) -> Trained:
    """Fit, calibrate and test the model (the module's docstring says on what); refuse,
    saying why, when a part has too few conversions to learn from."""
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score

    t, y = examples.t, examples.y
    if len(t) == 0:
        raise ModelError("no example to learn from: every lead's horizon runs past the end "
                         "of the data; give a longer history or a shorter --horizon")
    split, parts = split_parts(examples, horizon_ms)
    fit, calibration, test = parts["fit"], parts["calibration"], parts["test"]
    training = fit | calibration
    for name, mask in parts.items():
        converted = len(np.unique(examples.lead[mask & (y == 1)]))
        if converted < MIN_CONVERSIONS[name] or int(y[mask].sum()) == int(mask.sum()):
            raise ModelError(
                f"too few conversions to learn from: the {name} part of the history "
                f"({int(mask.sum()):,} examples) has {converted} leads that converted within "
                f"{horizon} of an example, and needs at least {MIN_CONVERSIONS[name]} (and "
                f"leads that did not); {examples.conversions:,} leads converted in all. Give "
                "a longer history (more `converted` events) or a longer --horizon")
    x_fit = examples.x[fit]
    means = x_fit.mean(axis=0)
    scales = x_fit.std(axis=0)
    # A constant feature (to rounding): z is 0, so its coefficient stays 0.
    scales[scales < 1e-9 * np.maximum(1.0, np.abs(means))] = 1.0

    def standard(mask: npt.NDArray[np.bool_]) -> Floats:
        out: Floats = (examples.x[mask] - means) / scales
        return out

    regression = LogisticRegression(C=REGULARISATION, max_iter=2000)
    regression.fit(standard(fit), y[fit])
    raw_calibration = regression.decision_function(standard(calibration))
    platt = LogisticRegression(C=1e6, max_iter=1000)
    platt.fit(raw_calibration.reshape(-1, 1), y[calibration])
    slope, offset = float(platt.coef_[0][0]), float(platt.intercept_[0])
    raw_test = regression.decision_function(standard(test))
    p = expit(slope * raw_test + offset)
    y_test = y[test]
    evaluation = Evaluation(
        examples=int(test.sum()), positives=int(y_test.sum()),
        auc=round(float(roc_auc_score(y_test, p)), 4),
        brier=round(float(brier_score_loss(y_test, p)), 4),
        ece=round(expected_calibration_error(y_test, p), 4),
        rules_auc=round(float(roc_auc_score(y_test, examples.score[test])), 4),
        reliability=reliability(y_test, p), lift_model=lift(y_test, p),
        lift_rules=lift(y_test, examples.score[test]))
    model = Model(
        rules_version=rules.version, horizon=horizon, horizon_ms=horizon_ms,
        features=tuple(examples.names), means=tuple(float(m) for m in means),
        scales=tuple(float(s) for s in scales),
        coefficients=tuple(float(c) for c in regression.coef_[0]),
        intercept=float(regression.intercept_[0]), slope=slope, offset=offset,
        info={
            "rules_name": rules.name,
            "window": {"start": format_ts(examples.start), "split": format_ts(round(split)),
                       "end": format_ts(examples.end)},
            "metrics": {"auc": evaluation.auc, "brier": evaluation.brier,
                        "ece": evaluation.ece, "rules_auc": evaluation.rules_auc},
            "examples": {name: int(mask.sum()) for name, mask in parts.items()}
            | {"positives": {name: int(y[mask].sum()) for name, mask in parts.items()},
               "unlabelled": examples.unlabelled, "events": examples.events,
               "conversions": examples.conversions},
            "regularisation": {"penalty": "l2", "C": REGULARISATION},
        })
    # What `leadscore model suggest` writes (scoring.suggest), scaled on the training data.
    model.info["suggested_points"] = scale_points(model, rules, examples.x[training],
                                                  examples.score[training])
    return Trained(model, evaluation)


def split_parts(examples: Examples, horizon_ms: int
                ) -> tuple[float, dict[str, npt.NDArray[np.bool_]]]:
    """The split instant, and which examples fit, calibrate and test (the module's
    docstring): test from the latest TEST_SHARE of the examples' span; fit and
    calibration among those whose horizon ended before it, by lead."""
    t = examples.t
    first, last = int(t.min()), int(t.max())
    split = first + (1 - TEST_SHARE) * (last - first)
    training = t + horizon_ms <= split
    held_out = _held_out(examples.lead_ids)[examples.lead]
    return split, {"fit": training & ~held_out, "calibration": training & held_out,
                   "test": t >= split}


def _held_out(lead_ids: list[str]) -> npt.NDArray[np.bool_]:
    """Per lead: whether it calibrates (CALIBRATION_SHARE of them), from a hash of its id
    (not Python's hash(), which changes between runs)."""
    cut = int(CALIBRATION_SHARE * 2**32)
    return np.array([zlib.crc32(lead.encode()) < cut for lead in lead_ids], dtype=np.bool_)


def _bins(p: Floats) -> npt.NDArray[np.int64]:
    """The bin of each probability: [0, 0.1) ... [0.9, 1]."""
    return np.minimum((p * BINS).astype(np.int64), BINS - 1)


def expected_calibration_error(y: npt.NDArray[Any], p: Floats) -> float:
    """Sum over the 10 equal-width bins of |mean predicted - observed rate|, weighted by
    the bin's share of the examples."""
    bins = _bins(p)
    total = 0.0
    for b in range(BINS):
        mask = bins == b
        count = int(mask.sum())
        if count:
            total += count * abs(float(p[mask].mean()) - float(y[mask].mean()))
    return total / len(p)


def reliability(y: npt.NDArray[Any], p: Floats) -> list[tuple[float, float, int]]:
    """Per non-empty bin: (mean predicted, observed rate, examples), 4 decimals."""
    bins = _bins(p)
    out = []
    for b in range(BINS):
        mask = bins == b
        count = int(mask.sum())
        if count:
            out.append((round(float(p[mask].mean()), 4), round(float(y[mask].mean()), 4),
                        count))
    return out


def lift(y: npt.NDArray[Any], ranker: Floats) -> list[float]:
    """The positive rate of each tenth of the examples, ranked best first by ``ranker``,
    over the base rate (ties broken by position, deterministically), 4 decimals."""
    order = np.argsort(-ranker, kind="stable")
    ranked = y[order]
    base = float(y.mean())
    tenths = np.array_split(ranked, 10)
    return [round(float(part.mean()) / base, 4) if len(part) and base else 0.0
            for part in tenths]
