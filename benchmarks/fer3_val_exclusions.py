"""Write the angry/happy/sad validation images as an exclusion list for 7-class pre-training.

The 3-class runs hold out a stratified 10 % of the angry/happy/sad train images
(seed 0) for early stopping and model choice.  A model pre-trained on all seven
classes must not see those images, or the 3-class validation score of its
fine-tuned successor would be flattered; ``--exclude-file`` removes them from the
pre-training's train split (test is never touched).

    python benchmarks/fer3_val_exclusions.py ../shared/datasets/fer2013 checkpoints/exclusions/fer3-val.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.data.sources import load_dataset_spec, save_exclusions, validation_holdout  # noqa: E402

logger = logging.getLogger("fer3_val_exclusions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the FER2013 folder (train/ and test/ of class folders)")
    parser.add_argument("out", type=Path, help="exclusion list to write (JSON)")
    parser.add_argument("--classes", default="angry,happy,sad")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    splits = load_dataset_spec(args.data, classes=args.classes, seed=args.seed)
    _, val, source = validation_holdout(splits, args.val_fraction, args.seed)
    save_exclusions(args.out, [s.path for s in val],
                    reason=f"{args.classes} validation images ({source}), kept out of pre-training")
    logger.info("wrote %d images (%s) to %s", len(val), source, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
