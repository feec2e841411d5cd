"""Exact exponential decay with a half-life, in integer milliseconds of event time.

The engagement score E is kept "as of" a reference time T. Moving it to a later
time t multiplies by 2^(-(t - T)/H); because 2^a * 2^b = 2^(a+b), moving in
several steps gives exactly the same value as moving in one, so the stored
E = sum p_i * 2^(-(T - t_i)/H) is independent of how often it was rebased. A
late event (t_i < T) is added already decayed by 2^(-(T - t_i)/H), which is the
term it would have contributed had it arrived in order: the sum, and hence the
score, does not depend on arrival order.
"""

from __future__ import annotations

import math


def factor(dt_ms: float, half_life_ms: float | None) -> float:
    """2^(-dt/H): what one point is worth dt milliseconds later (1.0 without decay)."""
    if half_life_ms is None or dt_ms == 0:
        return 1.0
    return float(2.0 ** (-dt_ms / half_life_ms))


def crossing_time(
    t_ref: float, engagement: float, fit: float, level: float, half_life_ms: float | None
) -> float | None:
    """The instant at which F + E * 2^(-(t - T)/H) falls to ``level``, or None if it never does.

    Solving F + E * 2^(-(t_c - T)/H) = level gives t_c = T + H * log2(E / (level - F)).
    It exists only for a decaying, positive E above the gap ``level - F > 0``.
    """
    gap = level - fit
    if half_life_ms is None or engagement <= 0 or gap <= 0:
        return None
    if engagement <= gap:
        return float(t_ref)
    return t_ref + half_life_ms * math.log2(engagement / gap)
