"""Is a recorded process still alive? (light: no torch import)

A run folder says ``"state": "running"`` from the moment training starts; if
the process is killed (SIGKILL, out of memory, a reboot) nothing rewrites it.
Readers therefore check the claim: the training process holds an advisory
lock on the run's ``.train.lock`` for as long as it lives, and the kernel lists
held locks in ``/proc/locks``, so a reader can tell without taking the lock
(taking it, even briefly, could turn away a training that starts that instant).
Where ``/proc/locks`` is missing the recorded pid is checked instead.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path
from typing import Optional, Union

_LOCK_TARGET = re.compile(r"^([0-9a-f]+):([0-9a-f]+):(\d+)$")  # major:minor:inode in /proc/locks


def proc_stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, process group) of ``pid`` from ``/proc``, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[2])


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child (else a zombie would look alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: Optional[int]) -> bool:
    """Whether a live (non-zombie) process has this pid on this machine."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    reap(pid)
    if Path("/proc/self/stat").exists():
        stat = proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:  # pragma: no cover - POSIX without /proc
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flock_held(path: Union[str, Path]) -> Optional[bool]:
    """Whether any process holds a ``flock`` on ``path``; None when this system cannot tell."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        parts = line.split()
        if "FLOCK" not in parts or "->" in parts:  # "->" marks a process waiting for the lock
            continue
        for token in parts:
            match = _LOCK_TARGET.match(token)
            # the inode alone: overlay filesystems list the upper layer's device, not stat's
            if match and int(match.group(3)) == st.st_ino:
                return True
    return False


def recorded_process_alive(record: dict, lock_file: Optional[Path] = None) -> Optional[bool]:
    """Whether the process a status record names (``pid``, ``host``) still runs.

    True/False when it can be told; None when the record names another machine
    or no pid (then the record is all there is to go by).
    """
    host = record.get("host")
    if host and host != platform.node():
        return None
    if lock_file is not None:
        held = flock_held(lock_file)
        if held is not None:
            return held
    pid = record.get("pid")
    if not isinstance(pid, int):
        return None
    return pid_alive(pid)
