"""The synthetic demo dataset: deterministic, cached safely, and labelled by expression only."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import emotion.data.synthetic as synthetic
from emotion.data.sources import DatasetError, load_dataset_spec
from emotion.data.synthetic import (
    EXPRESSIONS,
    GENERATOR_VERSION,
    SyntheticConfig,
    generate_synthetic,
    image_seed,
    materialize_synthetic,
    render_face,
)

TINY = SyntheticConfig(
    classes=("angry", "happy"), train_per_class=3, test_per_class=2, image_size=40
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = _files(generate_synthetic(TINY, tmp_path / "a"))
    b = _files(generate_synthetic(TINY, tmp_path / "b"))
    assert len(a) == 2 * (3 + 2)
    assert a == b


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    a = _files(generate_synthetic(TINY, tmp_path / "a"))
    other = SyntheticConfig(TINY.classes, 3, 2, 40, seed=1)
    b = _files(generate_synthetic(other, tmp_path / "b"))
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_images_do_not_depend_on_order_or_other_classes(tmp_path: Path) -> None:
    full = generate_synthetic(TINY, tmp_path / "full")
    only_happy = generate_synthetic(
        SyntheticConfig(("happy",), train_per_class=2, test_per_class=1, image_size=40),
        tmp_path / "happy",
    )
    for rel in (
        "train/happy/happy_00000.png",
        "train/happy/happy_00001.png",
        "test/happy/happy_00000.png",
    ):
        assert (full / rel).read_bytes() == (only_happy / rel).read_bytes()
    # One image rendered on its own, out of order, matches the file.
    img = render_face("angry", np.random.default_rng(image_seed(0, "test", "angry", 1)), 40)
    on_disk = np.asarray(Image.open(full / "test/angry/angry_00001.png").convert("RGB"))
    assert np.array_equal(np.asarray(img), on_disk)


def test_image_seed_is_the_spawn_tree() -> None:
    root = np.random.SeedSequence(7)
    split = root.spawn(2)[1]  # test
    cls = split.spawn(len(EXPRESSIONS))[EXPRESSIONS.index("sad")]
    child = cls.spawn(4)[3]
    direct = image_seed(7, "test", "sad", 3)
    assert np.array_equal(direct.generate_state(4), child.generate_state(4))
    train = image_seed(7, "train", "sad", 3)
    assert not np.array_equal(direct.generate_state(4), train.generate_state(4))


def test_train_and_test_are_different_images(tmp_path: Path) -> None:
    root = generate_synthetic(TINY, tmp_path)
    train = {p.read_bytes() for p in (root / "train").rglob("*.png")}
    test = {p.read_bytes() for p in (root / "test").rglob("*.png")}
    assert len(train) == 6 and len(test) == 4 and not train & test


# ----------------------------------------------------------------------------- layout


def test_layout_and_counts_on_disk(tmp_path: Path) -> None:
    config = SyntheticConfig(
        ("sad", "angry", "surprise"), train_per_class=4, test_per_class=2, image_size=48
    )
    root = generate_synthetic(config, tmp_path / "out")
    assert root == tmp_path / "out"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    for split, n in (("train", 4), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == ["angry", "sad", "surprise"]
        for cls in config.classes:
            names = sorted(p.name for p in (root / split / cls).iterdir())
            assert names == [f"{cls}_{i:05d}.png" for i in range(n)]
    with Image.open(root / "train/sad/sad_00003.png") as img:
        assert img.mode == "RGB" and img.size == (48, 48)


def test_load_dataset_spec_gives_splits(tmp_path: Path) -> None:
    ds = load_dataset_spec(
        "synthetic:n=5,test=3,size=40,classes=happy+angry+sad", cache_dir=tmp_path
    )
    assert ds.source == "synthetic"
    assert ds.classes == ["angry", "happy", "sad"]
    assert ds.eval_split == "test"
    assert ds.counts() == {
        "train": {"angry": 5, "happy": 5, "sad": 5},
        "test": {"angry": 3, "happy": 3, "sad": 3},
    }
    assert all(s.path.is_file() and tmp_path in s.path.parents for s in ds.train)
    key = SyntheticConfig.from_spec(
        "synthetic:n=5,test=3,size=40,classes=happy+angry+sad"
    ).cache_key()
    assert (tmp_path / "synthetic" / key / "config.json").is_file()


# ----------------------------------------------------------------------------- labels


@pytest.fixture(scope="module")
def learn_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticConfig]:
    """The default three classes, small and at 64 px so the whole module stays fast."""
    config = SyntheticConfig(train_per_class=150, test_per_class=50, image_size=64, seed=0)
    return generate_synthetic(config, tmp_path_factory.mktemp("learn")), config


def _features(root: Path, config: SyntheticConfig, split: str, fn) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for label, cls in enumerate(config.classes):
        for path in sorted((root / split / cls).glob("*.png")):
            with Image.open(path) as img:
                xs.append(fn(img.convert("RGB")))
            ys.append(label)
    return np.array(xs), np.array(ys)


def _fit_score(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, c: float
) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    clf.fit(xtr, ytr)
    return float(clf.score(xte, yte))


def test_expression_is_learnable_from_face_shape(learn_set: tuple[Path, SyntheticConfig]) -> None:
    """HOG of the grey centre crop + logistic regression: ~0.87 measured (chance 0.33)."""
    from skimage.feature import hog

    root, config = learn_set

    def hog_features(img: Image.Image) -> np.ndarray:
        s = img.size[0]
        m = int(s * 0.12)
        grey = (
            img.convert("L").crop((m, m, s - m, s - m)).resize((64, 64), Image.Resampling.BILINEAR)
        )
        return hog(
            np.asarray(grey, np.float32) / 255.0,
            orientations=9,
            pixels_per_cell=(8, 8),
            cells_per_block=(2, 2),
        )

    acc = _fit_score(
        *_features(root, config, "train", hog_features),
        *_features(root, config, "test", hog_features),
        c=0.01,
    )
    assert acc >= 0.8, f"HOG classifier only reached {acc:.3f} on the synthetic test split"


def test_global_colour_and_brightness_do_not_carry_the_label(
    learn_set: tuple[Path, SyntheticConfig],
) -> None:
    """Mean RGB + brightness spread per image: ~0.31 measured, i.e. chance."""
    root, config = learn_set

    def global_stats(img: Image.Image) -> np.ndarray:
        a = np.asarray(img, np.float32) / 255.0
        return np.r_[a.reshape(-1, 3).mean(0), a.mean(2).std()]

    acc = _fit_score(
        *_features(root, config, "train", global_stats),
        *_features(root, config, "test", global_stats),
        c=1.0,
    )
    assert (
        acc <= 0.5
    ), f"global statistics predict the label ({acc:.3f}): nuisance leaks into classes"


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [32, 100])
def test_all_seven_expressions_render(size: int) -> None:
    images = {}
    for expression in EXPRESSIONS:
        img = render_face(expression, np.random.default_rng(123), size)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (size, size)
        arr = np.asarray(img)
        assert arr.std() > 10, f"{expression} rendered a flat image"
        images[expression] = arr
    # Same identity/pose/background stream, different expression: different pixels.
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(images[a], images[b]), f"{a} and {b} look identical"


def test_render_face_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DatasetError, match="contempt"):
        render_face("contempt", rng, 64)
    with pytest.raises(DatasetError, match="out of range"):
        render_face("happy", rng, 8)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": ("angry", "bored")}, r"bored.*supported: angry, disgust, fear"),
        ({"classes": ()}, "empty"),
        ({"classes": ("happy", "happy")}, "more than once"),
        ({"image_size": 16}, r"image_size=16 .*32\.\.512"),
        ({"image_size": 1024}, r"image_size=1024"),
        ({"train_per_class": 0}, r"train_per_class=0"),
        ({"test_per_class": -3}, r"test_per_class=-3"),
        ({"train_per_class": 2.5}, "integer"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        SyntheticConfig(**kwargs)


def test_config_normalises_and_documents_fields() -> None:
    config = SyntheticConfig(classes=["Happy", " sad "])  # type: ignore[arg-type]
    assert config.classes == ("happy", "sad")
    assert config == SyntheticConfig(classes=("happy", "sad"))
    import dataclasses

    for f in dataclasses.fields(SyntheticConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"


def test_from_spec_parses() -> None:
    assert SyntheticConfig.from_spec("synthetic") == SyntheticConfig()
    assert SyntheticConfig.from_spec(" synthetic: ") == SyntheticConfig()
    config = SyntheticConfig.from_spec("synthetic:n=100,test=20,size=64,seed=3,classes=angry+happy")
    assert config == SyntheticConfig(("angry", "happy"), 100, 20, 64, 3)
    assert SyntheticConfig.from_spec(config.to_spec()) == config
    assert SyntheticConfig.from_spec("synthetic: size = 48 , classes = fear+disgust").classes == (
        "fear",
        "disgust",
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "synthetic:colour=red",
            r"unknown synthetic spec key 'colour'.*known keys: n, train, test",
        ),
        ("synthetic:n=ten", r"n='ten' is not an integer"),
        ("synthetic:size=20", r"image_size=20"),
        ("synthetic:n", "needs key=value"),
        ("synthetic:n=3,n=4", "twice"),
        ("synthetic:classes=happy+grumpy", "grumpy"),
        ("synthetic:test=0", "test_per_class=0"),
        ("synth", "not a synthetic dataset spec"),
    ],
)
def test_from_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        SyntheticConfig.from_spec(spec)


def test_cache_key_changes_with_every_field_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    base = SyntheticConfig()
    variants = [
        SyntheticConfig(classes=("angry", "happy")),
        SyntheticConfig(train_per_class=201),
        SyntheticConfig(test_per_class=51),
        SyntheticConfig(image_size=97),
        SyntheticConfig(seed=1),
    ]
    keys = {base.cache_key()} | {v.cache_key() for v in variants}
    assert len(keys) == 6
    assert all("/" not in k and os.sep not in k for k in keys)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    assert base.cache_key() not in keys


# ----------------------------------------------------------------------------- cache


def test_materialize_generates_once_then_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = materialize_synthetic(TINY, tmp_path)
    assert folder == tmp_path / TINY.cache_key()
    marker = json.loads((folder / "config.json").read_text())
    assert marker["cache_key"] == TINY.cache_key() and marker["classes"] == ["angry", "happy"]
    assert len(list(folder.rglob("*.png"))) == 10
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    def boom(*args, **kwargs):
        raise AssertionError("materialize regenerated a complete set")

    monkeypatch.setattr(synthetic, "generate_synthetic", boom)
    assert materialize_synthetic(TINY, tmp_path) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == mtimes
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_materialize_survives_leftovers(tmp_path: Path) -> None:
    key = TINY.cache_key()
    fresh = tmp_path / f".tmp-{key}-12345-deadbeef"  # another process may still be writing it
    (fresh / "train" / "angry").mkdir(parents=True)
    (fresh / "train" / "angry" / "angry_00000.png").write_bytes(b"half")
    stale = tmp_path / f".tmp-{key}-999-cafecafe"  # a crash long ago
    stale.mkdir()
    old = time.time() - 7 * 24 * 3600
    os.utime(stale, (old, old))
    incomplete = tmp_path / key  # no marker: must not be trusted
    (incomplete / "train").mkdir(parents=True)

    folder = materialize_synthetic(TINY, tmp_path)
    assert folder == incomplete
    assert (folder / "config.json").is_file()
    assert len(list(folder.rglob("*.png"))) == 10
    assert fresh.is_dir() and not stale.exists()


def test_crash_during_generation_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthetic.generate_synthetic

    def crash(config: SyntheticConfig, out_dir: Path) -> Path:
        real(SyntheticConfig(("angry",), 1, 1, 40), out_dir)  # some files written...
        raise KeyboardInterrupt  # ...then the process is interrupted

    monkeypatch.setattr(synthetic, "generate_synthetic", crash)
    with pytest.raises(KeyboardInterrupt):
        materialize_synthetic(TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "generate_synthetic", real)
    assert (materialize_synthetic(TINY, tmp_path) / "config.json").is_file()


def test_losing_a_race_uses_the_winners_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthetic.generate_synthetic
    winner_files: dict[str, bytes] = {}

    def slow_loser(config: SyntheticConfig, out_dir: Path) -> Path:
        real(config, out_dir)
        # Meanwhile another process finished first and renamed its copy into place.
        monkeypatch.setattr(synthetic, "generate_synthetic", real)
        winner = materialize_synthetic(config, tmp_path)
        (winner / "winner.txt").write_text("first")
        winner_files.update(_files(winner))
        return out_dir

    monkeypatch.setattr(synthetic, "generate_synthetic", slow_loser)
    folder = materialize_synthetic(TINY, tmp_path)
    assert (folder / "winner.txt").read_text() == "first"
    assert _files(folder) == winner_files
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def _materialize_in_child(cache_root: str) -> str:
    return str(materialize_synthetic(TINY, Path(cache_root)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_processes_agree(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(_materialize_in_child, [str(tmp_path)] * 2)
    assert results[0] == results[1] == str(tmp_path / TINY.cache_key())
    assert [p.name for p in tmp_path.iterdir()] == [TINY.cache_key()]
    assert len(list(Path(results[0]).rglob("*.png"))) == 10
