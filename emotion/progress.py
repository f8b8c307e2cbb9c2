"""Reading a training run while it runs: its progress stream, curves, ETA and log tail.

Training appends one JSON record per log step and evaluation to
``<run>/progress.jsonl`` and writes its output to ``<run>/train.log``; the Train
page and the job queue follow a run through these readers.  No torch import,
so they are cheap to call on every poll.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from emotion.run_files import PROGRESS_FILE

LOG_TAIL_LINES = 40


def tail(path: Union[str, Path], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (progress-bar carriage returns collapsed), or ''."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # a progress bar redraws itself with carriage returns: keep what the terminal would show last
    out = [next((seg for seg in reversed(line.split("\r")) if seg.strip()), "").rstrip()
           for line in data.split("\n")]
    while out and not out[-1]:
        out.pop()
    return "\n".join(out[-lines:])


def read_progress(run_dir: Union[str, Path]) -> list[dict]:
    """The records of ``<run>/progress.jsonl`` (a half-written last line is skipped)."""
    try:
        text = (Path(run_dir) / PROGRESS_FILE).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def training_curves(records: Sequence[dict]) -> dict[str, list[dict]]:
    """Curves for plotting: ``train`` (step, epoch, loss, learning rate) and ``eval`` (validation metrics).

    Eval records are the Trainer's periodic validation passes (``eval_*`` keys);
    the final ``val_*``/``test_*`` passes after training are left out.
    """
    train, evals = [], []
    for r in records:
        if r.get("event") == "train" and "loss" in r:
            train.append({"step": r.get("step"), "epoch": r.get("epoch"), "loss": r["loss"],
                          "learning_rate": r.get("learning_rate")})
        elif r.get("event") == "eval" and any(k.startswith("eval_") for k in r):
            evals.append({"step": r.get("step"), "epoch": r.get("epoch"),
                          **{k.removeprefix("eval_"): v for k, v in r.items()
                             if k in ("eval_loss", "eval_accuracy", "eval_macro_f1")}})
    return {"train": train, "eval": evals}


def progress_summary(records: Sequence[dict], now: Optional[float] = None) -> dict[str, Any]:
    """Step, total steps, fraction done, epoch, elapsed and remaining seconds from the last record."""
    if not records:
        return {"step": 0, "max_steps": None, "fraction": 0.0, "epoch": 0.0, "elapsed_s": None, "eta_s": None,
                "updated": None}
    last = records[-1]
    step, total = int(last.get("step") or 0), last.get("max_steps")
    eta = last.get("eta_s")
    updated = last.get("time")
    if eta is not None and updated:
        with contextlib.suppress(ValueError):
            age = (now or time.time()) - datetime.fromisoformat(updated).timestamp()
            eta = max(0.0, float(eta) - max(0.0, age))
    fraction = min(1.0, step / total) if total else 0.0
    return {"step": step, "max_steps": total, "fraction": fraction, "epoch": last.get("epoch"),
            "elapsed_s": last.get("elapsed_s"), "eta_s": eta, "updated": updated}


class SuspensionClock:
    """Counts the seconds this process spent suspended (SIGSTOP, a paused VM, a laptop asleep).

    A daemon thread wakes every ``tick_s``; a wake-up that comes more than ``gap_s`` late
    means the whole process was stopped, and the lateness is added to :attr:`suspended_s`.
    Training reports its wall time with this beside it, so a run that was paused while
    other work used the CPU says so itself instead of in a hand-written note.
    Use as a context manager; the thread stops on exit.
    """

    def __init__(self, tick_s: float = 0.5, gap_s: float = 3.0) -> None:
        import threading

        self.tick_s, self.gap_s = tick_s, gap_s
        self.suspended_s = 0.0
        self.pauses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="suspension-clock", daemon=True)

    def _watch(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            late = now - last - self.tick_s
            if late > self.gap_s:
                self.suspended_s += late
                self.pauses += 1
            last = now

    def __enter__(self) -> "SuspensionClock":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.tick_s + 1)
