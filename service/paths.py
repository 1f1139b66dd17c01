"""Where the repository's data folders live (terminology/, profiles/), also when installed in a container."""

from __future__ import annotations

import os
from pathlib import Path


def project_home() -> Path:
    """The folder holding terminology/ and profiles/: ONCO_EXERCISE_HOME, else the source checkout."""
    env = os.environ.get("ONCO_EXERCISE_HOME")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent


TERMINOLOGY_DIR = project_home() / "terminology"
PROFILES_DIR = project_home() / "profiles"
