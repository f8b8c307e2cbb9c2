"""Hugging Face datasets: local imagefolder and save_to_disk paths work offline; the Hub fails fast."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_class_folders
from emotion.hf_hub import hub_reachable
from emotion.data.sources import DatasetError, load_dataset_spec


def test_imagefolder_spec(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "src" / "train", {"angry": 3, "happy": 2})
    make_class_folders(tmp_path / "src" / "test", {"angry": 1, "happy": 1}, seed=1)
    ds = load_dataset_spec(f"hf:imagefolder:{tmp_path / 'src'}", cache_dir=tmp_path / "cache")
    assert ds.source == "hf" and ds.classes == ["angry", "happy"]
    assert ds.counts() == {"train": {"angry": 3, "happy": 2}, "test": {"angry": 1, "happy": 1}}
    # exported once, then reused
    again = load_dataset_spec(f"hf:imagefolder:{tmp_path / 'src'}", cache_dir=tmp_path / "cache")
    assert again.root == ds.root


def test_save_to_disk_spec_with_classlabel_and_no_test_split(tmp_path: Path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(10)]
    features = datasets.Features({"img": datasets.Image(),
                                  "emotion": datasets.ClassLabel(names=["sad", "happy"])})
    d = datasets.Dataset.from_dict({"img": images, "emotion": [0] * 5 + [1] * 5}, features=features)
    d.save_to_disk(str(tmp_path / "saved"))
    ds = load_dataset_spec(f"hf:disk:{tmp_path / 'saved'}", classes="sad,happy",
                           cache_dir=tmp_path / "cache")
    assert ds.classes == ["sad", "happy"]
    assert ds.counts() == {"train": {"sad": 4, "happy": 4}, "test": {"sad": 1, "happy": 1}}


def test_dataset_without_classlabel_is_explained(tmp_path: Path) -> None:
    import datasets

    d = datasets.Dataset.from_dict({"img": [Image.new("L", (4, 4))], "label": ["x"]},
                                   features=datasets.Features({"img": datasets.Image(),
                                                               "label": datasets.Value("string")}))
    d.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DatasetError, match="ClassLabel"):
        load_dataset_spec(f"hf:disk:{tmp_path / 'saved'}", cache_dir=tmp_path / "cache")


def test_offline_hub_fails_fast_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a closed local port stands in for an unreachable Hub on any machine
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert not hub_reachable()
    start = time.monotonic()
    with pytest.raises(DatasetError, match="offline.*class folders"):
        load_dataset_spec("hf:someone/emotions-not-cached", cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 30  # generous: the point is "no retry loop", not speed


def test_bad_hf_specs(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a Hub dataset id"):
        load_dataset_spec("hf:a/b/c", cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset_spec(f"hf:imagefolder:{tmp_path / 'missing'}", cache_dir=tmp_path)
