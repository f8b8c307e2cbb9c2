"""The file names of a run folder: one list for the code that writes them and every reader.

A leaf module with no torch import, so that the background job queue (whose
supervisors must start quickly) and the app's listings share the names with
:mod:`emotion.runs` and :mod:`emotion.training` instead of copying them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from emotion.fileio import read_json_or_none

CONFIG_FILE = "config.json"  # model name, build options, input size, weights it started from, train config, data
LABELS_FILE = "labels.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
PROGRESS_FILE = "progress.jsonl"  # one JSON record per log step and evaluation, appended while training
STATUS_FILE = "status.json"  # running, completed, failed or stopped (and the training process's pid)
TRAIN_CONFIG_FILE = "train_config.json"
TEMPERATURE_FILE = "temperature.json"  # fitted on validation images (evaluate --fit-temperature)
RUN_LOCK_FILE = ".train.lock"  # held (flock) by the training process for as long as it runs
TRAIN_LOG_FILE = "train.log"  # a background job's stdout and stderr
# the --exclude-file list as training read it (the original may change later)
EXCLUSIONS_COPY_FILE = "exclusions.json"
# activation ranges for --backend onnx-int8 (python -m emotion quantize), valid for these weights only
INT8_CALIBRATION_FILE = "int8_calibration.json"

# What a run folder holds: any of these marks a folder as a run's (the job queue writes train.log first).
RUN_MARKERS = (STATUS_FILE, CONFIG_FILE, TRAIN_CONFIG_FILE, PROGRESS_FILE, TRAIN_LOG_FILE, RUN_LOCK_FILE,
               "checkpoints")


def training_target_problem(run_dir: Path, overwrite: bool = False) -> Optional[str]:
    """Why a training must not write into ``run_dir`` (None: it may).

    A completed run, or a model no training of ours wrote (copied, shipped,
    restricted), is replaced only with ``overwrite``; an ensemble never (its
    members and weights would mix with the new run); a folder that holds files
    but is no run folder (your home, the repository, the runs folder itself)
    never.  Here, without torch, so that the job queue refuses before queueing.
    """
    if not run_dir.is_dir():
        if run_dir.exists():
            return f"{run_dir} is a file, not a run folder: choose another --output-dir"
        return None
    spec = read_json_or_none(run_dir / CONFIG_FILE)
    if isinstance(spec, dict) and spec.get("model") == "ensemble":
        return (f"{run_dir} holds an ensemble; training never writes into one (its members and weights would "
                "be mixed with the new run): choose another --output-dir or --run-name")
    status = read_json_or_none(run_dir / STATUS_FILE)
    has_weights = (run_dir / WEIGHTS_FILE).exists()
    completed = (isinstance(status, dict) and status.get("state") == "completed") or (
        has_weights and (run_dir / METRICS_FILE).exists())
    foreign_model = has_weights and not (run_dir / TRAIN_CONFIG_FILE).exists()
    if (completed or foreign_model) and not overwrite:
        what = "a completed run" if completed else f"a model ({WEIGHTS_FILE}) that was not trained here"
        return (f"{run_dir} already holds {what}; choose another --output-dir or --run-name, or pass "
                "--overwrite to replace it")
    if any((run_dir / marker).exists() for marker in RUN_MARKERS):
        return None
    others = sorted(p.name for p in run_dir.iterdir())
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        return (f"{run_dir} is not a run folder and is not empty ({shown}): training writes and deletes "
                "files in its run folder, so choose a new or empty --output-dir")
    return None
