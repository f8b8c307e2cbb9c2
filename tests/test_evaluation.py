"""Evaluation: metrics agree with scikit-learn, calibration by hand, TTA, ensembles and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folders
from sklearn import metrics as skm

from emotion import ensembles as ENS
from emotion import evaluation as E
from emotion import metrics as M
from emotion import profiling as P
from emotion.cli import main as cli_main
from emotion.runs import read_json

DATA = "synthetic:n=24,test=6,size=48"
LABELS = ["angry", "happy", "sad"]


def _random_predictions(n: int = 200, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]  # better than chance, not perfect
    return M.softmax(logits), labels


# ----------------------------------------------------------------------------- pure metrics


def test_metrics_agree_with_scikit_learn() -> None:
    probs, y = _random_predictions()
    names = ["a", "b", "c", "d"]
    m = M.classification_metrics(probs, y, names)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted", zero_division=0))
    assert m["nll"] == pytest.approx(skm.log_loss(y, probs, labels=range(4)))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for i, name in enumerate(names):
        expected = {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
        assert m["per_class"][name] == pytest.approx(expected)
    cm = skm.confusion_matrix(y, pred, labels=range(4))
    assert m["confusion_matrix"] == cm.tolist()
    np.testing.assert_allclose(m["confusion_matrix_normalized"],
                               skm.confusion_matrix(y, pred, normalize="true"))
    json.dumps(m)  # JSON-ready


def test_metrics_on_a_hand_made_case_with_a_missing_class() -> None:
    # 3 classes; class 2 is neither present nor predicted -> macro averages skip it, like scikit-learn
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    y = np.array([0, 1, 1, 1])
    m = M.classification_metrics(probs, y, ["x", "y", "z"])
    pred = probs.argmax(1)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["per_class"]["x"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]
    assert m["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="labels"):
        M.classification_metrics(probs, [0, 1, 1, 3], ["x", "y", "z"])


def test_ece_and_reliability_curve_by_hand() -> None:
    # confidences 0.95, 0.85, 0.65, 0.75 (one per bin with 10 bins); correct, wrong, correct, correct
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.25, 0.75]])
    y = np.array([0, 1, 1, 1])
    # |1-.95| + |0-.85| + |1-.65| + |1-.75| = 1.5, over 4 images
    assert M.expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.375)
    # two bins: all four in (0.5, 1]: accuracy 0.75, mean confidence 0.8
    assert M.expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.05)
    curve = M.reliability_curve(probs, y, n_bins=10)
    assert curve["count"] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert curve["accuracy"][6:] == [1.0, 1.0, 0.0, 1.0] and curve["accuracy"][0] is None
    assert curve["confidence"][8] == pytest.approx(0.85)
    assert len(curve["edges"]) == 11
    # a perfectly calibrated bin contributes nothing
    assert M.expected_calibration_error([[0.5, 0.5], [0.5, 0.5]], [0, 1], n_bins=4) == pytest.approx(0.0)


def test_temperature_scaling_fixes_over_confidence_and_keeps_accuracy() -> None:
    rng = np.random.default_rng(1)
    n, k = 600, 3
    logits = rng.normal(scale=1.5, size=(n, k))
    p_true = M.softmax(logits)
    y = np.array([rng.choice(k, p=row) for row in p_true])  # labels drawn from the calibrated model
    over = logits * 5  # the same ranking, far too sure
    val, test = slice(0, 300), slice(300, None)
    t = M.fit_temperature(over[val], y[val], kind="logits")
    assert 3.5 < t < 7.0
    before = M.softmax(over[test])
    after = M.apply_temperature(over[test], t)
    assert M.negative_log_likelihood(after, y[test]) < 0.8 * M.negative_log_likelihood(before, y[test])
    assert M.expected_calibration_error(after, y[test]) < M.expected_calibration_error(before, y[test])
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))
    # probabilities in, same answer (they are logits up to a per-row constant)
    assert M.fit_temperature(M.softmax(over[val]), y[val]) == pytest.approx(t, rel=1e-3)
    # an under-confident model gets T < 1
    assert M.fit_temperature(logits[val] / 4, y[val]) < 0.5
    report = M.calibration_report(before, y[test], n_bins=10, temperature=t)
    assert report["ece_calibrated"] < report["ece"] and report["temperature"] == t


def test_simplex_grid_and_weight_fit_prefer_the_better_member() -> None:
    grid = ENS.simplex_grid(3, 0.5)
    assert grid.tolist() == [[0, 0, 1], [0, 0.5, 0.5], [0, 1, 0], [0.5, 0, 0.5], [0.5, 0.5, 0], [1, 0, 0]]
    good, y = _random_predictions(300, 3, seed=2)
    noise = M.softmax(np.random.default_rng(3).normal(size=(300, 3)))
    fit = ENS.fit_ensemble_weights([noise, good], y, objective="nll", step=0.1)
    assert fit["weights"][1] > 0.7 and fit["best"]["nll"] <= fit["equal_weights"]["nll"]
    fit_f1 = ENS.fit_ensemble_weights([noise, good], y, objective="macro_f1", step=0.25)
    assert fit_f1["weights"][1] >= 0.5 and fit_f1["best"]["macro_f1"] >= fit_f1["equal_weights"]["macro_f1"]
    with pytest.raises(ValueError, match="step"):
        ENS.simplex_grid(2, 0.3)


# ----------------------------------------------------------------------------- model side


class _LeftBright(torch.nn.Module):
    """Class 0 when the left half is brighter than the right, else class 1: a flip swaps the answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        d = x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3))
        return torch.stack([4 * d, -4 * d], dim=1)


class _Items(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: list[int]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def test_predict_probabilities_and_flip_tta() -> None:
    images = torch.zeros(5, 3, 8, 8)
    images[:, :, :, :4] = 1.0  # left half bright
    ds = _Items(images, [0, 0, 0, 0, 1])
    model = _LeftBright()
    probs, labels = E.predict_probabilities(model, ds, batch_size=2)
    assert probs.shape == (5, 2) and probs.dtype == np.float64 and labels.tolist() == [0, 0, 0, 0, 1]
    assert (probs[:, 0] > 0.95).all()
    flipped, _ = E.predict_probabilities(model, _Items(images.flip(-1), ds.labels), batch_size=2)
    assert (flipped[:, 1] > 0.95).all()
    tta, _ = E.predict_probabilities(model, ds, batch_size=3, tta=True)
    np.testing.assert_allclose(tta, 0.5 * (probs + flipped))  # image and mirror image, averaged
    np.testing.assert_allclose(tta, 0.5, atol=1e-9)


def test_speed_measurements_report_what_they_measured() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    lat = P.measure_latency(model, 8, repeats=3, warmup=1)
    thr = P.measure_throughput(model, 8, batch_size=4, repeats=2)
    assert lat["latency_ms"] > 0 and lat["repeats"] == 3 and lat["device"] == "cpu" and lat["threads"] >= 1
    assert thr["throughput_ips"] > 0 and thr["batch_size"] == 4


# ----------------------------------------------------------------------------- held-out data


def test_unsplit_folder_is_split_as_in_training(tmp_path: Path) -> None:
    """Seed and class order both change an 80/20 split: the defaults must give training's test images."""
    from emotion.data.sources import load_dataset_spec
    from emotion.models.registry import ModelConfig
    from emotion.runs import LoadedRun

    folder = make_class_folders(tmp_path / "faces", {"angry": 10, "happy": 10, "sad": 10, "fear": 10})
    labels = ["sad", "angry", "happy"]  # trained with --classes sad,angry,happy --seed 3
    run = LoadedRun(torch.nn.Identity(), ModelConfig("stub", "cnn"), labels,
                    {"model": "stub", "train_config": {"seed": 3, "val_fraction": 0.2}}, tmp_path / "run")
    trained = load_dataset_spec(folder, classes=labels, seed=3)
    for classes in ("sad,angry,happy", "angry,happy,sad"):
        ev = E.load_eval_data(run, str(folder), "test", classes=classes)
        assert ev.splits.classes == labels
        assert sorted(map(str, ev.samples)) == sorted(map(str, trained.splits["test"]))
    val = E.load_eval_data(run, str(folder), "val", classes="happy,sad,angry")
    assert val.description == "stratified 20% of train (seed 3)"
    assert not {s.path for s in val.samples} & {s.path for s in trained.splits["test"]}
    with pytest.raises(E.DatasetError, match="--classes sad,angry,happy"):
        E.load_eval_data(run, str(folder), "test")  # four classes on disk, three in the run


# ----------------------------------------------------------------------------- runs and the CLI


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny vit_custom runs on the synthetic set (a few steps each), shared by this file's CLI tests."""
    from emotion.config import TrainConfig
    from emotion.training import train

    base = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.getbasetemp() / "emotion-cache"  # the conftest's per-session cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOTION_CACHE_DIR", str(cache))
        for seed, name in ((0, "a"), (1, "b")):
            # same split seed for both (the ensemble's weights are fitted on the shared validation images)
            train(TrainConfig(model="vit_custom", from_scratch=True, data=DATA, max_steps=2, batch_size=12,
                              output_dir=str(base / name), early_stopping_patience=0, evaluate_test=False,
                              warmup_ratio=0.0, seed=0, learning_rate=1e-3 * (1 + seed)))
    return base / "a", base / "b"


def test_ensemble_of_two_runs_evaluates_through_the_cli(two_runs: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    a, b = two_runs
    ens = tmp_path / "ens"
    assert cli_main(["ensemble", "--runs", f"{a},{b}", "--output-dir", str(ens), "--fit-weights",
                     "--data", DATA, "--step", "0.25"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert len(made["weights"]) == 2 and sum(made["weights"]) == pytest.approx(1.0)
    fit = read_json(ens / "config.json")["weights_fit"]
    assert fit["objective"] == "nll" and fit["fitted_on"]["split"].startswith("stratified")
    assert "test" not in fit["fitted_on"]["split"]

    # a temperature fitted on validation images, then the test split scored with TTA
    argv = ["evaluate", "--run", str(ens), "--data", DATA, "--fit-temperature", "--tta", "--json"]
    assert cli_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_recall", "macro_f1", "per_class", "confusion_matrix", "ece",
                "ece_calibrated"):
        assert key in result, key
    assert result["data"]["split"] == "test" and result["data"]["images"] == 18  # 6 per class
    assert result["data"]["counts"] == {"angry": 6, "happy": 6, "sad": 6}
    assert sum(map(sum, result["confusion_matrix"])) == 18 and set(result["per_class"]) == set(LABELS)
    assert result["tta"] is True and result["run"]["model"] == "ensemble"
    size_a = (a / "model.safetensors").stat().st_size
    assert result["size_bytes"] == size_a + (b / "model.safetensors").stat().st_size
    assert result["parameters"] > 0
    saved = Path(result["saved_to"])
    assert saved.parent == ens / "evaluations"
    assert json.loads(saved.read_text())["macro_f1"] == result["macro_f1"]
    temperature = read_json(ens / "temperature.json")
    assert temperature["temperature"] > 0 and temperature["fitted_on"]["split"].startswith("stratified")
    # refitting on the same images replaces it; a fit on other images keeps the earlier one beside it
    refit = E.fit_run_temperature(ens, DATA)
    assert not list(ens.glob("temperature.previous-*.json"))
    assert refit["fitted_on"] == temperature["fitted_on"]
    other = E.fit_run_temperature(ens, "synthetic:n=30,test=6,size=48")  # another dataset
    assert other["fitted_on"] != refit["fitted_on"]
    (kept,) = ens.glob("temperature.previous-*.json")
    assert read_json(kept) == json.loads(json.dumps(refit))  # the seed-0 fit, as it was stored
    assert read_json(ens / "temperature.json")["fitted_on"] == other["fitted_on"]

    # the readable table for a single run, reordered classes are mapped onto the run's order
    argv = ["evaluate", "--run", str(a), "--data", DATA, "--classes", "sad,angry,happy", "--no-save"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "confusion matrix" in out and "no fitted temperature" in out
    assert not (a / "evaluations").exists()


def test_bad_inputs_exit_2_with_one_line(two_runs: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    a, _ = two_runs

    def error_of(argv: list[str]) -> str:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    assert "does not exist" in error_of(["evaluate", "--run", str(tmp_path / "nope"), "--data", DATA])
    other = make_class_folders(tmp_path / "other", {"angry": 2, "happy": 2, "surprise": 2})
    msg = error_of(["evaluate", "--run", str(a), "--data", str(other)])
    assert "class mismatch" in msg and "surprise" in msg and "sad" in msg
    superset = make_class_folders(tmp_path / "super", {"angry": 2, "happy": 2, "sad": 2, "fear": 2})
    assert "--classes angry,happy,sad" in error_of(["evaluate", "--run", str(a), "--data", str(superset)])
    assert cli_main(["evaluate", "--run", str(a), "--data", str(superset), "--classes", "angry,happy,sad",
                     "--no-save", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["counts"] == {"angry": 1, "happy": 1, "sad": 1}
    assert "--fit-weights needs --data" in error_of(["ensemble", "--runs", f"{a},{a}", "--output-dir",
                                                     str(tmp_path / "e"), "--fit-weights"])
    assert "at least 2" in error_of(["ensemble", "--runs", str(a), "--output-dir", str(tmp_path / "e")])


def test_split_all_scores_every_image_of_a_one_folder_set(two_runs: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A cross-dataset set that arrives as one folder of class folders loses none of it to an 80/20 split."""
    a, _ = two_runs
    folder = make_class_folders(tmp_path / "photos", {"angry": 4, "happy": 6, "sad": 5})
    assert cli_main(["evaluate", "--run", str(a), "--data", str(folder), "--split", "all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"]["counts"] == {"angry": 4, "happy": 6, "sad": 5}
    assert "every image (15)" in json.dumps(result["data"])
    assert cli_main(["evaluate", "--run", str(a), "--data", str(folder), "--json", "--no-save"]) == 0
    assert sum(json.loads(capsys.readouterr().out)["data"]["counts"].values()) == 3  # the 20 % test share


def test_two_folders_of_the_same_name_keep_their_own_saved_results(two_runs: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Two ``faces`` folders in different places: the second evaluation must not replace the first's file."""
    a, _ = two_runs
    first = make_class_folders(tmp_path / "one" / "faces", {"angry": 2, "happy": 2, "sad": 2})
    second = make_class_folders(tmp_path / "two" / "faces", {"angry": 3, "happy": 3, "sad": 3}, seed=1)
    saved = {}
    for folder in (first, second, first):  # the third call re-scores the first folder in place
        assert cli_main(["evaluate", "--run", str(a), "--data", str(folder), "--split", "all", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        saved.setdefault(str(folder), set()).add(result["saved_to"])
    (path_one,), (path_two,) = saved[str(first)], saved[str(second)]
    assert path_one != path_two and Path(path_one).name == "faces-all.json"
    on_disk = {read_json(Path(p))["data"]["root"]: sum(read_json(Path(p))["data"]["counts"].values())
               for p in (path_one, path_two)}
    assert on_disk == {str(first): 6, str(second): 9}


def test_evaluating_the_shipped_model_writes_nothing_unless_asked(two_runs: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import shutil

    shipped = tmp_path / "default"
    shutil.copytree(two_runs[0], shipped, ignore=shutil.ignore_patterns("evaluations"))
    monkeypatch.setenv("EMOTION_DEFAULT_MODEL_DIR", str(shipped))
    before = sorted(p.name for p in shipped.iterdir())
    assert cli_main(["evaluate", "--run", str(shipped), "--data", DATA, "--json"]) == 0
    assert sorted(p.name for p in shipped.iterdir()) == before
    assert cli_main(["evaluate", "--run", str(shipped), "--data", DATA, "--json", "--save"]) == 0
    assert (shipped / "evaluations").is_dir()
    capsys.readouterr()


def test_a_run_trained_on_grey_faces_is_scored_on_greyed_images(tmp_path: Path) -> None:
    """Evaluation sees colour photos the way prediction does: greyed for a model that learnt from grey faces."""
    from conftest import save_tiny_run

    from emotion.inference import Predictor

    data = make_class_folders(tmp_path / "photos", {"angry": 4, "happy": 4, "sad": 4})  # colour images
    run = save_tiny_run(tmp_path / "run", seed=5)
    colour = E.evaluate_run(run, str(data), split="all", save=False)
    config = read_json(run / "config.json")
    (run / "config.json").write_text(json.dumps({**config, "data": {"grayscale": True}}))
    grey = E.evaluate_run(run, str(data), split="all", save=False)
    assert (colour["data"]["greyed"], grey["data"]["greyed"]) == (False, True)
    assert grey["nll"] != pytest.approx(colour["nll"])  # the colours really were dropped
    assert Predictor.from_run(run).grayscale  # prediction makes the same choice from the same record
