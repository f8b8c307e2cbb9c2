"""What 8-bit weights and activations would cost and buy: one network, onnxruntime, float32 against int8.

The run's network is exported as the onnx backend exports it, then quantised
statically with onnxruntime (QDQ format, int8 weights per channel, uint8
activations) with each ``--methods`` calibration, on ``--calibration-images``
training images (never validation ones). For each it reports the validation
accuracy, how often int8 and float32 agree, the mean absolute change of the class
probabilities, and the median milliseconds for one face at batch 1 on one
onnxruntime thread (the backend's setting), measured interleaved with float32.

    python benchmarks/int8_probe.py --run checkpoints/default/members/03-fer3-efficientnet_lite1-112-distill \
        --data ../shared/datasets/fer2013 --classes angry,happy,sad --json benchmarks/int8_probe_cpu.json

Nothing here is used by the product: it measures a lever before anyone builds it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("int8_probe")
METHODS = ("minmax", "percentile", "entropy")


def _arrays(run, data: str, split: str, classes: str, limit: int | None, seed: int = 1):
    """Preprocessed images of one split, as the evaluation feeds them, and their labels."""
    import torch

    from emotion import runs
    from emotion.evaluation import build_eval_dataset, load_eval_data

    ev = load_eval_data(run, data, split, classes or None, None)
    samples = list(ev.samples)
    if limit is not None:
        samples = [samples[i] for i in np.random.default_rng(seed).permutation(len(samples))[:limit]]
    ds, _ = build_eval_dataset(samples, run.config, None, runs.trained_on_grayscale(run.spec, run.path))
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["pixel_values"] for it in items]).numpy().astype(np.float32)
    return x, np.array([int(it["labels"]) for it in items])


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _probabilities(session, x: np.ndarray) -> np.ndarray:
    logits = np.concatenate([session.run(None, {"pixel_values": x[i:i + 64]})[0]
                             for i in range(0, len(x), 64)])
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _median_ms(session, one: np.ndarray, repeats: int) -> float:
    for _ in range(20):
        session.run(None, {"pixel_values": one})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"pixel_values": one})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run folder (an ensemble is quantised as one graph)")
    p.add_argument("--data", required=True, help="the dataset the run trained on (validation, calibration)")
    p.add_argument("--classes", default="", help="as for evaluate (e.g. angry,happy,sad)")
    p.add_argument("--calibration-images", type=int, default=256, help="training images to calibrate on")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"calibrations to try, of {', '.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=300, help="timed runs per model and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds (the median of the rounds is reported)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from emotion import runs
    from emotion.onnx_backend import export_bytes

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"--methods {','.join(unknown)}: choose from {', '.join(METHODS)}")
    run = runs.load_run(args.run)
    x_val, y_val = _arrays(run, args.data, "val", args.classes, None)
    x_cal, _ = _arrays(run, args.data, "train", args.classes, args.calibration_images)
    work = Path(tempfile.mkdtemp(prefix="int8-probe-"))
    (work / "fp32.onnx").write_bytes(export_bytes(run.module.float().eval(), run.config.input_size))
    quant_pre_process(str(work / "fp32.onnx"), str(work / "pre.onnx"))
    calibrations = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy}
    sessions = {"float32": _session(work / "fp32.onnx")}
    for name in methods:
        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter({"pixel_values": x_cal[i:i + 1]} for i in range(len(x_cal)))

            def get_next(self):
                return next(self.items, None)

        out = work / f"{name}.onnx"
        quantize_static(str(work / "pre.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrations[name],
                        extra_options={"CalibPercentile": 99.999} if name == "percentile" else {})
        sessions[f"int8 {name}"] = _session(out)

    reference = _probabilities(sessions["float32"], x_val)
    one = x_val[:1]
    timings: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):  # interleaved: a slow phase of the machine hits every model alike
        for key, session in sessions.items():
            timings[key].append(_median_ms(session, one, args.repeats))
    rows = []
    for key, session in sessions.items():
        probs = reference if key == "float32" else _probabilities(session, x_val)
        rows.append({"model": key, "val_accuracy": float((probs.argmax(1) == y_val).mean()),
                     "agreement_with_float32": float((probs.argmax(1) == reference.argmax(1)).mean()),
                     "mean_abs_probability_change": float(np.abs(probs - reference).mean()),
                     "ms_per_face": round(statistics.median(timings[key]), 3),
                     "bytes": (work / ("fp32.onnx" if key == "float32" else f"{key.split()[1]}.onnx"))
                     .stat().st_size})
    result = {"run": str(args.run), "data": args.data, "val_images": int(len(y_val)),
              "calibration_images": int(len(x_cal)),
              "machine": f"{platform.machine()}, {platform.processor() or '?'}",
              "created": time.strftime("%Y-%m-%d"), "rows": rows}
    print("| model | val acc | agrees with float32 | mean abs change of p | ms / face | MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['val_accuracy']:.1%} | {r['agreement_with_float32']:.1%} | "
              f"{r['mean_abs_probability_change']:.4f} | {r['ms_per_face']:.2f} | {r['bytes'] / 1e6:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
