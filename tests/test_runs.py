"""Damaged run folders: every way a copy can go wrong ends in a RunError naming the file to fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from emotion.models import create_model
from emotion.runs import RunError, load_run, read_json, save_ensemble, save_model, write_json

LABELS = ["angry", "happy", "sad"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    built = create_model("vit_custom", 3, pretrained=False, input_size=32, patch_size=8, dim=32, depth=1, heads=2)
    return save_model(tmp_path_factory.mktemp("runs") / "good", built.module, built.config, LABELS, built.weights)


def _copy(good_run: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(good_run, tmp_path / name))


def test_good_run_loads(good_run: Path) -> None:
    run = load_run(good_run)
    assert run.labels == LABELS and not run.module.training
    assert run.module(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_truncated_weights_say_damaged(good_run: Path, tmp_path: Path) -> None:
    run = _copy(good_run, tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(RunError, match=r"model\.safetensors is damaged or truncated"):
        load_run(run)


@pytest.mark.parametrize("labels, match", [
    (["angry", "happy"], r"num_classes 3 but .*labels\.json lists 2 classes"),
    (["angry", "angry", "sad"], "repeats a class name"),
    (["angry"], "at least two class names"),
    ({"0": "angry"}, "at least two class names"),
    (["angry", "", "sad"], "at least two class names"),
])
def test_labels_that_do_not_fit_the_config(good_run: Path, tmp_path: Path, labels, match: str) -> None:
    run = _copy(good_run, tmp_path)
    write_json(run / "labels.json", labels)
    with pytest.raises(RunError, match=match):
        load_run(run)


def test_weights_of_another_head_size_name_both_files(good_run: Path, tmp_path: Path) -> None:
    run = _copy(good_run, tmp_path)
    spec = read_json(run / "config.json")
    del spec["num_classes"]  # older runs: only the weights can disagree
    write_json(run / "config.json", spec)
    write_json(run / "labels.json", ["angry", "happy"])
    with pytest.raises(RunError, match=r"does not fit the vit_custom with 2 classes") as info:
        load_run(run)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, match", [
    ([], "does not name a model"),
    ({"num_classes": 3}, "does not name a model"),
    ({"model": "vit_custom", "num_classes": 3, "input_size": "32"}, "no integer input_size"),
    ({"model": "ensemble", "num_classes": 3, "members": []}, "lists no ensemble members"),
])
def test_configs_that_describe_no_model(good_run: Path, tmp_path: Path, spec, match: str) -> None:
    run = _copy(good_run, tmp_path)
    (run / "config.json").write_text(json.dumps(spec))
    with pytest.raises(RunError, match=match):
        load_run(run)


def test_invalid_json_and_missing_files(good_run: Path, tmp_path: Path) -> None:
    run = _copy(good_run, tmp_path)
    (run / "config.json").write_text('{"model": ')
    with pytest.raises(RunError, match=r"config\.json is not valid JSON"):
        load_run(run)
    run = _copy(good_run, tmp_path, "no-weights")
    (run / "model.safetensors").unlink()
    with pytest.raises(RunError, match="is missing: the run did not finish"):
        load_run(run)
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_an_ensemble_that_contains_itself_is_refused(good_run: Path, tmp_path: Path) -> None:
    ens = save_ensemble(tmp_path / "ens", [good_run, good_run])
    assert load_run(ens).labels == LABELS
    spec = read_json(ens / "config.json")
    spec["members"] = [".", "."]  # a hand-edited config that points at itself
    write_json(ens / "config.json", spec)
    with pytest.raises(RunError, match="nest more than 4 deep"):
        load_run(ens)


def test_a_failed_json_write_keeps_the_old_file_and_leaves_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.5})
    with pytest.raises(ValueError):
        write_json(target, {"accuracy": _Unprintable()})
    assert read_json(target) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


class _Unprintable:
    """json.dump's default=str turns objects into strings; a str() that fails stands in for any write error."""

    def __str__(self) -> str:
        raise ValueError("cannot serialise")


def test_atomic_write_sets_the_mode_asked_for_and_cleans_up_after_a_failing_writer(tmp_path: Path) -> None:
    from emotion.fileio import atomic_write

    target = tmp_path / "crop.png"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"), mode=0o644)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o644

    def fails(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails)
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["crop.png"]


def _history_run(folder: Path, curve: list[float], epochs_budget: float, patience: int = 3) -> Path:
    """A run folder with only the files :func:`training_summary` reads: config, history, metrics."""
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"model": "resnet34", "train_config": {
        "metric": "macro_f1", "early_stopping_patience": patience, "epochs": epochs_budget, "max_steps": -1}})
    history = [{"loss": 1.0, "epoch": 0.5, "step": 5}]
    history += [{"eval_macro_f1": f1, "eval_accuracy": f1, "epoch": float(i + 1), "step": 10 * (i + 1)}
                for i, f1 in enumerate(curve)]
    write_json(folder / "history.json", history)
    write_json(folder / "metrics.json", {"epochs_completed": float(len(curve)), "train_time_s": 600.0})
    return folder


def test_training_summary_says_whether_a_run_converged(tmp_path: Path) -> None:
    from emotion.runs import training_summary

    still_rising = training_summary(_history_run(tmp_path / "rising", [0.4, 0.5, 0.6, 0.65], 4))
    assert still_rising["converged"] is False and still_rising["stopped_early"] is False
    assert (still_rising["epochs_run"], still_rising["best_epoch"]) == (4, 4)
    assert still_rising["epochs_budget"] == 4
    assert still_rising["curve"][-1] == [4.0, 0.65]

    # early stopping fired: 3 evaluations without a strictly better score, before the budget ran out
    stopped = training_summary(_history_run(tmp_path / "stopped", [0.4, 0.6, 0.6, 0.59, 0.58], 10))
    assert stopped["converged"] is True and stopped["stopped_early"] is True and stopped["best_epoch"] == 2

    # the budget ran out on a plateau: converged by the same rule, though not stopped early
    plateau = training_summary(_history_run(tmp_path / "plateau", [0.5, 0.62, 0.61, 0.6, 0.62], 5))
    assert plateau["converged"] is True and plateau["stopped_early"] is False and plateau["best_epoch"] == 2

    # only two evaluations since the best: not yet converged under patience 3
    short = training_summary(_history_run(tmp_path / "short", [0.5, 0.62, 0.61, 0.6], 4))
    assert short["converged"] is False


def test_training_summary_is_none_without_a_training_history(tmp_path: Path) -> None:
    from emotion.runs import training_summary

    (tmp_path / "copied").mkdir()
    assert training_summary(tmp_path / "copied") is None
    folder = _history_run(tmp_path / "no-evals", [], 3)
    assert training_summary(folder) is None
