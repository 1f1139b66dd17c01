"""How far back the CDS hook needs each result's history: the rules read a lab or vital sign only as its
current value (the newest within its max age), the worst value in a short window before it, or (weight) the
change over six months. Results older than that change no rule, so the hook leaves them unread; two years of
monthly labs were most of the snapshot's work. The SMART app's trends still read the whole history.

A measure left out of `CURRENT_VALUE_MEASURES` keeps its full history (functional tests, activity, programme and
patient-reported measures: the follow-up card compares them with results from before the referral, whenever
that was). `tests/clinical/test_lookback.py` checks on every fixture, spread over years, that the prescription,
the card and the draft are the same either way.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

from service.clinical.facts import WINDOW_FROM_NEWEST_HOURS, WINDOW_FROM_NOW_HOURS
from service.clinical.rules import WEIGHT_LOSS_DAYS
from service.terminology import Terminology, get_terminology

# Read by the rules only as described above (rules.py, facts.py); nothing else reads their history in a hook.
CURRENT_VALUE_MEASURES = frozenset({
    "platelets", "hemoglobin", "anc", "wbc", "temperature", "albumin", "calcium", "calcium-ionized", "spo2",
    "resting-hr", "bp-systolic", "bp-diastolic", "weight", "bmi", "lvef", "ecog", "karnofsky", "pregnancy-status",
})
MARGIN_DAYS = 2  # whole days, on top of the windows (which are in hours)


def lookback_days(term: Terminology) -> Mapping[str, int]:
    """measure -> the days of history the rules can read (its max age, plus the window before its newest value)."""
    out: dict[str, int] = {}
    for key, info in term.measures().items():
        if key not in CURRENT_VALUE_MEASURES:
            continue
        hours = max(WINDOW_FROM_NEWEST_HOURS.get(key, 0), WINDOW_FROM_NOW_HOURS.get(key, 0))
        days = info.max_age_days + math.ceil(hours / 24)
        if key == "weight":  # a weight up to six months old, against the heaviest in the six months before it
            days = max(days, 2 * WEIGHT_LOSS_DAYS)
        out[key] = days + MARGIN_DAYS
    return MappingProxyType(out)


@lru_cache(maxsize=1)
def hook_lookback() -> Mapping[str, int]:
    """`lookback_days` for the packaged terminology (computed once per process)."""
    return lookback_days(get_terminology())
