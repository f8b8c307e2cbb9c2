"""ONNX export of a trained run: ``python -m emotion export --run RUN --out model.onnx``.

An exported file describes itself: its metadata (``emotion.*`` keys) holds the
labels, the preprocessing (input size, mean, std), the fitted temperature and
how faces were framed for the run, so it can be used without this package.
The file is checked against PyTorch before it is written (see
:mod:`emotion.onnx_backend`), and written atomically: a failed export leaves an
existing file as it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Union

from emotion import runs
from emotion.fileio import atomic_write, keep_earlier
from emotion.inference import Predictor, PredictorConfig
from emotion.onnx_backend import INPUT_NAME, OUTPUT_NAME, ExportError, OnnxClassifier, checked_export, weights_digest

logger = logging.getLogger(__name__)


def run_metadata(loaded: runs.LoadedRun) -> dict[str, str]:
    """What a user of the exported file needs to preprocess faces and read the outputs as this run does."""
    # margin, grayscale, TTA, temperature as in use (torch: the settings only, no second export)
    predictor = Predictor.from_run(loaded, PredictorConfig(backend="torch"))
    preprocess = loaded.config.preprocess
    return {
        "labels": json.dumps(list(loaded.labels)),
        "model": loaded.config.name,
        "input_size": str(preprocess.input_size),
        "mean": json.dumps(list(preprocess.mean)),
        "std": json.dumps(list(preprocess.std)),
        "input": (f"{INPUT_NAME}: float32 (batch, 3, {preprocess.input_size}, {preprocess.input_size}), RGB "
                  "scaled to [0, 1], then (x - mean) / std"),
        "output": f"{OUTPUT_NAME}: float32 (batch, {len(loaded.labels)}); probabilities = "
                  "softmax(logits / temperature)",
        "temperature": json.dumps(predictor.temperature or 1.0),
        "face_margin": json.dumps(predictor.margin),
        "grayscale": json.dumps(predictor.grayscale),
        "mirror_average": json.dumps(predictor.tta),
        "source_run": str(loaded.path.resolve()),
        "weights_sha256": weights_digest(loaded.module),
    }


def export_run(run_dir: Union[str, Path], out: Union[str, Path]) -> dict[str, Any]:
    """Write ``run_dir``'s network as an ONNX file with its metadata; checked before it is kept.

    Returns what was written (path, bytes, the measured difference to PyTorch,
    the metadata).  An existing ``out`` is only set aside (``NAME.previous-<time>.onnx``) once the new
    file has been checked.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--out {out}: use a file name ending in .onnx")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; name a file such as {out / 'model.onnx'}")
    loaded = runs.load_run(run_dir)
    metadata = run_metadata(loaded)
    model_bytes, _, diff = checked_export(loaded.module, loaded.config.input_size, metadata)
    keep_earlier(out)
    atomic_write(out, lambda tmp: tmp.write_bytes(model_bytes))
    logger.info("wrote %s (%.1f MB; probabilities within %.1e of PyTorch)", out, len(model_bytes) / 1e6, diff)
    return {"out": str(out), "bytes": len(model_bytes), "max_probability_difference": diff,
            "metadata": metadata}


def read_metadata(path: Union[str, Path]) -> dict[str, str]:
    """The ``emotion.*`` metadata of an exported file (prefix removed)."""
    if not Path(path).is_file():
        raise ExportError(f"{path} is not a file")
    return OnnxClassifier(Path(path), threads=1).metadata

