"""The README's clinical-logic table, generated from the rule table so documentation cannot drift from code.

`python -m service.clinical.ruledoc` prints the table; `--write README.md` replaces the section between
`<!-- rules:start -->` and `<!-- rules:end -->` (a test fails when the README and RULES differ).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.clinical.adaptation import ADAPTATION_RULES
from service.clinical.rules import RULES, RULESET_VERSION, Rule
from service.clinical.selfreport import ALERT_RULES

START, END = "<!-- rules:start -->", "<!-- rules:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rules_markdown() -> str:
    """Markdown table: rule, trigger, effect, source (one row per rule, in evaluation order)."""
    lines = [
        f"Rule set version `{RULESET_VERSION}`. Most restrictive setting wins (home-based < community < supervised "
        "< defer); the lowest intensity cap wins. Thresholds marked *common clinical practice* are not guideline text.",
        "",
        "| Rule | Trigger | Effect | Source |",
        "|---|---|---|---|",
    ]
    lines += _rows(RULES)
    lines += ["", "**Patient companion: answers that flag the care team** (`service/clinical/selfreport.py`; each "
              "also a FHIR Flag and Communication)", "", "| Rule | Trigger | Effect | Source |", "|---|---|---|---|"]
    lines += _rows(ALERT_RULES)
    lines += ["", "**The next step at follow-up** (`service/clinical/adaptation.py`; first match wins, shown on the "
              "follow-up card)", "", "| Rule | Trigger | Effect | Source |", "|---|---|---|---|"]
    lines += _rows(ADAPTATION_RULES)
    return "\n".join(lines) + "\n"


def _rows(rules: tuple[Rule, ...]) -> list[str]:
    return [f"| `{r.id}` {_cell(r.title)} | {_cell(r.trigger)} | {_cell(r.effect_text)} | {_cell(r.citation)} |"
            for r in rules]


def replace_section(readme: str, table: str) -> str:
    """README text with the rules section replaced; ValueError when the markers are missing."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} ... {END} section")
    return readme[: start + len(START)] + "\n" + table + readme[end:]


def readme_section(readme: str) -> str:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} ... {END} section")
    return readme[start + len(START): end].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="README to update in place")
    args = parser.parse_args(argv)
    table = rules_markdown()
    if args.write:
        args.write.write_text(replace_section(args.write.read_text(encoding="utf-8"), table), encoding="utf-8")
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
