"""Prediction: faces in, emotions out; video tracking and smoothing; the predict command.

A tiny efficientnet_lite0 (random weights, 64 px) saved as a run stands in for
a trained model: these tests check the plumbing (faces, order, preprocessing,
tracking, smoothing, errors), not accuracy.  The astronaut photo has one face.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from emotion import inference
from emotion.cli import main
from emotion.data.transforms import build_transform
from emotion.faces import DetectorConfig
from emotion.images import ImageLoadError
from emotion.inference import (
    ImagePrediction,
    Predictor,
    PredictorConfig,
    best_run,
    resolve_run,
)
from emotion.models import create_model
from emotion.runs import RunError, save_model, write_json
from emotion.video import VideoConfig, VideoPredictor, box_iou, ema, iou_matrix

LABELS = ["angry", "happy", "sad"]
FACE_REGION = (180, 60, 268, 175)  # the astronaut's face (see test_faces.py)


def _save_run(path: Path, val_accuracy: float | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    built = create_model("efficientnet_lite0", 3, pretrained=False, input_size=64)
    save_model(path, built.module, built.config, LABELS, built.weights)
    if val_accuracy is not None:
        write_json(path / "metrics.json", {"val": {"accuracy": val_accuracy}})
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_run(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def two_faces(astronaut: Image.Image) -> Image.Image:
    arr = np.asarray(astronaut)
    return Image.fromarray(np.hstack([arr[:, ::-1], arr]))  # mirrored copy on the left


BLANK = Image.new("RGB", (320, 240), (128, 128, 128))


# --------------------------------------------------------------------------- still images


def test_astronaut_gives_one_face_with_probabilities(predictor: Predictor, astronaut: Image.Image) -> None:
    result = predictor.predict(astronaut)
    assert isinstance(result, ImagePrediction) and not result.no_face and result.detected
    assert len(result.faces) == 1
    face = result.faces[0]
    assert box_iou(face.box, FACE_REGION) > 0.6
    assert len(face.face.landmarks) == 5 and face.source == "face"
    assert list(face.probabilities) == LABELS
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert face.confidence == face.probabilities[face.label]
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["faces"][0]["label"] == face.label and doc["no_face"] is False
    assert set(doc["timings_ms"]) == {"detect", "classify", "total"}


def test_path_bytes_array_and_pil_inputs_agree(predictor: Predictor, astronaut: Image.Image,
                                               tmp_path: Path) -> None:
    path = tmp_path / "astro.png"
    astronaut.save(path)
    buf = io.BytesIO()
    astronaut.save(buf, format="PNG")
    inputs = (astronaut, str(path), path, buf.getvalue(), np.asarray(astronaut))
    results = [predictor.predict(x) for x in inputs]
    ref = results[0].faces[0]
    for r in results[1:]:
        assert r.faces[0].box == pytest.approx(ref.box)
        want = list(ref.probabilities.values())
        assert list(r.faces[0].probabilities.values()) == pytest.approx(want, abs=1e-6)


def test_unreadable_input_raises_image_load_error(predictor: Predictor, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        predictor.predict(bad)
    with pytest.raises(ImageLoadError, match="no such file"):
        predictor.predict(tmp_path / "missing.jpg")


def test_blank_image_says_no_face_unless_whole_image_is_asked(predictor: Predictor) -> None:
    result = predictor.predict(BLANK)
    assert result.no_face and result.faces == [] and not result.whole_image
    assert result.message == "no face found" and result.to_dict()["faces"] == []
    whole = predictor.predict(BLANK, whole_image=True)
    assert whole.no_face and whole.whole_image and len(whole.faces) == 1
    assert whole.faces[0].source == "whole" and whole.faces[0].box == (0.0, 0.0, 320.0, 240.0)
    assert whole.to_dict()["faces"][0]["score"] is None
    assert "classified the whole image" in whole.message


def test_whole_image_classification_is_the_padded_image(run_dir: Path) -> None:
    """A tight face crop (FER style) classified whole: the same as the model on the image itself."""
    pred = Predictor.from_run(run_dir, PredictorConfig(whole_image=True))
    tight = Image.fromarray(skdata.astronaut()).crop((190, 85, 260, 155)).convert("L").resize((48, 48))
    result = pred.predict(tight)
    assert result.whole_image
    x = build_transform(pred.model_config.preprocess)(np.asarray(tight.convert("RGB")))[None]
    with torch.inference_mode():
        direct = pred.module(x).softmax(-1)[0].numpy()
    assert list(result.faces[0].probabilities.values()) == pytest.approx(direct.tolist(), abs=1e-4)


def test_two_faces_side_by_side_left_to_right(predictor: Predictor, two_faces: Image.Image) -> None:
    result = predictor.predict(two_faces)
    assert len(result.faces) == 2
    left, right = result.faces
    assert left.box[2] < 512 <= right.box[0]
    assert box_iou(right.box, (FACE_REGION[0] + 512, *FACE_REGION[1:2], FACE_REGION[2] + 512,
                               FACE_REGION[3])) > 0.5


def test_faces_are_classified_in_one_batch_like_one_by_one(predictor: Predictor,
                                                           two_faces: Image.Image) -> None:
    faces = predictor.detect(two_faces)
    crops = [predictor.crop(two_faces, f) for f in faces]
    batch = predictor.classify(crops)
    single = np.vstack([predictor.classify([c]) for c in crops])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_preprocessing_comes_from_the_model_config(predictor: Predictor, astronaut: Image.Image) -> None:
    face = predictor.detect(astronaut)[0]
    crop = predictor.crop(astronaut, face)
    assert crop.size == (predictor.model_config.input_size,) * 2
    expected = build_transform(predictor.model_config.preprocess)(np.asarray(crop))
    torch.testing.assert_close(predictor.to_tensor([crop])[0], expected)


def test_detector_settings_and_max_faces(run_dir: Path, astronaut: Image.Image,
                                         two_faces: Image.Image) -> None:
    big_faces_only = DetectorConfig(min_face_size=300, max_side=None)
    strict = Predictor.from_run(run_dir, PredictorConfig(detector=big_faces_only))
    assert strict.predict(astronaut).no_face  # the face is about 90 px: too small for this setting
    one = Predictor.from_run(run_dir, PredictorConfig(max_faces=1))
    assert len(one.predict(two_faces).faces) == 1
    with pytest.raises(ValueError, match="max_faces"):
        PredictorConfig(max_faces=0)
    with pytest.raises(ValueError, match="thresholds"):
        PredictorConfig(detector={"thresholds": (0.6, 2.0, 0.7)})


def test_annotate_draws_on_a_copy(predictor: Predictor, astronaut: Image.Image) -> None:
    result = predictor.predict(astronaut)
    drawn = predictor.annotate(astronaut, result)
    assert drawn.size == astronaut.size
    assert np.abs(np.asarray(drawn, np.int16) - np.asarray(astronaut, np.int16)).sum() > 0


# --------------------------------------------------------------------------- which run


def test_run_resolution_default_then_best_validation_accuracy(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    _save_run(runs_dir / "weak", 0.55)
    _save_run(runs_dir / "strong", 0.81)
    _save_run(runs_dir / "unscored")  # no metrics.json: never chosen
    (runs_dir / "unfinished").mkdir()
    write_json(runs_dir / "unfinished" / "status.json", {"state": "running"})
    write_json(runs_dir / "unfinished" / "metrics.json", {"val": {"accuracy": 0.99}})
    assert best_run(runs_dir) == (runs_dir / "strong", pytest.approx(0.81))
    choice = resolve_run(runs_dir=runs_dir, default_dir=tmp_path / "default")
    assert choice.path == runs_dir / "strong" and "best validation accuracy (0.810)" in choice.reason
    _save_run(tmp_path / "default")
    assert resolve_run(runs_dir=runs_dir, default_dir=tmp_path / "default").reason == "default"
    assert resolve_run(runs_dir / "weak").reason == "given"
    with pytest.raises(RunError, match="does not exist"):
        resolve_run(tmp_path / "nope")
    with pytest.raises(RunError, match="no model to predict with"):
        resolve_run(runs_dir=tmp_path / "empty", default_dir=tmp_path / "none")


REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
FER7_LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.mark.parametrize("name,labels", [("default", ["angry", "happy", "sad"]), ("fer7", FER7_LABELS)])
def test_each_shipped_model_is_complete_small_calibrated_and_predicts(name: str, labels: list[str],
                                                                     astronaut: Image.Image) -> None:
    folder = REPO_CHECKPOINTS / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} ships no model in this checkout")
    weights = sorted(folder.rglob("model.safetensors"))  # an ensemble: its packed members' files
    assert weights and all(w.is_relative_to(folder) for w in weights)  # self-contained
    assert sum(w.stat().st_size for w in weights) <= 25 * 10 ** 6  # the project's limit per model
    assert (folder / "README.md").is_file()  # its model card
    fitted = json.loads((folder / "temperature.json").read_text())
    assert "stratified" in fitted["fitted_on"]["split"]  # fitted on validation images, not test
    predictor = Predictor.from_run(folder)
    assert predictor.labels == labels and predictor.temperature == pytest.approx(fitted["temperature"])
    result = predictor.predict(astronaut)
    assert len(result.faces) == 1 and list(result.faces[0].probabilities) == labels


def test_shipped_models_can_be_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emotion import paths

    monkeypatch.chdir(tmp_path)  # no folder called fer7 here
    monkeypatch.setenv(paths.DEFAULT_MODEL_ENV, str(tmp_path / "models" / "default"))
    with pytest.raises(RunError, match="shipped models can be named: default, fer7"):
        resolve_run("fer7")
    _save_run(tmp_path / "models" / "fer7")
    choice = resolve_run("fer7")
    assert choice.path == tmp_path / "models" / "fer7" and choice.reason == "given"
    assert paths.is_shipped_model(tmp_path / "models" / "fer7")
    assert not paths.is_shipped_model(tmp_path / "models")


# --------------------------------------------------------------------------- video


class CountingDetector:
    """Wraps a detector and counts its calls (the video path should skip most frames)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def detect(self, image):
        self.calls += 1
        return self.inner.detect(image)


def test_box_overlap_is_intersection_over_union() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # degenerate boxes overlap nothing
    ious = iou_matrix([(0, 0, 10, 10), (20, 20, 30, 30)], [(20, 20, 30, 30), (0, 0, 10, 10), (0, 0, 5, 10)])
    np.testing.assert_allclose(ious, [[0, 1, 0.5], [1, 0, 0]])
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_ema_is_an_exponential_moving_average() -> None:
    first = ema(None, [1.0, 0.0, 0.0], 0.5)
    np.testing.assert_allclose(first, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(ema(first, [0.0, 1.0, 0.0], 0.5), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(ema(first, [0.0, 1.0, 0.0], 1.0), [0.0, 1.0, 0.0])  # alpha 1: no smoothing
    with pytest.raises(ValueError, match="ema_alpha"):
        VideoConfig(ema_alpha=0.0)
    with pytest.raises(ValueError, match="redetect_every"):
        VideoConfig(redetect_every=0)


def test_video_detects_every_k_frames_and_keeps_track_ids(predictor: Predictor,
                                                          astronaut: Image.Image) -> None:
    video = VideoPredictor(predictor, VideoConfig(redetect_every=3))
    assert video.detector.config.max_side == 320  # webcam frames are detected small
    video.detector = CountingDetector(video.detector)
    results = [video.update(astronaut) for _ in range(7)]
    assert [r.detected for r in results] == [True, False, False, True, False, False, True]
    assert video.detector.calls == 3 == video.detections
    assert {r.faces[0].track_id for r in results} == {1}
    assert all(len(r.faces) == 1 and box_iou(r.faces[0].box, FACE_REGION) > 0.5 for r in results)


def test_video_smooths_each_face_with_an_ema(predictor: Predictor, astronaut: Image.Image,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    frames = iter([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    monkeypatch.setattr(predictor, "classify", lambda crops: np.array([next(frames) for _ in crops]))
    video = VideoPredictor(predictor, VideoConfig(redetect_every=10, ema_alpha=0.5))
    out = [video.update(astronaut).faces[0] for _ in range(4)]
    expected = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.125, 0.375, 0.5]]
    for face, want in zip(out, expected):
        assert list(face.probabilities.values()) == pytest.approx(want)
    assert list(out[1].frame_probabilities.values()) == [0.0, 1.0, 0.0]  # this frame, unsmoothed
    assert out[2].label == "happy" and out[3].label == "sad"
    assert out[3].to_dict()["track_id"] == 1


def test_video_redetects_when_the_face_changes_and_drops_lost_tracks(predictor: Predictor,
                                                                     astronaut: Image.Image) -> None:
    video = VideoPredictor(predictor, VideoConfig(redetect_every=50))
    assert len(video.update(astronaut).faces) == 1
    moved = Image.fromarray(np.roll(np.asarray(astronaut), 6, axis=1))  # a small move: boxes reused
    assert not video.update(moved).detected
    gone = video.update(BLANK.resize(astronaut.size))  # the face left: its crop changed completely
    assert gone.detected and gone.faces == [] and gone.no_face and video.tracks == []
    back = video.update(astronaut)
    assert back.detected and back.faces[0].track_id == 2  # a new track, not the lost one


def test_video_tracks_two_faces_left_to_right(predictor: Predictor, two_faces: Image.Image) -> None:
    video = VideoPredictor(predictor, VideoConfig(redetect_every=2, change_threshold=None))
    first = video.update(two_faces)
    assert [f.track_id for f in first.faces] == [1, 2]
    assert first.faces[0].box[0] < first.faces[1].box[0]
    assert not video.update(two_faces).detected
    right_only = np.asarray(two_faces).copy()
    right_only[:, :512] = 128
    third = video.update(right_only)  # detection frame: the left face is gone, the right one stays
    assert third.detected and [f.track_id for f in third.faces] == [2]


def test_video_whole_image_fallback(run_dir: Path) -> None:
    pred = Predictor.from_run(run_dir, PredictorConfig(whole_image=True))
    video = VideoPredictor(pred, VideoConfig(redetect_every=2))
    results = [video.update(BLANK) for _ in range(3)]
    assert all(r.whole_image and len(r.faces) == 1 for r in results)
    assert {r.faces[0].track_id for r in results} == {1}


# --------------------------------------------------------------------------- command line


def test_cli_predict_json_per_image(run_dir: Path, astronaut: Image.Image, two_faces: Image.Image,
                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = tmp_path / "one.png", tmp_path / "two.jpg"
    astronaut.save(a)
    two_faces.save(b)
    out = tmp_path / "ann" / "out.png"
    assert main(["predict", str(a), str(b), "--run", str(run_dir), "--json", "--annotate", str(out)]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["image"] for d in docs] == [str(a), str(b)]
    assert [len(d["faces"]) for d in docs] == [1, 2]
    assert docs[0]["run"] == str(run_dir) and docs[0]["run_reason"] == "given"
    assert set(docs[1]["faces"][0]["probabilities"]) == set(LABELS)
    assert Image.open(out.with_name("out-1.png")).size == astronaut.size
    assert Image.open(out.with_name("out-2.png")).size == two_faces.size


def test_cli_predict_table_and_no_face(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blank = tmp_path / "blank.png"
    BLANK.save(blank)
    assert main(["predict", str(blank), "--run", str(run_dir)]) == 0
    assert "no face found" in capsys.readouterr().out
    assert main(["predict", str(blank), "--run", str(run_dir), "--whole-image", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["no_face"] and doc["whole_image"] and doc["faces"][0]["source"] == "whole"


def test_cli_predict_bad_files_end_with_one_line(run_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    for bad in (text, tmp_path / "missing.png", tmp_path):
        assert main(["predict", str(bad), "--run", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert main(["predict", str(text), "--run", str(tmp_path / "no-run")]) == 2
    assert main(["predict", str(text), "--annotate", str(tmp_path / "x.notanimage")]) == 2
    assert main(["predict", str(text), "--thresholds", "0.6,0.7"]) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_predict_keeps_going_past_a_damaged_file(run_dir: Path, astronaut: Image.Image, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    good, bad, gone = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "gone.png"
    astronaut.save(good)
    bad.write_bytes(good.read_bytes()[:300])
    assert main(["predict", str(bad), str(good), str(gone), "--run", str(run_dir), "--json"]) == 2
    captured = capsys.readouterr()
    docs = [json.loads(line) for line in captured.out.splitlines()]
    assert [d["image"] for d in docs] == [str(bad), str(good), str(gone)]
    assert "error" in docs[0] and "no such file" in docs[2]["error"]
    assert len(docs[1]["faces"]) == 1 and "error" not in docs[1]
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "Traceback" not in captured.err


def test_cli_predict_without_run_uses_the_best_and_says_so(tmp_path: Path, astronaut: Image.Image,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    runs_dir = tmp_path / "runs"
    _save_run(runs_dir / "best", 0.9)
    _save_run(runs_dir / "other", 0.4)
    monkeypatch.setenv("EMOTION_RUNS_DIR", str(runs_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inference, "_REPO_ROOT", tmp_path)
    astronaut.save(tmp_path / "a.png")
    with caplog.at_level("INFO", logger="emotion.inference"):
        assert main(["predict", "a.png", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"] == str(runs_dir / "best") and doc["run_reason"].startswith("best validation accuracy")
    assert any("using run" in r.getMessage() and "best" in r.getMessage() for r in caplog.records)


def test_predictor_config_roundtrip() -> None:
    cfg = PredictorConfig(detector={"min_face_size": 30}, margin=0.1, whole_image=True)
    d = cfg.to_dict()
    assert d["detector"]["min_face_size"] == 30 and d["margin"] == 0.1 and d["whole_image"] is True
    assert PredictorConfig(**{**d, "detector": d["detector"]}).to_dict() == d


# --------------------------------------------------------------------------- grayscale runs


def test_predictor_greys_faces_only_for_runs_trained_on_grayscale_images(tmp_path: Path,
                                                                         astronaut: Image.Image) -> None:
    colour_run = _save_run(tmp_path / "colour")
    grey_run = _save_run(tmp_path / "grey")
    spec = json.loads((grey_run / "config.json").read_text())
    write_json(grey_run / "config.json", {**spec, "data": {"grayscale": True}})

    colour, grey = Predictor.from_run(colour_run), Predictor.from_run(grey_run)
    assert (colour.grayscale, grey.grayscale) == (False, True)
    assert grey.describe()["grayscale"] is True
    crop = np.asarray(grey.crop(astronaut, None))
    assert np.array_equal(crop[..., 0], crop[..., 1]) and np.array_equal(crop[..., 1], crop[..., 2])
    crop = np.asarray(colour.crop(astronaut, None))
    assert not np.array_equal(crop[..., 0], crop[..., 2])
    # an explicit choice wins over the run's record
    assert Predictor.from_run(grey_run, PredictorConfig(grayscale=False)).grayscale is False


def test_shared_predictors_are_reused_and_bounded(tmp_path: Path) -> None:
    inference._shared_predictor.cache_clear()
    dirs = [_save_run(tmp_path / f"r{i}") for i in range(inference.MAX_SHARED_PREDICTORS + 1)]
    first = inference.get_predictor(dirs[0])
    assert inference.get_predictor(dirs[0]) is first  # one shared object per run and weights version
    second = inference.get_predictor(dirs[1])
    for run in dirs[2:-1]:
        inference.get_predictor(run)
    inference.get_predictor(dirs[0])  # touched: now the most recently used
    inference.get_predictor(dirs[-1])  # one too many: evicts r1, the least recently used
    assert inference._shared_predictor.cache_info().currsize == inference.MAX_SHARED_PREDICTORS
    assert inference.get_predictor(dirs[0]) is first
    assert inference.get_predictor(dirs[1]) is not second  # loaded again
    inference._shared_predictor.cache_clear()


def test_flip_tta_averages_each_face_with_its_mirror(tmp_path: Path, astronaut: Image.Image) -> None:
    run = _save_run(tmp_path / "tta", seed=3)
    plain = Predictor.from_run(run)
    crops = [plain.crop(astronaut, None), plain.crop(astronaut.rotate(20), None)]
    mirrored = [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]
    expected = (plain.classify(crops) + plain.classify(mirrored)) / 2
    assert not np.allclose(plain.classify(crops), expected, atol=1e-4)  # the mirror really differs
    with_tta = Predictor.from_run(run, PredictorConfig(tta=True))
    assert np.allclose(with_tta.classify(crops), expected, atol=1e-5)
    # a run whose config.json recommends TTA gets it unless told otherwise
    spec = json.loads((run / "config.json").read_text())
    write_json(run / "config.json", {**spec, "inference": {"tta": True}})
    assert Predictor.from_run(run).tta is True and Predictor.from_run(run).describe()["tta"] is True
    assert Predictor.from_run(run, PredictorConfig(tta=False)).tta is False


def test_the_fitted_temperature_is_applied_unless_turned_off(run_dir: Path, astronaut: Image.Image,
                                                             tmp_path: Path) -> None:
    import shutil

    from emotion.metrics import apply_temperature
    from emotion.inference import PredictorConfig
    from emotion.runs import write_json

    calibrated = tmp_path / "calibrated"
    shutil.copytree(run_dir, calibrated)
    write_json(calibrated / "temperature.json", {"temperature": 2.5})
    crops = [astronaut.resize((64, 64)), astronaut.rotate(90).resize((64, 64))]
    raw = Predictor.from_run(calibrated, PredictorConfig(calibrate=False)).classify(crops)
    scaled = Predictor.from_run(calibrated)
    assert scaled.describe()["temperature"] == 2.5
    probs = scaled.classify(crops)
    np.testing.assert_allclose(probs, apply_temperature(raw, 2.5, kind="probs"), atol=1e-5)
    assert (probs.argmax(1) == raw.argmax(1)).all() and probs.max() < raw.max()
    write_json(calibrated / "temperature.json", {"temperature": -1})
    with pytest.raises(Exception, match="temperature"):
        Predictor.from_run(calibrated)


def test_a_runs_framing_hint_sets_the_face_margin(run_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from emotion.inference import DEFAULT_MARGIN, PredictorConfig

    hinted = tmp_path / "hinted"
    shutil.copytree(run_dir, hinted)
    spec = json.loads((hinted / "config.json").read_text())
    spec["inference"] = {"margin": 0.0}
    (hinted / "config.json").write_text(json.dumps(spec))
    assert Predictor.from_run(run_dir).margin == DEFAULT_MARGIN
    assert Predictor.from_run(hinted).margin == 0.0
    assert Predictor.from_run(hinted, PredictorConfig(margin=0.3)).margin == 0.3  # the caller's choice wins
