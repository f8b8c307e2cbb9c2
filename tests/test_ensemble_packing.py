"""Packed ensembles (one self-contained folder, optionally float16) and a run's recommended backend.

The shipped default is three networks packed this way; these tests build tiny
ones, so they say what packing guarantees without the shipped weights.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_tiny_run
from emotion import inference
from emotion.cli import main
from emotion.ensembles import create_ensemble, pack_members
from emotion.fileio import default_dir_mode, default_file_mode
from emotion.inference import Predictor, PredictorConfig
from emotion.models import ModelError
from emotion.runs import RunError, load_run, read_json, write_json


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    a = save_tiny_run(root / "a", model="vit_custom", seed=0)
    b = save_tiny_run(root / "b", model="efficientnet_lite0", seed=1)
    spec = read_json(a / "config.json")
    spec["inference"] = {"margin": 0.0, "margin_source": "framing of a's training images", "tta": True}
    write_json(a / "config.json", spec)
    return [a, b]


def _probs(run: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return load_run(run).module(x).softmax(-1)


def test_a_packed_float16_ensemble_stands_alone_at_half_the_size(members: list[Path], tmp_path: Path) -> None:
    plain = create_ensemble(members, tmp_path / "plain", weights=[0.3, 0.7])
    packed = create_ensemble(members, tmp_path / "packed", weights=[0.3, 0.7], pack=True, half=True)
    spec = read_json(tmp_path / "packed" / "config.json")
    assert spec["members"] == ["members/01-a", "members/02-b"] and spec["member_weights_dtype"] == "float16"
    assert spec["packed_from"] == [str(m) for m in members] and packed["weights"] == [0.3, 0.7]
    for i, member in enumerate(members, 1):
        copy = tmp_path / "packed" / "members" / f"0{i}-{member.name}"
        size, original = ((d / "model.safetensors").stat().st_size for d in (copy, member))
        assert size < 0.6 * original
        assert read_json(copy / "labels.json") == read_json(member / "labels.json")
        # as readable as any new file (the app may run as another user), not mkstemp's 0600
        assert stat.S_IMODE((copy / "model.safetensors").stat().st_mode) == default_file_mode()
        assert stat.S_IMODE(copy.parent.stat().st_mode) == default_dir_mode()
    # moved elsewhere, with the original members gone, it still loads and answers like the float32 one
    moved = Path(shutil.move(str(tmp_path / "packed"), str(tmp_path / "elsewhere" / "ens")))
    x = torch.rand(4, 3, 64, 64)  # the ensemble's input: its largest member's
    expected = _probs(Path(plain["run_dir"]), x)
    for member in members:
        shutil.move(str(member), str(tmp_path / f"gone-{member.name}"))
    try:
        got = _probs(moved, x)
        with pytest.raises(RunError, match="does not exist"):
            load_run(Path(plain["run_dir"]))  # the unpacked one names folders that are gone
    finally:
        for member in members:
            shutil.move(str(tmp_path / f"gone-{member.name}"), str(member))
    assert got.shape == (4, 3) and not torch.equal(got, expected)  # float16 weights: not bit-identical
    torch.testing.assert_close(got, expected, atol=5e-3, rtol=0)
    assert next(load_run(moved / "members" / "01-a").module.parameters()).dtype == torch.float32


def test_packing_keeps_the_framing_hint_and_never_overwrites(members: list[Path], tmp_path: Path) -> None:
    create_ensemble(members, tmp_path / "ens", pack=True)
    spec = read_json(tmp_path / "ens" / "config.json")
    # the framing of the training faces carries over (so photos are cropped as trained); tta does not
    assert spec["inference"] == {"margin": 0.0, "margin_source": "framing of a's training images"}
    assert spec["member_weights_dtype"] == "as trained"
    same = (tmp_path / "ens" / "members" / "02-b" / "model.safetensors").read_bytes()
    assert same == (members[1] / "model.safetensors").read_bytes()
    before = sorted(p.name for p in (tmp_path / "ens" / "members").iterdir())
    with pytest.raises(ValueError, match="already holds members"):
        pack_members(members, tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens" / "members").iterdir()) == before
    assert not list((tmp_path / "ens").glob(".members.*"))  # no staging folder left
    with pytest.raises(ModelError, match="is itself an ensemble"):
        pack_members([tmp_path / "ens", members[0]], tmp_path / "nested")
    # members of a packed ensemble packed again are numbered afresh (01-b, not 01-02-b)
    repacked = pack_members([tmp_path / "ens" / "members" / "02-b", members[0]], tmp_path / "repacked")
    assert [p.name for p in repacked] == ["01-b", "02-a"]
    with pytest.raises(ValueError, match="needs pack=True"):
        create_ensemble(members, tmp_path / "half-only", half=True)
    assert main(["ensemble", "--runs", ",".join(map(str, members)), "--output-dir",
                 str(tmp_path / "cli"), "--half"]) == 2
    assert not (tmp_path / "cli").exists()


def test_the_cli_packs_an_ensemble(members: list[Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ensemble", "--runs", ",".join(map(str, members)), "--output-dir", str(tmp_path / "ens"),
                 "--pack", "--half"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["members"] == [str(tmp_path / "ens" / "members" / n) for n in ("01-a", "02-b")]
    assert load_run(tmp_path / "ens").config.family == "ensemble"


def _hinted(run: Path, tmp_path: Path, backend: str) -> Path:
    hinted = Path(shutil.copytree(run, tmp_path / f"hinted-{backend}"))
    spec = read_json(hinted / "config.json")
    spec["inference"] = {"backend": backend}
    write_json(hinted / "config.json", spec)
    return hinted


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript")
                    is None, reason="the onnx backend needs onnxruntime and onnxscript")
def test_a_run_recommends_its_backend_and_the_caller_still_decides(members: list[Path],
                                                                    tmp_path: Path) -> None:
    hinted = _hinted(members[1], tmp_path, "onnx")
    face = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    recommended = Predictor.from_run(hinted)
    assert recommended.backend == "onnx" and recommended.describe()["backend"] == "onnx"
    assert Predictor.from_run(members[1]).backend == "torch"  # no hint: torch, as before
    chosen = Predictor.from_run(hinted, PredictorConfig(backend="torch"))
    assert chosen.backend == "torch"
    crop = chosen.crop(face, None)
    assert np.abs(recommended.classify([crop]) - chosen.classify([crop])).max() <= 1e-4
    unknown = _hinted(members[1], tmp_path, "tensorrt")
    assert Predictor.from_run(unknown).backend == "torch"  # a backend this version does not know: ignored


def test_a_recommended_backend_that_cannot_run_here_falls_back_loudly(
        members: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    hinted = _hinted(members[1], tmp_path, "onnx")
    real = importlib.util.find_spec
    monkeypatch.setattr(inference.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="emotion.inference"):
        predictor = Predictor.from_run(hinted)
    assert predictor.backend == "torch"
    assert "pip install onnxruntime" in caplog.text
    assert predictor.classify([Image.new("RGB", (40, 40), (90, 90, 90))]).shape == (1, 3)

    def broken_export(*args: object, **kwargs: object) -> None:
        raise inference.ExportError("the exporter failed for this test")

    monkeypatch.setattr(inference.importlib.util, "find_spec", real)
    monkeypatch.setattr(inference, "onnx_classifier", broken_export)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emotion.inference"):
        assert Predictor.from_run(hinted).backend == "torch"  # recommended only: torch, with the reason
    assert "the exporter failed for this test" in caplog.text
    with pytest.raises(inference.ExportError, match="the exporter failed"):
        Predictor.from_run(hinted, PredictorConfig(backend="onnx"))  # asked for by name: the error


def test_a_packed_ensemble_cannot_start_a_training_but_its_members_can(members: list[Path],
                                                                        tmp_path: Path) -> None:
    from emotion.models import create_model
    from emotion.models.weights import WeightsNotFoundError

    create_ensemble(members, tmp_path / "ens", pack=True, half=True)
    with pytest.raises(WeightsNotFoundError, match=r"ensemble of 2 networks.*--pretrained .*members/01-a"):
        create_model("efficientnet_lite0", 3, pretrained=str(tmp_path / "ens"), input_size=64)
    built = create_model("efficientnet_lite0", 3, pretrained=str(tmp_path / "ens" / "members" / "02-b"),
                         input_size=64)  # float16 on disk, float32 in the model
    assert next(built.module.parameters()).dtype == torch.float32
    original = load_run(members[1]).module.state_dict()
    conv = next(k for k in original if k.endswith("conv_stem.weight"))
    torch.testing.assert_close(built.module.state_dict()[conv], original[conv], atol=1e-3, rtol=1e-3)
