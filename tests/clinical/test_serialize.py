"""The JSON contract (CLI, SMART API) round-trips; preferences are validated with readable messages."""

from __future__ import annotations

import json

import pytest

from service.clinical.model import Preferences
from service.clinical.serialize import (
    preferences_from_json,
    prescription_from_json,
    prescription_to_json,
    prescription_to_text,
)
from tests.clinical.support import run, scenario_names

CONTRACT_KEYS = {"eligible", "setting", "clearanceRequired", "components", "precautions", "missingData", "rationale",
                 "progression", "stopRules", "redFlags", "rulesetVersion", "generatedAt", "resources"}


@pytest.mark.parametrize("name", scenario_names())
def test_round_trip_through_json_text(name: str) -> None:
    _, p, _ = run(name)
    d = json.loads(json.dumps(prescription_to_json(p)))
    assert prescription_from_json(d) == p


def test_contract_shape() -> None:
    _, p, _ = run("multiple_precautions")
    d = prescription_to_json(p)
    assert CONTRACT_KEYS <= set(d) and d["resources"] == []
    comp = d["components"][0]
    assert {"type", "frequencyPerWeek", "minutesPerSession", "intensity", "activities"} <= set(comp)
    assert {"label", "scale", "low", "high"} <= set(comp["intensity"])
    assert set(d["precautions"][0]) == {"code", "text", "rule", "source"}
    assert d["preferences"]["preferredSetting"] == "community"
    assert prescription_to_json(p, resources=[{"resourceType": "Bundle"}])["resources"] == [{"resourceType": "Bundle"}]


def test_preferences_from_json() -> None:
    prefs = preferences_from_json({"preferredSetting": "home-based", "activities": ["walking"],
                                   "daysAvailable": ["Monday", "wed", "mon"], "equipment": ["bands"]})
    assert prefs == Preferences("home-based", ("walking",), ("mon", "wed"), ("bands",))
    assert preferences_from_json({}) == Preferences()


@pytest.mark.parametrize("bad,message", [
    ([], "JSON object"), ({"preferredSetting": "gym"}, "preferredSetting"), ({"activities": "walking"}, "activities"),
    ({"daysAvailable": ["someday"]}, "someday"), ({"colour": "red"}, "colour"),
])
def test_bad_preferences_are_readable(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preferences_from_json(bad)


def test_bad_prescription_json_is_a_value_error() -> None:
    _, p, _ = run("baseline_breast")
    d = prescription_to_json(p)
    for key, value in (("setting", "gym"), ("eligible", "yes"), ("generatedAt", "soon"), ("components", [{}])):
        with pytest.raises(ValueError):
            prescription_from_json({**d, key: value})


def test_text_form() -> None:
    _, p, _ = run("multiple_with_fever")
    text = prescription_to_text(p)
    assert "RED FLAGS" in text and "FEVER-38" in text and "Deferred" in text
    _, q, _ = run("non_oncology")
    assert prescription_to_text(q).startswith("NOT ELIGIBLE")


@pytest.mark.parametrize("name", scenario_names())
def test_fixtures_are_valid_r4_except_the_junk_one(name: str) -> None:
    from service.clinical.snapshot import check_r4_bundle
    from tests.clinical.support import bundle

    if name == "junk_resources":
        with pytest.raises(ValueError, match="does not parse as FHIR R4"):
            check_r4_bundle(bundle(name), name)
    else:
        check_r4_bundle(bundle(name), name)
