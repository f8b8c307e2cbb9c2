"""Nothing a user types, points at or kills loses data; every failure says what happened.

Each test here reproduces one case of docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from conftest import make_class_folders, save_tiny_run
from emotion.audit import audit_dataset
from emotion.cli import main as cli_main
from emotion.data.sources import DatasetError, load_dataset_spec
from emotion.fileio import write_json
from emotion.images import ImageLoadError, file_digest, image_header, load_image
from emotion.names import InvalidNameError, child_folder, safe_name
from emotion.runs import describe_run, load_run, read_json
from emotion.config import TrainConfig
from emotion.training import check_run_folder, remove_checkpoints, train

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic:n=24,test=6,size=48"


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="efficientnet_lite0", data=DATA, image_size=32, batch_size=12, max_steps=2,
                output_dir=str(tmp_path / "run"), warmup_ratio=0.0, early_stopping_patience=0,
                evaluate_test=False)
    base.update(kw)
    return TrainConfig(**base)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# ----------------------------------------------------------------------------- 1. names and deletes

@pytest.mark.parametrize("name", [".", "..", "...", "", "   ", "/", "..//..", "x" * 101])
def test_names_that_cannot_be_a_run_folder_are_refused(name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(InvalidNameError):
        safe_name(name)
    with pytest.raises(ValueError):
        TrainConfig(run_name=name)


def test_run_name_dot_is_refused_before_anything_is_deleted(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """The reproduction from the issue: `--run-name .` used to delete runs/checkpoints/notes.txt."""
    runs = tmp_path / "checkpoints" / "runs"
    notes = runs / "checkpoints" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("x")
    monkeypatch.setenv("EMOTION_RUNS_DIR", str(runs))
    for name in (".", ".."):
        code = cli_main(["train", "--model", "efficientnet_lite0", "--data", DATA, "--image-size", "32",
                         "--max-steps", "2", "--run-name", name])
        assert code == 2
        assert "run name" in capsys.readouterr().err
    assert notes.read_text() == "x"
    assert sorted(p.name for p in runs.iterdir()) == ["checkpoints"]


def test_a_cleaned_name_that_lands_on_another_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "my_run").mkdir()
    with pytest.raises(InvalidNameError, match="becomes 'my_run'"):
        child_folder(tmp_path, "my run")
    assert child_folder(tmp_path, "my_run") == tmp_path / "my_run"  # the cleaned name itself resumes
    assert child_folder(tmp_path, "new run") == tmp_path / "new_run"


def test_checkpoint_cleanup_removes_only_the_trainers_checkpoints(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    (ckpt / "checkpoint-4").mkdir(parents=True)
    (ckpt / "checkpoint-4" / "model.safetensors").write_text("w")
    (ckpt / "notes.txt").write_text("mine")
    (ckpt / "checkpoint-best").mkdir()
    remove_checkpoints(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-best", "notes.txt"]
    (ckpt / "notes.txt").unlink()
    (ckpt / "checkpoint-best").rmdir()
    (ckpt / "checkpoint-9").mkdir()
    remove_checkpoints(ckpt)
    assert not ckpt.exists()


def test_training_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "my-documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(Exception, match="not a run folder"):
        train(_config(tmp_path, output_dir=str(folder)))
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


# ----------------------------------------------------------------------------- 2. no trained model is lost

def test_grayscale_check_survives_a_decompression_bomb(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "data", {"angry": 3, "happy": 3})
    png_header_only(tmp_path / "data" / "happy" / "bomb.png", 30_000, 30_000)
    splits = load_dataset_spec(tmp_path / "data")
    assert splits.is_grayscale() is False  # decided from the readable images, nothing raised


@pytest.mark.slow
def test_a_bomb_in_the_training_folder_is_skipped_and_the_model_saved(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "data" / "train", {"angry": 8, "happy": 8})
    make_class_folders(tmp_path / "data" / "test", {"angry": 2, "happy": 2}, seed=3)
    bomb = png_header_only(tmp_path / "data" / "train" / "happy" / "bomb.png", 30_000, 30_000)
    config = _config(tmp_path, data=str(tmp_path / "data"), classes="angry,happy", batch_size=6)
    train(config)
    spec = read_json(Path(config.output_dir) / "config.json")
    assert str(bomb) in spec["data"]["skipped_unreadable"]
    assert "downscale it first" in spec["data"]["skipped_unreadable"][str(bomb)]
    assert load_run(config.output_dir).labels == ["angry", "happy"]


@pytest.mark.slow
def test_weights_are_saved_before_anything_after_training_can_fail(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Trainer

    real_evaluate = Trainer.evaluate

    def failing_evaluate(self, *args, **kwargs):
        if kwargs.get("metric_key_prefix") == "test":
            raise RuntimeError("disk full while scoring the test split")
        return real_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", failing_evaluate)
    config = _config(tmp_path, evaluate_test=True)
    with pytest.raises(RuntimeError, match="disk full"):
        train(config)
    run = Path(config.output_dir)
    assert read_json(run / "status.json")["state"] == "failed"
    assert load_run(run).labels == ["angry", "happy", "sad"]  # the trained weights survived


# ----------------------------------------------------------------------------- 3. pipes, devices, link loops

def _odd_files(folder: Path) -> dict[str, str]:
    """A named pipe and a symbolic-link loop with image names, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.png")
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    return {"pipe.png": "named pipe", "loop_a.png": "symbolic link loop", "loop_b.png": "symbolic link loop"}


@pytest.mark.timeout(60)
def test_a_named_pipe_in_a_class_folder_is_skipped_and_reported(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "data", {"angry": 4, "happy": 4})
    odd = _odd_files(tmp_path / "data" / "happy")
    splits = load_dataset_spec(tmp_path / "data")
    listed = {Path(s.path).name for v in splits.splits.values() for s in v}
    assert not listed & set(odd)
    reasons = {Path(d["file"]).name: d["error"] for d in splits.skipped}
    assert set(reasons) == set(odd)
    for name, why in odd.items():
        assert why in reasons[name] and "not a regular file" in reasons[name]
    assert any("not regular files" in n for n in splits.notes)
    report = audit_dataset(splits, workers=1)  # hashing a pipe used to block here forever
    corrupt = {Path(r["file"]).name for r in report.corrupt}
    assert set(odd) <= corrupt


@pytest.mark.timeout(30)
def test_readers_refuse_non_regular_files_instead_of_blocking(tmp_path: Path) -> None:
    odd = _odd_files(tmp_path)
    for name, why in odd.items():
        with pytest.raises(ImageLoadError, match=why):
            load_image(tmp_path / name)
        with pytest.raises(ImageLoadError, match=why):
            image_header(tmp_path / name)
        with pytest.raises(OSError, match=why):
            file_digest(tmp_path / name)


# ----------------------------------------------------------------------------- 4. killed training

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from emotion.training import _exclusive_run_folder, _write_status
    run = Path(sys.argv[1])
    run.mkdir(parents=True, exist_ok=True)
    with _exclusive_run_folder(run):
        _write_status(run, "running")
        print("ready", flush=True)
        time.sleep(120)
""")


def test_a_killed_training_reads_interrupted_not_running(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert describe_run(run)["state"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert read_json(run / "status.json")["state"] == "running"  # nothing rewrote it...
    info = describe_run(run)  # ...but every reader sees the truth
    assert info["state"] == "interrupted"
    assert "ended without finishing" in info["error"]
    assert cli_main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "interrupted" in capsys.readouterr().out


def test_a_run_killed_after_saving_its_weights_is_offered_for_prediction(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    pytest.importorskip("streamlit")
    from ui.models import ready_runs

    monkeypatch.setenv("EMOTION_RUNS_DIR", str(tmp_path / "runs"))
    run = save_tiny_run(tmp_path / "runs" / "saved-then-killed")
    write_json(run / "status.json", {"state": "running", "pid": 2 ** 22 + 12345})  # no such process
    assert [r["name"] for r in ready_runs()] == ["saved-then-killed"]


# ----------------------------------------------------------------------------- 5. completed runs

def _completed_run(folder: Path) -> Path:
    save_tiny_run(folder)
    write_json(folder / "status.json", {"state": "completed"})
    return folder


def test_the_cli_refuses_to_overwrite_a_completed_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _completed_run(tmp_path / "done")
    before = (run / "model.safetensors").read_bytes()
    code = cli_main(["train", "--model", "efficientnet_lite0", "--data", DATA, "--image-size", "32",
                     "--max-steps", "2", "--output-dir", str(run)])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before
    check_run_folder(run, overwrite=True)  # the way to replace it on purpose


def test_overwrite_moves_the_earlier_results_aside(tmp_path: Path) -> None:
    run = _completed_run(tmp_path / "done")
    write_json(run / "temperature.json", {"temperature": 3.0})  # fitted to the old weights only
    (run / "evaluations").mkdir()
    write_json(run / "evaluations" / "test.json", {"accuracy": 0.9})
    old = _files(run)
    train(_config(tmp_path, output_dir=str(run), overwrite=True))
    (aside,) = run.glob("previous-*")
    assert {name: old[name] for name in _files(aside)} == _files(aside)  # moved as they were
    assert {"model.safetensors", "temperature.json", "evaluations/test.json", "metrics.json"} <= set(_files(aside))
    assert not (run / "temperature.json").exists() and not (run / "evaluations").exists()
    assert (run / "model.safetensors").read_bytes() != old["model.safetensors"]
    assert describe_run(run)["ready"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_never_writes_into_an_ensemble_or_a_copied_model(tmp_path: Path) -> None:
    from emotion.jobs import JobError, JobQueue
    from emotion.runs import save_ensemble

    a, b = save_tiny_run(tmp_path / "a"), save_tiny_run(tmp_path / "b", seed=1)
    ensemble = save_ensemble(tmp_path / "ens", [a, b])
    copied = tmp_path / "copied"  # a shipped or downloaded model: weights, config and labels only
    copied.mkdir()
    for name in ("model.safetensors", "config.json", "labels.json"):
        (copied / name).write_bytes((a / name).read_bytes())
    for folder, match, overwrite in ((ensemble, "holds an ensemble", True),
                                     (copied, "was not trained here", False)):
        before = _files(folder)
        with pytest.raises(Exception, match=match):
            train(_config(tmp_path, output_dir=str(folder), overwrite=overwrite))
        with pytest.raises(JobError, match=match):  # the app's Train page queues through here
            JobQueue(tmp_path / "jobs").submit(_config(tmp_path, output_dir=str(folder), overwrite=overwrite),
                                               start=False)
        assert _files(folder) == before
    check_run_folder(copied, overwrite=True)  # replacing a model on purpose stays possible


def test_an_ensemble_is_never_saved_over_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = save_tiny_run(tmp_path / "a"), save_tiny_run(tmp_path / "b", seed=1)
    before = _files(a)
    for out in (a, tmp_path):  # a member itself; a folder holding runs
        assert cli_main(["ensemble", "--runs", f"{a},{b}", "--output-dir", str(out)]) == 2
        assert "is not empty" in capsys.readouterr().err
    assert _files(a) == before
    assert cli_main(["ensemble", "--runs", f"{a},{b}", "--output-dir", str(tmp_path / "ens")]) == 0


def test_outputs_that_are_inputs_are_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    photo = tmp_path / "photos" / "face.png"
    photo.parent.mkdir()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(photo)
    (tmp_path / "photos" / "face-2.png").write_bytes(photo.read_bytes())
    original = photo.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    cases = [["predict", str(photo), "--annotate", str(photo)],
             ["predict", str(photo), "--annotate", str(link)],  # the same file under another name
             # a folder: numbered outputs face-1.png, face-2.png, and face-2.png is an input
             ["predict", str(tmp_path / "photos"), "--annotate", str(tmp_path / "photos" / "face.png")],
             ["explain", str(photo), "--out", str(tmp_path / "photos" / "." / "face.png")]]
    for argv in cases:
        assert cli_main(argv) == 2, argv
        assert "would replace the original" in capsys.readouterr().err, argv
        assert photo.read_bytes() == original


def test_an_output_name_used_twice_keeps_the_earlier_file(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """--out, --annotate and explain --out over an existing file: the earlier file is moved aside, not lost."""
    from PIL import Image

    run = save_tiny_run(tmp_path / "run")
    photo = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (200, 150, 120)).save(photo)
    rows, picture, heatmap = tmp_path / "rows.csv", tmp_path / "out.png", tmp_path / "map.png"
    rows.write_text("someone's earlier results\n")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(picture)
    earlier_picture = picture.read_bytes()
    heatmap.write_bytes(earlier_picture)
    for _ in range(2):  # the second round sets aside what the first one wrote
        assert cli_main(["predict", str(photo), "--run", str(run), "--whole-image",
                         "--out", str(rows), "--annotate", str(picture)]) == 0
        assert cli_main(["explain", str(photo), "--run", str(run), "--whole-image", "--method", "gradcam",
                         "--no-road", "--out", str(heatmap)]) == 0
    capsys.readouterr()
    kept_rows = sorted(tmp_path.glob("rows.previous-*.csv"))
    assert len(kept_rows) == 2 and "someone's earlier results\n" in [p.read_text() for p in kept_rows]
    assert rows.read_text().startswith("source,")
    for name, new in (("out", picture), ("map", heatmap)):
        kept = sorted(tmp_path.glob(f"{name}.previous-*.png"))
        assert len(kept) == 2 and earlier_picture in [p.read_bytes() for p in kept], name
        assert Image.open(new).size != (8, 8)


def test_a_run_keeps_the_exclusion_list_it_trained_with(tmp_path: Path) -> None:
    from emotion.evaluation import load_eval_data
    from emotion.data.sources import save_exclusions

    data = make_class_folders(tmp_path / "faces", {"angry": 10, "happy": 10, "sad": 10})
    listed = save_exclusions(tmp_path / "exclusions" / "faces.json", [data / "sad" / "0.png"], reason="blank")
    config = _config(tmp_path, model="vit_custom", from_scratch=True, image_size=32, data=str(data),
                     exclude_file=str(listed))
    train(config)
    run = load_run(Path(config.output_dir))
    val_before = [s.path for s in load_eval_data(run, str(data), "val").samples]
    # the EDA page adds to the list later, then it is removed: the run's validation images stay the same
    more = sorted((data / "happy").glob("*.png"))[:4]
    save_exclusions(listed, [data / "sad" / "0.png", *more], reason="more")
    assert [s.path for s in load_eval_data(run, str(data), "val").samples] == val_before
    listed.unlink()
    assert [s.path for s in load_eval_data(run, str(data), "val").samples] == val_before
    assert read_json(run.path / "exclusions.json")["files"] == [str((data / "sad" / "0.png").resolve())]


def test_resume_skips_a_checkpoint_cut_off_while_being_saved(tmp_path: Path) -> None:
    from emotion.training import last_complete_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        (ckpts / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
        if complete:
            (ckpts / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(ckpts) == str(ckpts / "checkpoint-4")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4",
                                                        "incomplete-checkpoint-6"]
    assert (ckpts / "incomplete-checkpoint-6" / "model.safetensors").read_bytes() == b"weights"  # kept
    assert last_complete_checkpoint(tmp_path / "none") is None


# ----------------------------------------------------------------------------- 6. smaller cases

def test_a_photo_over_the_pixel_limit_is_told_to_downscale(tmp_path: Path) -> None:
    for side in (10_000, 14_000):  # Pillow warns above 89M pixels and refuses above 179M
        path = png_header_only(tmp_path / f"{side}.png", side, side)
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert "downscale it first" in str(info.value) and "DOS" not in str(info.value)


def test_an_oversized_upload_is_explained_in_words() -> None:
    pytest.importorskip("streamlit")
    import re

    from ui.predict import MAX_UPLOAD_MB, check_upload

    config = (REPO / ".streamlit" / "config.toml").read_text()
    transfer_cap = int(re.search(r"^maxUploadSize = (\d+)$", config, re.M).group(1))
    assert transfer_cap >= 5 * MAX_UPLOAD_MB  # so the browser never shows only an error icon
    image, message = check_upload("holiday.jpg", b"\0" * int((MAX_UPLOAD_MB + 5) * 2 ** 20))
    assert image is None and "holiday.jpg" in message and "downscale" in message


def test_run_files_are_readable_by_other_users(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_tiny_run(tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("config.json", "labels.json", "model.safetensors", "metrics.json"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


def test_an_offline_hub_failure_leaves_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import emotion.models.zoo as zoo

    monkeypatch.setattr(zoo, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    config = _config(tmp_path, model="efficientnet_b4", output_dir=str(tmp_path / "runs" / "b4"))
    with pytest.raises(Exception, match="(?i)offline|unreachable"):
        train(config)
    assert not (tmp_path / "runs" / "b4").exists()


# ----------------------------------------------------------------------------- public deployments

def test_data_roots_confine_dataset_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_class_folders(tmp_path / "allowed" / "faces", {"angry": 2, "happy": 2})
    make_class_folders(tmp_path / "private", {"angry": 2, "happy": 2})
    os.symlink(tmp_path / "private", tmp_path / "allowed" / "sneaky")
    monkeypatch.setenv("EMOTION_DATA_ROOTS", str(tmp_path / "allowed"))
    assert load_dataset_spec(tmp_path / "allowed" / "faces").classes == ["angry", "happy"]
    outside_roots = (tmp_path / "private", tmp_path / "allowed" / "sneaky",
                     tmp_path / "allowed" / ".." / "private", "/etc")
    for outside in outside_roots:
        with pytest.raises(DatasetError, match="outside the dataset folders"):
            load_dataset_spec(outside)
    with pytest.raises(DatasetError, match="outside the dataset folders"):
        load_dataset_spec(f"hf:imagefolder:{tmp_path / 'private'}")
    assert load_dataset_spec("synthetic:n=12,test=3,size=32").classes  # the demo set needs no folder



# ----------------------------------------------------------------------------- earlier cases, kept true

class _Exploit:
    def __reduce__(self):
        return (Path.write_text, (Path(os.environ["EXPLOIT_MARKER"]), "ran"))


def test_a_pickle_that_runs_code_is_refused_as_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from emotion.models.weights import WeightsNotFoundError, read_state_dict

    marker = tmp_path / "pwned.txt"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    torch.save({"weight": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsNotFoundError, match="cannot read weights"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_decompression_bomb_upload_is_refused_in_words(tmp_path: Path) -> None:
    pytest.importorskip("streamlit")
    from ui.predict import check_upload

    data = png_header_only(tmp_path / "bomb.png", 40_000, 40_000).read_bytes()  # 1.6 G pixels in 100 bytes
    image, message = check_upload("bomb.png", data)
    assert image is None and "bomb.png" in message and "downscale it first" in message
