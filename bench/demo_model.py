"""The live demo's conversion model, config/demo-model.json: trained on the demo's own
funnel, fast-forwarded.

``python -m bench.demo_model [--out config/demo-model.json] [--leads 4000] [--seed 1]
[--horizon 10m] [--rules config/demo-rules.yaml]`` plays ``leadscore dev --demo``'s
funnel (streams.demo) on a simulated clock, half a second a tick as dev ticks it, for
``--leads`` leads and until each has ended its journey (``demo_history``), trains on
it as ``leadscore model train`` does (scoring.training), writes the model file and
prints its metrics. The same arguments
give the same bytes: the history starts at a fixed instant (``START``).

The history is the funnel plus ``LOOKALIKES`` (streams.demo), one each per deck:
customers-to-be that stall before converting, and buyers that buy. The funnel alone
converts its customers and no one else, and a customer's profile is one no other
persona has: a model of it reads the persona off the lead's first event and says 1
or 0 from then on, which makes a drawer that shows nothing. With the lookalikes a
good fit converts about half the time and what a lead does tells the rest.

The horizon, 10 minutes, is five of the demo rules' half-lives (2 minutes): a state's
engagement has decayed to 3% by then, and every journey of the demo is over. Its
conversions come seconds after a lead arrives, so any horizon of minutes labels the
examples alike; a shorter one leaves fewer examples out at the end of the history.

Retrain after an edit of config/demo-rules.yaml: the model is tied to its
rules_version, and tests/test_demo.py fails until the two agree. ``leadscore dev
--demo`` serves the file only while they do (streams.dev).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import orjson

from scoring.errors import LeadscoreError
from scoring.events import parse_ts
from scoring.rules import load_rules, parse_duration
from scoring.training import MIN_CONVERSIONS, Trained, build_examples, split_parts, train
from streams.demo import FUNNEL, LOOKALIKES, demo_history
from streams.model_cli import write_model
from streams.settings import DEMO_MODEL, DEMO_RULES

__all__ = ["HORIZON", "LEADS", "SEED", "START", "main", "trained"]

LEADS = 4_000  # enough converted leads in each part (scoring.training.MIN_CONVERSIONS)
SEED = 1
HORIZON = "10m"
START = "2026-11-01T00:00:00Z"
TOP_WEIGHTS = 8  # the largest weights printed


def trained(leads: int = LEADS, seed: int = SEED, horizon: str = HORIZON,
            rules_path: Path = DEMO_RULES) -> tuple[Trained, dict[str, int]]:
    """The model of ``leads`` demo leads, and the converted leads of each part (the
    fit, the calibration and the test)."""
    rules = load_rules(rules_path)
    horizon_ms = parse_duration(horizon)
    events = demo_history(leads, seed, parse_ts(START), funnel=FUNNEL | LOOKALIKES)
    examples = build_examples((orjson.dumps(e) for e in events), rules, horizon_ms)
    _split, parts = split_parts(examples, horizon_ms)
    converted = {name: len(np.unique(examples.lead[mask & (examples.y == 1)]))
                 for name, mask in parts.items()}
    return train(examples, rules, horizon, horizon_ms), converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEMO_MODEL,
                        help=f"the model file (default: {DEMO_MODEL})")
    parser.add_argument("--leads", type=int, default=LEADS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--horizon", default=HORIZON)
    parser.add_argument("--rules", type=Path, default=DEMO_RULES,
                        help=f"the rules the model is for (default: {DEMO_RULES})")
    args = parser.parse_args()
    rules_path = args.rules
    try:
        result, converted = trained(args.leads, args.seed, args.horizon, rules_path)
    except LeadscoreError as exc:
        sys.exit(f"bench.demo_model: {exc}")
    model, evaluation = result.model, result.evaluation
    write_model(model, args.out)  # (as leadscore model train writes it: renamed into place)
    info = model.info
    window = info["window"]
    print(f"{args.out}: rules {rules_path} (rules_version {model.rules_version}), horizon "
          f"{model.horizon}, {args.leads:,} demo leads (seed {args.seed}), "
          f"{info['examples']['events']:,} events, {info['examples']['conversions']} "
          f"converted\n  window {window['start']} .. {window['split']} (test from here) .. "
          f"{window['end']}")
    for name in ("fit", "calibration", "test"):
        print(f"  {name:<12}{info['examples'][name]:>7,} examples, "
              f"{info['examples']['positives'][name]:>5,} positive, {converted[name]:>4} "
              f"converted leads (at least {MIN_CONVERSIONS[name]})")
    print(f"  test AUC {evaluation.auc:.4f} (the rules' score: {evaluation.rules_auc:.4f})  "
          f"Brier {evaluation.brier:.4f}  ECE {evaluation.ece:.4f}")
    weights = sorted(zip(model.features, model.coefficients, strict=True),
                     key=lambda w: -abs(w[1]))[:TOP_WEIGHTS]
    print("  largest weights (per standard deviation): "
          + ", ".join(f"{name} {weight:+.2f}" for name, weight in weights))


if __name__ == "__main__":
    main()
