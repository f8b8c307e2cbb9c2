"""Training on the Hugging Face ``Trainer``: one config, one run folder, resumable.

The engine (``transformers.Trainer``) owns the loop, evaluation, checkpoint
rotation, early stopping, distributed launch (``torchrun``) and tracker
integrations; this module only supplies what is specific to emotion
classifiers: class-weighted, label-smoothed cross-entropy, the data pipeline,
CPU speed settings, and a run folder the app can follow (``progress.jsonl``,
``status.json``) and rebuild the model from (``emotion.runs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from emotion import paths, runs
from emotion.data.cache import DecodedImageCache
from emotion.data.dataset import FaceImageDataset, balanced_class_weights
from emotion.data.sources import (
    DatasetError,
    DatasetSplits,
    default_cache_dir,
    load_dataset_spec,
    load_exclusions,
    validation_holdout,
)
from emotion.config import TrainConfig
from emotion.data.transforms import build_transform
from emotion.face_crops import crop_dataset
from emotion.faces import crop_config_for
from emotion.fileio import unused_path, utc_now, utc_stamp
from emotion.models import create_model
from emotion.models.registry import count_parameters, logits_of
from emotion.models.weights import SCRATCH
from emotion.progress import SuspensionClock
from emotion.run_files import training_target_problem

logger = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = paths.DEFAULT_RUNS_DIR  # $EMOTION_RUNS_DIR overrides it (emotion.paths.runs_dir)
SCRATCH_LR = 1e-3


def cpu_supports_bf16() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compute_metrics(eval_pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}


def _collate(channels_last: bool):
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([it["pixel_values"] for it in items])
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return {"pixel_values": pixels, "labels": torch.tensor([it["labels"] for it in items])}
    return collate


def _make_trainer_class():
    from transformers import Trainer

    class EmotionTrainer(Trainer):
        """Trainer whose loss is class-weighted, label-smoothed cross-entropy on plain logits,
        plus, with a ``teacher``, Hinton et al.'s distillation term on the same augmented batch."""

        def __init__(self, *args: Any, class_weights: Optional[torch.Tensor] = None,
                     label_smoothing: float = 0.0, teacher: Optional["Teacher"] = None,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.class_weights = class_weights
            self.label_smoothing = label_smoothing
            self.teacher = teacher

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = model(inputs["pixel_values"])
            weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
            loss = F.cross_entropy(logits.float(), inputs["labels"], weight=weight,
                                   label_smoothing=self.label_smoothing)
            if self.teacher is not None and model.training:  # validation scores the labels alone
                loss = self.teacher.blend(loss, logits.float(), inputs["pixel_values"])
            return (loss, {"logits": logits}) if return_outputs else loss

    return EmotionTrainer


class Teacher:
    """A trained run whose softened probabilities the student also learns (knowledge distillation).

    The student's normalised batch is mapped back to [0, 1] images and
    re-prepared for the teacher (its own input size, mean and std), so a
    teacher trained at another resolution, or an ensemble, can teach.
    """

    def __init__(self, run_dir: Union[str, Path], labels: list[str], student_preprocess: Any,
                 weight: float, temperature: float) -> None:
        loaded = runs.load_run(run_dir)
        if list(loaded.labels) != list(labels):
            raise DatasetError(f"the teacher {run_dir} predicts {loaded.labels}, the run trains {labels}: "
                               "distillation needs the same classes in the same order")
        self.module = loaded.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.weight, self.temperature = float(weight), float(temperature)
        self.size = loaded.config.input_size
        self._student = (torch.tensor(student_preprocess.mean).view(1, 3, 1, 1),
                         torch.tensor(student_preprocess.std).view(1, 3, 1, 1))
        self._teacher = (torch.tensor(loaded.config.mean).view(1, 3, 1, 1),
                         torch.tensor(loaded.config.std).view(1, 3, 1, 1))

    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for a batch prepared for the student."""
        self.module.to(pixel_values.device)
        (sm, ss), (tm, ts) = [(m.to(pixel_values.device), s.to(pixel_values.device))
                              for m, s in (self._student, self._teacher)]
        images = pixel_values.float() * ss + sm
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                   antialias=True)
        return logits_of(self.module((images - tm) / ts)).float()

    def blend(self, label_loss: torch.Tensor, student_logits: torch.Tensor,
              pixel_values: torch.Tensor) -> torch.Tensor:
        """``(1 - w) * label loss + w * T^2 * KL(teacher || student)`` at temperature T."""
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(self.logits(pixel_values) / t, -1),
                        reduction="batchmean", log_target=True) * (t * t)
        return (1.0 - self.weight) * label_loss + self.weight * soft


def _progress_callback(run_dir: Path):
    import json

    from transformers import TrainerCallback

    class ProgressStream(TrainerCallback):
        """Appends one JSON line per log/eval event to ``progress.jsonl`` (rank 0 only)."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.path = run_dir / runs.PROGRESS_FILE

        def _write(self, state, **payload: Any) -> None:
            if not state.is_world_process_zero:
                return
            elapsed = time.monotonic() - self.start
            done = max(state.global_step, 1)
            record = {"time": utc_now(),
                      "step": state.global_step, "max_steps": state.max_steps,
                      "epoch": round(state.epoch or 0.0, 4), "elapsed_s": round(elapsed, 1),
                      "eta_s": round(elapsed / done * max(state.max_steps - state.global_step, 0), 1),
                      **payload}
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.monotonic()
            self._write(state, event="start")

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs:
                self._write(state, event="train", loss=logs["loss"],
                            learning_rate=logs.get("learning_rate"))

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            self._write(state, event="eval", **{k: v for k, v in (metrics or {}).items()
                                                if isinstance(v, (int, float))})

    return ProgressStream()


@dataclass
class PreparedData:
    splits: DatasetSplits
    train: FaceImageDataset
    val: FaceImageDataset
    test: Optional[FaceImageDataset]
    skipped: dict[str, str]
    val_source: str
    face_report: Optional[dict] = None
    grayscale: bool = False


def prepare_data(config: TrainConfig, splits: DatasetSplits, input_size: int, preprocess) -> PreparedData:
    """Exclude, split and decode the data once; unreadable files are skipped and reported."""
    face_report = None
    crop = crop_config_for(vars(config), input_size)  # the same rule evaluation and prediction apply
    if crop is not None:
        splits, face_report = crop_dataset(splits, crop)
        logger.info("face crops: %s", face_report.summary())
    if config.exclude_file:
        splits = splits.exclude(load_exclusions(config.exclude_file), only=("train",))
    train_samples, val_samples, val_source = validation_holdout(splits, config.val_fraction, config.seed)
    test_samples = splits.splits.get("test")
    cache = DecodedImageCache(disk_dir=default_cache_dir() / "decoded")
    train_tf = build_transform(preprocess, config.augmentation, train=True)
    eval_tf = build_transform(preprocess, train=False)
    train = FaceImageDataset(train_samples, train_tf, cache, decode_size=input_size)
    val = FaceImageDataset(val_samples, eval_tf, cache, decode_size=input_size)
    test = FaceImageDataset(test_samples, eval_tf, cache, decode_size=input_size) if test_samples else None
    skipped: dict[str, str] = {}
    for ds in (train, val, test):
        if ds is not None:
            skipped.update(ds.drop_unreadable())
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(f"not enough readable images to train: {len(train)} train, {len(val)} validation")
    skipped.update({d["file"]: d["error"] for d in splits.skipped})  # pipes, devices, link loops
    # judged before training (it ignores unreadable headers), so nothing after training can fail on it
    return PreparedData(splits, train, val, test, skipped, val_source,
                        face_report.to_dict() if face_report else None, splits.is_grayscale())


TRAIN_CONFIG_FILE = "train_config.json"
# Changing these between an interruption and its resume would load checkpoints into another model
# or continue on other data.
_RESUME_KEYS = ("model", "data", "classes", "image_size", "batch_size", "seed", "pretrained", "from_scratch")


def _check_resumable(run_dir: Path, config: TrainConfig) -> None:
    path = run_dir / TRAIN_CONFIG_FILE
    if not path.exists():
        return
    stored = runs.read_json(path)
    changed = {k: (stored.get(k), getattr(config, k)) for k in _RESUME_KEYS if stored.get(k) != getattr(config, k)}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{run_dir} holds checkpoints of a run with other settings ({detail}); "
                         "use another --output-dir, or --no-resume to start over")


def _step_of(checkpoint: Optional[str]) -> Optional[int]:
    match = re.search(r"checkpoint-(\d+)$", checkpoint or "")
    return int(match.group(1)) if match else None


def _write_status(run_dir: Path, state: str, **extra: Any) -> None:
    runs.write_json(run_dir / runs.STATUS_FILE, {"state": state, "pid": os.getpid(), "host": platform.node(),
                                                 "time": utc_now(), **extra})


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train(config: TrainConfig, extra_callbacks: Optional[list] = None) -> dict[str, Any]:
    """Train one run; returns the final metrics (also in ``<run>/metrics.json``).

    ``extra_callbacks`` are ``transformers.TrainerCallback`` objects (the app's
    stop button, tests that simulate an interruption).
    """
    run_dir = config.run_dir
    created = not run_dir.exists()
    if not created:
        check_run_folder(run_dir, overwrite=config.overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_run_folder(run_dir):
        if _is_main_process():
            _write_status(run_dir, "running")
        try:
            return _train(config, run_dir, extra_callbacks or [])
        except BaseException as exc:
            if _is_main_process():
                if created and not _holds_results(run_dir) and not isinstance(exc, KeyboardInterrupt):
                    _remove_own_files(run_dir)  # e.g. offline Hub: no empty "failed" folder is left
                else:
                    state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                    _write_status(run_dir, state, error=f"{type(exc).__name__}: {exc}")
            raise


# Files this module writes before any result exists; removed again when such a run fails at once.
_EARLY_FILES = (runs.STATUS_FILE, runs.RUN_LOCK_FILE, runs.PROGRESS_FILE, runs.TRAIN_CONFIG_FILE)


def check_run_folder(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse to train into ``run_dir`` when that would replace a completed run or mix with other files.

    The rules are :func:`emotion.run_files.training_target_problem`'s (the job queue asks them too).
    """
    problem = training_target_problem(run_dir, overwrite)
    if problem:
        raise runs.RunError(problem)


# what a finished run leaves besides its checkpoints; --overwrite moves these aside before training again
REPLACED_RESULTS = (runs.WEIGHTS_FILE, runs.CONFIG_FILE, runs.LABELS_FILE, runs.METRICS_FILE,
                    runs.HISTORY_FILE, runs.TEMPERATURE_FILE, runs.PROGRESS_FILE, runs.EXCLUSIONS_COPY_FILE,
                    runs.INT8_CALIBRATION_FILE, "evaluations", "README.md")


def set_aside_results(run_dir: Path) -> Optional[Path]:
    """Move a replaced run's results into ``run_dir/previous-<UTC time>/`` and return that folder.

    Why: ``--overwrite`` trains the folder again, and anything left in place
    would describe the old model (its temperature would even be applied to the
    new weights); deleting them would lose the old model if the new training
    fails or disappoints.
    """
    present = [run_dir / name for name in REPLACED_RESULTS if (run_dir / name).exists()]
    if not present:
        return None
    aside = unused_path(run_dir / f"previous-{utc_stamp()}")
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    logger.warning("--overwrite: the earlier run's results (%s) were moved to %s",
                   ", ".join(p.name for p in present), aside)
    return aside


def _holds_results(run_dir: Path) -> bool:
    """Whether a failed run left anything worth keeping (checkpoints, weights, metrics, a log)."""
    return any((run_dir / name).exists() for name in (
        "checkpoints", runs.WEIGHTS_FILE, runs.METRICS_FILE, runs.CONFIG_FILE, runs.TRAIN_LOG_FILE))


def _remove_own_files(run_dir: Path) -> None:
    """Delete the files this module wrote into a folder it created, then the folder if it is empty."""
    for name in _EARLY_FILES:
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:  # something else is in it: leave it all
        logger.debug("kept %s: not empty", run_dir)


_CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")
# the file the Trainer writes last into a checkpoint: a checkpoint without it was cut off while being saved
_CHECKPOINT_COMPLETE_FILE = "trainer_state.json"


def last_complete_checkpoint(ckpt_dir: Path) -> Optional[str]:
    """The newest checkpoint that was saved in full; newer, partly written ones are moved aside.

    Why: a run stopped (Stop button, Ctrl-C, a full disk) while the Trainer
    wrote ``checkpoint-N`` leaves a folder without ``trainer_state.json``;
    resuming from it fails, and every later resume would too.  It is renamed
    ``incomplete-checkpoint-N`` (kept, not deleted) and the run resumes from the
    checkpoint before it.
    """
    if not ckpt_dir.is_dir():
        return None
    found = sorted(((int(c.name.split("-")[1]), c) for c in ckpt_dir.iterdir()
                    if _CHECKPOINT_NAME.fullmatch(c.name) and c.is_dir()), reverse=True)
    for _, folder in found:
        if (folder / _CHECKPOINT_COMPLETE_FILE).is_file():
            return str(folder)
        aside = unused_path(folder.with_name(f"incomplete-{folder.name}"))
        folder.rename(aside)
        logger.warning("%s was cut off while being saved (no %s): moved it to %s and resuming from the "
                       "checkpoint before it", folder, _CHECKPOINT_COMPLETE_FILE, aside.name)
    return None


def remove_checkpoints(ckpt_dir: Path) -> None:
    """Delete the Trainer's ``checkpoint-N`` folders in ``ckpt_dir``, and ``ckpt_dir`` once it is empty.

    Nothing else is touched: a file a user put there, or a folder of another
    name, stays (and keeps ``ckpt_dir``).
    """
    if not ckpt_dir.is_dir() or ckpt_dir.is_symlink():
        return
    for child in ckpt_dir.iterdir():
        if _CHECKPOINT_NAME.fullmatch(child.name) and child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
    try:
        ckpt_dir.rmdir()
    except OSError:
        logger.info("kept %s: it holds files that are not training checkpoints", ckpt_dir)


RUN_LOCK_FILE = runs.RUN_LOCK_FILE


@contextlib.contextmanager
def _exclusive_run_folder(run_dir: Path) -> Iterator[None]:
    """One training process per run folder: a second one (another terminal, another browser tab)
    is refused before it touches anything.  The OS releases the lock when the holder exits, even
    after a crash, so no stale lock survives.  Under torchrun only rank 0 holds it."""
    if not _is_main_process():
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single use is the user's care
        yield
        return
    with open(run_dir / RUN_LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise runs.RunError(f"{run_dir} is being trained by {holder} right now; wait for it to finish, "
                               f"stop it, or train into another --output-dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_trained(run_dir: Path, built: Any, model_cfg: Any, labels: list[str], config: TrainConfig,
                  data: PreparedData, use_bf16: bool, on_cuda: bool) -> None:
    """Write the kept weights with the config and labels that rebuild them (``emotion.runs.load_run``)."""
    runs.save_model(run_dir, built.module, model_cfg, labels, built.weights, extra={
        "train_config": config.to_dict(),
        "data": {**data.splits.describe(), "grayscale": data.grayscale,
                 "train_images": len(data.train),
                 "val_images": len(data.val),
                 "test_images": len(data.test) if data.test else 0,
                 "val_source": data.val_source, "skipped_unreadable": data.skipped,
                 "face_crop": data.face_report},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "cuda": torch.cuda.get_device_name(0) if on_cuda else None,
                        "bf16": use_bf16},
        "created": utc_now(),
    })


def _train(config: TrainConfig, run_dir: Path, extra_callbacks: list) -> dict[str, Any]:
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    set_seed(config.seed)
    ckpt_dir = run_dir / "checkpoints"
    replacing = config.overwrite and (run_dir / runs.METRICS_FILE).exists()  # a completed run: start over
    if replacing:
        set_aside_results(run_dir)
    last = last_complete_checkpoint(ckpt_dir) if (config.resume and not replacing) else None
    if last:
        _check_resumable(run_dir, config)
        logger.info("resuming from %s", last)
    splits = load_dataset_spec(config.data, classes=config.classes or None, seed=config.seed)
    labels = list(splits.classes)
    if len(labels) < 2:
        raise DatasetError(f"{config.data} has {len(labels)} class ({', '.join(labels) or 'none'}); a classifier "
                          f"needs at least two class folders (e.g. train/happy and train/sad)")
    pretrained: Any = False if config.from_scratch else (True if config.pretrained == "auto" else config.pretrained)
    extra_kw = {"labels": labels} if config.model == "hf_vit" else {}
    built = create_model(config.model, len(labels), pretrained=pretrained,
                         input_size=config.image_size, **extra_kw)
    model_cfg = built.config
    logger.info("training %s at %d px from %s", config.model, model_cfg.input_size, built.weights)
    data = prepare_data(config, splits, model_cfg.input_size, model_cfg.preprocess)
    on_cuda = torch.cuda.is_available()
    # On CPU, bf16 autocast speeds up the transformer's matmuls but slows depthwise/small
    # convolutions (benchmarks/train_speed.py: lite0 46 vs 92 img/s), so "auto" uses it for ViTs only.
    use_bf16 = config.bf16 if config.bf16 is not None else (
        on_cuda or (cpu_supports_bf16() and model_cfg.family == "vit"))
    # channels-last inputs make oneDNN pick its fast NHWC convolutions; the weights stay
    # contiguous so checkpoints serialise as they are
    channels_last = model_cfg.family == "cnn"
    weights = balanced_class_weights(data.train.labels, len(labels)) if config.class_weights else None

    learning_rate = config.learning_rate or (
        model_cfg.finetune_lr if built.weights != SCRATCH else SCRATCH_LR)
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size * 2,
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.scheduler,
        eval_strategy="epoch" if config.max_steps <= 0 else "steps",
        save_strategy="epoch" if config.max_steps <= 0 else "steps",
        eval_steps=max(1, config.max_steps // 2) if config.max_steps > 0 else None,
        save_steps=max(1, config.max_steps // 2) if config.max_steps > 0 else None,
        logging_steps=max(1, min(50, len(data.train) // config.batch_size // 4 or 1)),
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=config.metric,
        greater_is_better=True,
        report_to=[] if config.report_to == "none" else [config.report_to],
        run_name=run_dir.name,
        seed=config.seed,
        data_seed=config.seed,
        bf16=use_bf16,
        use_cpu=not on_cuda,
        dataloader_num_workers=config.num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        ddp_backend="gloo" if (not on_cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1) else None,
        disable_tqdm=False,
    )
    callbacks = [_progress_callback(run_dir), *extra_callbacks]
    if config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _make_trainer_class()(
        model=built.module, args=args, train_dataset=data.train, eval_dataset=data.val,
        data_collator=_collate(channels_last), compute_metrics=compute_metrics, callbacks=callbacks,
        class_weights=weights, label_smoothing=config.label_smoothing,
        teacher=(Teacher(config.distill_from, labels, model_cfg.preprocess, config.distill_weight,
                         config.distill_temperature) if config.distill_from else None),
    )
    if trainer.is_world_process_zero():
        runs.write_json(run_dir / TRAIN_CONFIG_FILE, config.to_dict())
        excluded = Path(config.exclude_file) if config.exclude_file else None
        if excluded is not None and excluded.is_file() and not last:
            # the list may grow or vanish later (the EDA page adds to it); evaluation, calibration and
            # ensemble fits must find the validation images this training held out, so keep it as read
            runs.write_json(run_dir / runs.EXCLUSIONS_COPY_FILE, runs.read_json(excluded))
    start = time.monotonic()
    with SuspensionClock() as suspension:
        result = trainer.train(resume_from_checkpoint=last)
    train_time = time.monotonic() - start
    if trainer.is_world_process_zero():
        # the weights first: nothing that runs after training (evaluation, reports) can lose them
        _save_trained(run_dir, built, model_cfg, labels, config, data, use_bf16, on_cuda)
    val_metrics = trainer.evaluate(data.val, metric_key_prefix="val")
    test_metrics = (trainer.evaluate(data.test, metric_key_prefix="test")
                    if (config.evaluate_test and data.test is not None) else None)
    if not trainer.is_world_process_zero():
        return {}
    steps = trainer.state.global_step
    # the Trainer's images/s counts the time the process was suspended as training time: taken out
    train_rate = runs.running_rate(result.metrics.get("train_samples_per_second", 0.0),
                                   result.metrics.get("train_runtime"), suspension.suspended_s)
    metrics = {
        "val": {k.removeprefix("val_"): v for k, v in val_metrics.items()},
        "val_source": data.val_source,
        "test": {k.removeprefix("test_"): v for k, v in test_metrics.items()} if test_metrics else None,
        "train_time_s": round(train_time, 1),
        # wall time the process spent stopped (SIGSTOP, a paused VM) inside train_time_s
        "suspended_s": round(suspension.suspended_s, 1),
        "train_images_per_second": round(train_rate, 1),
        "steps": steps,
        "epochs_completed": round(trainer.state.epoch or 0, 3),
        # the step whose weights were kept (model.safetensors); the checkpoint folders are rotated away
        "best_step": _step_of(trainer.state.best_model_checkpoint),
        "best_metric": trainer.state.best_metric,
        "resumed_from": last,
        "parameters": count_parameters(built.module),
        "learning_rate": learning_rate,
    }
    runs.write_json(run_dir / runs.HISTORY_FILE, trainer.state.log_history)
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    if not config.keep_checkpoints:
        remove_checkpoints(ckpt_dir)
    _write_status(run_dir, "completed", metrics={"val": metrics["val"], "test": metrics["test"]})
    return metrics
