"""What an exercise programme changed, read from the patient's own record (pure): the sessions attended and
each functional measure before -> after the referral, as the exercise service reported them.

"Before" is the last result before the referral, else the service's own first (baseline) result after it;
"after" is the newest result since the referral. Nothing is shown unless both exist and differ in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.clinical.model import Measurement, PatientSnapshot

FUNCTIONAL = ("six-minute-walk", "sit-to-stand", "tug", "grip-right", "grip-left")
ATTENDED, OFFERED = "sessions-attended", "sessions-offered"


@dataclass(frozen=True)
class Attendance:
    attended: float
    offered: float | None
    when: datetime


@dataclass(frozen=True)
class Change:
    measure: str
    before: Measurement
    after: Measurement


def attendance(snapshot: PatientSnapshot, since: datetime | None) -> Attendance | None:
    """The newest attendance reported since the referral (with the sessions offered, when reported with it)."""
    hist = [m for m in snapshot.history.get(ATTENDED, ()) if since is None or m.effective >= since]
    if not hist:
        return None
    last = max(hist, key=lambda m: m.effective)
    offered = next((m.value for m in snapshot.history.get(OFFERED, ()) if m.ref == last.ref), None)
    return Attendance(last.value, offered, last.effective)


def changes(snapshot: PatientSnapshot, since: datetime | None) -> list[Change]:
    """Per functional measure with a result since the referral: before -> after (see the module docstring)."""
    if since is None:
        return []
    out = []
    for key in FUNCTIONAL:
        hist = sorted(snapshot.history.get(key, ()), key=lambda m: m.effective)
        after = [m for m in hist if m.effective >= since]
        if not after:
            continue
        before = [m for m in hist if m.effective < since]
        first = before[-1] if before else after[0]
        if first is not after[-1]:
            out.append(Change(key, first, after[-1]))
    return out
