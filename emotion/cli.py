"""Command-line interface: ``python -m emotion <command> ...``.

Each command lives in a ``_cmd_<name>`` function registered in ``COMMANDS``;
user errors (bad paths, unreadable data, wrong class names) end with a
one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from emotion.data.sources import DatasetError
from emotion.fileio import keep_earlier
from emotion.images import ImageLoadError

logger = logging.getLogger("emotion")



class ConfigError(ValueError):
    """Invalid command-line options."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from emotion.faces import FaceDetectionError
    from emotion.models import ModelError

    return (DatasetError, ImageLoadError, ModelError, ConfigError, FileNotFoundError, NotADirectoryError,
            FaceDetectionError)


def _add_data_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    help_data = "a class-folder dataset path, 'synthetic', or 'hf:<dataset id>'"
    if positional:
        p.add_argument("data", help=help_data)
    else:
        p.add_argument("--data", required=True, help=help_data)
    p.add_argument("--classes", default=None,
                   help="comma-separated subset of class folders, e.g. angry,happy,sad (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the 80/20 split of an unsplit folder")


def _cmd_audit(args: argparse.Namespace) -> int:
    from emotion.audit import run_audit_command

    return run_audit_command(args)


def _setup_audit(p: argparse.ArgumentParser) -> None:
    _add_data_args(p, positional=True)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--near-distance", type=int, default=4,
                   help="max Hamming distance between 64-bit perceptual hashes for near duplicates")
    p.add_argument("--blank-std", type=float, default=5.0,
                   help="flag images whose pixel standard deviation (0-255 scale) is below this as blank")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes for large datasets (default: CPU count, at most 8)")


class _LoadTrainConfigFile(argparse.Action):
    """``--config FILE``: set every field the JSON file names; flags after it override them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object,
                 option_string: Optional[str] = None) -> None:
        import dataclasses
        import json

        from emotion.config import TrainConfig

        try:
            data = json.loads(Path(str(value)).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--config {value}: cannot read a JSON object from it ({exc})")
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(data) - names) if isinstance(data, dict) else None
        if unknown is None or unknown:
            parser.error(f"--config {value}: expected a JSON object of TrainConfig fields"
                         + (f"; unknown field(s) {unknown}" if unknown else ""))
        for key, item in data.items():
            setattr(namespace, key, item)


def _setup_train(p: argparse.ArgumentParser) -> None:
    """``p`` is the ``transformers.HfArgumentParser`` of :class:`TrainConfig` (see :func:`build_parser`)."""
    p.add_argument("--config", action=_LoadTrainConfigFile, metavar="FILE", default=argparse.SUPPRESS,
                   help="a JSON object of these fields (the Train page's job queue writes one); flags after "
                        "it override its values")


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from emotion.config import TrainConfig
    from emotion.training import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    metrics = train(config)
    if metrics:
        print(json.dumps({"run_dir": str(config.run_dir), "val": metrics["val"], "test": metrics["test"]},
                         indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from emotion.models import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        print(f"{name:20s} {cfg.family:4s} {cfg.input_size:4d}px  weights: {' -> '.join(cfg.weight_sources)}")
    return 0


def _setup_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help="folder of run folders (default: $EMOTION_RUNS_DIR or "
                                                     "checkpoints/runs)")
    p.add_argument("--json", action="store_true", help="one JSON object per run")


def _cmd_runs(args: argparse.Namespace) -> int:
    import json

    from emotion.runs import list_runs

    listed = list_runs(args.runs_dir)
    for run in listed:
        val = ((run.get("metrics") or {}).get("val") or {}).get("accuracy")
        if args.json:
            print(json.dumps({k: run[k] for k in ("name", "state", "model", "input_size", "ready", "error")}
                             | {"path": str(run["path"]), "val_accuracy": val}))
            continue
        score = f"val {val:.1%}" if isinstance(val, (int, float)) else "val -"
        error = f"  ({run['error']})" if run.get("error") and run["state"] != "completed" else ""
        print(f"{run['name']:40s} {run['state']:11s} {run['model'] or '-':20s} {score}{error}")
    if not listed and not args.json:
        print("no runs yet: python -m emotion train --help")
    return 0


def _comma_list(text: Optional[str]) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _setup_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True,
                   help="run folder (a trained run or an ensemble), or a shipped model's name: default, fer7")
    _add_data_args(p)
    p.set_defaults(seed=None)  # None: split an unsplit folder with the run's training seed
    p.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                   help="split to score; 'val' is the data's val split, else the share of train the run "
                        "held out; 'all' is every image (a cross-dataset set that is one folder)")
    p.add_argument("--tta", action="store_true",
                   help="average each image's probabilities with its mirror image's")
    p.add_argument("--fit-temperature", action="store_true",
                   help="first fit a temperature on the run's validation images (saved in the run folder as "
                        "temperature.json) so calibrated ECE is reported")
    p.add_argument("--bins", type=int, default=15, help="confidence bins for ECE and the reliability curve")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--speed", action="store_true", help="also measure batch-1 latency and throughput")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: GPU if there is one)")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=None,
                   help="store the result under RUN/evaluations/ (default: yes, except for the shipped "
                        "model, whose folder is part of the repository)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from emotion import paths
    from emotion.evaluation import evaluate_run, fit_run_temperature
    from emotion.profiling import auto_device
    from emotion.reports import format_report
    from emotion.inference import resolve_run
    from emotion.runs import load_run

    if args.bins < 1 or args.batch_size < 1:
        raise ConfigError(f"--bins and --batch-size must be at least 1, got {args.bins} / {args.batch_size}")
    run = load_run(resolve_run(args.run).path)  # a folder, or a shipped model's name (default, fer7)
    device = auto_device(args.device)
    if args.fit_temperature:
        fit_run_temperature(run, args.data, classes=args.classes, seed=args.seed, batch_size=args.batch_size,
                            tta=args.tta, device=device, save=True)
    save = args.save
    if save is None:  # evaluating a shipped model must not leave files in the repository
        save = not paths.is_shipped_model(run.path)
    result = evaluate_run(run, args.data, split=args.split, classes=args.classes, seed=args.seed,
                          tta=args.tta, batch_size=args.batch_size, n_bins=args.bins, device=device,
                          speed=args.speed, save=save)
    print(json.dumps(result, indent=2, default=str) if args.json else format_report(result))
    return 0


def _setup_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", required=True, help="comma-separated member run folders (at least 2)")
    p.add_argument("--output-dir", required=True, help="folder for the ensemble run")
    p.add_argument("--weights", default=None, help="fixed member weights, e.g. 0.7,0.3 (default: equal)")
    p.add_argument("--fit-weights", action="store_true",
                   help="fit member weights on validation images of --data (never the test split)")
    p.add_argument("--data", default=None,
                   help="dataset for --fit-weights: folder path, 'synthetic' or 'hf:<id>'")
    p.add_argument("--classes", default=None, help="comma-separated class subset of --data (default: all)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for the 80/20 split of an unsplit folder (default: the members' training seed)")
    p.add_argument("--objective", default="nll", choices=("nll", "macro_f1"),
                   help="what --fit-weights optimises on validation images")
    p.add_argument("--step", type=float, default=0.05, help="--fit-weights grid step on the weight simplex")
    p.add_argument("--tta", action="store_true", help="fit on flip-averaged predictions")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda ... (default: GPU if there is one)")
    p.add_argument("--pack", action="store_true",
                   help="copy the members into OUTPUT_DIR/members/, so the ensemble is one self-contained "
                        "folder that can be moved or shipped")
    p.add_argument("--half", action="store_true",
                   help="with --pack: store the copied weights as float16 (half the size; probabilities "
                        "move by about 1e-3; loaded back as float32)")


def _cmd_ensemble(args: argparse.Namespace) -> int:
    import json

    from emotion.ensembles import create_ensemble
    from emotion.profiling import auto_device

    members = _comma_list(args.runs)
    if args.fit_weights and not args.data:
        raise ConfigError("--fit-weights needs --data DATA to take validation images from")
    if args.data and not args.fit_weights:
        raise ConfigError("--data is only used with --fit-weights; add --fit-weights or drop --data")
    if args.fit_weights and args.weights:
        raise ConfigError("give either --weights or --fit-weights, not both")
    if args.half and not args.pack:
        raise ConfigError("--half stores the packed copies as float16; add --pack")
    try:
        weights = [float(w) for w in _comma_list(args.weights)] or None
    except ValueError:
        raise ConfigError(f"--weights {args.weights!r} must be comma-separated numbers, "
                          "e.g. 0.7,0.3") from None
    try:
        made = create_ensemble(members, args.output_dir, weights=weights,
                               fit_data=args.data if args.fit_weights else None, classes=args.classes,
                               seed=args.seed, objective=args.objective, step=args.step,
                               batch_size=args.batch_size, tta=args.tta, device=auto_device(args.device),
                               pack=args.pack, half=args.half)
    except ValueError as exc:  # option values create_ensemble rejects (e.g. --step 0.3)
        if isinstance(exc, _user_errors()):
            raise
        raise ConfigError(str(exc)) from None
    print(json.dumps(made, indent=2, default=str))
    return 0


def _setup_benchmark(p: argparse.ArgumentParser) -> None:
    from emotion.benchmark import DEFAULT_MODELS
    from emotion.training import DEFAULT_RUNS_DIR

    _add_data_args(p)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated models; 'ensemble' combines trained ones (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for benchmark.md, benchmark.csv and benchmark.json")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR),
                   help="where runs are trained, or found with --reuse (default: %(default)s)")
    p.add_argument("--reuse", action="store_true",
                   help="use a completed run of the same model, data and classes from --runs-dir "
                        "when there is one")
    p.add_argument("--run", action="append", default=[], metavar="MODEL=FOLDER", dest="pinned_runs",
                   help="score this finished run as MODEL's row instead of training or searching for one, "
                        "e.g. efficientnet_lite0=checkpoints/default; it is never written to (repeatable)")
    p.add_argument("--epochs", type=float, default=10, help="maximum training epochs per model")
    p.add_argument("--max-steps", type=int, default=-1, help="stop each training after this many steps")
    p.add_argument("--batch-size", type=int, default=64, help="training images per step")
    p.add_argument("--image-size", default=None,
                   help="input side for every model, and/or per model: 48 or 48,efficientnet_lite0=64 "
                        "(default: each model's own)")
    p.add_argument("--from-scratch", nargs="?", const="all", default=None, metavar="MODELS",
                   help="train from random weights on purpose: all models, or the comma-separated ones "
                        "named (e.g. resnet34,vgg16); vit_custom always is")
    p.add_argument("--train-option", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other training setting, e.g. early_stopping_patience=0 (repeatable)")
    p.add_argument("--ensemble-members", default=None,
                   help="comma-separated models to ensemble (default: the two best by validation macro-F1)")
    p.add_argument("--fit-ensemble-weights", action="store_true",
                   help="fit ensemble weights on validation images (default: equal weights)")
    p.add_argument("--split", default="test", help="split to score every model on")
    p.add_argument("--tta", action="store_true", help="score with horizontal-flip test-time augmentation")
    p.add_argument("--no-calibrate", action="store_true",
                   help="fit no temperatures (a run's stored temperature is still reported)")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 forward passes per model")
    p.add_argument("--throughput-batch", type=int, default=32,
                   help="batch size for the throughput measurement")
    p.add_argument("--eval-batch-size", type=int, default=64, help="images per forward pass when scoring")
    p.add_argument("--device", default="auto",
                   help="device for scoring and timing (default: GPU if there is one)")
    p.add_argument("--json", action="store_true",
                   help="print the JSON document instead of the Markdown table")


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from emotion.benchmark import (
        BenchmarkConfig,
        parse_image_sizes,
        parse_train_options,
        run_benchmark,
        to_markdown,
    )
    from emotion.profiling import auto_device

    if args.latency_repeats < 1 or args.throughput_batch < 1 or args.eval_batch_size < 1:
        raise ConfigError("--latency-repeats, --throughput-batch and --eval-batch-size must be at least 1")
    size, sizes = parse_image_sizes(args.image_size)
    members = _comma_list(args.ensemble_members) if args.ensemble_members else None
    pinned = {}
    for item in args.pinned_runs:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ConfigError(f"--run {item!r} is not MODEL=FOLDER "
                              "(e.g. efficientnet_lite0=checkpoints/default)")
        pinned[name.strip()] = Path(folder.strip())
    config = BenchmarkConfig(
        data=args.data, out=Path(args.out), models=_comma_list(args.models), classes=args.classes,
        runs_dir=Path(args.runs_dir), epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size,
        image_size=size, image_sizes=sizes, reuse=args.reuse, pinned_runs=pinned,
        from_scratch=True if args.from_scratch == "all" else _comma_list(args.from_scratch),
        ensemble_members=members, fit_ensemble_weights=args.fit_ensemble_weights, split=args.split,
        tta=args.tta, calibrate=not args.no_calibrate, seed=args.seed, eval_batch_size=args.eval_batch_size,
        latency_repeats=args.latency_repeats, throughput_batch=args.throughput_batch,
        device=str(auto_device(args.device)), train_options=parse_train_options(args.train_option),
    )
    doc = run_benchmark(config)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(to_markdown(doc))
        if doc.get("written"):
            print("written: " + ", ".join(doc["written"]))
    return 0 if doc.get("written") else 1


def _add_face_args(p: argparse.ArgumentParser) -> None:
    """Run choice and face-finding options shared by ``predict`` and ``explain``."""
    from emotion.faces import DEFAULT_MIN_SCORES, DETECTORS, DetectorConfig

    det = DetectorConfig()
    p.add_argument("--run", default=None,
                   help="run folder, or a shipped model's name: default (angry, happy, sad) or fer7 (FER2013's "
                        "seven classes) (default: checkpoints/default, else the finished run with the best "
                        "validation accuracy under checkpoints/runs; the one used is named)")
    p.add_argument("--whole-image", action="store_true",
                   help="when no face is found, classify the whole image (right for tight face crops such "
                        "as FER2013's)")
    p.add_argument("--detector", default=det.model, choices=list(DETECTORS),
                   help="face detector: mtcnn, or blazeface (MediaPipe's, several times faster on a CPU, "
                        "but misses more faces: small ones and faces cut out of their surroundings), "
                        "blazeface_tiled (also looks at tiles: smaller faces, slower) or blazeface_short "
                        "(selfie range); see docs/BENCHMARK.md (default: %(default)s)")
    p.add_argument("--min-face-size", type=int, default=det.min_face_size,
                   help="smallest face side in pixels the detector reports (default: %(default)s)")
    scores = ", ".join(f"{name} {score:g}" for name, score in DEFAULT_MIN_SCORES.items())
    p.add_argument("--min-score", type=float, default=None,
                   help=f"drop faces whose detector score is below this (default: the detector's own: "
                        f"{scores})")
    p.add_argument("--thresholds", default=",".join(f"{t:g}" for t in det.thresholds),
                   help="MTCNN P-Net,R-Net,O-Net thresholds (default: %(default)s)")
    p.add_argument("--max-side", type=int, default=det.max_side or 0,
                   help="downscale larger images to this side before detection; 0 keeps full size "
                        "(default: %(default)s)")
    p.add_argument("--margin", type=float, default=None,
                   help="context around each face, as a fraction of its size (default: what the run was "
                        "trained with, else 0.2)")
    p.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None,
                   help="convert faces to grayscale first (default: when the run was trained on grayscale "
                        "images, e.g. FER2013)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each face with its mirror image (default: when the run's config.json "
                        "recommends it)")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the temperature fitted on the run's validation images (temperature.json), "
                        "when it has one (default: on)")
    p.add_argument("--device", default="cpu", help="torch device for the classifier (default: %(default)s)")
    p.add_argument("--backend", default=None, choices=["torch", "onnx", "onnx-int8"],
                   help="what runs the classifier: torch, or onnx (onnxruntime, CPU; about 3x faster for the "
                        "shipped model, exported once and cached), or onnx-int8 (8-bit, about 2x faster "
                        "again; 1 to 2 faces in 100 get another answer; needs `quantize` first) (default: "
                        "what the run's config.json recommends, else torch)")


def _predictor_config(args: argparse.Namespace):
    from emotion.faces import DetectorConfig
    from emotion.inference import PredictorConfig

    try:
        thresholds = tuple(float(t) for t in _comma_list(args.thresholds))
        detector = DetectorConfig(model=args.detector, min_face_size=args.min_face_size,
                                  thresholds=thresholds,  # type: ignore[arg-type]
                                  min_score=args.min_score, max_side=args.max_side or None)
        return PredictorConfig(detector=detector, margin=args.margin, whole_image=args.whole_image,
                               grayscale=args.grayscale, tta=args.tta, device=args.device,
                               calibrate=args.calibrate, max_faces=getattr(args, "max_faces", None),
                               backend=args.backend)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_output_image(path: str, option: str):
    """``path`` as a Path, if its extension names an image format Pillow can write."""
    from pathlib import Path

    from PIL import Image

    out = Path(path)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"{option} {path}: use an image file name such as out.png")
    return out


def _refuse_outputs_over_inputs(outputs: Sequence[Path], inputs: Sequence[Path], option: str) -> None:
    """Refuse an output file that is one of the inputs: writing it would destroy the original.

    Compared by device and inode, so symlinks, hard links and ``./a.png`` against
    ``a.png`` are caught (a video would even be cut short while still being read).
    """
    import os

    seen: dict[tuple[int, int], Path] = {}
    for path in inputs:
        try:
            st = os.stat(path)
        except OSError:
            continue
        seen[(st.st_dev, st.st_ino)] = path
    for out in outputs:
        try:
            st = os.stat(out)
        except OSError:  # not there yet: nothing to lose
            continue
        original = seen.get((st.st_dev, st.st_ino))
        if original is not None:
            raise ConfigError(f"{option} {out} is the input {original}: writing it would replace the "
                              "original; choose another file name")


def _setup_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files (any format Pillow reads), video files (.mp4 .webm .avi .mov .mkv .m4v, "
                        "decoded frame by frame with PyAV) or folders (searched recursively for both)")
    _add_face_args(p)
    p.add_argument("--max-faces", type=int, default=None, help="classify at most this many (largest) faces")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image or analysed video frame (one per line), each with a "
                        "'faces' list")
    p.add_argument("--out", default=None, metavar="ROWS.csv",
                   help="write one row per face per image or video frame (source, frame, time_s, track, box, "
                        "score, label, confidence, p_<class>) to a CSV or JSON Lines (.jsonl) file, as they "
                        "come: an interrupted run keeps the rows written so far")
    p.add_argument("--format", default=None, choices=["csv", "jsonl"],
                   help="format of --out (default: from its extension)")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="videos: analyse every N-th frame (default: %(default)s, every frame)")
    p.add_argument("--smoothing", type=float, default=None, metavar="ALPHA",
                   help="videos: weight of the newest frame in each face track's moving average; 1 turns "
                        "smoothing off (default: the live webcam's)")
    p.add_argument("--redetect-every", type=int, default=None, metavar="K",
                   help="videos: run the face detector on every K-th analysed frame and follow the tracked "
                        "boxes in between; a face that changes triggers it early (default: the live webcam's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar shown for videos")
    p.add_argument("--annotate", default=None, metavar="OUT.png|OUT.mp4",
                   help="save the images with boxes and labels drawn (several images: OUT-1.png, OUT-2.png "
                        "...); with a video name (.mp4 .webm .avi .mov .mkv .m4v) the videos are written "
                        "annotated instead (several: OUT-1.mp4 ...), at the analysed frames' rate")


def _annotate_target(path: Optional[str]) -> tuple[Optional[Path], str]:
    """``--annotate``'s path and what it draws on: 'image' (an image name) or 'video' (a video name)."""
    from emotion.video_files import VIDEO_ENCODERS, pick_encoder

    if not path:
        return None, "image"
    if Path(path).suffix.lower() in VIDEO_ENCODERS:
        pick_encoder(path)  # fail now, not after the first video, when this PyAV cannot write it
        return Path(path), "video"
    try:
        return _check_output_image(path, "--annotate"), "image"
    except ConfigError:
        raise ConfigError(f"--annotate {path}: use an image file name such as out.png, or a video file name "
                          "such as out.mp4 to annotate videos") from None


def _load_input_image(path: Path):
    """``load_image``, with the supported inputs listed when the file's extension is not one of them."""
    from emotion.images import load_image
    from emotion.video_files import media_kind, supported_extensions

    try:
        return load_image(path)
    except ImageLoadError as exc:
        if media_kind(path) is None:
            raise ImageLoadError(f"{exc} (supported inputs: {supported_extensions()})") from None
        raise


def _predict_image_input(args: argparse.Namespace, predictor, about: dict, path: Path, img, out, rows) -> bool:
    """One image as before: a text block or a JSON line, optionally annotated and written as rows."""
    import json

    from emotion.video_files import prediction_rows

    try:
        img = img if img is not None else _load_input_image(path)
    except ImageLoadError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"image": str(path), "error": str(exc), "faces": []}), flush=True)
        return False
    result = predictor.predict(img)
    if rows is not None:
        rows.write(prediction_rows(str(path), result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        keep_earlier(out)
        predictor.annotate(img, result).save(out)
        logger.info("annotated %s -> %s", path, out)
    if args.json:
        print(json.dumps({"image": str(path), **result.to_dict(), "run": about.get("run"),
                          "run_reason": about.get("run_reason"), "model": about["model"]}), flush=True)
        return True
    print(f"{path}: {result.message}")
    for j, face in enumerate(result.faces):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        others = ", ".join(f"{k} {v:.0%}" for k, v in face.probabilities.items())
        print(f"  {'whole image' if face.source == 'whole' else f'face {j}'} ({box}): "
              f"{face.label} {face.confidence:.0%}  [{others}]")
    return True


def _predict_video_input(args: argparse.Namespace, predictor, about: dict, path: Path, video_config, out,
                         rows) -> bool:
    """One video, frame by frame: rows and JSON lines as frames come, a per-track summary at the end.

    A damaged or truncated video keeps the rows of the frames before the damage;
    it is reported (naming the frame reached) and counted as failed.
    """
    import contextlib
    import json

    from emotion.video_files import TrackSummary, VideoDecodeError, VideoError, predict_video, progress_bar

    summary = TrackSummary(predictor.labels)
    analysed, decoded, problem = 0, 0, None
    progress, close_bar = progress_bar(path.name, disable=args.no_progress)

    def on_progress(done: int, total: Optional[int]) -> None:
        nonlocal decoded
        decoded = done
        progress(done, total)

    frames = predict_video(predictor, path, every=args.every, config=video_config, annotate=out,
                           progress=on_progress)
    try:
        with contextlib.closing(frames):
            for result in frames:
                analysed += 1
                found = result.rows()
                summary.add(found)
                if rows is not None:
                    rows.write(found)
                if args.json:
                    print(json.dumps({**result.to_dict(), "run": about.get("run"),
                                      "run_reason": about.get("run_reason"), "model": about["model"]}), flush=True)
    except VideoDecodeError as exc:
        problem = str(exc)
        logger.warning("%s", exc)
    except VideoError as exc:  # could not be opened at all
        close_bar()  # before the message, so the bar does not overwrite it
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"video": str(path), "error": str(exc), "faces": []}), flush=True)
        return False
    finally:
        close_bar()
    if problem is not None and args.json:
        print(json.dumps({"video": str(path), "error": problem, "frame": decoded, "faces": []}), flush=True)
    if out is not None and analysed:
        logger.info("annotated %s -> %s", path, out)
    if not args.json:
        every = "" if args.every == 1 else f" (one in {args.every})"
        tracks = summary.result()
        print(f"{path}: {analysed} of {decoded} frames analysed{every}, {summary.rows} face rows in "
              f"{len(tracks)} track{'s' if len(tracks) != 1 else ''}" + (" (stopped early)" if problem else ""))
        for t in tracks:
            means = ", ".join(f"{c} {t[f'mean_p_{c}']:.0%}" for c in predictor.labels)
            span = f"{t['start_s']:.2f}-{t['end_s']:.2f} s, " if t["start_s"] is not None else ""
            name = f"track #{t['track']}" if t["track"] is not None else "faces"
            print(f"  {name} ({span}{t['frames']} frames): {t['label']} in {t['label_share']:.0%} of them; "
                  f"mean {means}")
    return problem is None


def _cmd_predict(args: argparse.Namespace) -> int:
    """Predict input by input: a damaged image or video is reported on its own and the rest still run."""
    from emotion.video_files import (
        InputError,
        RowWriter,
        expand_inputs,
        file_video_config,
        probe_video,
        row_format,
    )

    if args.every < 1:
        raise ConfigError(f"--every {args.every}: use 1 (every frame) or more")
    if args.redetect_every is not None and args.redetect_every < 1:
        raise ConfigError(f"--redetect-every {args.redetect_every}: use 1 (detect on every frame) or more")
    if args.smoothing is not None and not 0.0 < args.smoothing <= 1.0:
        raise ConfigError(f"--smoothing {args.smoothing}: use a weight in (0, 1]; 1 turns smoothing off")
    annotate, annotate_kind = _annotate_target(args.annotate)
    try:
        if args.out:
            row_format(args.out, args.format)
        inputs = expand_inputs(args.images)
        video_config = file_video_config(ema_alpha=args.smoothing, redetect_every=args.redetect_every)
    except (InputError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    config = _predictor_config(args)
    numbered = sum(item.kind == annotate_kind for item in inputs) > 1
    annotated = {i: (annotate.with_name(f"{annotate.stem}-{i}{annotate.suffix}") if numbered else annotate)
                 for i, item in enumerate(inputs, start=1)
                 if annotate is not None and item.kind == annotate_kind}
    _refuse_outputs_over_inputs(list(annotated.values()), [item.path for item in inputs], "--annotate")
    if args.out:
        _refuse_outputs_over_inputs([Path(args.out)], [item.path for item in inputs], "--out")
    first = None
    if len(inputs) == 1:  # fail before the model loads
        if inputs[0].kind == "image":
            first = _load_input_image(inputs[0].path)
        else:
            probe_video(inputs[0].path)
    from emotion.inference import Predictor

    predictor = Predictor.from_run(args.run, config)
    about = predictor.describe()
    if annotate is not None and any(item.kind != annotate_kind for item in inputs):
        other = "video" if annotate_kind == "image" else "image"
        logger.warning("--annotate %s draws on %ss only; the %ss are not annotated (give %s to draw on them)",
                       annotate, annotate_kind, other, "a video name such as out.mp4" if other == "video"
                       else "an image name such as out.png")
    rows = RowWriter.open(args.out, predictor.labels, args.format) if args.out else None
    failed = 0
    try:
        for i, item in enumerate(inputs, start=1):
            out = annotated.get(i)
            if item.kind == "image":
                ok = _predict_image_input(args, predictor, about, item.path, first, out, rows)
            else:
                ok = _predict_video_input(args, predictor, about, item.path, video_config, out, rows)
            failed += not ok
    finally:
        if rows is not None:
            rows.close()
            logger.info("wrote %d rows to %s", rows.rows, args.out)
    if not args.json:
        print(f"model: {about['model']} from {about.get('run')} ({about.get('run_reason')})")
    if failed:
        what = "images" if all(item.kind == "image" for item in inputs) else "inputs"
        logger.warning("%d of %d %s could not be read%s", failed, len(inputs), what,
                       "" if what == "images" else " in full")
        return 2
    return 0


def _setup_explain(p: argparse.ArgumentParser) -> None:
    from emotion.explain import DEFAULT_ROAD_PERCENTILES, HEAD_FUSIONS, METHODS

    p.add_argument("image", metavar="IMAGE", help="an image file; its largest face is explained (see --face)")
    _add_face_args(p)
    p.add_argument("--method", default="gradcam", choices=list(METHODS) + ["patches"],
                   help="explanation method; 'patches' draws how a ViT cuts the face into tokens "
                        "(default: %(default)s)")
    p.add_argument("--out", required=True, metavar="MAP.png", help="where to save the picture")
    p.add_argument("--target", default=None,
                   help="class to explain, by name or index (default: the predicted class)")
    p.add_argument("--face", type=int, default=None,
                   help="which face, numbered from 0 left to right (default: the largest)")
    p.add_argument("--no-road", action="store_true", help="skip the ROAD faithfulness score")
    p.add_argument("--road-percentiles", default=",".join(map(str, DEFAULT_ROAD_PERCENTILES)),
                   help="pixel shares (%%) ROAD removes and averages over (default: %(default)s)")
    p.add_argument("--head-fusion", default="mean", choices=HEAD_FUSIONS, help="rollout: how heads combine")
    p.add_argument("--discard-ratio", type=float, default=0.9,
                   help="rollout: share of the weakest attention weights dropped per block "
                        "(default: %(default)s)")
    p.add_argument("--max-channels", type=int, default=None,
                   help="scorecam: score only this many most varied channels (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="scorecam: masked images per forward pass")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    from emotion.explain import NoFaceError, explain_face, patch_grid
    from emotion.images import load_image
    from emotion.inference import Predictor

    out = _check_output_image(args.out, "--out")
    config = _predictor_config(args)
    try:
        percentiles = [int(v) for v in _comma_list(args.road_percentiles)]
    except ValueError:
        raise ConfigError(f"--road-percentiles {args.road_percentiles!r} must be comma-separated "
                          "integers") from None
    _refuse_outputs_over_inputs([out], [Path(args.image)], "--out")
    img = load_image(args.image)
    predictor = Predictor.from_run(args.run, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.method == "patches":
        faces = predictor.detect(img)
        if not faces and not config.whole_image:
            raise NoFaceError(f"no face found in {args.image}; add --whole-image to use the whole image")
        index = args.face if args.face is not None else (
            max(range(len(faces)), key=lambda i: faces[i].area) if faces else None)
        if faces and not 0 <= index < len(faces):
            raise ConfigError(f"--face {index}: {len(faces)} face(s) found, numbered from 0")
        picture, info = patch_grid(predictor, predictor.crop(img, faces[index] if faces else None))
        keep_earlier(out)
        picture.save(out)
        print(json.dumps({"method": "patches", **info, "out": str(out)}) if args.json else
              f"{info['grid'][0]}x{info['grid'][1]} patches of {info['patch_pixels'][0]} px plus "
              f"{info['prefix_tokens']} prefix token(s) = {info['tokens']} tokens; wrote {out}")
        return 0
    options = {"rollout": {"head_fusion": args.head_fusion, "discard_ratio": args.discard_ratio},
               "scorecam": {"max_channels": args.max_channels, "batch_size": args.batch_size},
               }.get(args.method, {})
    result = explain_face(predictor, img, args.method, face=args.face, target=args.target,
                          road=not args.no_road, road_percentiles=percentiles, **options)
    keep_earlier(out)
    result.figure().save(out)
    if args.json:
        print(json.dumps({**result.to_dict(), "image": args.image, "out": str(out), **predictor.describe()}))
        return 0
    where = "the whole image" if result.face is None else f"face {result.face_index}"
    road = ""
    if result.road:
        r = result.road
        road = f"; ROAD {r.combined:+.3f} (MoRF {r.morf:+.3f}, LeRF {r.lerf:+.3f}; higher is more faithful)"
    p_target = result.probabilities[result.target]
    print(f"{result.method} for '{result.target_label}' (p={p_target:.2f}, predicted "
          f"'{result.labels[result.predicted]}') on {where}{road}; wrote {out}")
    return 0


def _setup_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None,
                   help="run folder (default: checkpoints/default, else the best finished run)")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--json", action="store_true", help="print what was written as one JSON object")


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from emotion.export import export_run
    from emotion.inference import resolve_run

    choice = resolve_run(args.run)
    result = export_run(choice.path, args.out)
    if args.json:
        print(json.dumps({**result, **choice.to_dict()}))
    else:
        meta = result["metadata"]
        print(f"wrote {result['out']} ({result['bytes'] / 1e6:.1f} MB): {meta['model']} from {choice.path}, "
              f"labels {', '.join(json.loads(meta['labels']))}, input {meta['input_size']} px, temperature "
              f"{float(meta['temperature']):.3f}; probabilities within "
              f"{result['max_probability_difference']:.1e} of PyTorch")
    return 0


def _setup_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None,
                   help="run folder (default: checkpoints/default, else the best finished run)")
    p.add_argument("--data", required=True,
                   help="the data the run trained on: a class-folder root, synthetic[:...] or hf:NAME")
    p.add_argument("--classes", default=None,
                   help="comma-separated classes as in training, when the data has more (angry,happy,sad)")
    p.add_argument("--images", type=int, default=256,
                   help="training images to measure on, the validation share left out (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print what was stored as one JSON object (no ranges)")


def _cmd_quantize(args: argparse.Namespace) -> int:
    """Store int8_calibration.json in the run, then say how to use it."""
    import json

    from emotion.evaluation import calibrate_run_int8
    from emotion.inference import resolve_run
    from emotion.run_files import INT8_CALIBRATION_FILE

    if args.images < 1:
        raise ConfigError(f"--images {args.images}: use at least 1 (256 is plenty)")
    choice = resolve_run(args.run)
    record = calibrate_run_int8(choice.path, args.data, args.classes, images=args.images, seed=args.seed)
    summary = {k: v for k, v in record.items() if k != "ranges"}
    if args.json:
        print(json.dumps({**summary, "run": str(choice.path)}))
    else:
        print(f"stored {Path(choice.path) / INT8_CALIBRATION_FILE}: activation ranges from "
              f"{record['measured_on']['images']} training images of {record['measured_on']['data']}; "
              f"use it with --backend onnx-int8")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "audit": ("check a dataset for corrupt, blank, duplicate and leaked images", _setup_audit, _cmd_audit),
    "train": ("train a model into a run folder", _setup_train, _cmd_train),
    "models": ("list the registered models", lambda p: None, _cmd_models),
    "runs": ("list trained runs with their state (a killed training shows as interrupted)", _setup_runs,
             _cmd_runs),
    "evaluate": ("score a run on a dataset split: metrics, calibration, size, speed", _setup_evaluate,
                 _cmd_evaluate),
    "ensemble": ("combine trained runs into an ensemble run", _setup_ensemble, _cmd_ensemble),
    "benchmark": ("train or reuse several models, ensemble them and tabulate test scores", _setup_benchmark,
                  _cmd_benchmark),
    "quantize": ("measure the activation ranges 8-bit inference needs (--backend onnx-int8)", _setup_quantize,
                 _cmd_quantize),
    "predict": ("find the faces in images, folders and videos and classify their emotions",
                _setup_predict, _cmd_predict),
    "export": ("write a run as an ONNX file (labels, preprocessing and temperature in its metadata)",
               _setup_export, _cmd_export),
    "explain": ("show which parts of a face drove a prediction (Grad-CAM, rollout, feature maps)",
                _setup_explain, _cmd_explain),
}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, just that command's options are built.

    Some commands' options come from dataclasses in modules that import torch;
    building only the command being run keeps ``--help`` and ``audit`` quick.
    """
    # the installed console script reads "emotion"; `python -m emotion` reads as it is typed
    prog = "emotion" if Path(sys.argv[0]).name == "emotion" else "python -m emotion"
    parser = argparse.ArgumentParser(prog=prog, description="Emotion Studio command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    with_train = only is None or only == "train"

    def command_parser(**kwargs: object) -> argparse.ArgumentParser:
        # the train command's flags are TrainConfig's fields, through transformers' HfArgumentParser
        if with_train and str(kwargs.get("prog", "")).endswith(" train"):
            from emotion.config import train_config_parser

            return train_config_parser(**kwargs)
        return argparse.ArgumentParser(**kwargs)

    sub = parser.add_subparsers(dest="command", required=True, parser_class=command_parser)
    for name, (help_text, setup, _) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            setup(command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=named or "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _, _, run = COMMANDS[args.command]
    try:
        return run(args)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
