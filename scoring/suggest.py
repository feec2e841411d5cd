"""Back to rules (``leadscore model suggest``, SPEC 12): the same rules file, its engagement
points replaced by what the conversion model learned, ready for ``leadscore rules
preview``.

How the points are chosen (README, "Back to rules"). The model gives each engagement
rule a weight w_i: the calibrated log-odds one point of the rule's contribution adds
(its own coefficient plus the engagement's, since E is the sum of the contributions,
each per unit of the raw feature). A rule's new points are k * w_i * p_i (p_i its
points now): an award moves the new score in proportion to how much it moved the odds
of converting. One scale k for all rules is chosen at training (``scale_points``): the
one that puts as many of the training examples at or above the hot threshold as the
old points do (so that reps would get about as many alerts, and what changes is which
leads they are), but never so large that one award is worth more than the whole score
range (max - min): past that, scores would only be 0 or 100. Fit points, thresholds,
windows and everything else stay; a ``limit``'s points follow its rule's points (its
window holds as many awards as before).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from scoring.errors import ModelError, RulesError
from scoring.model import Model
from scoring.rules import Ruleset, parse_rules

__all__ = ["rule_weights", "scale_points", "suggest"]


def rule_weights(model: Model, rules: Ruleset) -> dict[str, float]:
    """w_i per engagement rule: calibrated log-odds per point of its contribution."""
    index = {name: i for i, name in enumerate(model.features)}

    def per_unit(name: str) -> float:
        i = index[name]
        return model.slope * model.coefficients[i] / model.scales[i]

    common = per_unit("engagement")
    return {r.id: per_unit(f"rule:{r.id}") + common for r in rules.engagement}


def scale_points(model: Model, rules: Ruleset, x: npt.NDArray[np.float64],
                 score: npt.NDArray[np.float64]) -> dict[str, float]:
    """The suggested points (1 decimal) per engagement rule, with the one scale k that
    keeps the share of examples (``x``: their features; ``score``: their score under
    the rules) at or above the hot threshold, within the score range's bound (the
    module's docstring)."""
    weights = rule_weights(model, rules)
    index = {name: i for i, name in enumerate(model.features)}
    fit = sum((x[:, index[f"fit:{r.id}"]] * r.points for r in rules.fit),
              np.zeros(len(x)))
    learned = sum((x[:, index[f"rule:{r.id}"]] * weights[r.id] for r in rules.engagement),
                  np.zeros(len(x)))
    target = int((score >= rules.threshold).sum())

    def above(k: float) -> int:
        new = np.clip(fit + k * learned, rules.score_min, rules.score_max)
        return int((new >= rules.threshold).sum())

    low, high = -12.0, 12.0  # log2 of k: from 1/4096 to 4096 times the learned weights
    for _ in range(60):
        middle = (low + high) / 2
        if above(2.0 ** middle) < target:
            low = middle
        else:
            high = middle
    largest = max((abs(weights[r.id] * r.points) for r in rules.engagement), default=0.0)
    k = 2.0 ** high
    if largest * k > rules.score_max - rules.score_min:
        k = (rules.score_max - rules.score_min) / largest
    return {r.id: round(k * weights[r.id] * r.points, 1) for r in rules.engagement}


def suggest(model: Model, rules: Ruleset, text: bytes, source: str) -> str:
    """``text`` (the rules file ``rules`` was read from) with the model's suggested points
    for its engagement rules, comments and layout kept; a header says where it came from."""
    model.check(rules, source)
    points: dict[str, float] = model.info.get("suggested_points", {})
    missing = [r.id for r in rules.engagement if r.id not in points]
    if missing:
        raise ModelError(f"the model has no suggested points for {', '.join(missing)}; "
                         "retrain it with `leadscore model train`")
    body = text.decode("utf-8")
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in ``body``
    for rule_node in _engagement_nodes(body, source):
        fields = {key.value: value for key, value in rule_node.value}
        rule_id = fields["id"].value
        old = next(r for r in rules.engagement if r.id == rule_id)
        new = points[rule_id]
        edits.append(_replace(fields["points"], new))
        limit = fields.get("limit")
        if isinstance(limit, yaml.MappingNode) and old.points != 0 and new != 0 \
                and old.limit_points is not None:
            limit_fields = {key.value: value for key, value in limit.value}
            edits.append(_replace(limit_fields["points"],
                                  round(abs(new / old.points) * old.limit_points, 1)))
    for start, end, replacement in sorted(edits, reverse=True):
        body = body[:start] + replacement + body[end:]
    window = model.info.get("window", {})
    header = (
        "# Suggested by `leadscore model suggest`: engagement points follow the weights\n"
        f"# learned by the model {source} (rules_version {model.rules_version}, trained on\n"
        f"# {window.get('start', '?')} to {window.get('end', '?')}), scaled so that about as\n"
        "# many leads reach the hot threshold (README, \"Back to rules\"). Preview it first:\n"
        "#   leadscore rules preview THIS.yaml EVENTS.jsonl\n")
    suggested = header + body
    try:
        parse_rules(suggested.encode("utf-8"), "the suggested rules")
    except RulesError as exc:  # a point the file cannot hold: say so rather than print it
        raise ModelError(f"the suggested rules would not load: {exc}") from None
    return suggested


def _engagement_nodes(body: str, source: str) -> list[Any]:
    """The engagement rules' mappings, each written out in full where it stands: the
    points are rewritten in place, so a rule that takes them from an anchor (``*x``,
    ``<<: *x``) is refused rather than rewritten twice or not at all."""
    root = yaml.compose(body, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "engagement" and isinstance(value, yaml.SequenceNode):
                rules = [node for node in value.value if isinstance(node, yaml.MappingNode)]
                seen: set[int] = set()
                for index, rule in enumerate(rules):
                    nodes = [rule, *(n for pair in rule.value for n in pair)]
                    if any(k.value == "<<" for k, _ in rule.value) or \
                            any(id(n) in seen for n in nodes):
                        raise ModelError(
                            f"{source}: engagement[{index}] uses a YAML anchor or merge key "
                            "(*, <<); suggest rewrites each rule's points where they are "
                            "written, so write the rule out in full first")
                    seen.update(id(n) for n in nodes)
                return rules
    raise ModelError(f"{source}: no engagement rules to suggest points for")


def _replace(node: Any, value: float) -> tuple[int, int, str]:
    shown = f"{value:.1f}".removesuffix(".0")
    return node.start_mark.index, node.end_mark.index, "0" if shown == "-0" else shown
