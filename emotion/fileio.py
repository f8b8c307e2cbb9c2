"""Atomic writes and tolerant JSON reads (light: no torch import).

Run folders, the job queue, exclusion lists and the caches are read by other
processes (the app, a job supervisor) while they are written: each file is
written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader sees the old file or the new one, never half of
one, and a failed write (full disk, unserialisable data) leaves the old file
and no temporary debris.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional


def _umask() -> int:
    """The process umask, read without changing it where the system allows (``os.umask`` sets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # pragma: no cover - no /proc: read it by setting it back at once
    os.umask(current)
    return current


def default_file_mode() -> int:
    """What ``open(path, "w")`` would create: 0666 less the umask (usually 0644)."""
    return 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], None], mode: Optional[int] = None) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    ``mode``: permissions for the final file; by default those of a plainly
    created file (0666 less the umask), so that an app running as another user
    can read new runs (``mkstemp`` alone would leave them 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (other objects as ``str``), written atomically."""
    text = json.dumps(data, indent=2, default=str)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def read_json_or_none(path: Path) -> Any:
    """The parsed file, or None when it is missing, unreadable or not JSON (callers fall back)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second: the timestamp every written record carries."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
