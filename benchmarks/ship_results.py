"""Score a model on a dataset split and store the result with its provenance among the shipped results.

The Benchmark page shows these files on any machine, beside the user's own runs
(``checkpoints/results/``: metrics, confusion matrix, per-class recall,
reliability curve, data and split, and the command, machine and date that made
them).  The shipped models' scores are made with:

    python benchmarks/ship_results.py --run checkpoints/default --data ../shared/datasets/fer2013 --split test
    python benchmarks/ship_results.py --run checkpoints/default --data ../shared/datasets/facial_expressions --split all
    python benchmarks/ship_results.py --run checkpoints/fer7 --data ../shared/datasets/fer2013 --classes '' --split test

A study run (trained with ``benchmarks/fer_runs.sh``) ships the same way: its
result file goes into the repository, its weights do not.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion import runs  # noqa: E402
from emotion.evaluation import evaluate_run  # noqa: E402
from emotion.inference import resolve_run  # noqa: E402
from emotion.results import save_shipped_result  # noqa: E402

logger = logging.getLogger("ship_results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder or a shipped model's name (default, fer7)")
    parser.add_argument("--data", required=True, help="class folders (train/ and test/, or one folder)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated classes ('' = all; default: the run's own classes)")
    parser.add_argument("--split", default="test", choices=["test", "val", "all"],
                        help="test, val (the images the run held out) or all (every image of a one-folder set)")
    parser.add_argument("--name", default=None, help="file name (default: <run>-<data>-<split>)")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: checkpoints/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = resolve_run(args.run).path
    classes = args.classes
    if classes is None:  # the run's own classes, in its order
        classes = ",".join(runs.read_json(run / runs.LABELS_FILE))
    result = evaluate_run(run, args.data, split=args.split, classes=classes or None, save=False)
    command = ["python", "benchmarks/ship_results.py", *(argv if argv is not None else sys.argv[1:])]
    path = save_shipped_result(result, command, args.name, args.out)
    logger.info("%s: accuracy %.4f, macro-F1 %.4f on %d images -> %s", run, result["accuracy"],
                result["macro_f1"], result["data"]["images"], path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
