"""The README's clinical-logic table is generated from RULES: this fails when they drift apart."""

from __future__ import annotations

from pathlib import Path

from service.clinical.rules import RULES
from service.clinical.ruledoc import readme_section, replace_section, rules_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_matches_rules() -> None:
    section = readme_section(README.read_text(encoding="utf-8"))
    assert section == rules_markdown(), (
        "README rules table is out of date: run `.venv/bin/python -m service.clinical.ruledoc --write README.md`")


def test_table_lists_every_rule_with_its_source() -> None:
    table = rules_markdown()
    for rule in RULES:
        assert f"`{rule.id}`" in table and rule.citation.replace("|", "\\|") in table


def test_replace_section_keeps_the_rest() -> None:
    text = "# x\n<!-- rules:start -->\nold\n<!-- rules:end -->\ntail\n"
    new = replace_section(text, "T\n")
    assert new == "# x\n<!-- rules:start -->\nT\n<!-- rules:end -->\ntail\n"
    assert readme_section(new) == "T\n"


def test_table_lists_the_companion_rules_too() -> None:
    from service.clinical.adaptation import ADAPTATION_RULES
    from service.clinical.selfreport import ALERT_RULES

    table = rules_markdown()
    for rule in (*ALERT_RULES, *ADAPTATION_RULES):
        assert f"`{rule.id}`" in table
