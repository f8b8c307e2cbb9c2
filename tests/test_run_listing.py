"""Listing run folders and tabulating them in the benchmark's columns (the Benchmark and Home pages' data)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from emotion import paths
from emotion.benchmark import columns, run_row, runs_table, table_csv
from emotion.ensembles import create_ensemble
from emotion.evaluation import evaluate_run, saved_evaluations
from emotion.runs import describe_run, list_runs
from emotion.config import TrainConfig
from emotion.training import train

DATA = "synthetic:n=24,test=6,size=48"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.getbasetemp() / "emotion-cache"  # the conftest's per-session cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOTION_CACHE_DIR", str(cache))
        for name in ("a", "b"):
            train(TrainConfig(model="vit_custom", from_scratch=True, data=DATA, image_size=48, max_steps=2,
                              batch_size=12, output_dir=str(root / name), early_stopping_patience=0,
                              warmup_ratio=0.0))
        create_ensemble([root / "a", root / "b"], root / "ens")
    failed = root / "broken"
    failed.mkdir()
    (failed / "status.json").write_text(json.dumps({"state": "failed", "error": "DatasetError: gone"}))
    config = {"model": "resnet34", "data": "x", "image_size": 64}
    (failed / "train_config.json").write_text(json.dumps(config))
    (root / "not-a-run").mkdir()
    return root


def test_list_runs_describes_every_run_folder(runs_dir: Path) -> None:
    listed = {r["name"]: r for r in list_runs(runs_dir)}
    assert set(listed) == {"a", "b", "ens", "broken"}
    a = listed["a"]
    assert a["state"] == "completed" and a["ready"] and a["model"] == "vit_custom" and a["input_size"] == 48
    assert a["labels"] == ["angry", "happy", "sad"] and a["data"] == DATA
    assert a["metrics"]["val"]["macro_f1"] is not None
    ens = listed["ens"]
    assert ens["is_ensemble"] and ens["ready"] and ens["state"] == "completed" and ens["data"] == DATA
    broken = listed["broken"]
    assert broken["state"] == "failed" and not broken["ready"] and broken["error"] == "DatasetError: gone"
    assert broken["model"] == "resnet34" and broken["input_size"] == 64
    assert describe_run(runs_dir / "not-a-run") is None
    assert list_runs(runs_dir / "nowhere") == []


def test_list_runs_defaults_to_the_runs_dir_setting(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.RUNS_DIR_ENV, str(runs_dir))
    assert paths.runs_dir() == runs_dir and paths.jobs_dir() == runs_dir.parent / "jobs"
    assert {r["name"] for r in list_runs()} == {"a", "b", "ens", "broken"}
    assert Path(TrainConfig(model="vit_custom", run_name="x y").output_dir) == runs_dir / "x_y"
    monkeypatch.delenv(paths.RUNS_DIR_ENV)
    assert paths.runs_dir() == Path("checkpoints") / "runs"


def test_runs_table_uses_stored_evaluations_then_training_scores(runs_dir: Path) -> None:
    table = runs_table(list_runs(runs_dir))
    assert table["classes"] == ["angry", "happy", "sad"]
    assert table["columns"] == ["run", *columns(["angry", "happy", "sad"]), "scored_on", "created"]
    rows = {r["run"]: r for r in table["rows"]}
    assert rows["a"]["accuracy"] is not None and "end of training" in rows["a"]["scored_on"]
    assert rows["a"]["ece"] is None and rows["broken"]["status"] == "failed"

    result = evaluate_run(runs_dir / "ens", DATA, split="test", speed=True, latency_repeats=2)
    assert saved_evaluations(runs_dir / "ens", split="test")[0]["accuracy"] == result["accuracy"]
    assert saved_evaluations(runs_dir / "ens", split="val") == []
    row = run_row(describe_run(runs_dir / "ens"))
    assert row["accuracy"] == result["accuracy"] and row["ece"] == result["ece"]
    assert row["recall_happy"] == result["per_class"]["happy"]["recall"]
    assert row["latency_ms"] > 0 and row["size_mb"] > 0 and row["scored_on"].startswith(DATA)

    parsed = list(csv.DictReader(io.StringIO(table_csv(runs_table(list_runs(runs_dir))))))
    assert {r["run"] for r in parsed} == {"a", "b", "ens", "broken"}
    ens = next(r for r in parsed if r["run"] == "ens")
    assert float(ens["accuracy"]) == pytest.approx(result["accuracy"])
    assert next(r for r in parsed if r["run"] == "broken")["accuracy"] == ""
