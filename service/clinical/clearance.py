"""Recording a clinician's clearance of a deferred plan: what must be true before exercise may start.

A deferred plan names what would clear it (`Prescription.to_resolve`, one line per red flag). A clearance is
valid only when the clinician confirms every one of those lines and says in their own words what they found;
it clears exactly the red flags that deferred the plan (a new one defers it again). Pure: the caller supplies
who and when.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from service.clinical.model import Clearance, Prescription

MAX_NOTE = 2000


class ClearanceError(ValueError):
    """The clearance cannot be recorded; the message is for the clinician."""


def record_clearance(deferred: Prescription, *, by: str, at: datetime, reviewed: Iterable[Any], note: Any,
                     by_display: str | None = None) -> Clearance:
    """The Clearance of `deferred` by `by` at `at`, or ClearanceError saying what is missing."""
    if deferred.setting != "defer":
        raise ClearanceError("Nothing to clear: this plan is not deferred.")
    if not by:
        raise ClearanceError("The EHR did not say which clinician is signed in, so a clearance cannot be recorded.")
    problems = []
    items = list(reviewed) if isinstance(reviewed, (list, tuple)) else None
    if items is None or not all(isinstance(x, str) for x in items):
        problems.append("The reviewed items must be a list of the lines to resolve.")
    else:
        unknown = [x for x in items if x not in deferred.to_resolve]
        if unknown:
            problems.append("These were not among what the plan asks to resolve: " + "; ".join(unknown))
        missing = [x for x in deferred.to_resolve if x not in items]
        if missing:
            problems.append("Confirm each item before clearing: " + "; ".join(missing))
    if not isinstance(note, str) or not note.strip():
        problems.append("Say what you reviewed and found (for example the repeat result), so the clearance can be "
                        "read later.")
    elif len(note) > MAX_NOTE:
        problems.append(f"The clearance note is too long (at most {MAX_NOTE} characters).")
    if problems:
        raise ClearanceError(" ".join(problems))
    assert isinstance(note, str)
    rules = tuple(dict.fromkeys(r.rule for r in deferred.red_flags))
    if not rules:
        raise ClearanceError("Nothing to clear: no red flag defers this plan.")
    return Clearance(by=by, at=at, rules=rules, reviewed=tuple(deferred.to_resolve), note=" ".join(note.split()),
                     by_display=by_display)
