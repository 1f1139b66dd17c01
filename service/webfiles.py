"""Static files by name, safely: only plain file names of a bounded length are looked up on disk.

Why: a name with a NUL byte or thousands of characters made `Path.resolve()` / `stat()` raise (500); a name
that is not a plain file name is simply not a static file (404), decided before touching the filesystem.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def static_path(directory: Path, name: str, suffixes: frozenset[str] | None = None) -> Path | None:
    """The file `name` directly inside `directory`, or None (not a plain name, wrong suffix, absent)."""
    if not _NAME.fullmatch(name) or ".." in name:
        return None
    path = directory / name
    if suffixes is not None and path.suffix not in suffixes:
        return None
    return path if path.is_file() else None
