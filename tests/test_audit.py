"""Tests for the data audit: planted problems are found, clean images are not flagged."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion import audit as audit_mod
from emotion.audit import AuditReport, audit_dataset, find_near_pairs, phash64
from emotion.cli import main
from emotion.data.sources import load_dataset_spec

FER_ROOT = Path(__file__).resolve().parents[1].parent / "shared/datasets/fer2013"


def _pattern(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random grayscale pattern: distinct seeds give unrelated perceptual hashes."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(30, 225, (6, 6))  # headroom: brightening must not clip
    img = Image.fromarray(small.astype(np.uint8), "L").resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 4, (size, size))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


@pytest.fixture()
def planted(tmp_path: Path) -> dict:
    """A train/test dataset with one of each problem planted among clean images."""
    root = tmp_path / "data"
    tr, te = root / "train", root / "test"
    clean = []
    layout = [(tr / "angry", 4), (tr / "happy", 4), (tr / "sad", 3), (te / "angry", 2),
              (te / "happy", 2), (te / "sad", 2)]
    seed = 0
    for folder, n in layout:
        for _ in range(n):
            clean.append(_save(folder / f"clean_{seed}.png", _pattern(seed)))
            seed += 1

    p = {"root": root, "clean": clean}
    # blank (constant) and near-constant
    p["blank"] = _save(tr / "sad" / "blank.png", np.full((64, 64), 128, np.uint8))
    flat = np.clip(90 + np.random.default_rng(1).normal(0, 1.0, (64, 64)), 0, 255).astype(np.uint8)
    p["flat"] = _save(tr / "happy" / "flat.png", flat)
    # exact duplicate within train (same bytes)
    dup = _pattern(100)
    p["dup"] = [_save(tr / "angry" / "dup_a.png", dup), _save(tr / "angry" / "dup_b.png", dup)]
    # exact duplicate re-encoded: same pixels, different file bytes (PNG vs BMP)
    reenc = _pattern(101)
    p["reenc"] = [_save(tr / "happy" / "reenc_a.png", reenc), _save(tr / "happy" / "reenc_b.bmp", reenc)]
    # near duplicates of one image: JPEG re-compressed, brightened, resized
    base = _pattern(102)
    p["near"] = [
        _save(tr / "angry" / "near_base.png", base),
        _save(tr / "angry" / "near_jpeg.jpg", base, quality=85),
        _save(tr / "angry" / "near_bright.png", np.clip(base.astype(int) + 12, 0, 255).astype(np.uint8)),
        _save(tr / "angry" / "near_small.png",
              np.asarray(Image.fromarray(base).resize((56, 56), Image.Resampling.BILINEAR))),
    ]
    # cross-split leak, exact and near
    leak = _pattern(103)
    p["leak_exact"] = [_save(tr / "happy" / "leak.png", leak), _save(te / "happy" / "leak_copy.png", leak)]
    nl = _pattern(104)
    p["leak_near"] = [_save(tr / "sad" / "nl_src.png", nl),
                      _save(te / "sad" / "nl_copy.jpg", nl, quality=80)]
    # label conflict: same pixels labelled angry and sad
    conf = _pattern(105)
    p["conflict"] = [_save(tr / "angry" / "conf_a.png", conf), _save(tr / "sad" / "conf_b.png", conf)]
    # corrupt: random bytes named .jpg, and an empty file
    (tr / "happy" / "broken.jpg").write_bytes(np.random.default_rng(2).bytes(500))
    (tr / "sad" / "empty.png").write_bytes(b"")
    p["corrupt"] = [tr / "happy" / "broken.jpg", tr / "sad" / "empty.png"]
    return p


def _names(files) -> set[str]:
    return {Path(f).name for f in files}


def _groups(entries) -> set[frozenset]:
    return {frozenset(_names(g["files"])) for g in entries}


@pytest.fixture()
def report(planted) -> AuditReport:
    ds = load_dataset_spec(planted["root"])
    return audit_dataset(ds)


def test_finds_exactly_the_planted_problems(planted, report):
    assert _names(r["file"] for r in report.corrupt) == {"broken.jpg", "empty.png"}
    assert any("0 bytes" in r["error"] for r in report.corrupt)

    assert _names(r["file"] for r in report.blank) == {"blank.png", "flat.png"}
    constant = {Path(r["file"]).name: r["constant"] for r in report.blank}
    assert constant == {"blank.png": True, "flat.png": False}

    assert _groups(report.duplicates) == {
        frozenset({"dup_a.png", "dup_b.png"}),
        frozenset({"reenc_a.png", "reenc_b.bmp"}),
        frozenset({"leak.png", "leak_copy.png"}),
        frozenset({"conf_a.png", "conf_b.png"}),
    }
    by_first = {Path(g["files"][0]).name: g for g in report.duplicates}
    assert by_first["dup_a.png"]["byte_identical"] is True
    assert by_first["reenc_a.png"]["byte_identical"] is False
    assert by_first["leak.png"]["cross_split"] is True
    assert by_first["conf_a.png"]["label_conflict"] is True

    assert _groups(report.near_duplicates) == {
        frozenset({"near_base.png", "near_jpeg.jpg", "near_bright.png", "near_small.png"}),
        frozenset({"nl_src.png", "nl_copy.jpg"}),
    }
    for g in report.near_duplicates:
        assert g["max_distance"] <= report.settings["near_distance"]

    leaks = {(p["kind"], Path(p["files"][0]).name, Path(p["files"][1]).name) for p in report.leakage}
    assert leaks == {("exact", "leak.png", "leak_copy.png"), ("near", "nl_src.png", "nl_copy.jpg")}
    assert all(p["splits"] == ["train", "test"] for p in report.leakage)

    assert [(c["kind"], sorted(_names(c["files"])), sorted(c["labels"]))
            for c in report.label_conflicts] == [("exact", ["conf_a.png", "conf_b.png"], ["angry", "sad"])]

    flagged = set().union(*map(_names, report.flagged_files().values()))
    assert not flagged & _names(planted["clean"])


def test_summary_counts_and_metadata(report):
    s = report.summary
    assert s["corrupt"] == 2 and s["blank"] == 2 and s["constant"] == 1
    assert s["per_split"]["train"]["duplicate_groups"] == 3  # dup, reenc, conflict
    assert s["per_split"]["test"]["duplicate_groups"] == 0
    assert s["leakage"] == {"exact_pairs": 1, "near_pairs": 1, "eval_files_exact": 1, "eval_files_any": 2}
    assert s["label_conflicts"] == {"exact": 1, "near": 0}
    assert report.counts["test"] == {"angry": 2, "happy": 3, "sad": 3}
    assert report.sizes["train"]["64x64"] > 0 and report.sizes["train"]["56x56"] == 1
    assert set(report.modes["train"]) == {"L"}


def test_exclusion_candidates_keep_one_copy(report):
    drop = _names(report.exclusion_candidates())
    assert {"broken.jpg", "empty.png", "blank.png", "flat.png"} <= drop
    assert "leak.png" in drop and "leak_copy.png" not in drop  # the test copy stays
    assert len(drop & {"dup_a.png", "dup_b.png"}) == 1
    assert {"conf_a.png", "conf_b.png"} <= drop
    with pytest.raises(ValueError):
        report.exclusion_candidates(["nonsense"])


def test_json_is_deterministic_and_sorted(planted, report):
    again = audit_dataset(load_dataset_spec(planted["root"]), workers=1)
    assert report.to_json() == again.to_json()
    d = report.to_dict()
    assert [r["file"] for r in d["blank"]] == sorted(r["file"] for r in d["blank"])


def test_process_pool_gives_the_same_report(planted, report, monkeypatch):
    monkeypatch.setattr(audit_mod, "PARALLEL_MIN_IMAGES", 0)
    calls = []
    pooled = audit_dataset(load_dataset_spec(planted["root"]), workers=2,
                           progress=lambda done, total: calls.append((done, total)))
    assert pooled.to_dict() == report.to_dict()
    total = report.summary["images"]
    assert calls[-1] == (total, total) and len(calls) == total


def test_near_distance_zero_and_blank_threshold(planted):
    ds = load_dataset_spec(planted["root"])
    strict = audit_dataset(ds, blank_std=0.5, near_distance=0)
    assert _names(r["file"] for r in strict.blank) == {"blank.png"}
    for g in strict.near_duplicates:
        assert g["max_distance"] == 0


@pytest.mark.parametrize("distance", [0, 1, 2, 3, 4, 5, 7])
def test_multi_index_search_matches_brute_force(distance):
    rng = np.random.default_rng(distance)
    base = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2)  # full 64 bits:
    base += rng.integers(0, 2, 3000, dtype=np.uint64)  # the top 63 from one draw, the last from another
    # plant neighbours at distances 0..distance+2 by flipping random bits
    near = []
    for h in base[:600]:
        bits = rng.choice(64, size=rng.integers(0, distance + 3), replace=False)
        for b in bits:
            h = h ^ np.uint64(1 << int(b))
        near.append(h)
    hashes = np.concatenate([base, np.array(near, dtype=np.uint64)])
    expected = audit_mod._pairs_brute_force(hashes, distance)
    got = audit_mod._pairs_multi_index(hashes, distance)
    np.testing.assert_array_equal(got, expected)
    assert len(expected) >= 100
    np.testing.assert_array_equal(find_near_pairs(hashes, distance), expected)


def test_near_search_is_fast_at_fer_scale():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 40_000, dtype=np.uint64)
    t = time.perf_counter()
    find_near_pairs(hashes, 4)
    assert time.perf_counter() - t < 5.0


def test_phash_is_robust_to_mild_edits():
    base = _pattern(7)
    h = phash64(Image.fromarray(base))
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, format="JPEG", quality=75)
    variants = [
        Image.open(io.BytesIO(buf.getvalue())),
        Image.fromarray(np.clip(base.astype(int) + 20, 0, 255).astype(np.uint8)),
        Image.fromarray(base).resize((40, 40)),
    ]
    for v in variants:
        assert (h ^ phash64(v)).bit_count() <= 4
    assert (h ^ phash64(Image.fromarray(_pattern(8)))).bit_count() > 10


def test_cli_json(planted, capsys):
    rc = main(["audit", str(planted["root"]), "--json", "--no-progress"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("counts", "corrupt", "blank", "duplicates", "leakage", "near_duplicates",
                "label_conflicts", "sizes", "modes", "summary", "dataset", "settings"):
        assert key in d
    assert _names(r["file"] for r in d["corrupt"]) == {"broken.jpg", "empty.png"}
    assert d["settings"]["near_distance"] == 4


def test_cli_classes_and_thresholds(planted, capsys):
    rc = main(["audit", str(planted["root"]), "--classes", "happy", "--json", "--no-progress",
               "--blank-std", "0.5", "--near-distance", "2"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dataset"]["classes"] == ["happy"]
    assert _names(r["file"] for r in d["blank"]) == set()  # flat.png has std ~1
    assert _names(r["file"] for r in d["corrupt"]) == {"broken.jpg"}
    assert [p["kind"] for p in d["leakage"]] == ["exact"]


def test_cli_table(planted, capsys):
    assert main(["audit", str(planted["root"])]) == 0
    out = capsys.readouterr().out
    for text in ("Images per class", "Findings", "Corrupt (2)", "Blank (2)", "Exact duplicates (4)",
                 "Near duplicates (2)", "Leakage (2)", "Label conflicts (1)", "train/sad/empty.png",
                 "(re-encoded)", "(constant)"):
        assert text in out, text


def test_cli_clean_dataset_table(tmp_path, capsys):
    for i, split in enumerate(["train", "train", "test"]):
        _save(tmp_path / split / "happy" / f"{i}.png", _pattern(i))
    assert main(["audit", str(tmp_path), "--no-progress"]) == 0
    assert "No problems found." in capsys.readouterr().out


def test_cli_user_errors_exit_2(tmp_path, planted, capsys):
    assert main(["audit", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err
    assert main(["audit", str(planted["root"]), "--classes", "bored"]) == 2
    assert "bored" in capsys.readouterr().err


@pytest.mark.skipif(not FER_ROOT.is_dir(), reason="FER2013 not present at ../shared/datasets/fer2013")
def test_fer2013_angry_subset():
    """On real FER2013 (angry only, ~4.5k images) the known blank frames and leaks show up."""
    ds = load_dataset_spec(FER_ROOT, classes="angry")
    t = time.perf_counter()
    report = audit_dataset(ds)
    assert time.perf_counter() - t < 60
    assert report.summary["corrupt"] == 0
    assert report.summary["blank"] >= 1
    assert all(r["constant"] for r in report.blank)
    assert report.summary["leakage"]["exact_pairs"] >= 1
    assert report.summary["leakage"]["near_pairs"] >= 1
    assert any(g["cross_split"] for g in report.duplicates)
    assert report.modes["train"] == {"L": len(ds.splits["train"])}
