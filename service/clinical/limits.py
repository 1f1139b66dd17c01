"""The safety limits of a plan: one definition of how the fired rules' effects combine.

`prescribe` builds the plan inside these limits and `edits` checks a clinician's changes against the very same
limits, recomputed from the rules named in the prescription's rationale - so the generated plan and the edit
check cannot drift apart. Combination is deliberately simple so a clinician can follow it: the most restrictive
setting wins, the lowest intensity/resistance cap wins, the smallest starting-volume factor wins, and an activity
any rule rules out stays ruled out (each limit remembers the rule that set it, to say why). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from service.clinical.model import Setting
from service.clinical.rules import LEVELS, EVS_TARGET, RULES_BY_ID, Level, Rule, setting_index

RESISTANCE_ORDER = ("none", "light", "moderate")
CLEARED_SETTING: Setting = "supervised"  # where a plan starts once a clinician has cleared its red flags


@dataclass
class Limits:
    """What the rules allow, and the plan-shaping advice they add, with the rule behind each limit."""

    floor: Setting = "home-based"
    floor_rules: list[str] = field(default_factory=list)
    clearance: bool = False
    max_intensity: Level = "vigorous"
    max_intensity_rule: str | None = None
    resistance: str = "moderate"
    resistance_rule: str | None = None
    add_balance: bool = False
    avoid: dict[str, str] = field(default_factory=dict)  # activity tag -> rule id
    volume: float = 1.0  # multiplier on the starting aerobic minutes
    volume_rule: str | None = None
    no_public: str | None = None  # rule id that rules out public facilities
    rpe_only: bool = False
    resistance_emphasis: bool = False
    slow: bool = False
    notes: list[str] = field(default_factory=list)
    until_cleared: list[str] = field(default_factory=list)

    def add(self, rule: Rule, cleared: bool = False) -> None:
        """Combine one fired rule's effect into the limits. A red flag a clinician `cleared` no longer defers:
        it sets a supervised start instead, and its other limits (caps, activities ruled out) still apply."""
        e = rule.effect
        is_cleared = cleared and e.red_flag
        min_setting = CLEARED_SETTING if is_cleared and e.min_setting == "defer" else e.min_setting
        if min_setting is not None and setting_index(min_setting) >= setting_index(self.floor):
            if setting_index(min_setting) > setting_index(self.floor):
                self.floor_rules = []
            self.floor = min_setting
            self.floor_rules.append(rule.id)
        self.clearance = self.clearance or (e.clearance and not is_cleared)
        if e.max_intensity is not None and LEVELS.index(e.max_intensity) < LEVELS.index(self.max_intensity):
            self.max_intensity, self.max_intensity_rule = e.max_intensity, rule.id
        if e.resistance is not None and RESISTANCE_ORDER.index(e.resistance) < RESISTANCE_ORDER.index(self.resistance):
            self.resistance, self.resistance_rule = e.resistance, rule.id
        self.add_balance = self.add_balance or e.add_balance
        for tag in sorted(e.avoid):
            self.avoid.setdefault(tag, rule.id)
        if e.volume is not None and e.volume < self.volume:
            self.volume, self.volume_rule = e.volume, rule.id
        if e.no_public and self.no_public is None:
            self.no_public = rule.id
        self.rpe_only = self.rpe_only or e.rpe_only
        self.resistance_emphasis = self.resistance_emphasis or e.resistance_emphasis
        self.slow = self.slow or e.slow_progression
        if e.note and e.note not in self.notes:
            self.notes.append(e.note)
        if e.until_cleared and not is_cleared and e.until_cleared not in self.until_cleared:
            self.until_cleared.append(e.until_cleared)

    def blocker(self, tags: Iterable[str]) -> str | None:
        """The rule id that rules out an activity with these safety tags, or None when it is allowed."""
        for tag in sorted(tags):
            if tag in self.avoid:
                return self.avoid[tag]
            if tag == "public-facility" and self.no_public:
                return self.no_public
        return None

    def safe_setting(self) -> Setting:
        """The least restrictive setting the rules allow: a community programme needs public facilities, so
        when those are ruled out a professional's supervision moves to a clinical setting."""
        if self.floor == "community" and self.no_public:
            return "supervised"
        return self.floor

    def weekly_aerobic_cap(self, planned_minutes: int) -> int | None:
        """Aerobic minutes a week the rules allow to start with, when a rule lowers the starting volume: the
        guideline's 150 min x the volume factor, or the plan's own starting dose when that is higher (a patient
        who is already active keeps what they do). None: no volume limit."""
        if self.volume >= 1.0:
            return None
        return max(planned_minutes, round(EVS_TARGET * self.volume))


def combine(rules: Iterable[Rule], cleared: Iterable[str] = ()) -> Limits:
    """The limits of a set of fired rules (in table order); `cleared`: red-flag rule ids a clinician cleared."""
    done = set(cleared)
    limits = Limits()
    for rule in rules:
        limits.add(rule, cleared=rule.id in done)
    return limits


def limits_of(rule_ids: Iterable[str], cleared: Iterable[str] = ()) -> Limits:
    """The limits recomputed from rule ids (a prescription's rationale): unknown ids are ignored."""
    seen: list[Rule] = []
    for rid in rule_ids:
        rule = RULES_BY_ID.get(rid)
        if rule is not None and rule.predicate is not None and rule not in seen:
            seen.append(rule)
    return combine(seen, cleared)


def rule_title(rule_id: str | None) -> str:
    """The rule's name as a clinician reads it ("Thrombocytopenia 20-30"), not its id."""
    rule = RULES_BY_ID.get(rule_id or "")
    return rule.title if rule is not None else "a safety rule"
