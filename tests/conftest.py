"""Shared test fixtures: tiny image datasets built on the fly in temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FER = REPO_ROOT.parent / "shared" / "datasets" / "fer2013"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "browser: drives the real app in headless Chromium (runs by default)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep generated/exported datasets out of the user's real cache."""
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "emotion-cache"))


def write_image(path: Path, seed: int = 0, size: int = 32, mode: str = "RGB") -> Path:
    """A random-noise image, distinct per seed."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def make_class_folders(root: Path, counts: dict[str, int], seed: int = 0, ext: str = ".png") -> Path:
    """``root/<class>/<i>.png`` with ``counts[class]`` images each."""
    k = seed * 10_000
    for cls, n in counts.items():
        for i in range(n):
            k += 1
            write_image(root / cls / f"{cls}_{i}{ext}", seed=k)
    return root


@pytest.fixture
def shared_fer() -> Path:
    if not SHARED_FER.is_dir():
        pytest.skip(f"{SHARED_FER} not present")
    return SHARED_FER


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TINY_MODELS = {  # random-weight stand-ins for trained models: the app's plumbing, not accuracy
    "vit_custom": dict(input_size=32, patch_size=8, dim=32, depth=2, heads=2),
    "efficientnet_lite0": dict(input_size=64),
}


def save_tiny_run(run_dir: Path, model: str = "vit_custom",
                  labels: tuple[str, ...] = ("angry", "happy", "sad"), val_accuracy: float | None = 0.5,
                  seed: int = 0) -> Path:
    """A finished run folder of a tiny random model (``val_accuracy`` goes into metrics.json)."""
    import torch

    from emotion.models import create_model
    from emotion.runs import save_model, write_json

    torch.manual_seed(seed)
    built = create_model(model, len(labels), pretrained=False, **TINY_MODELS[model])
    save_model(run_dir, built.module, built.config, list(labels), built.weights)
    if val_accuracy is not None:
        write_json(Path(run_dir) / "metrics.json", {"val": {"accuracy": val_accuracy}})
    return Path(run_dir)
