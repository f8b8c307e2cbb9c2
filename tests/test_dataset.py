"""Decoded-image cache, transforms from the model config, class weights, the torch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from conftest import make_class_folders, write_image
from emotion.data.cache import DecodedImageCache
from emotion.data.dataset import FaceImageDataset, balanced_class_weights
from emotion.data.sources import DatasetError, load_folder_dataset
from emotion.data.transforms import AugmentationConfig, PreprocessConfig, build_transform, denormalize
from emotion.images import ImageLoadError


def test_class_weights_match_sklearn_balanced() -> None:
    labels = [0] * 10 + [1] * 30 + [2] * 5
    ours = balanced_class_weights(labels, 3).numpy()
    ref = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert ours[2] > ours[0] > ours[1]


def test_class_weights_errors() -> None:
    with pytest.raises(DatasetError, match=r"\[1\] have no training images"):
        balanced_class_weights([0, 0, 2], 3)
    with pytest.raises(DatasetError, match="empty"):
        balanced_class_weights([], 2)
    with pytest.raises(DatasetError, match="labels must lie"):
        balanced_class_weights([0, 5], 2)


def test_cache_is_keyed_by_content(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.png", seed=1)
    copy = tmp_path / "copy.png"
    copy.write_bytes(a.read_bytes())
    cache = DecodedImageCache(disk_dir=tmp_path / "cache")
    first = cache.get(a, 16)
    assert first.shape == (16, 16, 3) and cache.misses == 1
    assert cache.get(copy, 16) is first and cache.hits == 1  # same bytes, other name: a hit
    assert not first.flags.writeable
    cache.get(a, 24)
    assert cache.misses == 2  # another stored size is another entry
    # a new process (fresh cache object) reads from disk instead of decoding
    fresh = DecodedImageCache(disk_dir=tmp_path / "cache")
    np.testing.assert_array_equal(fresh.get(copy, 16), first)
    assert fresh.misses == 0 and fresh.hits == 1
    # editing the file changes its key
    write_image(a, seed=2)
    assert not np.array_equal(fresh.get(a, 16), first)


def test_cache_survives_damaged_entry_and_reports_corrupt(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.png", seed=1)
    cache = DecodedImageCache(disk_dir=tmp_path / "c", memory=False)
    cache.get(a)
    entry = next((tmp_path / "c").rglob("*.npy"))
    entry.write_bytes(b"junk")
    assert cache.get(a).shape == (32, 32, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"xx")
    failed = cache.warm([a, bad])
    assert list(failed) == [str(bad)] and "bad.jpg" in failed[str(bad)]
    with pytest.raises(ImageLoadError):
        cache.get(tmp_path / "gone.png")


def test_transforms_follow_preprocess_config() -> None:
    pre = PreprocessConfig(input_size=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = np.full((48, 48, 3), 191, dtype=np.uint8)
    out = build_transform(pre, train=False)(img)
    assert out.shape == (3, 40, 40) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (191 / 255 - 0.5) / 0.25), atol=1e-5)
    np.testing.assert_allclose(denormalize(out, pre), np.full((40, 40, 3), 191), atol=1)


def test_augmentation_changes_training_images_only() -> None:
    torch.manual_seed(0)
    pre = PreprocessConfig(input_size=32)
    img = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    aug = AugmentationConfig()
    train_tf, eval_tf = build_transform(pre, aug, train=True), build_transform(pre, aug, train=False)
    assert torch.equal(eval_tf(img), eval_tf(img))
    outs = [train_tf(img) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    off = build_transform(pre, AugmentationConfig(augment=False), train=True)
    assert torch.equal(off(img), eval_tf(img))


@pytest.mark.parametrize("kwargs,match", [
    ({"rotation_degrees": -1}, "rotation"), ({"brightness": 1.5}, "brightness"),
    ({"crop_scale_min": 0}, "crop_scale_min"),
])
def test_augmentation_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentationConfig(**kwargs)


def test_preprocess_validation() -> None:
    with pytest.raises(ValueError, match="input_size"):
        PreprocessConfig(input_size=2)
    with pytest.raises(ValueError, match="std"):
        PreprocessConfig(std=(0.0, 1.0, 1.0))


def test_dataset_items_and_corrupt_files_skipped(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", {"a": 3, "b": 2})
    make_class_folders(tmp_path / "test", {"a": 1, "b": 1}, seed=1)
    (tmp_path / "train" / "b" / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    splits = load_folder_dataset(tmp_path)
    pre = PreprocessConfig(input_size=24)
    ds = FaceImageDataset(splits.train, build_transform(pre), decode_size=24)
    assert len(ds) == 6
    failed = ds.drop_unreadable()
    assert len(failed) == 1 and next(iter(failed)).endswith("zz_corrupt.png")
    assert len(ds) == 5 and ds.labels == [0, 0, 0, 1, 1]
    item = ds[4]
    assert item["pixel_values"].shape == (3, 24, 24) and item["labels"] == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (5, 3, 24, 24)
    assert batch["labels"].tolist() == [0, 0, 0, 1, 1]
