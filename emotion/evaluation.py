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

import hashlib
import logging
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
from emotion.face_crops import crop_dataset
from emotion.faces import crop_config_for
from emotion.fileio import keep_earlier, read_json_or_none, utc_now
from emotion.metrics import (
    DEFAULT_BINS,
    TEMPERATURE_BOUNDS,
    apply_temperature,
    calibration_report,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from emotion.models.registry import ModelConfig, logits_of
from emotion.names import slug
from emotion.onnx_backend import calibrate_int8
from emotion.profiling import device_of, measure_latency, measure_throughput, model_stats

logger = logging.getLogger(__name__)

EVALUATIONS_DIR = "evaluations"
SPLITS = ("test", "val", "train", "all")  # "all": every image, whatever split it is in


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
    dev = device_of(module, device)
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
        seed = int(runs.train_config_of(run.spec, run.path).get("seed", 0))
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
    crop = crop_config_for(runs.train_config_of(run.spec, run.path), run.config.input_size)
    notes: list[str] = []
    if crop is not None:
        needed = ("train", "val") if split == "val" and "val" not in splits.splits else (split,)
        part = DatasetSplits(splits.name, splits.classes,
                             {k: v for k, v in splits.splits.items() if k in needed},
                             splits.source, splits.root, splits.notes)
        cropped, report = crop_dataset(part, crop)
        splits = DatasetSplits(splits.name, splits.classes, {**splits.splits, **cropped.splits},
                               splits.source, splits.root, splits.notes)
        notes.append(f"face crops as in training: {report.summary()}")
    if split == "val":
        samples, description = validation_samples(splits, runs.train_config_of(run.spec, run.path))
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
    trained_on = runs.train_config_of(run.spec, run.path).get("data")
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
                       cache: Optional[DecodedImageCache] = None,
                       grayscale: bool = False) -> tuple[FaceImageDataset, dict[str, str]]:
    """Eval-mode dataset for a model's preprocessing; unreadable files are dropped and returned.

    ``grayscale``: the run was trained on grey faces, so colour images are greyed as prediction greys them.
    """
    cache = cache if cache is not None else DecodedImageCache(disk_dir=default_cache_dir() / "decoded")
    ds = FaceImageDataset(samples, build_transform(config.preprocess, train=False, grayscale=grayscale), cache,
                          decode_size=config.input_size)
    skipped = ds.drop_unreadable()
    if len(ds) == 0:
        raise DatasetError(f"none of the {len(samples)} images could be read")
    return ds, skipped


def _as_run(run: Union[str, Path, runs.LoadedRun]) -> runs.LoadedRun:
    return run if isinstance(run, runs.LoadedRun) else runs.load_run(run)


def _evaluation_file_name(run_dir: Path, data_name: str, root: Optional[str], split: str, tta: bool) -> str:
    """``<data>-<split>[-tta].json``; when that file holds another folder's result of the same name
    (two ``test`` folders, say), ``<data>-<hash of the folder>-<split>.json``, so neither replaces the other.

    A re-evaluation of the same folder replaces its own earlier result (it is regenerated, not lost).
    """
    tail = f"{split}{'-tta' if tta else ''}.json"
    plain = f"{slug(data_name)}-{tail}"
    held = read_json_or_none(run_dir / EVALUATIONS_DIR / plain)
    held_root = ((held or {}).get("data") or {}).get("root") if isinstance(held, dict) else None
    if held is None or root is None or held_root is None or _same_folder(held_root, root):
        return plain
    digest = hashlib.sha1(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{slug(data_name)}-{digest}-{tail}"


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b


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
    grey = runs.trained_on_grayscale(run.spec, run.path)
    ds, skipped = build_eval_dataset(ev.samples, run.config, cache, grey)
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
        _keep_one_made_on_other_images(run.path / runs.TEMPERATURE_FILE, "fitted_on", record["fitted_on"])
        _write_into_run(run.path, runs.TEMPERATURE_FILE, record)
    return record


def _keep_one_made_on_other_images(path: Path, key: str, made_on: dict) -> None:
    """Move a stored fit (``temperature.json``, ``int8_calibration.json``) aside when its ``key`` record
    says it was made on other images: to ``NAME.previous-<time>.json`` (:func:`keep_earlier`).

    Why: such a file changes every prediction the run makes; one made on other data
    (another dataset, another seed) is a choice someone made, so a new fit keeps it
    beside itself instead of erasing it.  A refit on the same images replaces it.
    """
    old = read_json_or_none(path)
    if not isinstance(old, dict) or old.get(key) == made_on:
        return
    try:
        keep_earlier(path)  # it says where the earlier one went
    except OSError as exc:  # a read-only shipped model: the write after this warns as well
        logger.debug("kept %s in place (%s)", path, exc)


def calibrate_run_int8(run: Union[str, Path, runs.LoadedRun], data: Union[str, Path, DatasetSplits],
                       classes: Union[None, str, Sequence[str]] = None, images: int = 256, seed: int = 0,
                       cache: Optional[DecodedImageCache] = None, save: bool = True) -> dict[str, Any]:
    """Measure the activation ranges ``--backend onnx-int8`` needs; stored as ``int8_calibration.json``.

    The images are a random ``images`` of the run's training images, its validation
    share left out (so validation still judges the 8-bit model fairly), preprocessed
    exactly as prediction preprocesses a face.
    """
    if images < 1:
        raise ValueError(f"images={images}: use at least 1 (256 is plenty)")
    run = _as_run(run)
    train = load_eval_data(run, data, "train", classes)
    held_out = {str(smp.path) for smp in load_eval_data(run, data, "val", classes).samples}
    pool = [smp for smp in train.samples if str(smp.path) not in held_out]
    if not pool:
        raise DatasetError(f"{train.spec} has no training images outside the run's validation share")
    picked = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:images]]
    ds, skipped = build_eval_dataset(picked, run.config, cache, runs.trained_on_grayscale(run.spec, run.path))
    batch = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    record = calibrate_int8(run.module.float().eval(), run.config.input_size, batch)
    root = str(train.splits.root) if train.splits.root else None
    record["measured_on"] = {"data": train.spec, "root": root,
                             "split": "train, the validation share left out", "images": len(ds),
                             "seed": seed, "skipped_unreadable": len(skipped)}
    record["created"] = utc_now()
    logger.info("int8 activation ranges of %d tensors measured on %d training images",
                len(record["ranges"].get("data", record["ranges"])), len(ds))
    if save:
        _keep_one_made_on_other_images(run.path / runs.INT8_CALIBRATION_FILE, "measured_on",
                                       record["measured_on"])
        _write_into_run(run.path, runs.INT8_CALIBRATION_FILE, record)
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
    grey = runs.trained_on_grayscale(run.spec, run.path)
    ds, skipped = build_eval_dataset(ev.samples, run.config, cache, grey)
    start = time.monotonic()
    probs, labels = predict_probabilities(run.module, ds, batch_size, tta, device)
    elapsed = time.monotonic() - start
    temp = runs.load_temperature(run.path)
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
                 "skipped_unreadable": skipped, "greyed": grey},
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
        name = _evaluation_file_name(run.path, ev.splits.name, result["data"]["root"], split, tta)
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
