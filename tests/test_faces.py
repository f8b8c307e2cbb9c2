"""MTCNN face detection, crops, alignment, miss policies and the cached dataset crop step.

Uses the real facenet-pytorch MTCNN (weights ship in the wheel) on
``skimage.data.astronaut()``, whose one face was checked by eye to sit at
about x 180-268, y 60-175 of the 512x512 image.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("facenet_pytorch")
skdata = pytest.importorskip("skimage.data")

from emotion.data.sources import load_folder_dataset  # noqa: E402
from emotion.faces import (  # noqa: E402
    CropConfig,
    DetectorConfig,
    Face,
    FaceDetectionError,
    FaceDetector,
    MissPolicy,
    crop_face,
    crop_image,
    fallback_crop,
    get_detector,
    select_face,
)
from emotion.face_crops import CropReport, crop_dataset  # noqa: E402
from emotion.images import ImageLoadError, file_digest  # noqa: E402

FACE_REGION = (180, 60, 268, 175)  # astronaut's face, measured on an overlay
BRIEF_REGION = (150, 60, 230, 150)  # the rough region given in the task
TIGHT_BOX = (190, 85, 260, 155)  # eyebrows to chin: a FER-style tight crop


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorConfig())


@pytest.fixture(scope="module")
def astro_face(detector: FaceDetector, astronaut: Image.Image) -> Face:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def tight_crop(astronaut: Image.Image) -> Image.Image:
    """A 48x48 grayscale face crop like FER2013, on which MTCNN finds nothing."""
    return astronaut.crop(TIGHT_BOX).convert("L").resize((48, 48), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- detection


def test_astronaut_has_one_face_in_the_right_place(astro_face: Face) -> None:
    f = astro_face
    assert f.score >= 0.9
    assert iou(f.box, FACE_REGION) > 0.7
    assert iou(f.box, BRIEF_REGION) > 0.2  # overlaps the brief's rough region too
    cx, cy = f.center
    assert 200 < cx < 250 and 100 < cy < 140
    assert 60 < f.width < 120 and 80 < f.height < 140
    assert len(f.landmarks) == 5
    x1, y1, x2, y2 = f.box
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in f.landmarks)
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = f.landmarks
    assert lex < rex and mlx < mrx  # left/right as seen in the image
    assert max(ley, rey) < ny < min(mly, mry)  # eyes above nose above mouth
    assert abs(f.eye_angle) < 10
    d = f.to_dict()
    assert set(d) == {"box", "landmarks", "score"} and set(d["landmarks"]) >= {"left_eye", "nose"}
    assert Face.from_dict(json.loads(json.dumps(d))).box == pytest.approx(f.box, abs=0.01)


def test_uniform_grey_image_has_no_faces(detector: FaceDetector) -> None:
    assert detector.detect(Image.new("RGB", (160, 120), (128, 128, 128))) == []


def test_image_smaller_than_min_face_size_gives_no_faces(detector: FaceDetector) -> None:
    assert detector.detect(np.full((10, 12, 3), 90, np.uint8)) == []


def test_two_faces_side_by_side_ordered_left_to_right(detector: FaceDetector,
                                                      astronaut: Image.Image) -> None:
    arr = np.asarray(astronaut)
    both = np.hstack([arr[:, ::-1], arr])  # mirrored copy first, so the order is checkable
    faces = detector.detect(both)
    assert len(faces) == 2
    assert faces[0].center[0] < faces[1].center[0]
    assert faces[0].box[2] < 512 <= faces[1].box[0]
    assert iou(faces[1].box, tuple(v + (512 if i % 2 == 0 else 0) for i, v in enumerate(FACE_REGION))) > 0.6
    assert select_face(faces, "largest") in faces
    assert select_face(faces, "most_confident").score == max(f.score for f in faces)


def test_max_side_downscale_maps_boxes_back_to_original_pixels(astronaut: Image.Image,
                                                               astro_face: Face) -> None:
    full = [astro_face]  # 512 px < default max_side: full resolution
    small = FaceDetector(DetectorConfig(max_side=256)).detect(astronaut)
    assert len(full) == len(small) == 1
    tol = 0.08 * full[0].width
    assert small[0].box == pytest.approx(full[0].box, abs=tol)
    for p, q in zip(small[0].landmarks, full[0].landmarks):
        assert p == pytest.approx(q, abs=tol)


def test_detect_accepts_paths_bytes_and_arrays(tmp_path: Path, detector: FaceDetector,
                                               astronaut: Image.Image) -> None:
    small = astronaut.resize((256, 256))
    expected = detector.detect(small)
    assert len(expected) == 1
    path = tmp_path / "a.png"
    small.save(path)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    for source in (path, str(path), buf.getvalue(), np.asarray(small)):
        faces = detector.detect(source)
        assert len(faces) == 1 and faces[0].box == pytest.approx(expected[0].box, abs=1e-3)
    with pytest.raises(ImageLoadError):
        detector.detect(b"definitely not an image")


def test_detect_is_thread_safe(detector: FaceDetector, astronaut: Image.Image) -> None:
    small = astronaut.resize((256, 256))
    expected = detector.detect(small)
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            results.append(detector.detect(small))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4
    assert all(len(r) == 1 and r[0].box == pytest.approx(expected[0].box, abs=1e-3) for r in results)


def test_shared_detector_is_reused_per_config() -> None:
    assert get_detector() is get_detector(DetectorConfig())
    assert get_detector(DetectorConfig(min_face_size=40)) is not get_detector()


def test_missing_facenet_pytorch_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes the import fail
    with pytest.raises(FaceDetectionError, match="pip install facenet-pytorch"):
        FaceDetector().detect(Image.new("RGB", (64, 64)))


# --------------------------------------------------------------------------- crops


def test_crop_sizes_and_margins(astronaut: Image.Image, astro_face: Face) -> None:
    side = max(astro_face.width, astro_face.height)
    assert crop_face(astronaut, astro_face, margin=0).size == (round(side),) * 2
    assert crop_face(astronaut, astro_face, margin=0.5).size == (round(2 * side),) * 2
    assert crop_face(astronaut, astro_face, margin=0.2, size=64).size == (64, 64)


def test_crop_is_an_exact_copy_inside_the_image() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
    out = crop_face(img, Face((30, 20, 70, 60)), margin=0.25)  # 40 px + 10 px each side
    assert out.size == (60, 60)
    assert np.array_equal(np.asarray(out), np.asarray(img.crop((20, 10, 80, 70))))


def test_crop_pads_where_it_runs_off_the_image() -> None:
    img = Image.new("RGB", (100, 100), (255, 255, 255))
    corner = Face((-10, -10, 30, 30))  # square reaches 20 px past the top-left corner
    black = np.asarray(crop_face(img, corner, margin=0.25, pad="black"))
    edge = np.asarray(crop_face(img, corner, margin=0.25, pad="edge"))
    assert black.shape == edge.shape == (60, 60, 3)
    assert (black[:10, :10] == 0).all() and (black[-5:, -5:] == 255).all()
    assert (edge == 255).all()
    aligned = crop_face(img, Face((-10, -10, 30, 30), ((0, 0), (20, 5), (10, 10), (2, 20), (18, 22))),
                        margin=0.25, pad="edge", align=True)
    assert (np.asarray(aligned) == 255).all()


def test_crop_of_a_face_at_the_edge_keeps_it_centred(astronaut: Image.Image) -> None:
    edge_img = astronaut.crop((195, 40, 450, 300))  # face cut by the left border
    faces = FaceDetector().detect(edge_img)
    assert len(faces) == 1 and faces[0].box[0] < 0
    out = crop_face(edge_img, faces[0], margin=0.4, size=100, pad="black")
    left = np.asarray(out)[:, :10]
    assert out.size == (100, 100) and left.max() == 0


def test_align_levels_the_eyes_of_a_rotated_face(detector: FaceDetector, astronaut: Image.Image,
                                                 astro_face: Face) -> None:
    rotated = astronaut.rotate(25, resample=Image.Resampling.BICUBIC, center=astro_face.center)
    faces = detector.detect(rotated)
    assert len(faces) == 1 and abs(faces[0].eye_angle) > 12
    plain = detector.detect(crop_face(rotated, faces[0], size=160))
    aligned = detector.detect(crop_face(rotated, faces[0], size=160, align=True))
    assert len(plain) == len(aligned) == 1
    assert abs(plain[0].eye_angle) > 12
    assert abs(aligned[0].eye_angle) < 4
    # the aligned face stays centred
    assert aligned[0].center == pytest.approx((80, 80), abs=16)


def test_align_needs_landmarks(astronaut: Image.Image) -> None:
    with pytest.raises(ValueError, match="landmarks"):
        crop_face(astronaut, Face((10, 10, 50, 50)), align=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"margin": -0.1}, "margin"),
    ({"size": 0}, "size"),
    ({"pad": "reflect"}, "pad"),
])
def test_crop_face_rejects_bad_arguments(astronaut: Image.Image, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        crop_face(astronaut, Face((10, 10, 50, 50)), **kwargs)


def test_face_validation() -> None:
    with pytest.raises(ValueError, match="x2 < x1"):
        Face((50, 10, 10, 50))
    with pytest.raises(ValueError, match="landmarks"):
        Face((0, 0, 10, 10), ((1, 1), (2, 2)))
    f = Face((0, 0, 10, 20), score=0.5)
    assert (f.width, f.height, f.center, f.area) == (10, 20, (5, 10), 200)
    assert f.scaled(2).box == (0, 0, 20, 40)


# --------------------------------------------------------------------------- miss policies


def test_tight_crop_is_a_miss(detector: FaceDetector, tight_crop: Image.Image) -> None:
    assert tight_crop.size == (48, 48)
    assert detector.detect(tight_crop) == []


@pytest.mark.parametrize("policy", ["whole", "center", "skip"])
def test_miss_policies_on_a_tight_crop(detector: FaceDetector, tight_crop: Image.Image,
                                       policy: str) -> None:
    result = crop_image(tight_crop, CropConfig(on_miss=policy, size=96), detector=detector)
    assert not result.found and result.faces == [] and result.action == policy
    if policy == "skip":
        assert result.image is None
        return
    assert result.image.size == (96, 96)
    expected = tight_crop.convert("RGB").resize((96, 96), Image.Resampling.BICUBIC)
    assert np.abs(np.asarray(result.image, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_whole_pads_and_center_crops_non_square_misses() -> None:
    img = Image.new("RGB", (80, 40), (200, 0, 0))
    img.paste((0, 0, 200), (0, 0, 20, 40))  # blue left quarter
    whole = np.asarray(fallback_crop(img, "whole", pad="black"))
    assert whole.shape == (80, 80, 3)
    assert (whole[:20] == 0).all() and tuple(whole[40, 5]) == (0, 0, 200)  # letterboxed, not stretched
    center = np.asarray(fallback_crop(img, MissPolicy.CENTER))
    assert center.shape == (40, 40, 3) and (center == (200, 0, 0)).all()  # blue part cut away
    assert fallback_crop(img, "skip") is None


def test_found_face_is_cropped(detector: FaceDetector, astronaut: Image.Image, astro_face: Face) -> None:
    result = crop_image(astronaut, CropConfig(size=112), detector=detector)
    assert result.found and result.action == "face" and result.face == astro_face
    assert result.image.size == (112, 112)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("make, match", [
    (lambda: DetectorConfig(min_face_size=2), "min_face_size=2"),
    (lambda: DetectorConfig(thresholds=(0.6, 0.7)), "thresholds"),
    (lambda: DetectorConfig(thresholds=(0.6, 0.7, 1.5)), "thresholds"),
    (lambda: DetectorConfig(factor=1.2), "factor=1.2"),
    (lambda: DetectorConfig(min_score=1.5), "min_score=1.5"),
    (lambda: DetectorConfig(max_side=10), "max_side=10"),
    (lambda: DetectorConfig(device="gpu"), "device='gpu'"),
    (lambda: CropConfig(margin=-1), "margin=-1"),
    (lambda: CropConfig(size=0), "size=0"),
    (lambda: CropConfig(on_miss="drop"), r"on_miss='drop'.*'whole', 'center', 'skip'"),
    (lambda: CropConfig(face="biggest"), "face='biggest'"),
    (lambda: CropConfig(pad="mirror"), "pad='mirror'"),
    (lambda: CropConfig(detector={"bogus": 1}), "bogus"),
    (lambda: CropConfig(align="yes"), "align"),
])
def test_invalid_configs_raise_clear_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_config_help_defaults_and_cache_key() -> None:
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(DetectorConfig) + fields(CropConfig))
    cfg = CropConfig(on_miss="CENTER", detector={"min_score": 0.95})
    assert cfg.on_miss is MissPolicy.CENTER and cfg.detector.min_score == 0.95
    assert CropConfig().on_miss is MissPolicy.WHOLE and CropConfig().face == "largest"
    assert CropConfig().cache_key() == CropConfig().cache_key()
    assert CropConfig(margin=0.3).cache_key() != CropConfig().cache_key()
    assert CropConfig(detector=DetectorConfig(min_score=0.8)).cache_key() != CropConfig().cache_key()
    # the device does not change the crops, so CPU and GPU runs share the cache
    assert CropConfig(detector=DetectorConfig(device="cuda")).cache_key() == CropConfig().cache_key()
    assert CropConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- dataset step


class CountingDetector(FaceDetector):
    """A real detector that counts its calls."""

    def __init__(self) -> None:
        super().__init__(DetectorConfig())
        self.calls = 0

    def detect(self, image):  # type: ignore[override]
        self.calls += 1
        return super().detect(image)


@pytest.fixture
def face_dataset(tmp_path: Path, astronaut: Image.Image, tight_crop: Image.Image) -> Path:
    root = tmp_path / "data"
    arr = np.asarray(astronaut)
    files = {
        "train/happy/astro.jpg": astronaut,
        "train/happy/tight.png": tight_crop,
        "train/sad/mirrored.png": Image.fromarray(np.ascontiguousarray(arr[:, ::-1])),
        "train/sad/blank.png": Image.new("RGB", (96, 96), (128, 128, 128)),
        "test/happy/astro_copy.jpg": None,  # same bytes as train/happy/astro.jpg
        "test/sad/two.png": Image.fromarray(np.hstack([arr, arr[:, ::-1]])).resize((512, 256)),
    }
    for rel, img in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if img is not None:
            img.save(path)
    (root / "test/happy/astro_copy.jpg").write_bytes((root / "train/happy/astro.jpg").read_bytes())
    (root / "train/sad/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def test_crop_dataset_counts_cache_and_report(face_dataset: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_folder_dataset(face_dataset)
    assert ds.counts() == {"train": {"happy": 2, "sad": 3}, "test": {"happy": 1, "sad": 1}}
    cache = tmp_path / "cache"
    config = CropConfig(size=64)
    det = CountingDetector()
    seen: list[tuple[int, int]] = []
    cropped, report = crop_dataset(ds, config, cache_dir=cache, progress=lambda d, t: seen.append((d, t)),
                                   detector=det)

    assert seen[-1] == (7, 7) and len(seen) == 7
    assert det.calls == 5  # not the corrupt file, not the duplicate (content cache)
    assert isinstance(report, CropReport)
    train, test = report.splits["train"], report.splits["test"]
    assert (train.total, train.faces_found, train.misses, train.corrupt, train.skipped, train.kept) == \
        (5, 2, 2, 1, 1, 4)
    assert train.miss_actions == {"whole": 2}
    assert (test.total, test.faces_found, test.multi_face, test.kept, test.detections_reused) == \
        (2, 2, 1, 2, 1)
    assert report.total("from_cache") == 0
    assert [s.path for s in report.skipped] == [str(face_dataset / "train/sad/corrupt.jpg")]
    assert "unreadable" in report.skipped[0].reason
    assert report.multi_face_files == [str(face_dataset / "test/sad/two.png")]
    d = report.to_dict()
    assert json.loads(json.dumps(d))["totals"]["kept"] == 6 and "faces found in 4/7" in d["summary"]

    # the new splits point at 64x64 crops in the content-keyed cache
    assert cropped.classes == ds.classes and set(cropped.splits) == set(ds.splits)
    assert cropped.source == ds.source and cropped.name == ds.name
    assert len(cropped.notes) == len(ds.notes) + 1 and "face crops" in cropped.notes[-1]
    assert cropped.counts() == {"train": {"happy": 2, "sad": 2}, "test": {"happy": 1, "sad": 1}}
    key_dir = cache / "faces" / config.cache_key()
    astro = face_dataset / "train/happy/astro.jpg"
    assert cropped.train[0].path == key_dir / "train" / "happy" / f"{file_digest(astro)}.png"
    for samples in cropped.splits.values():
        for s in samples:
            assert s.path.is_file() and key_dir in s.path.parents
            with Image.open(s.path) as im:
                assert im.size == (64, 64) and im.format == "PNG"
    assert not list(cache.rglob("*.tmp"))

    # second run: everything served from the cache, MTCNN never called
    def boom(self, image):
        raise AssertionError("detection should not run on a cache hit")

    monkeypatch.setattr(FaceDetector, "detect", boom)
    again, report2 = crop_dataset(ds, config, cache_dir=cache)
    assert again.splits == cropped.splits
    assert report2.total("from_cache") == 6 and report2.total("corrupt") == 1
    assert report2.splits["train"].miss_actions == {"whole": 2}

    # a new margin re-crops from the cached detections, still without detecting
    _, report3 = crop_dataset(ds, CropConfig(size=64, margin=0.4), cache_dir=cache)
    assert report3.total("detections_reused") == 6 and report3.total("from_cache") == 0


def test_crop_dataset_skip_policy_reports_every_drop(face_dataset: Path, tmp_path: Path) -> None:
    ds = load_folder_dataset(face_dataset)
    cropped, report = crop_dataset(ds, CropConfig(size=48, on_miss="skip"), cache_dir=tmp_path / "c")
    assert report.total("misses") == 2 and report.total("skipped") == 3
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"tight.png", "blank.png", "corrupt.jpg"}
    assert "on_miss=skip" in reasons["tight.png"] and "unreadable" in reasons["corrupt.jpg"]
    assert cropped.counts()["train"] == {"happy": 1, "sad": 1}
    _, again = crop_dataset(ds, CropConfig(size=48, on_miss="skip"), cache_dir=tmp_path / "c")
    assert again.total("skipped") == 3 and again.total("from_cache") == 6


def test_crop_dataset_rejects_a_bad_config(face_dataset: Path, tmp_path: Path) -> None:
    ds = load_folder_dataset(face_dataset)
    with pytest.raises(ValueError, match="CropConfig"):
        crop_dataset(ds, {"margin": 0.2}, cache_dir=tmp_path)  # type: ignore[arg-type]


def test_crop_dataset_uses_the_default_cache_dir(face_dataset: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "envcache"))
    ds = load_folder_dataset(face_dataset, classes="happy")
    cropped, _ = crop_dataset(ds, CropConfig(size=32))
    assert all((tmp_path / "envcache" / "faces") in s.path.parents for s in cropped.train)


def test_shift_keeps_a_border_face_crop_inside_the_image() -> None:
    """A face at the edge: 'shift' moves the square in instead of inventing border pixels."""
    from emotion.faces import Face, crop_face

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
    face = Face((-10.0, 20.0, 40.0, 70.0), (), 0.99)  # runs off the left edge
    shifted = np.asarray(crop_face(img, face, margin=0.0, pad="shift"))
    assert shifted.shape == (50, 50, 3)
    np.testing.assert_array_equal(shifted, np.asarray(img)[20:70, 0:50])  # real pixels only
    edge = np.asarray(crop_face(img, face, margin=0.0, pad="edge"))
    assert (edge[:, 0] == edge[:, 9]).all()  # the repeated border column the shift avoids
    big = Face((0.0, 0.0, 120.0, 100.0), (), 0.99)  # larger than the image's short side: padded as before
    assert crop_face(img, big, margin=0.2, pad="shift").size == (168, 168)
