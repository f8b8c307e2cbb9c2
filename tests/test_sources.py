"""Loader layouts: HES nesting, train/test and train/val pairs, one folder split 80/20, class subsets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import make_class_folders, write_image
from emotion.data.sources import (
    DatasetError,
    load_dataset_spec,
    load_exclusions,
    load_folder_dataset,
    parse_classes,
    save_exclusions,
    stratified_split,
)


def test_hes_nested_layout_found_from_outer_folder(tmp_path: Path) -> None:
    inner = tmp_path / "Emotions Dataset" / "Emotions Dataset"
    make_class_folders(inner / "train", {"angry": 3, "happy": 4, "sad": 2}, ext=".jpg")
    make_class_folders(inner / "test", {"angry": 1, "happy": 2, "sad": 1}, seed=1, ext=".jpg")
    ds = load_folder_dataset(tmp_path)
    assert ds.source == "hes"
    assert ds.root == inner
    assert ds.classes == ["angry", "happy", "sad"]
    assert ds.counts() == {"train": {"angry": 3, "happy": 4, "sad": 2},
                           "test": {"angry": 1, "happy": 2, "sad": 1}}


def test_train_val_pair_and_class_subset_in_given_order(tmp_path: Path) -> None:
    seven = {c: 2 for c in ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]}
    make_class_folders(tmp_path / "train", seven)
    make_class_folders(tmp_path / "val", seven, seed=1)
    ds = load_folder_dataset(tmp_path, classes="sad,angry,happy")
    assert ds.source == "folder" and set(ds.splits) == {"train", "val"}
    assert ds.eval_split == "val"
    assert ds.classes == ["sad", "angry", "happy"]
    assert {s.path.parent.name for s in ds.train if s.label == 0} == {"sad"}
    assert sum(ds.counts()["train"].values()) == 6


def test_unknown_class_names_the_available_ones(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", {"angry": 1, "happy": 1})
    make_class_folders(tmp_path / "test", {"angry": 1, "happy": 1}, seed=1)
    with pytest.raises(DatasetError, match=r"\['contempt'\].*available: \['angry', 'happy'\]"):
        load_folder_dataset(tmp_path, classes=["angry", "contempt"])


def test_class_match_is_case_insensitive(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Train", {"Angry": 2, "Happy": 2})
    make_class_folders(tmp_path / "Test", {"angry": 1, "happy": 1}, seed=1)
    ds = load_folder_dataset(tmp_path, classes="angry,happy")
    assert ds.classes == ["Angry", "Happy"]
    assert ds.counts()["test"] == {"Angry": 1, "Happy": 1}


def test_single_folder_split_is_stratified_and_deterministic(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"a": 50, "b": 20, "c": 10})
    ds1 = load_folder_dataset(tmp_path, seed=3)
    ds2 = load_folder_dataset(tmp_path, seed=3)
    ds3 = load_folder_dataset(tmp_path, seed=4)
    assert ds1.source == "split-folder"
    assert ds1.counts()["test"] == {"a": 10, "b": 4, "c": 2}
    assert ds1.counts()["train"] == {"a": 40, "b": 16, "c": 8}
    assert [s.path for s in ds1.splits["test"]] == [s.path for s in ds2.splits["test"]]
    assert {s.path for s in ds1.splits["test"]} != {s.path for s in ds3.splits["test"]}
    assert not {s.path for s in ds1.train} & {s.path for s in ds1.splits["test"]}


def test_stratified_split_keeps_tiny_classes_in_both_parts() -> None:
    from emotion.data.sources import Sample

    samples = [Sample(Path(f"{c}{i}"), lab) for lab, (c, n) in enumerate([("x", 2), ("y", 3), ("z", 1)])
               for i in range(n)]
    train, test = stratified_split(samples, 0.2, seed=0)
    assert Counter(s.label for s in test) == {0: 1, 1: 1}
    assert Counter(s.label for s in train) == {0: 1, 1: 2, 2: 1}
    with pytest.raises(DatasetError, match="test_fraction"):
        stratified_split(samples, 1.5)


def test_junk_files_ignored_and_corrupt_files_listed_for_later(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", {"a": 2, "b": 2})
    make_class_folders(tmp_path / "test", {"a": 1, "b": 1}, seed=1)
    (tmp_path / "train" / "a" / "notes.txt").write_text("hi")
    (tmp_path / "train" / "a" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"garbage")
    (tmp_path / "train" / "empty_class").mkdir()
    ds = load_folder_dataset(tmp_path)
    assert ds.classes == ["a", "b"]  # the empty folder is no class
    names = sorted(s.path.name for s in ds.train)
    assert "notes.txt" not in names and ".DS_Store" not in names
    assert "broken.jpg" in names  # decoding (and skipping) happens in the cache/audit


def test_nested_subfolders_inside_a_class_are_included(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "batch1" / "x.png", 1)
    write_image(tmp_path / "train" / "b" / "y.png", 2)
    write_image(tmp_path / "test" / "a" / "z.png", 3)
    ds = load_folder_dataset(tmp_path)
    assert ds.counts()["train"] == {"a": 1, "b": 1}
    assert any("test/ has no images for ['b']" in n for n in ds.notes)


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (p.parent.mkdir(exist_ok=True), p.write_text("x")), "is a file"),
])
def test_bad_roots_give_clear_errors(tmp_path: Path, setup, match: str) -> None:
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DatasetError, match=match):
        load_folder_dataset(root)


def test_spec_errors() -> None:
    with pytest.raises(DatasetError, match="no dataset given"):
        load_dataset_spec("  ")
    with pytest.raises(DatasetError, match="more than once"):
        parse_classes("a,b,a")
    assert parse_classes(" a, b ,") == ["a", "b"]
    assert parse_classes("") is None


def test_exclusions_roundtrip_without_touching_files(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "d", {"a": 5, "b": 5})
    ds = load_folder_dataset(tmp_path / "d")
    victim = ds.train[0].path
    lst = save_exclusions(tmp_path / "excl.json", [victim], reason="blank")
    excluded = ds.exclude(load_exclusions(lst))
    assert victim not in {s.path for s in excluded.train}
    assert sum(len(v) for v in excluded.splits.values()) == 9
    assert victim.exists()
    test_victim = ds.splits["test"][0].path
    kept = ds.exclude([victim, test_victim], only=("train",))
    assert test_victim in {s.path for s in kept.splits["test"]}
    assert victim not in {s.path for s in kept.train}
    assert load_exclusions(tmp_path / "missing.json") == []
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed"):
        load_exclusions(tmp_path / "bad.json")


def test_fer2013_subset(shared_fer: Path) -> None:
    ds = load_folder_dataset(shared_fer, classes="angry,happy,sad")
    counts = ds.counts()
    assert counts["train"] == {"angry": 3995, "happy": 7215, "sad": 4830}
    assert counts["test"] == {"angry": 467, "happy": 895, "sad": 653}


def test_is_grayscale_follows_the_image_files(tmp_path: Path) -> None:
    for cls in ("happy", "sad"):
        for i in range(3):
            write_image(tmp_path / "grey" / cls / f"{i}.png", seed=i, mode="L")
    grey = load_folder_dataset(tmp_path / "grey")
    assert grey.is_grayscale() is True
    write_image(tmp_path / "grey" / "happy" / "colour.png", seed=9)
    assert load_folder_dataset(tmp_path / "grey").is_grayscale() is False
    assert load_dataset_spec("synthetic:n=30").is_grayscale() is False
