"""How tightly a training set frames its faces, as the face margin prediction should crop with.

A model trained on whole images of tight face crops (FER2013) has only ever
seen faces framed that way; at prediction time MTCNN finds a face in a photo
and the crop around its box should match.  This script runs MTCNN on a seeded
sample of the training images (upscaled, since 48 px faces are below MTCNN's
reach) and reports the image side over the box side; the margin that
reproduces the framing is ``(ratio - 1) / 2`` (``crop_face`` takes the box side
plus that margin on each side), clipped at 0.  Only training images are read.

    python benchmarks/fer_framing.py ../shared/datasets/fer2013 --classes angry,happy,sad --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.data.sources import load_dataset_spec  # noqa: E402
from emotion.faces import DetectorConfig, FaceDetector  # noqa: E402
from emotion.images import ImageLoadError, load_image  # noqa: E402


def framing(data: str, classes: Optional[str], sample: int, upscale: int, seed: int) -> dict:
    splits = load_dataset_spec(data, classes=classes)
    samples = list(splits.train)
    random.Random(seed).shuffle(samples)
    detector = FaceDetector(DetectorConfig(min_face_size=20))
    ratios: list[float] = []
    tried = 0
    for s in samples[:sample]:
        try:
            img = load_image(s.path).resize((upscale, upscale), Image.Resampling.BICUBIC)
        except ImageLoadError:
            continue
        tried += 1
        faces = detector.detect(img)
        if faces:
            face = max(faces, key=lambda f: f.area)
            ratios.append(upscale / max(face.width, face.height))
    if not ratios:
        raise SystemExit(f"error: MTCNN found no face in {tried} training images of {data}")
    r = np.asarray(ratios)
    median = float(np.median(r))
    return {"data": data, "classes": classes, "images": tried, "detected": len(r),
            "side_over_box_median": round(median, 3),
            "side_over_box_iqr": [round(float(np.percentile(r, 25)), 3), round(float(np.percentile(r, 75)), 3)],
            "implied_margin": round((median - 1) / 2, 3), "margin": round(max(0.0, (median - 1) / 2), 3)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="dataset whose train split is measured")
    parser.add_argument("--classes", default=None, help="comma-separated class subset")
    parser.add_argument("--sample", type=int, default=400, help="training images to measure")
    parser.add_argument("--upscale", type=int, default=192, help="side the images are enlarged to first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = framing(args.data, args.classes, args.sample, args.upscale, args.seed)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
