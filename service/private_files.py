"""Files that hold secrets or PHI (state database, keys): owner-only folders (0700) and files (0600).

Why a module: the state file, the generated SMART client keys and the state encryption keys must never be
readable by other local users, whatever the process umask is.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed; a folder this process creates is made 0700. An existing folder
    that others can read is tightened only when we own it (a mounted volume may belong to someone else)."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if created or (path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077):
            os.chmod(path, 0o700)
    except OSError:
        pass
    return path


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write `data` to `path` as a 0600 file, atomically (temp file, then link or rename).

    exclusive=True refuses to replace an existing file (returns False): concurrent first starts keep one key."""
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)
