"""Names that become folders: one validator for runs, ensembles, jobs and cache entries (no torch import).

A name typed into the Train page or ``--run-name`` ends up as a folder under
the runs folder, and training later deletes things inside that folder.  A name
such as ``.`` or ``..`` would make that folder the runs folder itself or its
parent, so every name goes through :func:`safe_name` (the cleaning rule) and
every run folder derived from a name through :func:`child_folder` (which also
refuses a cleaned name that would silently reuse someone else's folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

MAX_NAME_LENGTH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")
_NOT_IN_FOLDER_NAMES = re.compile(r"[\\/:*?\"<>|\x00-\x1f]")


class InvalidNameError(ValueError):
    """A name cannot become a folder; the message says why and what to type instead."""


def slug(text: str, fallback: str = "data") -> str:
    """``text`` with every run of unsafe characters replaced by ``_`` (for derived, not user-typed, names).

    Never empty, never a dot-name, at most :data:`MAX_NAME_LENGTH` characters.
    """
    cleaned = _UNSAFE.sub("_", str(text)).strip("_.")
    return cleaned[:MAX_NAME_LENGTH].rstrip("_.") or fallback


def folder_name(text: str) -> str:
    """``text`` as one folder name, letters of any script kept: for class and split names from data.

    Only what no file system allows in a name (slashes, ``:*?"<>|``, control
    characters) becomes ``_``, so two different class names stay two folders.
    """
    cleaned = _NOT_IN_FOLDER_NAMES.sub("_", str(text)).strip(" .")
    return cleaned[:MAX_NAME_LENGTH] or "_"


def safe_name(name: str, what: str = "run name") -> str:
    """The folder name for a user-given ``name``, or :class:`InvalidNameError` saying why it cannot be one.

    Unsafe characters (slashes, spaces, quotes, control characters) become
    ``_``; leading dots are dropped (hidden folders are not listed as runs).
    Refused: empty names, ``.`` and ``..`` (and names of dots only), and names
    longer than :data:`MAX_NAME_LENGTH` characters.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be text, got {type(name).__name__}")
    raw = name.strip()
    if not raw:
        raise InvalidNameError(f"{what} is empty: type a name such as 'lite0-96px'")
    if set(raw) <= {"."}:
        raise InvalidNameError(f"{what} {name!r} would name the folder itself or its parent: type a name "
                               "such as 'lite0-96px'")
    if len(raw) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} is {len(raw)} characters long; use at most {MAX_NAME_LENGTH}")
    cleaned = re.sub(r"^[._]+|_+$", "", _UNSAFE.sub("_", raw))
    if not cleaned or set(cleaned) <= {".", "_"}:
        raise InvalidNameError(f"{what} {name!r} has no letters or digits left after cleaning: type a "
                               "name such as 'lite0-96px'")
    return cleaned


def child_folder(parent: Union[str, Path], name: str, what: str = "run name") -> Path:
    """``parent / safe_name(name)``, refusing a cleaned name that lands on an existing folder.

    ``"my run"`` becomes ``my_run``; if ``my_run`` already exists it belongs to
    a run that was named ``my_run`` (or ``my/run``), so a different name that
    cleans to it is refused rather than resumed or overwritten.  Typing the
    cleaned name itself continues that run.
    """
    cleaned = safe_name(name, what)
    folder = Path(parent) / cleaned
    if cleaned != name.strip() and folder.exists():
        raise InvalidNameError(f"{what} {name!r} becomes {cleaned!r}, and {folder} already exists: choose "
                               f"another name, or type {cleaned!r} to continue that run")
    return folder
