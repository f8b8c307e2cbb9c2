"""Plain-text reports of evaluation results (what ``python -m emotion evaluate`` prints)."""

from __future__ import annotations

from typing import Any


def format_report(result: dict[str, Any]) -> str:
    """A readable summary of :func:`evaluate_run`'s result (the CLI prints it)."""
    run, data = result["run"], result["data"]
    counts = ", ".join(f"{c} {n}" for c, n in data["counts"].items())
    lines = [
        f"run       {run['path']} ({run['model']}, {run['input_size']}px, weights: {run['weights_source']})",
        f"data      {data['spec']}: {data['split_source']}, {data['images']} images ({counts})"
        + (", flip TTA" if result["tta"] else ""),
        f"accuracy  {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   "
        f"macro recall {result['macro_recall']:.4f}   NLL {result['nll']:.4f}",
        f"ECE       {result['ece']:.4f} ({result['calibration']['n_bins']} bins)"
        + (f"   calibrated {result['ece_calibrated']:.4f} at T={result['temperature']:.3f}"
           if "ece_calibrated" in result else "   (no fitted temperature: --fit-temperature)"),
        f"model     {result['parameters']:,} parameters, {result['size_mb']:.2f} MB on disk",
    ]
    if "speed" in result:
        s = result["speed"]
        lines.append(f"speed     {s['latency_ms']:.2f} ms/image at batch 1, "
                     f"{s['throughput_ips']:.1f} images/s at batch {s['batch_size']} "
                     f"({s['device']}, {s['threads']} threads)")
    width = max(8, *(len(c) for c in result["classes"]))
    lines += ["", f"{'class':{width}s}  precision  recall     f1  support"]
    for c, m in result["per_class"].items():
        lines.append(f"{c:{width}s}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  "
                     f"{m['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + "  " + " ".join(f"{c[:7]:>7s}" for c in result["classes"])]
    for c, row in zip(result["classes"], result["confusion_matrix"]):
        lines.append(f"{c:{width}s}  " + " ".join(f"{v:7d}" for v in row))
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    if result.get("saved_to"):
        lines.append(f"saved to {result['saved_to']}")
    return "\n".join(lines)
