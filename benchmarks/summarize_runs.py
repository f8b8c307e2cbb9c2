"""Markdown table of finished training runs, from their own run folders.

    python benchmarks/summarize_runs.py checkpoints/runs/fer3-*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.runs import running_time_s  # noqa: E402


def row(run: Path) -> str:
    spec = json.loads((run / "config.json").read_text())
    m = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    evals = [h for h in history if "eval_macro_f1" in h]
    best = max(evals, key=lambda h: h["eval_macro_f1"]) if evals else {}
    val, test = m["val"], m.get("test") or {}
    tc = spec.get("train_config", {})
    return (f"| `{spec['model']}` | {spec['weights_source']} | {spec['input_size']} | "
            f"{m['epochs_completed']:g} (best {best.get('epoch', float('nan')):g}) | "
            f"{val['accuracy']:.1%} | {val['macro_f1']:.3f} | {test.get('accuracy', float('nan')):.1%} | "
            f"{test.get('macro_f1', float('nan')):.3f} | {running_time_s(m) / 60:.0f} min | "
            f"{m['train_images_per_second']:.0f} | {m.get('learning_rate', tc.get('learning_rate'))} |")


def main() -> None:
    print("| model | weights | input | epochs run | val acc | val macro-F1 | test acc | test macro-F1 "
          "| train time | images/s | lr |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        run = Path(arg)
        if (run / "metrics.json").exists():
            print(row(run))
        else:
            print(f"<!-- {run}: no metrics.json (unfinished) -->", file=sys.stderr)


if __name__ == "__main__":
    main()
