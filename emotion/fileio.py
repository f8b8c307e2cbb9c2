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
import logging
import os
import shutil
import tempfile
import time
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


def default_dir_mode() -> int:
    """What ``mkdir`` would create: 0777 less the umask (``mkdtemp`` alone makes 0700)."""
    return 0o777 & ~_umask()


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


STALE_TEMP_SECONDS = 6 * 3600  # temporary folders older than this were left by a crashed builder


def atomic_folder(target: Path, build: Callable[[Path], None],
                  is_complete: Callable[[Path], bool] = Path.exists) -> Path:
    """Build a folder under a temporary sibling name, then rename it into place in one step.

    Used for the caches other processes read (generated and exported datasets): a
    crash never leaves a half-built folder where it would be reused.  A folder at
    ``target`` that is not ``is_complete`` (copied by hand, say) is replaced; when
    two processes race, the loser deletes its copy and ``target`` is the
    winner's.  Temporary folders that crashed builders left behind are removed
    once they are old enough that nobody writes them.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{target.name}-"
    now = time.time()
    for leftover in target.parent.glob(prefix + "*"):
        try:
            if now - leftover.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        os.chmod(tmp, default_dir_mode())  # mkdtemp makes it 0700; readers may run as another user
        build(tmp)
        if target.exists() and not is_complete(target):
            trash = Path(tempfile.mkdtemp(prefix=prefix + "broken-", dir=target.parent))
            try:
                os.replace(target, trash / target.name)
            except OSError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_complete(target):  # not a finished copy of another process's: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_json_or_none(path: Path) -> Any:
    """The parsed file, or None when it is missing, unreadable or not JSON (callers fall back)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def utc_stamp() -> str:
    """The current UTC time for a file name (``20261208-013005``): when something was set aside."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def unused_path(path: Path) -> Path:
    """``path``, or ``NAME-2.EXT``, ``NAME-3.EXT``... if it exists: where to move something aside to.

    Why: a rename onto an existing file replaces it, so setting one thing aside
    must never land on another that was set aside before.
    """
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def keep_earlier(path: Path) -> Optional[Path]:
    """Move a non-empty file at ``path`` to ``NAME.previous-<time>.EXT`` before an output replaces it.

    Why: an output name typed twice (``--out rows.csv``, ``--annotate out.png``)
    must not destroy the earlier result or an unrelated file of that name.
    Returns where it went, or None when there was nothing to keep.
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
    except OSError:
        return None
    kept = unused_path(path.with_name(f"{path.stem}.previous-{utc_stamp()}{path.suffix}"))
    os.replace(path, kept)
    logging.getLogger(__name__).warning("%s existed: the earlier file was kept as %s", path, kept.name)
    return kept


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second: the timestamp every written record carries."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
