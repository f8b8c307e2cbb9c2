"""Evaluation results that ship with the project, so a fresh machine can browse the study.

A shipped result is what :func:`emotion.evaluation.evaluate_run` returns
(metrics, confusion matrix, per-class recall, reliability curve, the data and
split) plus where it came from: the command, the machine, the software and the
date.  Paths are stored relative to the repository, so no file names a
temporary folder or one person's home.  One JSON file per (model, data, split)
in :func:`emotion.paths.shipped_results_dir`; weights never go there.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from emotion import paths, runs
from emotion.fileio import read_json_or_none, utc_now, write_json
from emotion.names import slug
from emotion.profiling import machine_description

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("run", "data", "accuracy", "macro_f1", "per_class", "confusion_matrix", "calibration",
                 "provenance")


def _relative(path: Optional[str], root: Path) -> Optional[str]:
    """``path`` relative to ``root`` when it lies below it (or beside it, as ``../shared``), else its name."""
    if not path:
        return path
    target = Path(path).expanduser().resolve()
    try:
        return os.path.relpath(target, root.resolve())
    except ValueError:  # another drive (Windows)
        return target.name


def save_shipped_result(result: dict[str, Any], command: Sequence[str], name: Optional[str] = None,
                        out_dir: Union[None, str, Path] = None, root: Union[None, str, Path] = None) -> Path:
    """Write ``result`` (from ``evaluate_run``) with its provenance into the shipped results folder."""
    root = Path(root) if root is not None else Path.cwd()
    out = Path(out_dir) if out_dir is not None else paths.shipped_results_dir()
    record = dict(result)
    run_path = result["run"].get("path")
    record["run"] = {**result["run"], "path": _relative(run_path, root)}
    training = runs.training_summary(run_path) if run_path else None
    if training is not None:  # epochs, wall time and whether it converged: a short run must say so
        record["training"] = training
    record["data"] = {**result["data"], "root": _relative(result["data"].get("root"), root)}
    record.pop("saved_to", None)
    record["provenance"] = {
        "command": " ".join(command),
        "machine": machine_description(),
        "software": f"python {platform.python_version()}, torch {torch.__version__}",
        "date": utc_now(),
    }
    name = name or f"{Path(record['run']['path'] or 'model').name}-{record['data']['name']}-{record['data']['split']}"
    path = out / f"{slug(name)}.json"
    write_json(path, record)
    return path


def shipped_results(folder: Union[None, str, Path] = None) -> list[dict[str, Any]]:
    """Every readable shipped result, sorted by model then data; each gets ``file`` (its path)."""
    folder = Path(folder) if folder is not None else paths.shipped_results_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_json_or_none(path)
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED_KEYS):
            logger.warning("skipping %s: not a shipped evaluation result", path)
            continue
        found.append({**record, "file": str(path)})
    return sorted(found, key=lambda r: (str(r["run"].get("path")), str(r["data"].get("name")),
                                        str(r["data"].get("split"))))


def result_title(result: dict[str, Any]) -> str:
    """``default (efficientnet_lite0) · fer2013 test`` — how a shipped result is named in lists."""
    run, data = result["run"], result["data"]
    return (f"{Path(str(run.get('path') or '?')).name} ({run.get('model')}) · {data.get('name')} "
            f"{data.get('split')}")


def shipped_row(result: dict[str, Any]) -> dict[str, Any]:
    """One table row of a shipped result (missing scores stay None; the page shows them as a dash)."""
    run, data = result["run"], result["data"]
    return {"model": Path(str(run.get("path") or "?")).name, "architecture": run.get("model"),
            "weights": run.get("weights_source"), "data": data.get("name"), "split": data.get("split"),
            "images": data.get("images"), "accuracy": result.get("accuracy"), "macro_f1": result.get("macro_f1"),
            "macro_recall": result.get("macro_recall"), "ece": result.get("ece"),
            **training_columns(result.get("training")),
            "date": str((result.get("provenance") or {}).get("date", ""))[:10] or None}


def training_columns(training: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Epochs run, best epoch, training minutes and convergence (all None for a result without them).

    The minutes are the time the training process ran: time it spent suspended (recorded by
    training as ``suspended_s``; ``paused_s`` in results written before that) is left out.
    """
    training = training or {}
    seconds = runs.running_time_s(training)
    return {"epochs": training.get("epochs_run"), "best_epoch": training.get("best_epoch"),
            "train_min": round(seconds / 60, 1) if seconds is not None else None,
            "converged": ("yes" if training["converged"] else "no") if "converged" in training else None}
