"""Self-describing run folders, like ``save_pretrained``: config and labels beside the weights.

A run folder holds ``config.json`` (model name, build options, input size,
weights it started from, training config, data), ``labels.json`` and
``model.safetensors``; :func:`load_run` rebuilds the network from those files
alone.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from torch import nn

from emotion import paths
from emotion.fileio import atomic_write, read_json_or_none, write_json
from emotion.models import ModelConfig, ModelError, create_model
from emotion.models.ensemble import EnsembleModel, ensemble_config
from emotion.processes import recorded_process_alive
from emotion.run_files import (  # noqa: F401  (the names every caller reads as runs.CONFIG_FILE etc.)
    CONFIG_FILE,
    EXCLUSIONS_COPY_FILE,
    INT8_CALIBRATION_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    RUN_LOCK_FILE,
    STATUS_FILE,
    TEMPERATURE_FILE,
    TRAIN_CONFIG_FILE,
    TRAIN_LOG_FILE,
    WEIGHTS_FILE,
)

logger = logging.getLogger(__name__)


class RunError(ModelError):
    """A run folder is missing, incomplete or damaged; the message says which file."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing: is this a run folder?") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc})") from None


def build_options(module: nn.Module, config: ModelConfig) -> dict[str, Any]:
    """The keyword arguments that rebuild exactly this architecture with ``create_model``."""
    if "vit" in config.extra:  # vit_custom
        return {k: v for k, v in config.extra["vit"].items() if k != "image_size"}
    vit = getattr(module, "vit", None)
    if vit is not None and hasattr(vit, "config"):  # hf_vit
        return {"hf_config": vit.config.to_dict()}
    return {}


def save_model(run_dir: Union[str, Path], module: nn.Module, config: ModelConfig, labels: list[str],
               weights_source: str, extra: Optional[dict] = None) -> Path:
    """Write weights, labels and config into ``run_dir``."""
    from safetensors.torch import save_model as save_safetensors

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_safetensors(module, str(tmp)))
    write_json(run_dir / LABELS_FILE, list(labels))
    spec = {
        "model": config.name,
        "num_classes": len(labels),
        "input_size": config.input_size,
        "build_options": build_options(module, config),
        "weights_source": weights_source,
        "model_config": config.to_dict(),
        **(extra or {}),
    }
    write_json(run_dir / CONFIG_FILE, spec)
    return run_dir


def save_ensemble(run_dir: Union[str, Path], members: list[Union[str, Path]],
                  weights: Optional[list[float]] = None) -> Path:
    """An ensemble run: a config naming its member runs (no weights of its own)."""
    run_dir = Path(run_dir)
    _, config, labels = build_ensemble(members, weights)  # validates members and weights
    refs = [os.path.relpath(Path(m).resolve(), run_dir.resolve()) for m in members]
    write_json(run_dir / LABELS_FILE, labels)
    write_json(run_dir / CONFIG_FILE, {"model": "ensemble", "members": refs, "weights": weights,
                                       "num_classes": len(labels), "input_size": config.input_size,
                                       "model_config": config.to_dict(), "weights_source": "members"})
    return run_dir


def member_dirs(run_dir: Path, spec: dict) -> list[Path]:
    """An ensemble's member run folders (its config stores them relative to the ensemble's folder)."""
    members = spec.get("members") or []
    return [Path(m) if Path(m).is_absolute() else Path(run_dir) / m for m in members]


@dataclass
class LoadedRun:
    module: nn.Module
    config: ModelConfig
    labels: list[str]
    spec: dict
    path: Path


def _check_spec(spec: Any, labels: Any, run_dir: Path) -> None:
    """Refuse a config/labels pair that cannot describe a model, naming the file to fix."""
    config_path, labels_path = run_dir / CONFIG_FILE, run_dir / LABELS_FILE
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        raise RunError(f"{config_path} does not name a model (expected an object with a \"model\" key)")
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(x, str) and x.strip() for x in labels)):
        raise RunError(f"{labels_path} must be a list of at least two class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise RunError(f"{labels_path} repeats a class name: {labels}")
    declared = spec.get("num_classes")
    if declared is not None and declared != len(labels):
        raise RunError(f"{config_path} says num_classes {declared} but {labels_path} lists "
                       f"{len(labels)} classes ({', '.join(labels)}); restore the run's own labels.json")
    if spec["model"] != "ensemble" and not isinstance(spec.get("input_size"), int):
        raise RunError(f"{config_path} has no integer input_size")


def load_run(run_dir: Union[str, Path], _ensemble_depth: int = 0) -> LoadedRun:
    """Rebuild the model saved in ``run_dir`` (eval mode, on CPU).

    Raises :class:`RunError` naming the damaged file: missing or invalid JSON,
    labels that do not fit the config, truncated or mismatched weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    spec = read_json(run_dir / CONFIG_FILE)
    labels = read_json(run_dir / LABELS_FILE)
    _check_spec(spec, labels, run_dir)
    if spec["model"] == "ensemble":
        if _ensemble_depth >= 4:
            raise RunError(f"{run_dir}: ensembles nest more than 4 deep; does one list itself as a member?")
        members = spec.get("members")
        if not isinstance(members, list) or not members:
            raise RunError(f"{run_dir / CONFIG_FILE} lists no ensemble members")
        module, config, member_labels = build_ensemble(member_dirs(run_dir, spec), spec.get("weights"),
                                                       _depth=_ensemble_depth + 1)
        if member_labels != labels:
            raise RunError(f"{run_dir} labels {labels} differ from its members' {member_labels}")
        return LoadedRun(module, config, list(labels), spec, run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.exists():
        raise RunError(f"{weights} is missing: the run did not finish or was moved")
    options = dict(spec.get("build_options") or {})
    if spec["model"] == "hf_vit":
        options["labels"] = labels
    built = create_model(spec["model"], len(labels), pretrained=False, input_size=spec["input_size"], **options)
    try:
        load_model(built.module, str(weights), device="cpu")
    except SafetensorError as exc:
        raise RunError(f"{weights} is damaged or truncated ({exc}); copy it again or retrain") from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
        raise RunError(f"{weights} does not fit the {spec['model']} with {len(labels)} classes that "
                       f"{run_dir / CONFIG_FILE} and {LABELS_FILE} describe: {detail}") from None
    built.module.eval()
    logger.info("loaded %s (%s, input %d, started from %s)", run_dir, spec["model"], built.config.input_size,
                spec.get("weights_source", "unknown weights"))
    return LoadedRun(built.module, built.config, list(labels), spec, run_dir)


def build_ensemble(run_dirs: Sequence[Union[str, Path]], weights: Optional[Sequence[float]] = None,
                   _depth: int = 0) -> tuple[EnsembleModel, ModelConfig, list[str]]:
    """Load member runs and combine them; returns (module, config, labels)."""
    if len(run_dirs) < 2:
        raise ModelError(f"an ensemble needs at least 2 runs, got {len(run_dirs)}")
    loaded = [load_run(d, _ensemble_depth=_depth) for d in run_dirs]
    labels = loaded[0].labels
    for run in loaded[1:]:
        if run.labels != labels:
            raise ModelError(f"ensemble members disagree on classes: {run.path} has {run.labels}, "
                             f"{loaded[0].path} has {labels}")
    configs = [r.config for r in loaded]
    module = EnsembleModel([r.module for r in loaded], configs, weights).eval()
    return module, ensemble_config(configs), labels


def train_config_of(spec: dict, run_dir: Path) -> dict:
    """The training config of a run, or of an ensemble's first member (they share the data)."""
    if spec.get("model") == "ensemble":
        members = member_dirs(run_dir, spec)
        return train_config_of(read_json(members[0] / CONFIG_FILE), members[0]) if members else {}
    config = dict(spec.get("train_config") or {})
    frozen = Path(run_dir) / EXCLUSIONS_COPY_FILE
    if config.get("exclude_file") and frozen.is_file():  # the list as training read it, not as it is now
        config["exclude_file"] = str(frozen)
    return config


def trained_on_grayscale(spec: dict, run_dir: Path) -> bool:
    """Whether a run learnt from grey faces (an ensemble: every member did), so colour inputs are greyed."""
    if spec.get("model") == "ensemble":
        members = member_dirs(run_dir, spec)
        return bool(members) and all(trained_on_grayscale(read_json(m / CONFIG_FILE), m) for m in members)
    return bool((spec.get("data") or {}).get("grayscale"))


def load_temperature(run_dir: Union[str, Path]) -> Optional[dict]:
    """The fitted temperature record of a run (``temperature.json``), or None."""
    path = Path(run_dir) / TEMPERATURE_FILE
    if not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or not float(record.get("temperature", 0)) > 0:
        raise RunError(f"{path} has no positive 'temperature'; delete it or refit with --fit-temperature")
    return record


def describe_run(run_dir: Union[str, Path]) -> Optional[dict[str, Any]]:
    """What a run folder holds, from its JSON files alone (no weights are loaded); None if it is no run.

    ``state`` is the training status (``running``, ``completed``, ``failed``,
    ``stopped``, ``interrupted``; a "running" run whose process is gone reads
    ``interrupted``), ``completed`` for an ensemble or a copied
    model without one, else ``incomplete``; ``ready`` says whether
    :func:`load_run` can rebuild the model.
    """
    run_dir = Path(run_dir)
    status = read_json_or_none(run_dir / STATUS_FILE)
    spec = read_json_or_none(run_dir / CONFIG_FILE)
    train_config = read_json_or_none(run_dir / TRAIN_CONFIG_FILE)
    if not any(isinstance(x, dict) for x in (status, spec, train_config)):
        return None
    status = status if isinstance(status, dict) else {}
    spec = spec if isinstance(spec, dict) else {}
    metrics = read_json_or_none(run_dir / METRICS_FILE)
    labels = read_json_or_none(run_dir / LABELS_FILE)
    tc = spec.get("train_config") or (train_config if isinstance(train_config, dict) else {})
    is_ensemble = spec.get("model") == "ensemble"
    if is_ensemble and spec.get("members"):  # members share the data: describe it by the first one's
        member = read_json_or_none(member_dirs(run_dir, spec)[0] / CONFIG_FILE)  # tolerant: never raises
        tc = (member.get("train_config") or {}) if isinstance(member, dict) else {}
    ready = bool(spec) and isinstance(labels, list) and (is_ensemble or (run_dir / WEIGHTS_FILE).exists())
    state = status.get("state") or ("completed" if ready else "incomplete")
    error = status.get("error")
    if state == "running" and recorded_process_alive(status, run_dir / RUN_LOCK_FILE) is False:
        state = "interrupted"  # killed (SIGKILL, out of memory, a reboot) before it could say so
        error = (f"the training process (pid {status.get('pid')}) ended without finishing; train again with "
                 "the same settings (or Resume on the Train page) to continue from its last checkpoint")
    stamp = max((p.stat().st_mtime for p in (run_dir / STATUS_FILE, run_dir / CONFIG_FILE, run_dir)
                 if p.exists()), default=0.0)
    return {
        "name": run_dir.name,
        "path": run_dir,
        "state": state,
        "error": error,
        "model": spec.get("model") or tc.get("model"),
        "is_ensemble": is_ensemble,
        "members": spec.get("members") if is_ensemble else None,
        "input_size": spec.get("input_size") or tc.get("image_size"),
        "weights_source": spec.get("weights_source"),
        "labels": labels if isinstance(labels, list) else None,
        "data": tc.get("data"),
        "classes": tc.get("classes"),
        "created": spec.get("created") or status.get("time"),
        "ready": ready,
        "metrics": metrics if isinstance(metrics, dict) else None,
        "train_config": tc or None,
        "modified": stamp,
    }


def running_time_s(record: Optional[dict[str, Any]]) -> Optional[float]:
    """Seconds a training actually ran: ``train_time_s`` less the time it spent suspended.

    ``record`` is a run's ``metrics.json`` or a :func:`training_summary`; the suspension is
    ``suspended_s`` as training measures it (``paused_s`` in results written before it did).
    None when the record has no training time.
    """
    seconds = (record or {}).get("train_time_s")
    if seconds is None:
        return None
    suspended = record.get("suspended_s", record.get("paused_s")) or 0.0
    return round(float(seconds) - float(suspended), 1)


def running_rate(items_per_second: float, wall_s: Optional[float], suspended_s: float) -> float:
    """A rate measured over ``wall_s`` of wall time, over the time the process actually ran instead.

    The Trainer divides the images it saw by its wall time, which includes any time the
    process was suspended; ``suspended_s`` of it (a :class:`~emotion.progress.SuspensionClock`)
    is taken out. Unchanged when the wall time is unknown or the suspension covers all of it.
    """
    if not wall_s or wall_s <= suspended_s or suspended_s <= 0:
        return float(items_per_second)
    return float(items_per_second) * float(wall_s) / (float(wall_s) - float(suspended_s))


def training_summary(run_dir: Union[str, Path]) -> Optional[dict[str, Any]]:
    """How a finished run's training ended, from ``history.json`` and ``metrics.json``; None if it has none.

    A table of results must not pass off a run cut short as what an architecture
    reaches, so each row says how many epochs ran of how many budgeted, which one
    was best, the wall time, and ``converged``: early stopping ended it, or its
    validation metric did not improve over its last ``patience`` evaluations
    (what early stopping waits for). A run still improving when its budget ran
    out reads ``converged: False``.
    """
    run_dir = Path(run_dir)
    history, metrics = read_json_or_none(run_dir / HISTORY_FILE), read_json_or_none(run_dir / METRICS_FILE)
    if not isinstance(history, list) or not isinstance(metrics, dict):
        return None
    spec = read_json_or_none(run_dir / CONFIG_FILE)
    tc = train_config_of(spec if isinstance(spec, dict) else {}, run_dir)
    key = f"eval_{tc.get('metric') or 'macro_f1'}"
    evals = [(float(r["epoch"]), float(r[key])) for r in history
             if isinstance(r, dict) and key in r and r.get("epoch") is not None]
    if not evals:
        return None
    best_epoch, best = evals[0]
    for epoch, value in evals[1:]:
        if value > best:  # strictly better, as the Trainer's early stopping counts it
            best_epoch, best = epoch, value
    patience = int(tc.get("early_stopping_patience") or 0) or 3
    since_best = sum(1 for epoch, _ in evals if epoch > best_epoch)
    epochs_run = float(metrics.get("epochs_completed") or evals[-1][0])
    budget = tc.get("epochs")
    stopped_early = (bool(tc.get("early_stopping_patience")) and budget is not None
                     and int(tc.get("max_steps") or -1) <= 0 and epochs_run < float(budget) - 1e-3)
    return {
        "epochs_run": round(epochs_run, 2),
        "epochs_budget": float(budget) if budget is not None else None,
        "best_epoch": round(best_epoch, 2),
        "best_metric": round(best, 4),
        "metric": key.removeprefix("eval_"),
        "patience": patience,
        "train_time_s": metrics.get("train_time_s"),
        "suspended_s": metrics.get("suspended_s"),
        "stopped_early": stopped_early,
        "converged": bool(stopped_early or since_best >= patience),
        "curve": [[round(e, 2), round(v, 4)] for e, v in evals],
    }


def is_complete(run_dir: Union[str, Path]) -> bool:
    """Whether ``run_dir`` holds a finished run whose model can be loaded (shipped models included)."""
    info = describe_run(run_dir) if Path(run_dir).is_dir() else None
    return bool(info and info["ready"] and info["state"] == "completed")


def list_runs(runs_dir: Union[None, str, Path] = None) -> list[dict[str, Any]]:
    """:func:`describe_run` of every run in ``runs_dir`` (default :func:`emotion.paths.runs_dir`), newest first."""
    root = Path(runs_dir) if runs_dir is not None else paths.runs_dir()
    if not root.is_dir():
        return []
    found = [describe_run(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((r for r in found if r is not None), key=lambda r: r["modified"], reverse=True)
