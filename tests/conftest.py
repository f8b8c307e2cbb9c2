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
