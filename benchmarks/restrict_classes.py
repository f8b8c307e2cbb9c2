"""Make a run that answers over a subset of another run's classes, by keeping those rows of its head.

A softmax over the kept rows' logits is exactly the original model's
probabilities renormalised over those classes, so a 7-class FER2013 model
becomes an angry/happy/sad model without any training:

    python benchmarks/restrict_classes.py checkpoints/runs/fer7-efficientnet_lite0-96-long \\
        --classes angry,happy,sad --validate-like checkpoints/default --out checkpoints/runs/fer7long-as-fer3

The new run keeps the source's config records (data, training, inference hints)
and names its origin in ``weights_source``; fit its temperature on the subset's
validation images afterwards (``evaluate --split val --fit-temperature``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion import runs  # noqa: E402
from emotion.data.sources import parse_classes  # noqa: E402

logger = logging.getLogger("restrict_classes")


SPLIT_FIELDS = ("data", "classes", "exclude_file", "val_fraction", "seed")


def restrict(run_dir: Path, classes: list[str], out: Path, validate_like: Path | None = None) -> Path:
    """Write the restricted run into ``out`` (which must not hold a run yet).

    ``validate_like``: a run whose validation images the new run is scored and
    calibrated on (its data, classes, exclusions, fraction and seed are copied
    into the new run's training record); use it only when the source never
    trained on those images, e.g. a 7-class run that excluded the 3-class
    validation images (``benchmarks/fer3_val_exclusions.py``).
    """
    loaded = runs.load_run(run_dir)
    missing = [c for c in classes if c not in loaded.labels]
    if missing:
        raise SystemExit(f"error: {run_dir} has no class {missing}; its classes are {loaded.labels}")
    if (out / runs.CONFIG_FILE).exists():
        raise SystemExit(f"error: {out} already holds a run; choose another --out")
    get_classifier = getattr(loaded.module, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Linear):
        raise SystemExit(f"error: {loaded.spec['model']} has no single linear classifier head to restrict")
    rows = torch.tensor([loaded.labels.index(c) for c in classes])
    with torch.no_grad():
        new_head = nn.Linear(head.in_features, len(classes), bias=head.bias is not None)
        new_head.weight.copy_(head.weight[rows])
        if head.bias is not None:
            new_head.bias.copy_(head.bias[rows])
    loaded.module.reset_classifier(len(classes))
    loaded.module.get_classifier().load_state_dict(new_head.state_dict())
    extra = {k: v for k, v in loaded.spec.items() if k in ("train_config", "data", "environment", "inference")}
    extra["restricted_from"] = {"run": str(run_dir), "labels": list(loaded.labels), "kept": list(classes)}
    if validate_like is not None:
        other = runs.train_config_of(runs.read_json(validate_like / runs.CONFIG_FILE), validate_like)
        extra["train_config"] = {**(extra.get("train_config") or {}),
                                 **{k: other.get(k) for k in SPLIT_FIELDS}}
        extra["restricted_from"]["validated_like"] = str(validate_like)
    runs.save_model(out, loaded.module, loaded.config, list(classes), f"local:{run_dir} (head rows {classes})",
                    extra)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run whose head is restricted")
    parser.add_argument("--classes", required=True, help="comma-separated classes to keep, in the new order")
    parser.add_argument("--out", type=Path, required=True, help="the new run folder")
    parser.add_argument("--validate-like", type=Path, default=None,
                        help="a run whose validation images the new run is scored and calibrated on (only "
                             "when the source never trained on them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = restrict(args.run, parse_classes(args.classes) or [], args.out, args.validate_like)
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
