#!/usr/bin/env bash
# The installed package works outside the repository: after `pip install .`, the `emotion` command
# runs from an empty folder and predicts a real face with the model installed with the package.
# Uses the `emotion` and `python` of the active environment; .ci/run calls it after `pip install .`.
# Locally: pip install . && .ci/check_install.sh   (installing replaces an editable install)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
unset PYTHONPATH EMOTION_DEFAULT_MODEL_DIR  # the installed copy alone must answer

if ! command -v emotion >/dev/null 2>&1; then
  echo "check_install: no 'emotion' command on PATH; run 'pip install .' in this environment first" >&2
  exit 1
fi
emotion --help >/dev/null

# scikit-image ships NASA's public-domain astronaut portrait (one face) with the package
python -c "from PIL import Image; from skimage import data; Image.fromarray(data.astronaut()).save('astronaut.png')"
emotion predict astronaut.png --json >predict.json

python - "$REPO" predict.json <<'EOF'
"""Check the prediction: one face or more, each with a label, from the model installed with the package."""
import json
import logging
import sys
from pathlib import Path

import emotion

repo, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
lines = out.read_text().splitlines()
if len(lines) != 1:
    sys.exit(f"check_install: expected one JSON line from 'emotion predict', got {len(lines)}: {lines!r}")
doc = json.loads(lines[0])
faces = doc.get("faces") or []
if not faces or not all(f.get("label") in doc["labels"] for f in faces):
    sys.exit(f"check_install: no labelled face in the astronaut photo: {doc!r}")
package = Path(emotion.__file__).resolve().parent
run = Path(doc["run"]).resolve()
if repo in package.parents or repo in run.parents:
    sys.exit(f"check_install: used the repository ({package}, {run}), not the installed package; "
             "run this from an environment where 'pip install .' (not -e) installed emotion")
if package not in run.parents:
    sys.exit(f"check_install: the model came from {run}, not from the installed package {package}")
logging.basicConfig(level=logging.INFO, format="%(message)s")
logging.info("check_install: ok: %d face(s), %s %.0f%%, model %s from %s", len(faces), faces[0]["label"],
             100 * faces[0]["confidence"], doc["model"], run)
EOF
