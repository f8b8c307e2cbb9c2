"""Scores of predicted class probabilities against labels: pure NumPy and scikit-learn, no model.

Every function takes ``(probs, labels)`` (or logits) as arrays, so each can be
checked on hand-made predictions.  Calibration lives here too: reliability
curves, expected calibration error, and temperature scaling (``softmax(log p / T)``
equals ``softmax(z / T)`` for a softmax model, so it applies to ensembles'
log-probabilities unchanged).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

logger = logging.getLogger(__name__)

DEFAULT_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
_TINY = np.finfo(np.float64).tiny



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
    """Mean ``-log p(true class)``; probabilities of 0 are floored so the loss stays finite.

    Not ``sklearn.metrics.log_loss``: that one warns about and renormalises rows
    whose float32-rounded probabilities do not sum to exactly one (ONNX outputs,
    ensembles), so it would score slightly different numbers than the model gave.
    """
    p, y = _as_arrays(probs, labels)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], _TINY)).mean())


def confusion_counts(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
    return confusion_matrix(np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64),
                            labels=np.arange(num_classes))


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
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=np.arange(k), zero_division=0.0)
    tp = np.diag(cm).astype(np.float64)
    support = support.astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
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
