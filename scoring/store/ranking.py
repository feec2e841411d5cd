"""The lead index: which leads score highest *now*, without scanning every lead.

S(t) = clamp(F + E * 2^(-(t - T)/H)). With one half-life H for every lead,
E * 2^(-(t - T)/H) = [E * 2^(T/H)] * 2^(-t/H): the bracket is fixed per lead and
the second factor is the same for all of them, so the order of decayed engagement
never changes with time. Kept as a log (2^(T/H) overflows a double for any real T):

    key = +(OFFSET + log2(E) + T/H)   for E > 0
    key = 0                           for E = 0
    key = -(OFFSET + log2(-E) + T/H)  for E < 0   (more decay = closer to 0 = higher)

Fit breaks the time invariance (F + c*2^(-t/H) orders differently at different t
when F differs), so the index holds one ranking per distinct F. The top N now is
then exact: take the top N of each F's ranking, compute their scores at t, merge.
There are few distinct F (sums of a handful of fit rules), so this stays cheap.
"""

from __future__ import annotations

import math

from scoring.engine import STAGES, LeadState

# Larger than |log2| of the smallest positive double (1074), so that with T >= 0
# (event times after 1970) positive keys stay above zero and negative ones below.
OFFSET = 2048.0


def rank_key(state: LeadState, half_life_ms: int | None) -> float:
    """The time-invariant position of a lead's decayed engagement (higher = more)."""
    e = state.engagement
    if half_life_ms is None:
        return e  # no decay: E itself never changes with time
    if e == 0 or state.t_ref is None:
        return 0.0
    magnitude = OFFSET + math.log2(abs(e)) + state.t_ref / half_life_ms
    return magnitude if e > 0 else -magnitude


def groups(stage: str, hot: bool) -> tuple[str, ...]:
    """The rankings a lead belongs to: its stage's, and the hot leads'. There is no
    ranking of all leads: the stages partition them, so ``members("all")`` reads the
    four stage rankings instead, and each change of a lead moves one entry fewer."""
    return (f"stage:{stage}", "hot") if hot else (f"stage:{stage}",)


def members(group: str) -> tuple[str, ...]:
    """The rankings that hold a group's leads: all, hot, stage:<stage>."""
    return tuple(f"stage:{stage}" for stage in STAGES) if group == "all" else (group,)
