"""The README's configuration table and `Settings` must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_core import PydanticUndefined

from service.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_SETTINGS = {"ONCO_EXERCISE_HOME"}  # read by service.paths before settings exist


def table() -> dict[str, list[str]]:
    text = README.read_text()
    section = text[text.index("<!-- config:start -->"):text.index("<!-- config:end -->")]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`(ONCO_EXERCISE_[A-Z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
    return rows


def test_every_setting_is_in_the_table_and_nothing_else() -> None:
    documented = set(table())
    fields = {f"ONCO_EXERCISE_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set(), "add these settings to the README table"
    assert documented - fields - NOT_SETTINGS == set(), "these rows have no Settings field"


def test_each_row_has_meaning_default_and_example() -> None:
    for name, cells in table().items():
        assert len(cells) == 3 and all(cells), f"{name}: needs meaning, default and example"


def test_documented_scalar_defaults_match_the_code() -> None:
    rows = table()
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is PydanticUndefined or isinstance(default, (list, dict)):
            continue
        cell = rows[f"ONCO_EXERCISE_{name.upper()}"][1]
        if default is None or default == "":
            assert cell.startswith("("), f"{name}: default is empty, table says {cell}"
            continue
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert cell == f"`{shown}`", f"{name}: default is {shown!r}, table says {cell}"
