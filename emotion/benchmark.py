"""Benchmark: train (or reuse) several models on one dataset, ensemble the best, score all on test.

Every model goes through the same steps: :func:`emotion.training.train` into a
run folder (or a completed run reused with ``reuse=True``), a temperature fitted
on that run's validation images, then :func:`emotion.evaluation.evaluate_run`
on the test split with speed measured.  The table is written as Markdown, CSV
and JSON.  One model failing (no pretrained weights offline, an input size its
architecture rejects) records a ``skipped: <reason>`` row; the others go on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from emotion import runs
from emotion.config import TrainConfig, train_options
from emotion.data.cache import DecodedImageCache
from emotion.data.sources import (
    DatasetError,
    DatasetSplits,
    default_cache_dir,
    load_dataset_spec,
    parse_classes,
)
from emotion.ensembles import create_ensemble
from emotion.evaluation import evaluate_run, fit_run_temperature, saved_evaluations
from emotion.fileio import atomic_write, utc_now
from emotion.models import get_model_config, list_models
from emotion.models.registry import ModelError
from emotion.names import slug
from emotion.profiling import cpu_name
from emotion.training import DEFAULT_RUNS_DIR, train

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
DEFAULT_MODELS = ("resnet34", "efficientnet_b4", "vgg16_bn", "vit_custom", "hf_vit", "efficientnet_lite0",
                  ENSEMBLE)
SCRATCH_ONLY = ("vit_custom",)  # no published weights: always trained from scratch
RESULT_FILES = ("benchmark.md", "benchmark.csv", "benchmark.json")


class BenchmarkError(ModelError):
    """The benchmark cannot start as configured; the message names the option to fix."""


@dataclass
class BenchmarkConfig:
    """What to benchmark and how each model is trained."""

    data: str
    out: Path
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    classes: Optional[str] = None
    runs_dir: Path = DEFAULT_RUNS_DIR
    epochs: float = 10
    max_steps: int = -1
    batch_size: int = 64
    image_size: Optional[int] = None  # every model's input side (default: the model's own)
    image_sizes: dict[str, int] = field(default_factory=dict)  # per-model overrides
    from_scratch: Union[bool, list[str]] = False  # True: every model; a list: those models
    reuse: bool = False
    # model -> a finished run folder to score as that model's row (a shipped checkpoint, say);
    # the benchmark never trains it and never writes into it
    pinned_runs: dict[str, Path] = field(default_factory=dict)
    ensemble_members: Optional[list[str]] = None
    fit_ensemble_weights: bool = False
    split: str = "test"
    tta: bool = False
    calibrate: bool = True
    seed: int = 0
    eval_batch_size: int = 64
    latency_repeats: int = 20
    throughput_batch: int = 32
    device: Optional[str] = None
    train_options: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field

    def is_scratch(self, model: str) -> bool:
        """Whether ``model`` trains from random weights (on purpose, or because it has none)."""
        if model in SCRATCH_ONLY or self.from_scratch is True:
            return True
        return bool(self.from_scratch) and model in self.from_scratch

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.runs_dir = Path(self.runs_dir)
        if not self.models:
            raise BenchmarkError("no models to benchmark: pass --models, e.g. "
                                 "--models vit_custom,efficientnet_lite0")
        known = set(list_models())
        unknown = [m for m in self.models if m not in known and m != ENSEMBLE]
        if unknown:
            raise BenchmarkError(f"unknown model(s) {unknown} in --models; available: "
                                 f"{', '.join(sorted(known))}, {ENSEMBLE}")
        dupes = sorted({m for m in self.models if self.models.count(m) > 1})
        if dupes:
            raise BenchmarkError(f"--models names {dupes} more than once")
        for name in self.image_sizes:
            if name not in self.models or name == ENSEMBLE:
                raise BenchmarkError(f"--image-size gives a size for {name!r}, which is not a trained model "
                                     f"in --models {','.join(self.models)}")
        if self.ensemble_members is not None:
            if ENSEMBLE not in self.models:
                raise BenchmarkError("--ensemble-members needs 'ensemble' in --models")
            bad = [m for m in self.ensemble_members if m not in self.models or m == ENSEMBLE]
            if bad or len(self.ensemble_members) < 2:
                raise BenchmarkError(f"--ensemble-members must name at least 2 models from --models, got "
                                     f"{self.ensemble_members}")
        self.pinned_runs = {name: Path(folder) for name, folder in self.pinned_runs.items()}
        for name, folder in self.pinned_runs.items():
            if name not in self.models or name == ENSEMBLE:
                raise BenchmarkError(f"--run gives a run for {name!r}, which is not a trained model in "
                                     f"--models {','.join(self.models)}")
            if not runs.is_complete(folder):
                raise BenchmarkError(f"--run {name}={folder}: not a finished run folder (it needs "
                                     "config.json, labels.json and model.safetensors)")
            architecture = runs.read_json(folder / runs.CONFIG_FILE).get("model")
            if architecture != name:
                raise BenchmarkError(f"--run {name}={folder}: that run is a {architecture!r} model, "
                                     f"not {name!r}")
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        owned = {"model", "data", "classes", "image_size", "epochs", "max_steps", "batch_size",
                 "from_scratch", "output_dir", "run_name", "seed"}
        bad_opts = sorted(k for k in self.train_options if k not in fields or k in owned)
        if bad_opts:
            raise BenchmarkError(f"--train-option cannot set {bad_opts}: use the benchmark's own flags for "
                                 f"{sorted(owned & set(bad_opts))} and TrainConfig fields for the rest "
                                 f"({', '.join(sorted(fields - owned))})")

    def input_size(self, model: str) -> Optional[int]:
        return self.image_sizes.get(model, self.image_size)

    def class_list(self) -> Optional[list[str]]:
        return parse_classes(self.classes)


def parse_image_sizes(text: Optional[str]) -> tuple[Optional[int], dict[str, int]]:
    """``"48"`` -> (48, {}); ``"48,efficientnet_lite0=64"`` -> (48, {"efficientnet_lite0": 64})."""
    default: Optional[int] = None
    sizes: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.rpartition("=")
        try:
            size = int(value)
        except ValueError:
            raise BenchmarkError(f"--image-size item {item!r} is not a number or model=number "
                                 "(e.g. 48 or vit_custom=48,efficientnet_lite0=64)") from None
        if name:
            sizes[name.strip()] = size
        else:
            default = size
    return default, sizes


def parse_train_options(items: Optional[list[str]]) -> dict[str, Any]:
    """``["early_stopping_patience=0", "augment=false"]`` -> typed ``TrainConfig`` values (as ``train`` parses them)."""
    try:
        return train_options(list(items or []))
    except ValueError as exc:
        raise BenchmarkError(f"--train-option: {exc}") from None


def _run_prefix(config: BenchmarkConfig) -> str:
    classes = config.class_list()
    tag = f"-{slug('+'.join(classes))[:40]}" if classes else ""
    return f"bench-{slug(Path(config.data).name if os.path.exists(config.data) else config.data)}{tag}"


def _same_data(a: Optional[str], b: str) -> bool:
    if a is None:
        return False
    if a == b:
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _same_classes(a: Optional[str], b: Optional[list[str]]) -> bool:
    left = parse_classes(a)
    return [c.lower() for c in left or []] == [c.lower() for c in b or []]


def find_completed_run(config: BenchmarkConfig, model: str) -> Optional[Path]:
    """A finished run of ``model`` with this data, classes, seed (and input size / scratch setting if asked).

    The benchmark's own folder wins; otherwise the newest match in ``runs_dir``.
    """
    if not config.runs_dir.is_dir():
        return None
    want_size = config.input_size(model)
    scratch = config.is_scratch(model)
    matches = []
    for folder in sorted(p for p in config.runs_dir.iterdir() if p.is_dir()):
        try:
            status = runs.read_json(folder / runs.STATUS_FILE)
            spec = runs.read_json(folder / runs.CONFIG_FILE)
        except runs.RunError:
            continue
        tc = spec.get("train_config") or {}
        if (status.get("state") != "completed" or spec.get("model") != model
                or not (folder / runs.WEIGHTS_FILE).exists()
                or not _same_data(tc.get("data"), config.data)
                or not _same_classes(tc.get("classes"), config.class_list())
                or (want_size and spec.get("input_size") != want_size)
                or bool(tc.get("from_scratch")) != scratch
                or int(tc.get("seed", 0)) != config.seed):  # another seed splits an unsplit folder otherwise
            continue
        own = folder.name.startswith(_run_prefix(config) + "-")
        matches.append((own, str(spec.get("created", "")), folder))
    return max(matches)[2] if matches else None


def _read_metrics(run_dir: Path) -> dict:
    try:
        return runs.read_json(run_dir / runs.METRICS_FILE)
    except runs.RunError:
        return {}


def _train_one(config: BenchmarkConfig, model: str) -> tuple[Path, bool]:
    """Train ``model`` (or reuse a completed run); returns (run folder, reused)."""
    if model in config.pinned_runs:
        logger.info("%s: scoring the given run %s", model, config.pinned_runs[model])
        return config.pinned_runs[model], True
    if config.reuse:
        found = find_completed_run(config, model)
        if found is not None:
            logger.info("%s: reusing %s", model, found)
            return found, True
        logger.info("%s: no completed run to reuse in %s, training", model, config.runs_dir)
    size = config.input_size(model) or get_model_config(model).input_size
    scratch = config.is_scratch(model)
    run_dir = config.runs_dir / f"{_run_prefix(config)}-{model}-{size}px{'-scratch' if scratch else ''}"
    options = {"evaluate_test": False, **config.train_options}
    train_config = TrainConfig(model=model, data=config.data, classes=config.classes or "",
                               image_size=config.input_size(model), epochs=config.epochs,
                               max_steps=config.max_steps, batch_size=config.batch_size, from_scratch=scratch,
                               output_dir=str(run_dir), seed=config.seed, **options)
    logger.info("%s: training into %s", model, run_dir)
    train(train_config)
    return run_dir, False


def _row(model: str, status: str, **values: Any) -> dict[str, Any]:
    return {"model": model, "status": status, **values}


def _measure(config: BenchmarkConfig, run_dir: Path, splits: DatasetSplits, cache: DecodedImageCache) -> dict:
    """Temperature on validation images, then test metrics and speed."""
    run = runs.load_run(run_dir)
    pinned = run_dir in config.pinned_runs.values()
    if pinned and config.calibrate and runs.load_temperature(run_dir) is None:
        logger.warning("%s has no fitted temperature and is not written to: its T-scaled ECE stays empty "
                       "(fit one with `python -m emotion evaluate --run %s --split val --fit-temperature`)",
                       run_dir, run_dir)
    if config.calibrate and not pinned:
        fit_run_temperature(run, splits, seed=config.seed, batch_size=config.eval_batch_size, tta=config.tta,
                            device=config.device, cache=cache)
    return evaluate_run(run, splits, split=config.split, seed=config.seed, tta=config.tta,
                        batch_size=config.eval_batch_size, device=config.device, speed=True,
                        latency_repeats=config.latency_repeats, throughput_batch=config.throughput_batch,
                        cache=cache, save=not pinned)


def _result_row(model: str, run_dir: Path, result: dict, reused: bool, val_f1: Optional[float],
                train_time: Optional[float], weights: Optional[str] = None) -> dict[str, Any]:
    return _row(
        model, "ok",
        weights_source=weights or result["run"]["weights_source"], reused=reused,
        input_size=result["run"]["input_size"], accuracy=result["accuracy"], macro_f1=result["macro_f1"],
        macro_recall=result["macro_recall"],
        per_class_recall={c: m["recall"] for c, m in result["per_class"].items()},
        ece=result["ece"], ece_calibrated=result.get("ece_calibrated"), temperature=result.get("temperature"),
        parameters=result["parameters"], size_mb=result["size_mb"], latency_ms=result["speed"]["latency_ms"],
        throughput_ips=result["speed"]["throughput_ips"], train_time_s=train_time, val_macro_f1=val_f1,
        run_dir=str(run_dir), **_convergence(run_dir),
    )


def _convergence(run_dir: Path) -> dict[str, Any]:
    """Epochs run, best epoch and whether training converged (:func:`emotion.runs.training_summary`)."""
    summary = runs.training_summary(run_dir) or {}
    return {"epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
            "converged": summary.get("converged")}


def _skip_reason(exc: BaseException, limit: int = 400) -> str:
    """One line for the table (the full error is in the log)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, ValueError):  # our errors explain themselves; name the type of anything else
        text = f"{type(exc).__name__}: {text}"
    return "skipped: " + (text if len(text) <= limit else text[:limit - 1] + "…")


def run_benchmark(config: BenchmarkConfig) -> dict[str, Any]:
    """Train/reuse, ensemble, evaluate and write the tables; returns the JSON document."""
    splits = load_dataset_spec(config.data, classes=config.class_list(), seed=config.seed)
    if config.split not in splits.splits:
        raise DatasetError(f"{config.data} has no {config.split!r} split to benchmark on (it has "
                           f"{sorted(splits.splits)}); pass --split with one of those")
    config.out.mkdir(parents=True, exist_ok=True)
    cache = DecodedImageCache(disk_dir=default_cache_dir() / "decoded")
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    trained: dict[str, tuple[Path, dict]] = {}  # model -> (run folder, metrics.json)
    for model in [m for m in config.models if m != ENSEMBLE]:
        try:
            run_dir, reused = _train_one(config, model)
            metrics = _read_metrics(run_dir)
            result = _measure(config, run_dir, splits, cache)
        except Exception as exc:  # one model's failure must not end the benchmark
            reason = _skip_reason(exc)
            logger.warning("%s %s", model, reason)
            logger.debug("%s failed", model, exc_info=True)
            rows.append(_row(model, reason))
            continue
        trained[model] = (run_dir, metrics)
        details[model] = result
        rows.append(_result_row(model, run_dir, result, reused, (metrics.get("val") or {}).get("macro_f1"),
                                runs.running_time_s(metrics)))
    if ENSEMBLE in config.models:
        rows.append(_ensemble_row(config, trained, splits, cache, details))
    doc = {
        "created": utc_now(),
        "data": {"spec": config.data, **splits.describe(), "split": config.split},
        "classes": list(splits.classes),
        "columns": columns(splits.classes),
        "rows": rows,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu": cpu_name(), "cpus": os.cpu_count(),
                        "threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "details": details,
    }
    if not details and (Path(config.out) / RESULT_FILES[2]).exists():
        # e.g. a rerun without --reuse, whose every row is "skipped": the earlier results are worth more
        logger.error("no model was scored (the rows say why), so the results already in %s are kept",
                     config.out)
        return doc
    doc["written"] = [str(p) for p in write_tables(doc, config.out)]
    return doc


def _unused_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... when it holds files: an earlier benchmark's ensemble is kept."""
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    if candidate != path:
        logger.info("ensemble: %s is taken (an earlier benchmark's), so this one goes to %s", path,
                    candidate.name)
    return candidate


def _ensemble_row(config: BenchmarkConfig, trained: dict[str, tuple[Path, dict]], splits: DatasetSplits,
                  cache: DecodedImageCache, details: dict) -> dict[str, Any]:
    if config.ensemble_members is not None:
        missing = [m for m in config.ensemble_members if m not in trained]
        if missing:
            return _row(ENSEMBLE, f"skipped: member(s) {missing} were not trained (see their rows)")
        members = list(config.ensemble_members)
        how = "named with --ensemble-members"
    else:
        def val_f1(model: str) -> float:
            return (trained[model][1].get("val") or {}).get("macro_f1", float("-inf"))

        ranked = sorted(trained, key=val_f1, reverse=True)
        if len(ranked) < 2:
            return _row(ENSEMBLE, f"skipped: needs at least 2 trained models, got {len(ranked)} ({ranked})")
        members = ranked[:2]
        how = "the two best by validation macro-F1"
    out_dir = _unused_folder(config.runs_dir / f"{_run_prefix(config)}-{ENSEMBLE}-{'+'.join(members)}")
    try:
        made = create_ensemble([trained[m][0] for m in members], out_dir,
                               fit_data=splits if config.fit_ensemble_weights else None, seed=config.seed,
                               batch_size=config.eval_batch_size, tta=config.tta, device=config.device,
                               cache=cache)
        result = _measure(config, out_dir, splits, cache)
    except Exception as exc:  # same policy as single models
        reason = _skip_reason(exc)
        logger.warning("ensemble %s", reason)
        logger.debug("ensemble failed", exc_info=True)
        return _row(ENSEMBLE, reason)
    details[ENSEMBLE] = {**result, "members": members, "chosen_as": how, "weights": made["weights"],
                         "weights_fit": made["weights_fit"]}
    times = [runs.running_time_s(trained[m][1]) for m in members]
    weights = made["weights"] or [1 / len(members)] * len(members)
    source = "members: " + ", ".join(f"{m} ({w:.2f})" for m, w in zip(members, weights))
    return _result_row(ENSEMBLE, out_dir, result, False, None,
                       sum(times) if all(t is not None for t in times) else None, weights=source)


# ----------------------------------------------------------------------------- tables

BASE_COLUMNS = ("model", "status", "weights_source", "input_size", "accuracy", "macro_f1", "macro_recall")
TAIL_COLUMNS = ("ece", "ece_calibrated", "temperature", "parameters", "size_mb", "latency_ms",
                "throughput_ips", "train_time_s", "epochs_run", "best_epoch", "converged", "val_macro_f1",
                "run_dir")


def columns(classes: list[str]) -> list[str]:
    """CSV/JSON column names: per-class recall sits between the summary scores and calibration."""
    return [*BASE_COLUMNS, *(f"recall_{c}" for c in classes), *TAIL_COLUMNS]


def _flat(row: dict, classes: list[str]) -> dict[str, Any]:
    recall = row.get("per_class_recall") or {}
    flat = {k: row.get(k) for k in BASE_COLUMNS + TAIL_COLUMNS}
    flat.update({f"recall_{c}": recall.get(c) for c in classes})
    return flat


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "parameters":
        return f"{value / 1e6:.2f}M"
    if key in ("latency_ms", "size_mb", "throughput_ips", "train_time_s"):
        return f"{value:.1f}"
    if key == "temperature":
        return f"{value:.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("epochs_run", "best_epoch"):
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


MD_HEADERS = {"model": "model", "weights_source": "weights", "input_size": "input", "accuracy": "accuracy",
              "macro_f1": "macro-F1", "macro_recall": "macro recall", "ece": "ECE",
              "ece_calibrated": "ECE (T-scaled)",
              "temperature": "T", "parameters": "params", "size_mb": "MB", "latency_ms": "latency ms",
              "throughput_ips": "img/s", "train_time_s": "train s", "epochs_run": "epochs",
              "best_epoch": "best epoch", "converged": "converged", "status": "status"}


def to_markdown(doc: dict) -> str:
    classes = doc["classes"]
    keys = ["model", "weights_source", "input_size", "accuracy", "macro_f1", "macro_recall",
            *(f"recall_{c}" for c in classes), "ece", "ece_calibrated", "temperature", "parameters",
            "size_mb", "latency_ms", "throughput_ips", "train_time_s", "epochs_run", "best_epoch",
            "converged", "status"]
    headers = [MD_HEADERS.get(k, k.replace("recall_", "recall ")) for k in keys]
    data, env = doc["data"], doc["environment"]
    counts = ", ".join(f"{c} {n}" for c, n in data["counts"].get(data["split"], {}).items())
    lines = [
        f"# Benchmark: {data['spec']}",
        "",
        (f"Scored on the **{data['split']}** split ({counts}); temperatures fitted on each run's "
         f"validation images; latency is the median batch-1 time, throughput at batch "
         f"{doc['config']['throughput_batch']} ({env['cuda'] or 'CPU'}, {env['threads']} threads, "
         f"torch {env['torch']}); training time leaves out time the process spent suspended, and "
         f"an ensemble's is its members' sum. "
         f"Created {doc['created']}."),
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if k in ("model", "weights_source", "status") else "---:" for k in keys) + "|",
    ]
    for row in doc["rows"]:
        flat = _flat(row, classes)
        lines.append("| " + " | ".join(_fmt(k, flat.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def to_csv(doc: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=doc["columns"], lineterminator="\n")
    writer.writeheader()
    for row in doc["rows"]:
        writer.writerow({k: ("" if v is None else v) for k, v in _flat(row, doc["classes"]).items()})
    return buf.getvalue()


def write_tables(doc: dict, out: Union[str, Path]) -> list[Path]:
    """``benchmark.md``, ``benchmark.csv`` and ``benchmark.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, js = (out / name for name in RESULT_FILES)
    for path, text in ((md, to_markdown(doc)), (csv_path, to_csv(doc))):
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
    runs.write_json(js, doc)
    return [md, csv_path, js]


# ----------------------------------------------------------------------------- table of existing runs

def run_row(run: dict, split: str = "test") -> dict[str, Any]:
    """One flat table row for a run (a :func:`emotion.runs.describe_run` dict), in the benchmark's columns.

    Scores come from the run's newest stored evaluation on ``split`` (``python -m
    emotion evaluate``, the benchmark or the app's Benchmark page); a run never
    evaluated shows the test scores training recorded at its end, if any.
    ``scored_on`` says which.
    """
    metrics = run.get("metrics") or {}
    row: dict[str, Any] = {
        "run": run["name"], "model": run.get("model"), "status": run.get("state"),
        "weights_source": run.get("weights_source"), "input_size": run.get("input_size"),
        "parameters": metrics.get("parameters"), "train_time_s": runs.running_time_s(metrics),
        "val_macro_f1": (metrics.get("val") or {}).get("macro_f1"), "run_dir": str(run["path"]),
        "scored_on": None, "created": run.get("created"), **_convergence(run["path"]),
    }
    evaluations = saved_evaluations(run["path"], split=split) if run.get("ready") else []
    if evaluations:
        ev = evaluations[0]
        speed = ev.get("speed") or {}
        row.update(
            accuracy=ev.get("accuracy"), macro_f1=ev.get("macro_f1"), macro_recall=ev.get("macro_recall"),
            ece=ev.get("ece"), ece_calibrated=ev.get("ece_calibrated"), temperature=ev.get("temperature"),
            parameters=ev.get("parameters", row["parameters"]), size_mb=ev.get("size_mb"),
            latency_ms=speed.get("latency_ms"), throughput_ips=speed.get("throughput_ips"),
            scored_on=f"{(ev.get('data') or {}).get('spec')}: {(ev.get('data') or {}).get('split_source')}"
                      + (" (flip TTA)" if ev.get("tta") else ""),
        )
        row.update({f"recall_{c}": m.get("recall") for c, m in (ev.get("per_class") or {}).items()})
    elif metrics.get("test"):
        test = metrics["test"]
        row.update(accuracy=test.get("accuracy"), macro_f1=test.get("macro_f1"),
                   scored_on=f"{run.get('data')}: {split} split, at the end of training")
    return row


def runs_table(run_list: list[dict], split: str = "test") -> dict[str, Any]:
    """``{"classes", "columns", "rows"}`` for every run: the benchmark's columns plus run name, data and date.

    ``classes`` is the union of the runs' labels (per-class recall columns), in
    order of first appearance; :func:`table_csv` writes it as CSV.
    """
    rows = [run_row(r, split) for r in run_list]
    classes: list[str] = []
    for r in run_list:
        for c in r.get("labels") or []:
            if c not in classes:
                classes.append(c)
    cols = ["run", *columns(classes), "scored_on", "created"]
    return {"classes": classes, "columns": cols, "rows": [{k: row.get(k) for k in cols} for row in rows]}


def table_csv(table: dict[str, Any]) -> str:
    """CSV of a :func:`runs_table` (empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table["columns"], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in table["rows"]:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in table["columns"]})
    return buf.getvalue()
