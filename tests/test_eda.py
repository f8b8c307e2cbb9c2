"""EDA helpers: sample grids, mean faces (per class and per batch), image properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion import eda
from emotion.data.sources import load_dataset_spec


def _flat_folder(root: Path) -> Path:
    """Class folders of flat-coloured images: angry black, happy white, sad two greys and a broken file."""
    for cls, values in {"angry": [0, 0, 0], "happy": [255, 255], "sad": [100, 200]}.items():
        for i, v in enumerate(values):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (v, v, v)).save(root / cls / f"{i}.png")
    Image.new("L", (20, 20), 50).save(root / "sad" / "gray.png")
    (root / "sad" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture
def flat(tmp_path: Path):
    folder = _flat_folder(tmp_path / "flat")
    return load_dataset_spec(folder, test_fraction=0.4, seed=0)


def test_mean_faces_average_each_class(flat) -> None:
    faces = {f.label: f for f in eda.mean_faces(flat, split="all", size=8)}
    assert list(faces) == ["angry", "happy", "sad"]
    assert faces["angry"].image.shape == (8, 8, 3) and faces["angry"].image.max() == 0
    assert faces["happy"].image.min() == 255
    sad = faces["sad"]
    assert sad.count == 3 and sad.unreadable == 1
    assert sad.image[0, 0, 0] == round((100 + 200 + 50) / 3)


def test_mean_faces_respect_the_per_class_cap(flat) -> None:
    faces = eda.mean_faces(flat, split="all", size=8, per_class=1)
    # sad is left out when its one pick is the broken file
    assert [f.label for f in faces][:2] == ["angry", "happy"]
    assert all(f.count == 1 and f.unreadable == 0 for f in faces)


def test_batch_mean_faces_follow_file_order(flat) -> None:
    samples = eda.samples_of(flat, "all")
    faces = eda.batch_mean_faces(flat, split="all", batch_size=3, batches=10, size=4)
    assert len(faces) == -(-len(samples) // 3)
    assert faces[0].label.startswith("batch 1 (")
    shuffled = eda.batch_mean_faces(flat, split="all", batch_size=3, batches=2, size=4, shuffle=True, seed=1)
    assert len(shuffled) == 2
    with pytest.raises(ValueError):
        eda.batch_mean_faces(flat, batch_size=0)


def test_sample_grid_is_per_class_and_seeded(flat) -> None:
    grid = eda.sample_grid(flat, "all", per_class=2, seed=3)
    assert list(grid) == ["angry", "happy", "sad"]
    assert all(len(v) == 2 for v in grid.values())
    assert eda.sample_grid(flat, "all", per_class=2, seed=3) == grid
    assert all(p.parent.name == c for c, files in grid.items() for p in files)
    with pytest.raises(ValueError, match="no 'val' split"):
        eda.sample_grid(flat, "val")


def test_image_properties_read_headers_and_flag_broken_files(flat) -> None:
    rows = eda.image_properties(flat)
    assert len(rows) == 9
    modes = {Path(r["file"]).name: r["mode"] for r in rows if r["class"] == "sad"}
    assert modes["gray.png"] == "L" and modes["broken.png"] == "unreadable"
    summary = eda.summarize_properties(rows)
    assert summary["unreadable"] == 1 and summary["sizes"]["40x30"] == 7 and summary["sizes"]["20x20"] == 1
    assert summary["modes"] == {"RGB": 7, "L": 1, "unreadable": 1}
    assert summary["median_width"] == 40.0
    assert len(eda.image_properties(flat, max_images=4)) == 4


def test_mean_face_of_synthetic_data_is_a_face() -> None:
    ds = load_dataset_spec("synthetic:n=12,test=3,size=48")
    faces = eda.mean_faces(ds, size=32)
    assert [f.count for f in faces] == [12, 12, 12]
    assert all(np.asarray(f.image).std() > 5 for f in faces)  # structure, not a flat grey
