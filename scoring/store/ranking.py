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

The same order counts leads by score without reading them (``level_bounds``): in the
ranking of one F, "F + E(t) >= level" is "E(t) >= level - F", and with T <= t that is
"key >= OFFSET + log2(level - F) + t/H" (for a positive gap; mirrored for a negative
one), a bound that ZCOUNT answers. Two things keep that from being exact as it stands,
and each is a narrow window of keys whose leads are read and scored instead:

- Floating point. The score is computed as F + E * 2^(-(t - T)/H) in doubles, the key
  as a log: a lead within rounding of the level could fall on either side. The level
  is first turned into the least double ``d`` with ``F + d >= level`` in floating
  point (what ``score_at`` computes, to the last bit), then the window around its key
  is 2^-40 of the key wide, some thousand times the rounding of either computation.
- Leads dated ahead of ``t`` (T > t: an event up to LEADSCORE_MAX_CLOCK_SKEW in the
  future). Their engagement does not grow back before T (``engagement_at`` holds it at
  E), but the key reads as if it did, by up to 2^(ahead/H); the window spans that.
"""

from __future__ import annotations

import functools
import math
import struct
import sys

from scoring.engine import STAGES, LeadState

# Larger than |log2| of the smallest positive double (1074), so that with T >= 0
# (event times after 1970) positive keys stay above zero and negative ones below.
OFFSET = 2048.0


def rank_key(state: LeadState, half_life_ms: int | None) -> float:
    """The time-invariant position of a lead's decayed engagement (higher = more)."""
    return engagement_key(state.engagement, state.t_ref, half_life_ms)


def engagement_key(e: float, t_ref: int | None, half_life_ms: int | None) -> float:
    """The time-invariant position of an engagement ``e`` as of ``t_ref``: a lead's, or a
    score group's (a group has no fit, so one ranking per group is exact: SPEC 10)."""
    if half_life_ms is None:
        return e  # no decay: E itself never changes with time
    if e == 0 or t_ref is None:
        return 0.0
    magnitude = OFFSET + math.log2(abs(e)) + t_ref / half_life_ms
    return magnitude if e > 0 else -magnitude


def groups(stage: str, hot: bool) -> tuple[str, ...]:
    """The rankings a lead belongs to: its stage's, and the hot leads'. There is no
    ranking of all leads: the stages partition them, so ``members("all")`` reads the
    four stage rankings instead, and each change of a lead moves one entry fewer."""
    return (f"stage:{stage}", "hot") if hot else (f"stage:{stage}",)


def members(group: str) -> tuple[str, ...]:
    """The rankings that hold a group's leads: all, hot, stage:<stage>."""
    return tuple(f"stage:{stage}" for stage in STAGES) if group == "all" else (group,)


def counted(group: str) -> tuple[str, ...]:
    """The rankings whose leads are counted by band for a group: all, stage:<stage>.
    Not hot: the hot rankings still hold a lead whose cooling is due but not yet swept,
    and the stage rankings hold every lead exactly once."""
    if group != "all" and group not in {f"stage:{stage}" for stage in STAGES}:
        raise ValueError(f"bands are counted for all leads or one stage, not {group!r}")
    return members(group)


# Keys (lo, hi) for one level in one ranking: leads with key >= hi are at or above the
# level, leads with key < lo below it, and those in [lo, hi) must be read to tell.
KeyBounds = tuple[float, float]
SLACK = 2.0 ** -40  # of a key's magnitude: the window for rounding (see the docstring)


def level_bounds(fit: float, level: float, at: int, half_life_ms: int | None,
                 ahead_ms: int) -> KeyBounds:
    """Where, in the ranking of fit score ``fit``, the leads whose unclamped score at
    ``at`` (``fit + engagement_at``, in floating point) is at least ``level`` are;
    ``ahead_ms``: how far past ``at`` a lead's last event may be dated."""
    least = least_engagement(fit, level)
    if half_life_ms is None:
        return least, least  # the key is E itself, which never changes
    ahead = ahead_ms / half_life_ms
    if least > 0:  # E(at) >= least > 0: positive keys from K up
        k = OFFSET + math.log2(least) + at / half_life_ms
        slack = SLACK * max(k, OFFSET)
        return k - slack, k + ahead + slack
    if least < 0:  # every E >= 0 (keys >= 0), and E < 0 that decayed to |E(at)| <= -least
        m = OFFSET + math.log2(-least) + at / half_life_ms
        slack = SLACK * max(m, OFFSET)
        return -m - ahead - slack, -m + slack
    return -math.inf, 0.0  # (not reached for a level above 0) E >= 0; any E < 0 is read


@functools.lru_cache(maxsize=4096)
def least_engagement(fit: float, level: float) -> float:
    """The least double ``d`` with ``fit + d >= level`` as floating point computes it:
    a binary search over the doubles in order (``fit + d`` rounds monotonically in d).
    Not ``level - fit``: with fit = level = 20, ``20 + -1e-16`` is 20.0, so a lead
    whose engagement has decayed to -1e-16 scores 20.0 and is in the band of 20."""
    def holds(n: int) -> bool:
        return fit + _double(n) >= level

    low, high = _ordered(-sys.float_info.max), _ordered(sys.float_info.max)
    if holds(low) or not holds(high):
        raise ValueError(f"no engagement puts fit {fit!r} at {level!r}")
    while high - low > 1:  # holds(high), not holds(low)
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle
    return _double(high)


_SIGN = 1 << 63


def _ordered(x: float) -> int:
    """A double as an integer in the same order (-0.0 and 0.0 are both 0)."""
    bits: int = struct.unpack("<Q", struct.pack("<d", x))[0]
    return -(bits ^ _SIGN) if bits & _SIGN else bits


def _double(n: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", -n | _SIGN if n < 0 else n))[0]
    return value
