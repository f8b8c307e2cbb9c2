"""ONNX export and the onnxruntime backend: same probabilities as PyTorch, self-describing files.

The shipped model is exported for real; tiny random models cover the other
architectures.  Exports take a few seconds each, so each model is exported once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from conftest import save_tiny_run
from emotion import onnx_backend, runs
from emotion.cli import main
from emotion.export import export_run, read_metadata
from emotion.inference import Predictor, PredictorConfig
from emotion.onnx_backend import TOLERANCE, ExportError, OnnxClassifier, onnx_classifier

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "default"


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.mark.parametrize("model", ["vit_custom", "efficientnet_lite0"])
def test_tiny_models_give_torch_probabilities_through_onnxruntime(tmp_path: Path, model: str) -> None:
    loaded = runs.load_run(save_tiny_run(tmp_path / model, model=model))
    classifier = onnx_classifier(loaded.module, loaded.config)
    x = torch.rand(5, 3, loaded.config.input_size, loaded.config.input_size) * 4 - 2  # 5: another batch size
    with torch.inference_mode():
        expected = loaded.module(x).softmax(-1)
    got = classifier(x).softmax(-1)
    assert got.shape == (5, 3)
    assert float((expected - got).abs().max()) <= TOLERANCE


def test_the_export_is_cached_per_weights_and_redone_when_damaged(tmp_path: Path) -> None:
    loaded = runs.load_run(save_tiny_run(tmp_path / "run"))
    onnx_classifier(loaded.module, loaded.config)
    cached = list(onnx_backend.onnx_cache_dir().glob("vit_custom-*.onnx"))
    assert len(cached) == 1
    other = runs.load_run(save_tiny_run(tmp_path / "other", seed=1))  # other weights: another file
    onnx_classifier(other.module, other.config)
    assert len(list(onnx_backend.onnx_cache_dir().glob("vit_custom-*.onnx"))) == 2
    cached[0].write_bytes(b"not an onnx file")
    classifier = onnx_classifier(loaded.module, loaded.config)  # re-exported, not an error
    assert cached[0].stat().st_size > 1000
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert float((loaded.module(x).softmax(-1) - classifier(x).softmax(-1)).abs().max()) <= TOLERANCE


def test_a_graph_that_answers_differently_is_refused(tmp_path: Path) -> None:
    loaded = runs.load_run(save_tiny_run(tmp_path / "a"))
    other = runs.load_run(save_tiny_run(tmp_path / "b", seed=3))
    wrong = onnx_classifier(other.module, other.config)
    with pytest.raises(ExportError, match="differ from PyTorch's"):
        onnx_backend.check_against_torch(loaded.module, wrong, loaded.config.input_size)


def test_unloadable_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ExportError, match="bad.onnx"):
        OnnxClassifier(bad)


def test_missing_onnxruntime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ExportError, match="pip install onnxruntime"):
        OnnxClassifier(b"")


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no shipped model")
def test_shipped_model_predicts_the_same_with_both_backends(astronaut: Image.Image) -> None:
    torch_pred = Predictor.from_run(SHIPPED, PredictorConfig(backend="torch"))
    onnx_pred = Predictor.from_run(SHIPPED, PredictorConfig(backend="onnx"))
    assert onnx_pred.describe()["backend"] == "onnx"
    assert Predictor.from_run(SHIPPED).backend == "onnx"  # what the shipped default's config.json recommends
    a, b = torch_pred.predict(astronaut), onnx_pred.predict(astronaut)
    assert len(a.faces) == len(b.faces) == 1
    pa, pb = a.faces[0].probabilities, b.faces[0].probabilities
    assert max(abs(pa[k] - pb[k]) for k in pa) <= TOLERANCE
    tta = Predictor.from_run(SHIPPED, PredictorConfig(backend="onnx", tta=True))  # a batch of two
    ref = Predictor.from_run(SHIPPED, PredictorConfig(backend="torch", tta=True))
    crop = ref.crop(astronaut, ref.detect(astronaut)[0])
    assert np.abs(tta.classify([crop, crop.rotate(10)]) - ref.classify([crop, crop.rotate(10)])).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no shipped model")
def test_export_command_writes_a_self_describing_checked_file(tmp_path: Path, astronaut: Image.Image,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "model.onnx"
    assert main(["export", "--run", str(SHIPPED), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert printed["out"] == str(out) and printed["max_probability_difference"] <= TOLERANCE
    meta = read_metadata(out)
    assert json.loads(meta["labels"]) == ["angry", "happy", "sad"]
    size = int(meta["input_size"])
    assert size == Predictor.from_run(SHIPPED).input_size
    fitted = json.loads((SHIPPED / "temperature.json").read_text())["temperature"]
    assert float(meta["temperature"]) == pytest.approx(fitted)
    assert json.loads(meta["grayscale"]) is True
    assert list(tmp_path.glob("nested/.*")) == []  # no temporary file left

    # the file alone, preprocessed as its metadata says, gives the Predictor's probabilities
    predictor = Predictor.from_run(SHIPPED, PredictorConfig(backend="torch"))
    crop = predictor.crop(astronaut, predictor.detect(astronaut)[0])
    mean, std = np.array(json.loads(meta["mean"])), np.array(json.loads(meta["std"]))
    x = (np.asarray(crop.resize((size, size)), np.float32) / 255.0 - mean) / std
    logits = OnnxClassifier(out)(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))
    probs = (logits / float(meta["temperature"])).softmax(-1).numpy()[0]
    assert np.abs(probs - predictor.classify([crop])[0]).max() <= 1e-3  # resize paths may differ slightly


def test_export_refuses_bad_outputs_and_keeps_an_existing_file(tmp_path: Path) -> None:
    run = save_tiny_run(tmp_path / "run")
    with pytest.raises(ExportError, match="ending in .onnx"):
        export_run(run, tmp_path / "model.png")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        export_run(run, tmp_path / "dir.onnx")
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(runs.RunError):
        export_run(tmp_path / "missing", existing)
    assert existing.read_bytes() == b"keep me"
    assert main(["export", "--run", str(tmp_path / "missing"), "--out", str(existing)]) == 2
    export_run(run, existing)  # a good export sets the earlier file aside instead of replacing it
    (kept,) = tmp_path.glob("model.previous-*.onnx")
    assert kept.read_bytes() == b"keep me" and existing.read_bytes()[:8] != b"keep me"


def test_onnx_backend_is_cpu_only_and_named_in_errors() -> None:
    with pytest.raises(ValueError, match="backend='onnx' runs on the CPU"):
        PredictorConfig(backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="must be None or one of torch, onnx"):
        PredictorConfig(backend="tensorrt")


# ----------------------------------------------------------------------------- 8 bits (onnx-int8)

def test_int8_needs_ranges_measured_on_training_images_and_then_agrees_with_float(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import make_class_folders
    from emotion.config import TrainConfig
    from emotion.data.sources import load_dataset_spec, validation_holdout
    from emotion.run_files import INT8_CALIBRATION_FILE

    run = save_tiny_run(tmp_path / "run", model="efficientnet_lite0")
    data = make_class_folders(tmp_path / "faces", {"angry": 8, "happy": 8, "sad": 8})
    photo = tmp_path / "face.png"
    Image.fromarray(skdata.astronaut()).crop((140, 30, 340, 230)).save(photo)
    predict = ["predict", str(photo), "--run", str(run), "--whole-image", "--json"]

    # no ranges yet: one error line that names the command that makes them
    assert main([*predict, "--backend", "onnx-int8"]) == 2
    assert "python -m emotion quantize" in capsys.readouterr().err

    assert main(["quantize", "--run", str(run), "--data", str(data), "--images", "1000", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    splits = load_dataset_spec(str(data))
    train, _, _ = validation_holdout(splits, TrainConfig().val_fraction, 0)  # what the run holds out
    assert stored["measured_on"]["images"] == len(train) < 20  # every training image, none held out
    assert (run / INT8_CALIBRATION_FILE).is_file() and "ranges" not in stored

    assert main([*predict, "--backend", "onnx-int8"]) == 0
    int8 = json.loads(capsys.readouterr().out.splitlines()[0])["faces"][0]["probabilities"]
    assert main([*predict, "--backend", "onnx"]) == 0
    full = json.loads(capsys.readouterr().out.splitlines()[0])["faces"][0]["probabilities"]
    assert max(abs(int8[c] - full[c]) for c in full) < 0.1  # 8 bits: close, not equal

    # measured again on other images: the earlier ranges are kept beside the new ones
    assert main(["quantize", "--run", str(run), "--data", str(data), "--images", "4", "--seed", "1"]) == 0
    assert len(list(run.glob("int8_calibration.previous-*.json"))) == 1
    capsys.readouterr()

    # ranges measured on another graph, or for other weights, would quantise wrongly: refused, not used
    # (the int8 cache is keyed by the stored calibration, so each of these builds afresh)
    good = json.loads((run / INT8_CALIBRATION_FILE).read_text())
    for key, message in (("graph", "another ONNX graph"), ("weights", "for other weights")):
        (run / INT8_CALIBRATION_FILE).write_text(json.dumps({**good, key: "0" * 64}))
        assert main([*predict, "--backend", "onnx-int8"]) == 2
        assert message in capsys.readouterr().err, key
