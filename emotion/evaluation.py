"""Evaluation of trained runs: metrics, calibration, test-time augmentation, size and speed.

The design separates the one step that needs a network from everything else:
:func:`predict_probabilities` turns a model and a dataset into a matrix of class
probabilities, and every metric is a pure NumPy function of ``(probs, labels)``
so it can be checked against scikit-learn on hand-made predictions.

Ensembles return log-probabilities from ``forward``; softmax gives the averaged
probabilities back, so every model is treated as "logits in, probabilities out".
Temperature scaling works on log-probabilities too (``softmax(log p / T)`` equals
``softmax(z / T)`` for a softmax model), so it applies to ensembles unchanged.

Held-out data is chosen the way training chose it: the validation split (used
for temperature and ensemble-weight fitting) is the data's ``val`` split or the
same stratified share of ``train`` that the run held out; the test split is
never used for fitting anything.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from emotion import runs
from emotion.data.cache import DecodedImageCache
from emotion.data.dataset import FaceImageDataset
from emotion.data.sources import (
    DatasetError,
    DatasetSplits,
    Sample,
    default_cache_dir,
    load_dataset_spec,
    load_exclusions,
    parse_classes,
    validation_holdout,
)
from emotion.data.transforms import build_transform
from emotion.fileio import utc_now
from emotion.models.registry import ModelConfig, ModelError, count_parameters, logits_of
from emotion.names import slug

logger = logging.getLogger(__name__)

TEMPERATURE_FILE = "temperature.json"
EVALUATIONS_DIR = "evaluations"
DEFAULT_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
SPLITS = ("test", "val", "train", "all")  # "all": every image, whatever split it is in
_TINY = np.finfo(np.float64).tiny


# ----------------------------------------------------------------------------- pure metrics

def _as_arrays(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be an (n, classes) array with >= 2 classes, "
                         f"got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{p.shape[0]} prediction rows but {y.shape[0]} labels")
    if p.shape[0] == 0:
        raise ValueError("no predictions to score (empty split?)")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}], found {y.min()}..{y.max()}")
    return p, y


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean ``-log p(true class)``; probabilities of 0 are floored so the loss stays finite."""
    p, y = _as_arrays(probs, labels)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], _TINY)).mean())


def confusion_counts(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def classification_metrics(probs: Any, labels: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, NLL, macro/per-class precision, recall and F1, and the confusion matrix.

    Macro averages run over the classes present in the labels or the
    predictions, as scikit-learn's defaults (and the training metrics) do, so a
    class absent from a small split does not count as a zero; ``per_class``
    lists every class.  Undefined ratios (no predictions, no support) are 0.
    """
    p, y = _as_arrays(probs, labels)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} probability columns")
    pred = p.argmax(1)
    cm = confusion_counts(y, pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        normalized = np.where(support[:, None] > 0, cm / np.maximum(support[:, None], 1), 0.0)
    present = (support > 0) | (predicted > 0)
    return {
        "n": int(len(y)),
        "classes": list(class_names),
        "accuracy": float(tp.sum() / len(y)),
        "nll": negative_log_likelihood(p, y),
        "macro_f1": float(f1[present].mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
    }


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins ``(lo, hi]`` over [0, 1] (a confidence of exactly 0 goes to the first)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_curve(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> dict[str, list]:
    """Per confidence bin: edges, image count, mean confidence and accuracy (None when empty).

    Confidence is the top-class probability; plotting accuracy against
    confidence gives the reliability diagram (a calibrated model lies on y = x).
    """
    p, y = _as_arrays(probs, labels)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count)],
        "accuracy": [float(a / n) if n else None for a, n in zip(acc_sum, count)],
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> float:
    """``sum_b |B_b|/n * |accuracy(B_b) - confidence(B_b)|`` over equal-width confidence bins."""
    p, y = _as_arrays(probs, labels)
    curve = reliability_curve(p, y, n_bins)
    total = 0.0
    for n, conf, acc in zip(curve["count"], curve["confidence"], curve["accuracy"]):
        if n:
            total += n * abs(acc - conf)
    return float(total / len(y))


def _looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(values.min() >= 0 and values.max() <= 1 and np.allclose(values.sum(1), 1.0, atol=1e-4))


def to_logits(values: Any, kind: str = "auto") -> np.ndarray:
    """Logits from logits (returned as is) or probabilities (their log, which softmax inverts).

    ``kind`` is ``"logits"``, ``"probs"`` or ``"auto"`` (rows of non-negative
    numbers summing to 1 are probabilities).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected an (n, classes) array, got shape {v.shape}")
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind must be 'auto', 'logits' or 'probs', got {kind!r}")
    if kind == "probs" or (kind == "auto" and _looks_like_probabilities(v)):
        return np.log(np.maximum(v, _TINY))
    return v


def softmax(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def apply_temperature(values: Any, temperature: float, kind: str = "auto") -> np.ndarray:
    """Probabilities after dividing the logits by ``temperature`` (argmax never changes)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(to_logits(values, kind) / float(temperature))


def _nll_at(logits: np.ndarray, labels: np.ndarray, beta: float) -> float:
    from scipy.special import logsumexp

    z = beta * logits
    return float((logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(values: Any, labels: Any, kind: str = "auto",
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T`` that minimises validation NLL of ``softmax(logits / T)``.

    Fit on validation data only: fitting on the test split would flatter the
    calibrated scores.  NLL is convex in ``1/T``, so a bounded 1-D search over
    ``1/T`` finds the global minimum; a fit at a bound is logged (e.g. a
    validation split the model gets entirely right pushes ``T`` to its minimum).
    """
    from scipy.optimize import minimize_scalar

    logits = to_logits(values, kind)
    _, y = _as_arrays(softmax(logits), labels)
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ValueError(f"temperature bounds must satisfy 0 < low < 1 < high, got {bounds}")
    res = minimize_scalar(lambda b: _nll_at(logits, y, b), bounds=(1.0 / hi, 1.0 / lo), method="bounded",
                          options={"xatol": 1e-5})
    beta = float(res.x)
    if _nll_at(logits, y, 1.0) <= _nll_at(logits, y, beta):  # never worse than leaving it alone
        beta = 1.0
    temperature = 1.0 / beta
    if not (lo * 1.01 < temperature < hi * 0.99):
        logger.warning("fitted temperature %.3f is at the search bound %s: the validation split is too "
                       "small or too easy to calibrate on", temperature, bounds)
    return temperature


def calibration_report(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS,
                       temperature: Optional[float] = None) -> dict[str, Any]:
    """ECE and reliability curve, plus the same after temperature scaling when ``temperature`` is given."""
    p, y = _as_arrays(probs, labels)
    out: dict[str, Any] = {"n_bins": n_bins, "ece": expected_calibration_error(p, y, n_bins),
                           "reliability": reliability_curve(p, y, n_bins)}
    if temperature is not None:
        cal = apply_temperature(p, temperature, kind="probs")
        out.update({"temperature": float(temperature),
                    "ece_calibrated": expected_calibration_error(cal, y, n_bins),
                    "nll_calibrated": negative_log_likelihood(cal, y),
                    "reliability_calibrated": reliability_curve(cal, y, n_bins)})
    return out


# ----------------------------------------------------------------------------- model-side measurements

def _device_of(module: torch.nn.Module, device: Union[None, str, torch.device]) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def auto_device(name: Optional[str] = None) -> torch.device:
    """``name`` if given, else the GPU when there is one, else the CPU."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict_probabilities(module: torch.nn.Module, dataset: torch.utils.data.Dataset, batch_size: int = 64,
                          tta: bool = False, device: Union[None, str, torch.device] = None,
                          num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (float64, ``(n, classes)``) and labels for every item of ``dataset``.

    Items are ``{"pixel_values", "labels"}`` as :class:`FaceImageDataset` yields.
    ``tta`` averages the probabilities of each image and its horizontal flip
    (faces are left-right symmetric in expression, so the flip is a free second
    opinion).  The module runs on ``device`` (default: where its weights are).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dev = _device_of(module, device)
    module = module.to(dev).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    probs, labels = [], []
    for batch in loader:
        x = batch["pixel_values"].to(dev)
        p = logits_of(module(x)).double().softmax(-1)
        if tta:
            p = 0.5 * (p + logits_of(module(x.flip(-1))).double().softmax(-1))
        probs.append(p.cpu())
        labels.append(torch.as_tensor(batch["labels"]).cpu())
    if not probs:
        raise DatasetError("the dataset to evaluate is empty")
    return torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(np.int64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(module: torch.nn.Module, input_size: int, repeats: int = 20, warmup: int = 3,
                    device: Union[None, str, torch.device] = None) -> dict[str, Any]:
    """Batch-1 inference time: median (and p90) milliseconds per image over ``repeats`` after warm-up.

    The median resists the outliers a busy machine produces; the thread count
    and device are recorded because they change the answer.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} / {warmup}")
    dev = _device_of(module, device)
    module = module.to(dev).eval()
    x = torch.rand(1, 3, input_size, input_size, device=dev)
    for _ in range(warmup):
        module(x)
    _sync(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        _sync(dev)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    return {"latency_ms": statistics.median(times), "latency_p90_ms": p90,
            "repeats": repeats, "warmup": warmup, "device": str(dev), "threads": torch.get_num_threads()}


@torch.inference_mode()
def measure_throughput(module: torch.nn.Module, input_size: int, batch_size: int = 32, repeats: int = 5,
                       warmup: int = 1, device: Union[None, str, torch.device] = None) -> dict[str, Any]:
    """Images per second at ``batch_size`` (total images / total time over ``repeats`` batches)."""
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} / {repeats}")
    dev = _device_of(module, device)
    module = module.to(dev).eval()
    x = torch.rand(batch_size, 3, input_size, input_size, device=dev)
    for _ in range(warmup):
        module(x)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        module(x)
    _sync(dev)
    elapsed = time.perf_counter() - start
    return {"throughput_ips": batch_size * repeats / elapsed, "batch_size": batch_size, "repeats": repeats,
            "device": str(dev), "threads": torch.get_num_threads()}


def _member_dirs(run_dir: Path, spec: dict) -> list[Path]:
    return [Path(m) if Path(m).is_absolute() else run_dir / m for m in spec.get("members", [])]


def run_size_bytes(run_dir: Union[str, Path]) -> int:
    """Bytes of weights on disk: the run's weights file, or the sum over an ensemble's members."""
    run_dir = Path(run_dir)
    spec = runs.read_json(run_dir / runs.CONFIG_FILE)
    if spec.get("model") == "ensemble":
        return sum(run_size_bytes(m) for m in _member_dirs(run_dir, spec))
    weights = run_dir / runs.WEIGHTS_FILE
    if not weights.exists():
        raise runs.RunError(f"{weights} is missing: the run did not finish or was moved")
    return weights.stat().st_size


def model_stats(run: runs.LoadedRun) -> dict[str, Any]:
    size = run_size_bytes(run.path)
    return {"parameters": count_parameters(run.module), "size_bytes": size, "size_mb": size / 2**20}


# ----------------------------------------------------------------------------- run folders and data

def _train_config(spec: dict, run_dir: Path) -> dict:
    """The training config of a run, or of an ensemble's first member (they share the data)."""
    if spec.get("model") == "ensemble":
        members = _member_dirs(run_dir, spec)
        return _train_config(runs.read_json(members[0] / runs.CONFIG_FILE), members[0]) if members else {}
    return dict(spec.get("train_config") or {})


def _face_crop_config(spec: dict, run_dir: Path, input_size: int):
    """The face-crop settings a run was trained with (None if it was trained on whole images)."""
    tc = _train_config(spec, run_dir)
    if not tc.get("face_crop"):
        return None
    from emotion.faces import CropConfig

    return CropConfig(margin=tc.get("face_margin", 0.2), size=max(input_size, 64),
                      on_miss=tc.get("face_on_miss", "whole"))


def _run_order(splits: DatasetSplits, labels: list[str], data_name: str,
               explicit: bool) -> Optional[list[str]]:
    """The data's class names in the run's output order, or None if already in it.

    Classes that do not match raise an error naming both lists and the fix.
    """
    have = [c.lower() for c in splits.classes]
    want = [c.lower() for c in labels]
    if have == want:
        return None
    if sorted(have) == sorted(want):
        return [splits.classes[have.index(c)] for c in want]
    missing = [c for c in labels if c.lower() not in have]
    if missing:
        fix = (f"the data has no folder for {missing}: evaluate on data with these classes, or a run "
               f"trained on {splits.classes}")
    else:
        fix = f"select them with --classes {','.join(labels)}"
    given = " (after --classes)" if explicit else ""
    raise DatasetError(f"class mismatch: the run predicts {labels} but {data_name} has {splits.classes}"
                       f"{given}; {fix}")


def validation_samples(splits: DatasetSplits, train_config: dict) -> tuple[list[Sample], str]:
    """The images a run was validated on: the ``val`` split, else the share of ``train`` it held out.

    Repeats what training did (same exclusions, fraction and seed), so fitting
    on these never touches images the model trained on, nor the test split.
    """
    exclude = train_config.get("exclude_file")
    if exclude and "val" not in splits.splits:
        if Path(exclude).exists():
            splits = splits.exclude(load_exclusions(exclude), only=("train",))
        else:
            logger.warning("the run excluded images listed in %s, which is gone: the validation split "
                           "may differ from the one used in training", exclude)
    fraction = float(train_config.get("val_fraction", 0.1))
    seed = int(train_config.get("seed", 0))
    _, val, source = validation_holdout(splits, fraction, seed)
    return val, source


@dataclass
class EvalData:
    """The images of one split, labelled in the run's class order."""

    splits: DatasetSplits
    split: str
    samples: list[Sample]
    description: str  # e.g. "test split" or "stratified 10% of train (seed 0)"
    spec: str
    notes: list[str] = field(default_factory=list)


def load_eval_data(run: runs.LoadedRun, data: Union[str, Path, DatasetSplits], split: str = "test",
                   classes: Union[None, str, Sequence[str]] = None, seed: Optional[int] = None) -> EvalData:
    """Resolve ``data`` and pick ``split`` for ``run``: classes checked, face crops applied if trained so.

    ``split`` is ``test``, ``train`` or ``val`` (the data's own val split, or
    the validation share of train the run held out), or ``all`` (every image
    of every split: a cross-dataset set that arrives as one folder).  ``seed`` splits an
    unsplit folder 80/20; by default the run's training seed, so the test
    images are the ones training held out.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    wanted = parse_classes(classes)
    if seed is None:  # an unsplit folder must be split as in training, or "test" holds training images
        seed = int(_train_config(run.spec, run.path).get("seed", 0))
    if isinstance(data, DatasetSplits):
        splits, spec = data, data.name
        if wanted:
            splits = _select(splits, wanted)
        order = _run_order(splits, run.labels, spec, explicit=wanted is not None)
        if order is not None:
            splits = _select(splits, order)
    else:
        spec = str(data)
        splits = load_dataset_spec(data, classes=wanted, seed=seed)
        order = _run_order(splits, run.labels, spec, explicit=wanted is not None)
        if order is not None:  # reload in the run's class order: labels and 80/20 split as in training
            splits = load_dataset_spec(data, classes=order, seed=seed)
    crop = _face_crop_config(run.spec, run.path, run.config.input_size)
    notes: list[str] = []
    if crop is not None:
        from emotion.faces import crop_dataset

        needed = ("train", "val") if split == "val" and "val" not in splits.splits else (split,)
        part = DatasetSplits(splits.name, splits.classes,
                             {k: v for k, v in splits.splits.items() if k in needed},
                             splits.source, splits.root, splits.notes)
        cropped, report = crop_dataset(part, crop)
        splits = DatasetSplits(splits.name, splits.classes, {**splits.splits, **cropped.splits},
                               splits.source, splits.root, splits.notes)
        notes.append(f"face crops as in training: {report.summary()}")
    if split == "val":
        samples, description = validation_samples(splits, _train_config(run.spec, run.path))
    elif split == "all":  # a test set that arrives as one folder: none of it lost to an 80/20 split
        samples = [smp for part in splits.splits.values() for smp in part]
        description = f"every image ({len(samples)})"
    else:
        if split not in splits.splits:
            raise DatasetError(f"{spec} has no {split!r} split (it has {sorted(splits.splits)}); "
                               f"pass --split with one of those")
        samples, description = list(splits.splits[split]), f"{split} split"
    if not samples:
        raise DatasetError(f"the {description} of {spec} has no images for classes {splits.classes}")
    trained_on = _train_config(run.spec, run.path).get("data")
    if split in ("train", "all") and trained_on and str(trained_on) == spec:
        notes.append("these are the run's training images: scores are optimistic")
    return EvalData(splits, split, samples, description, spec, notes)


def _select(splits: DatasetSplits, wanted: list[str]) -> DatasetSplits:
    lower = {c.lower(): i for i, c in enumerate(splits.classes)}
    missing = [c for c in wanted if c.lower() not in lower]
    if missing:
        raise DatasetError(f"class(es) {missing} not in {splits.name}; available: {splits.classes}")
    remap = {lower[c.lower()]: j for j, c in enumerate(wanted)}
    new = {k: [Sample(s.path, remap[s.label]) for s in v if s.label in remap]
           for k, v in splits.splits.items()}
    names = [splits.classes[lower[c.lower()]] for c in wanted]
    return DatasetSplits(splits.name, names, new, splits.source, splits.root, list(splits.notes))


def build_eval_dataset(samples: Sequence[Sample], config: ModelConfig,
                       cache: Optional[DecodedImageCache] = None) -> tuple[FaceImageDataset, dict[str, str]]:
    """Eval-mode dataset for a model's preprocessing; unreadable files are dropped and returned."""
    cache = cache if cache is not None else DecodedImageCache(disk_dir=default_cache_dir() / "decoded")
    ds = FaceImageDataset(samples, build_transform(config.preprocess, train=False), cache,
                          decode_size=config.input_size)
    skipped = ds.drop_unreadable()
    if len(ds) == 0:
        raise DatasetError(f"none of the {len(samples)} images could be read")
    return ds, skipped


def _as_run(run: Union[str, Path, runs.LoadedRun]) -> runs.LoadedRun:
    return run if isinstance(run, runs.LoadedRun) else runs.load_run(run)


def load_temperature(run_dir: Union[str, Path]) -> Optional[dict]:
    """The fitted temperature record of a run (``temperature.json``), or None."""
    path = Path(run_dir) / TEMPERATURE_FILE
    if not path.exists():
        return None
    record = runs.read_json(path)
    if not isinstance(record, dict) or not float(record.get("temperature", 0)) > 0:
        raise runs.RunError(f"{path} has no positive 'temperature'; delete it or refit with "
                            "--fit-temperature")
    return record




def _write_into_run(run_dir: Path, relative: str, data: Any) -> Optional[Path]:
    """Store a result in the run folder; a read-only folder (a shipped model) is a warning, not a failure."""
    path = run_dir / relative
    try:
        runs.write_json(path, data)
    except OSError as exc:
        logger.warning("could not save %s (%s); the result is still printed", path, exc)
        return None
    return path


def fit_run_temperature(run: Union[str, Path, runs.LoadedRun], data: Union[str, Path, DatasetSplits],
                        classes: Union[None, str, Sequence[str]] = None, seed: Optional[int] = None,
                        batch_size: int = 64,
                        tta: bool = False, device: Union[None, str, torch.device] = None,
                        cache: Optional[DecodedImageCache] = None, save: bool = True) -> dict[str, Any]:
    """Fit a temperature on the run's validation images and store it as ``temperature.json``."""
    run = _as_run(run)
    ev = load_eval_data(run, data, "val", classes, seed)
    ds, skipped = build_eval_dataset(ev.samples, run.config, cache)
    probs, labels = predict_probabilities(run.module, ds, batch_size, tta, device)
    temperature = fit_temperature(probs, labels, kind="probs")
    record = {
        "temperature": temperature,
        "nll_before": negative_log_likelihood(probs, labels),
        "nll_after": negative_log_likelihood(apply_temperature(probs, temperature, "probs"), labels),
        "ece_before": expected_calibration_error(probs, labels),
        "ece_after": expected_calibration_error(apply_temperature(probs, temperature, "probs"), labels),
        "method": f"bounded 1-D search of validation NLL over 1/T, T in {list(TEMPERATURE_BOUNDS)}",
        "tta": tta,
        "fitted_on": {"data": ev.spec, "root": str(ev.splits.root) if ev.splits.root else None,
                      "split": ev.description, "images": len(ds), "skipped_unreadable": len(skipped)},
        "created": utc_now(),
    }
    logger.info("temperature %.3f on %d validation images (NLL %.4f -> %.4f)", temperature, len(ds),
                record["nll_before"], record["nll_after"])
    if save:
        _write_into_run(run.path, TEMPERATURE_FILE, record)
    return record


def evaluate_run(run: Union[str, Path, runs.LoadedRun], data: Union[str, Path, DatasetSplits],
                 split: str = "test", classes: Union[None, str, Sequence[str]] = None,
                 seed: Optional[int] = None,
                 tta: bool = False, batch_size: int = 64, n_bins: int = DEFAULT_BINS,
                 device: Union[None, str, torch.device] = None, speed: bool = False,
                 latency_repeats: int = 20, throughput_batch: int = 32,
                 cache: Optional[DecodedImageCache] = None, save: bool = True) -> dict[str, Any]:
    """Score a run on one split of ``data``; the result is also stored under ``<run>/evaluations/``.

    The result holds the metrics of :func:`classification_metrics`, calibration
    (ECE, reliability curve, and calibrated ECE when the run has a fitted
    temperature), parameters and size on disk, optionally speed, and which data
    it was measured on.
    """
    run = _as_run(run)
    ev = load_eval_data(run, data, split, classes, seed)
    ds, skipped = build_eval_dataset(ev.samples, run.config, cache)
    start = time.monotonic()
    probs, labels = predict_probabilities(run.module, ds, batch_size, tta, device)
    elapsed = time.monotonic() - start
    temp = load_temperature(run.path)
    notes = list(ev.notes)
    if temp is not None and bool(temp.get("tta", False)) != tta:
        notes.append(f"the temperature was fitted {'with' if temp.get('tta') else 'without'} TTA")
    if temp is not None and (temp.get("fitted_on") or {}).get("split") == ev.description:
        notes.append("the temperature was fitted on these images: the calibrated ECE is optimistic")
    result: dict[str, Any] = {
        "run": {"path": str(run.path), "model": run.spec.get("model"),
                "weights_source": run.spec.get("weights_source"), "input_size": run.config.input_size,
                "labels": list(run.labels)},
        "data": {"spec": ev.spec, "name": ev.splits.name, "source": ev.splits.source,
                 "root": str(ev.splits.root) if ev.splits.root else None, "split": split,
                 "split_source": ev.description, "images": len(ds),
                 "counts": {c: int(n) for c, n in zip(ev.splits.classes,
                                                      np.bincount(labels, minlength=len(run.labels)))},
                 "skipped_unreadable": skipped},
        "tta": tta,
        **classification_metrics(probs, labels, run.labels),
    }
    calibration = calibration_report(probs, labels, n_bins, temp["temperature"] if temp else None)
    result["ece"] = calibration["ece"]
    if temp is not None:
        result["ece_calibrated"] = calibration["ece_calibrated"]
        result["temperature"] = temp["temperature"]
    result["calibration"] = calibration
    result.update(model_stats(run))
    result["eval_seconds"] = round(elapsed, 3)
    if speed:
        size = run.config.input_size
        result["speed"] = {**measure_latency(run.module, size, latency_repeats, device=device),
                           **measure_throughput(run.module, size, throughput_batch, device=device)}
    result["notes"] = notes
    result["created"] = utc_now()
    if save:
        name = f"{slug(ev.splits.name)}-{split}{'-tta' if tta else ''}.json"
        saved = _write_into_run(run.path, f"{EVALUATIONS_DIR}/{name}", result)
        result["saved_to"] = str(saved) if saved else None
    return result


def saved_evaluations(run_dir: Union[str, Path], split: Optional[str] = None) -> list[dict[str, Any]]:
    """The results :func:`evaluate_run` stored under ``<run>/evaluations/``, newest first.

    Each gets ``saved_to`` (its file); ``split`` keeps only results on that split.
    Unreadable files are skipped.
    """
    folder = Path(run_dir) / EVALUATIONS_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            result = runs.read_json(path)
        except runs.RunError:
            logger.warning("skipping unreadable evaluation %s", path)
            continue
        if not isinstance(result, dict) or "confusion_matrix" not in result:
            continue
        if split is not None and (result.get("data") or {}).get("split") != split:
            continue
        out.append({**result, "saved_to": str(path)})
    return sorted(out, key=lambda r: str(r.get("created", "")), reverse=True)


# ----------------------------------------------------------------------------- ensembles

def simplex_grid(members: int, step: float) -> np.ndarray:
    """All weight vectors on the simplex with coordinates in multiples of ``step``."""
    if members < 2:
        raise ValueError(f"need at least 2 members, got {members}")
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.05, 0.1, 0.25), got {step}")
    if math.comb(n + members - 1, members - 1) > 200_000:
        raise ValueError(f"a step of {step} gives too many weightings for {members} members; "
                         "use a larger step")

    def rec(k: int, left: int) -> list[list[int]]:
        if k == 1:
            return [[left]]
        return [[i] + rest for i in range(left + 1) for rest in rec(k - 1, left - i)]

    return np.array(rec(members, n), dtype=np.float64) / n


def fit_ensemble_weights(member_probs: Sequence[np.ndarray], labels: Any, objective: str = "nll",
                         step: float = 0.05) -> dict[str, Any]:
    """Grid search over the weight simplex on validation predictions.

    ``objective`` ``"nll"`` (the default: smooth, so less prone to fitting noise
    on a small split) minimises NLL of the weighted probability average;
    ``"macro_f1"`` maximises macro-F1, ties broken by NLL.
    """
    if objective not in ("nll", "macro_f1"):
        raise ValueError(f"objective must be 'nll' or 'macro_f1', got {objective!r}")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])
    y = np.asarray(labels, dtype=np.int64)
    names = [str(i) for i in range(stack.shape[2])]
    grid = simplex_grid(len(stack), step)

    def score(w: np.ndarray) -> tuple[float, float]:
        p = np.tensordot(w, stack, axes=1)
        nll = negative_log_likelihood(p, y)
        if objective == "nll":
            return (-nll, -nll)
        return (classification_metrics(p, y, names)["macro_f1"], -nll)

    scores = [score(w) for w in grid]
    best = max(range(len(grid)), key=lambda i: scores[i])
    equal = np.full(len(stack), 1.0 / len(stack))
    eq_score = score(equal)

    def readable(s: tuple[float, float]) -> dict[str, float]:
        return {"nll": -s[1], **({"macro_f1": s[0]} if objective == "macro_f1" else {})}

    return {"weights": grid[best].tolist(), "objective": objective,
            "method": f"grid over the weight simplex, step {step} ({len(grid)} weightings)",
            "best": readable(scores[best]), "equal_weights": readable(eq_score)}


def create_ensemble(members: Sequence[Union[str, Path]], output_dir: Union[str, Path],
                    weights: Optional[Sequence[float]] = None,
                    fit_data: Union[None, str, Path, DatasetSplits] = None,
                    classes: Union[None, str, Sequence[str]] = None, seed: Optional[int] = None,
                    objective: str = "nll",
                    step: float = 0.05, batch_size: int = 64, tta: bool = False,
                    device: Union[None, str, torch.device] = None,
                    cache: Optional[DecodedImageCache] = None) -> dict[str, Any]:
    """Save an ensemble run; with ``fit_data`` its weights are fitted on validation images only.

    The fit is recorded in the ensemble's ``config.json`` under ``weights_fit``.
    """
    members = [Path(m) for m in members]
    if len(members) < 2:
        raise ModelError(f"an ensemble needs at least 2 runs, got {len(members)}: pass --runs A,B")
    fit = None
    if fit_data is not None:
        if weights is not None:
            raise ValueError("give either fixed weights or a dataset to fit them on, not both")
        member_probs, labels, first, first_paths = [], None, None, None
        for member in members:
            run = runs.load_run(member)
            ev = load_eval_data(run, fit_data, "val", classes, seed)
            ds, _ = build_eval_dataset(ev.samples, run.config, cache)
            paths = [str(s.path) for s in ds.samples]
            if first is None:
                first, first_paths = ev, paths
            elif paths != first_paths:
                raise DatasetError(f"{member} was validated on other images ({ev.description}) than "
                                   f"{members[0]} ({first.description}): some member trained on the "
                                   "other's validation images. Fit weights for members trained with the "
                                   "same --seed and --val-fraction, or pass fixed --weights")
            p, labels = predict_probabilities(run.module, ds, batch_size, tta, device)
            member_probs.append(p)
        assert first is not None and labels is not None
        fit = fit_ensemble_weights(member_probs, labels, objective, step)
        fit["fitted_on"] = {"data": first.spec, "root": str(first.splits.root) if first.splits.root else None,
                            "split": first.description, "images": int(len(labels)), "tta": tta}
        weights = fit["weights"]
        logger.info("ensemble weights %s (%s)", [round(w, 3) for w in weights], fit["method"])
    out = runs.save_ensemble(output_dir, members, list(weights) if weights is not None else None)
    config = runs.read_json(out / runs.CONFIG_FILE)
    config["weights_fit"] = fit or {"method": "given" if weights is not None else "equal weights"}
    config["created"] = utc_now()
    runs.write_json(out / runs.CONFIG_FILE, config)
    return {"run_dir": str(out), "members": [str(m) for m in members], "weights": config["weights"],
            "weights_fit": config["weights_fit"]}


# ----------------------------------------------------------------------------- text report

def format_report(result: dict[str, Any]) -> str:
    """A readable summary of :func:`evaluate_run`'s result (the CLI prints it)."""
    run, data = result["run"], result["data"]
    counts = ", ".join(f"{c} {n}" for c, n in data["counts"].items())
    lines = [
        f"run       {run['path']} ({run['model']}, {run['input_size']}px, weights: {run['weights_source']})",
        f"data      {data['spec']}: {data['split_source']}, {data['images']} images ({counts})"
        + (", flip TTA" if result["tta"] else ""),
        f"accuracy  {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   "
        f"macro recall {result['macro_recall']:.4f}   NLL {result['nll']:.4f}",
        f"ECE       {result['ece']:.4f} ({result['calibration']['n_bins']} bins)"
        + (f"   calibrated {result['ece_calibrated']:.4f} at T={result['temperature']:.3f}"
           if "ece_calibrated" in result else "   (no fitted temperature: --fit-temperature)"),
        f"model     {result['parameters']:,} parameters, {result['size_mb']:.2f} MB on disk",
    ]
    if "speed" in result:
        s = result["speed"]
        lines.append(f"speed     {s['latency_ms']:.2f} ms/image at batch 1, "
                     f"{s['throughput_ips']:.1f} images/s at batch {s['batch_size']} "
                     f"({s['device']}, {s['threads']} threads)")
    width = max(8, *(len(c) for c in result["classes"]))
    lines += ["", f"{'class':{width}s}  precision  recall     f1  support"]
    for c, m in result["per_class"].items():
        lines.append(f"{c:{width}s}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  "
                     f"{m['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + "  " + " ".join(f"{c[:7]:>7s}" for c in result["classes"])]
    for c, row in zip(result["classes"], result["confusion_matrix"]):
        lines.append(f"{c:{width}s}  " + " ".join(f"{v:7d}" for v in row))
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    if result.get("saved_to"):
        lines.append(f"saved to {result['saved_to']}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_BINS", "EVALUATIONS_DIR", "TEMPERATURE_FILE", "EvalData", "apply_temperature", "auto_device",
    "build_eval_dataset", "calibration_report", "classification_metrics", "confusion_counts",
    "create_ensemble", "evaluate_run", "expected_calibration_error", "fit_ensemble_weights",
    "fit_run_temperature", "fit_temperature", "format_report", "load_eval_data", "load_temperature",
    "measure_latency", "measure_throughput", "model_stats", "negative_log_likelihood",
    "predict_probabilities", "reliability_curve", "run_size_bytes", "saved_evaluations", "simplex_grid",
    "softmax", "to_logits", "validation_samples",
]
