"""Explanations: every method on every registered architecture, faithfulness scores, and a shared
model left exactly as it was (no hooks, same modes, same gradients flags, concurrent predictions intact).

Models are tiny and random (CNNs at 64 px so their last feature map is 2x2,
VGG-16 at 32 px, ViTs at 32 px with a 4x4 patch grid): the checks are about shapes, ranges and
side effects, not about what a trained model looks at.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from emotion.cli import main
from emotion.explain import (
    METHODS,
    ExplainError,
    NoFaceError,
    attention_rollout,
    explain,
    explain_face,
    get_explainer_name,
    hook_counts,
    patch_grid,
    road_score,
    vit_reshape_transform,
)
from emotion.inference import Predictor
from emotion.models import create_model, list_models
from emotion.runs import load_run, save_ensemble, save_model

LABELS = ["angry", "happy", "sad"]
TINY = {
    "vit_custom": dict(input_size=32, patch_size=8, dim=32, depth=2, heads=2),
    "hf_vit": dict(input_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, patch_size=8, labels=LABELS),
    "vgg16": dict(input_size=32, mlp_ratio=0.01),  # a 40-wide head instead of 4096: same features
}
_BUILT: dict[str, object] = {}


def tiny(name: str):
    """One tiny random model per architecture, built once (eval mode, like a loaded run)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        kw = dict(TINY.get(name, {"input_size": 64}))
        built = create_model(name, 3, pretrained=False, **kw)
        built.module.eval()
        _BUILT[name] = built
    return _BUILT[name]


@pytest.fixture(scope="module")
def face() -> Image.Image:
    return Image.fromarray(skdata.astronaut()).crop((160, 40, 290, 190))  # the face with some margin


def _state(module: nn.Module) -> dict:
    return {
        "hooks": hook_counts(module),
        "modes": [m.training for m in module.modules()],
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "grads": [p.grad is None for p in module.parameters()],
    }


OPTIONS = {"scorecam": {"max_channels": 8, "batch_size": 8}}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list_models())
def test_every_method_on_every_architecture(name: str, method: str, face: Image.Image) -> None:
    built = tiny(name)
    module, config = built.module, built.config
    before = _state(module)
    if method == "rollout" and config.family != "vit":
        with pytest.raises(ExplainError, match="does not apply"):
            explain(module, face, method, config=config, labels=LABELS)
        return
    result = explain(module, face, method, config=config, labels=LABELS, road_percentiles=(40,),
                     **OPTIONS.get(method, {}))
    size = config.input_size
    assert result.heatmap.shape == (size, size) and result.heatmap.dtype == np.float32
    assert np.isfinite(result.heatmap).all()
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.image.shape == (size, size, 3) and result.image.dtype == np.uint8
    assert result.target == int(np.argmax(result.probabilities)) and result.target_label in LABELS
    assert result.road is not None
    assert np.isfinite([result.road.combined, result.road.morf, result.road.lerf]).all()
    assert result.road.combined == pytest.approx((result.road.lerf - result.road.morf) / 2)
    assert json.loads(json.dumps(result.to_dict()))["road"]["percentiles"] == [40]
    assert result.overlay(48).size == (48, 48)
    assert _state(module) == before
    assert sum(before["hooks"].values()) == 0


def test_vgg16_feature_maps_from_early_middle_and_deep_layers(face: Image.Image) -> None:
    built = tiny("vgg16")
    result = explain(built.module, face, "featuremaps", config=built.config, labels=LABELS, road=False,
                     top_channels=4)
    assert list(result.layers) == ["features.3", "features.15", "features.29"]
    for name, energy in result.layers.items():
        assert energy.shape == (32, 32) and 0.0 <= energy.min() and energy.max() <= 1.0
        assert len(result.channels[name]) == 4
    assert result.channels["features.3"][0].shape == (32, 32)  # early layers keep full resolution
    assert result.channels["features.29"][0].shape == (2, 2)
    np.testing.assert_array_equal(result.heatmap, result.layers["features.29"])
    picture = result.figure(size=64)
    assert picture.height == 3 * (32 + 14)


def test_vit_feature_maps_use_first_middle_last_block(face: Image.Image) -> None:
    built = tiny("hf_vit")
    result = explain(built.module, face, "featuremaps", config=built.config, labels=LABELS, road=False)
    assert list(result.layers) == ["blocks.0", "blocks.1"]  # depth 2: first and last (middle = last)


def test_target_class_on_request(face: Image.Image) -> None:
    built = tiny("vit_custom")
    kw = dict(config=built.config, labels=LABELS, road=False)
    predicted = explain(built.module, face, "gradcam", **kw)
    other = (predicted.target + 1) % 3
    by_index = explain(built.module, face, "gradcam", target=other, **kw)
    by_name = explain(built.module, face, "gradcam", target=LABELS[other].upper(), **kw)
    assert by_index.target == by_name.target == other and by_index.class_specific
    np.testing.assert_array_equal(by_index.heatmap, by_name.heatmap)
    assert predicted.predicted == by_index.predicted == predicted.target
    assert not explain(built.module, face, "eigencam", target=other, **kw).class_specific
    with pytest.raises(ExplainError, match="unknown class 'joy'"):
        explain(built.module, face, "gradcam", target="joy", **kw)
    with pytest.raises(ExplainError, match="out of range"):
        explain(built.module, face, "gradcam", target=7, **kw)


def test_method_names_and_options_are_checked(face: Image.Image) -> None:
    assert get_explainer_name("GradCAM++") == get_explainer_name("gradcam_pp") == "gradcam++"
    built = tiny("vit_custom")
    kw = dict(config=built.config, labels=LABELS, road=False)
    with pytest.raises(ExplainError, match="unknown explanation method"):
        explain(built.module, face, "lime", **kw)
    with pytest.raises(ExplainError, match="head_fusion"):
        explain(built.module, face, "rollout", head_fusion="median", **kw)
    with pytest.raises(ExplainError, match="no option"):
        explain(built.module, face, "gradcam", discard_ratio=0.5, **kw)
    for fusion in ("mean", "max", "min"):
        for discard in (0.0, 0.9):
            heat = explain(built.module, face, "rollout", head_fusion=fusion, discard_ratio=discard,
                           **kw).heatmap
            assert heat.shape == (32, 32) and heat.max() <= 1.0


def test_attention_rollout_math() -> None:
    """One block, no discarding: the class token's row of (A + I) / 2, re-normalised."""
    row = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    attn = torch.eye(5)
    attn[0] = row
    weights = attention_rollout([attn[None, None]], "mean", 0.0, prefix_tokens=1)
    torch.testing.assert_close(weights, torch.tensor([0.05, 0.10, 0.15, 0.20]))
    two_heads = torch.stack([attn, 0.5 * attn])[None]
    torch.testing.assert_close(attention_rollout([two_heads], "max", 0.0), weights)  # the stronger head
    torch.testing.assert_close(attention_rollout([torch.stack([attn, 2 * attn])[None]], "min", 0.0), weights)
    assert attention_rollout([two_heads], "mean", 0.0).argmax() == 3


def test_vit_reshape_transform_follows_the_model_grid() -> None:
    module = create_model("vit_custom", 3, input_size=48, patch_size=6, dim=32, depth=1, heads=2).module
    assert module.grid == (8, 8)
    maps = vit_reshape_transform(module)(torch.randn(2, 1 + 64, 32))
    assert maps.shape == (2, 32, 8, 8)
    with pytest.raises(ExplainError, match="expected tokens"):
        vit_reshape_transform(module)(torch.randn(2, 1 + 49, 32))
    hf = tiny("hf_vit").module
    assert vit_reshape_transform(hf)(torch.randn(1, 1 + 16, 32)).shape == (1, 32, 4, 4)


def test_patch_grid_shows_the_vit_tokens(face: Image.Image) -> None:
    built = tiny("vit_custom")
    picture, info = patch_grid(built.module, face, cell=20, config=built.config)
    assert info == {"grid": [4, 4], "patch_pixels": [8, 8], "prefix_tokens": 1, "tokens": 17,
                    "input_size": 32}
    assert picture.size == (80, 80)
    cnn = tiny("efficientnet_lite0")
    with pytest.raises(ExplainError, match="not a vision transformer"):
        patch_grid(cnn.module, face, config=cnn.config)


def test_shared_model_state_is_restored(face: Image.Image) -> None:
    """A model in train mode, partly frozen, with a stale gradient: all of it survives an explanation."""
    torch.manual_seed(1)
    built = create_model("efficientnet_lite0", 3, pretrained=False, input_size=64)
    module = built.module.train()
    module.bn2.eval()
    module.conv_stem.weight.requires_grad_(False)
    module.classifier.weight.grad = torch.ones_like(module.classifier.weight)
    before = _state(module)
    for method in ("gradcam", "gradcam++", "scorecam", "featuremaps"):
        explain(module, face, method, config=built.config, labels=LABELS, road=True, road_percentiles=(50,),
                **OPTIONS.get(method, {}))
        assert _state(module) == before
    assert module.training and not module.bn2.training
    assert torch.equal(module.classifier.weight.grad, torch.ones_like(module.classifier.weight))


def test_explain_works_inside_inference_mode(face: Image.Image) -> None:
    built = tiny("efficientnet_lite0")
    with torch.inference_mode():
        result = explain(built.module, face, "gradcam", config=built.config, labels=LABELS, road=False)
    assert result.heatmap.shape == (64, 64)


def test_concurrent_predictions_are_unaffected(face: Image.Image) -> None:
    built = tiny("resnet34")
    module = built.module
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = module(x)
    reference = explain(module, face, "gradcam", config=built.config, labels=LABELS, road=False).heatmap
    stop, mismatches, calls = threading.Event(), [], [0]

    def predict_loop() -> None:
        while not stop.is_set():
            with torch.inference_mode():
                if not torch.allclose(module(x), expected, atol=1e-5):
                    mismatches.append(calls[0])
            calls[0] += 1

    worker = threading.Thread(target=predict_loop)
    worker.start()
    try:
        maps = [explain(module, face, "gradcam", config=built.config, labels=LABELS, road=False).heatmap
                for _ in range(3)]
    finally:
        stop.set()
        worker.join()
    assert calls[0] > 0 and mismatches == []
    for heat in maps:  # the predictions' activations did not leak into the explanation
        np.testing.assert_allclose(heat, reference, atol=1e-5)
    assert sum(hook_counts(module).values()) == 0


def test_road_is_reproducible_and_leaves_the_global_rng_alone(face: Image.Image) -> None:
    built = tiny("efficientnet_lite0")
    result = explain(built.module, face, "gradcam", config=built.config, labels=LABELS, road=False)
    x = torch.randn(1, 3, 64, 64)
    state = torch.random.get_rng_state()
    first = road_score(built.module, x, result.heatmap, result.target, (20, 60))
    second = road_score(built.module, x, result.heatmap, result.target, (20, 60))
    assert first == second
    assert torch.equal(torch.random.get_rng_state(), state)
    flat = road_score(built.module, x, np.zeros((64, 64), np.float32), result.target, (20, 60))
    assert np.isfinite(flat.combined)  # a constant map still gets a (random-order) score
    with pytest.raises(ExplainError, match="percentiles"):
        road_score(built.module, x, result.heatmap, result.target, (0, 100))


# --------------------------------------------------------------------------- runs, ensembles, faces, CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain-runs")
    out = {}
    for name in ("efficientnet_lite0", "vit_custom"):
        built = tiny(name)
        out[name] = save_model(root / name, built.module, built.config, LABELS, built.weights)
    members = [out["efficientnet_lite0"], out["vit_custom"]]
    out["ensemble"] = save_ensemble(root / "ensemble", members, [3.0, 1.0])
    return out


def test_ensemble_is_explained_by_its_members_maps(runs: dict[str, Path], face: Image.Image) -> None:
    ens = load_run(runs["ensemble"])
    before = _state(ens.module)
    result = explain(ens, face, "gradcam", road_percentiles=(50,))
    assert result.members == ["efficientnet_lite0", "vit_custom"]
    assert result.heatmap.shape == (64, 64) and 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0
    assert result.road is not None and result.to_dict()["members"] == result.members
    assert _state(ens.module) == before
    with pytest.raises(ExplainError, match="rollout does not apply to efficientnet_lite0"):
        explain(ens, face, "rollout")


def test_explain_face_detects_crops_and_refuses_blank_images(runs: dict[str, Path]) -> None:
    predictor = Predictor.from_run(runs["vit_custom"])
    astronaut = Image.fromarray(skdata.astronaut())
    result = explain_face(predictor, astronaut, "rollout", road=False)
    assert result.face_index == 0 and result.face is not None
    assert result.to_dict()["face"]["box"] == result.face.to_dict()["box"]
    np.testing.assert_array_equal(result.image, np.asarray(predictor.crop(astronaut, result.face)))
    blank = Image.new("RGB", (200, 200), (128, 128, 128))
    with pytest.raises(NoFaceError, match="no face found"):
        explain_face(predictor, blank, "gradcam")
    whole = explain_face(predictor, blank, "gradcam", whole_image=True, road=False)
    assert whole.face is None and whole.heatmap.shape == (32, 32)
    with pytest.raises(ExplainError, match="face 3 asked for"):
        explain_face(predictor, astronaut, "gradcam", face=3)


def test_cli_explain(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "astro.png"
    Image.fromarray(skdata.astronaut()).save(image)
    out = tmp_path / "maps" / "gradcam.png"
    assert main(["explain", str(image), "--run", str(runs["efficientnet_lite0"]), "--method", "gradcam++",
                 "--out", str(out), "--road-percentiles", "30,70", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "gradcam++" and doc["road"]["percentiles"] == [30, 70] and doc["face_index"] == 0
    assert Image.open(out).size == (448, 224)
    patches = tmp_path / "patches.png"
    assert main(["explain", str(image), "--run", str(runs["vit_custom"]), "--method", "patches",
                 "--out", str(patches)]) == 0
    assert "4x4 patches of 8 px" in capsys.readouterr().out and patches.exists()
    assert main(["explain", str(image), "--run", str(runs["vit_custom"]), "--method", "rollout",
                 "--head-fusion", "max", "--out", str(tmp_path / "r.png"), "--no-road"]) == 0
    assert "rollout for" in capsys.readouterr().out
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    for argv in (["explain", str(bad), "--run", str(runs["vit_custom"]), "--out", str(tmp_path / "x.png")],
                 ["explain", str(image), "--run", str(runs["efficientnet_lite0"]), "--method", "rollout",
                  "--out", str(tmp_path / "x.png")],
                 ["explain", str(image), "--run", str(runs["vit_custom"]), "--target", "joy",
                  "--out", str(tmp_path / "x.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
