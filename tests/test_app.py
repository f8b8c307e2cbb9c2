"""The Streamlit app runs headless on the synthetic dataset and on a bad path."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _run_from_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_home_shows_synthetic_dataset_counts() -> None:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert any("Active dataset" in s.value for s in at.subheader)
    df = at.dataframe[0].value
    assert list(df.index) == ["angry", "happy", "sad"]
    assert (df["train"] > 0).all() and (df["test"] > 0).all()


def test_home_reports_a_missing_folder_without_crashing(tmp_path: Path) -> None:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["dataset_spec"] = str(tmp_path / "nowhere")
    at.run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_audit_page_runs_on_synthetic_data() -> None:
    page = next((REPO / "pages").glob("*Data_audit.py"))
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception, at.exception
    at.button[0].click().run()  # the form's "Run audit"
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert "corrupt" in labels and "leakage" in labels
    assert any("would be left out" in m.value for m in at.markdown)
