"""End to end in a real browser: the Streamlit server as users start it, driven by headless Chromium.

``streamlit run app.py`` runs as a subprocess with its runs, job queue and data
cache in temporary folders and a tiny random-weight ViT run there, so Predict
and Explain work whether or not ``checkpoints/default`` ships a model (when it
does, they use it).  Playwright for Python drives Debian's ``/usr/bin/chromium``
(no browser download).  The walk-through, in order: every page opens without
an error box; a short training run queued on the Train page finishes; the
Benchmark page evaluates it and shows its confusion matrix; Predict finds and
classifies the astronaut's face in an uploaded PNG; Explain explains a dataset
sample and compares every method by ROAD score.  A full-page screenshot of each
page goes to ``docs/screenshots/<page>.png`` (``$EMOTION_SCREENSHOTS_DIR``
overrides), which the README shows.

Waits are for Streamlit's "running" indicator to go away and for specific
texts, never fixed sleeps.  Skipped, saying why, without Playwright or Chromium.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("EMOTION_SCREENSHOTS_DIR") or REPO / "docs" / "screenshots")
VIEWPORT = {"width": 1280, "height": 900}
PAGE_TIMEOUT_MS = 90_000  # one page's script on a busy 2-core machine (first loads import torch, MTCNN)
TRAIN_TIMEOUT_MS = 240_000  # a 2-step run: process start, data, two steps, validation and test passes

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright for Python is not installed (pip install -r requirements-dev.txt)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)",
                allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"streamlit not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app at http://127.0.0.1:<free port>, as on a fresh machine: an empty runs folder, a new cache."""
    root = tmp_path_factory.mktemp("browser")
    runs = root / "runs"
    port = _free_port()
    env = {**os.environ, "EMOTION_RUNS_DIR": str(runs), "EMOTION_CACHE_DIR": str(root / "cache"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("EMOTION_JOBS_DIR", None)
    # a model shipped in checkpoints/default (or $EMOTION_DEFAULT_MODEL_DIR) answers when there is one
    log = root / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        from emotion import jobs

        queue = jobs.JobQueue(runs.parent / "jobs")
        for job in queue.jobs():  # never leave a training process behind
            if job.state in jobs.ACTIVE:
                queue.stop(job.id, grace_s=5)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator["sync_api.Browser"]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser: "sync_api.Browser") -> Iterator["sync_api.Page"]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    yield context.new_page()
    context.close()


def settle(page: "sync_api.Page") -> None:
    """Wait until the script run is over: no "running" indicator, skeleton or stale (faded) element.

    Streamlit shows the indicator only after a run has gone on for a moment, so a
    fast rerun can still be in flight: callers wait for the element they need first.
    """
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stSkeleton\"], [data-stale=\"true\"]')")


def open_page(page: "sync_api.Page", url: str, path: str, heading: str) -> None:
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=heading, exact=True).first.wait_for()
    settle(page)


def no_error_boxes(page: "sync_api.Page") -> None:
    """No exception and no st.error box on the page."""
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()


def screenshot(page: "sync_api.Page", name: str) -> Path:
    """A full-page screenshot: the viewport grows to the page's height (Streamlit scrolls inside stMain)."""
    page.mouse.move(VIEWPORT["width"] // 2, 2)  # nothing hovered: no tooltips in the picture
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                           " if (m) { m.scrollTo(0, 0); return m.scrollHeight; }"
                           " return document.body.scrollHeight; }")
    tall = max(VIEWPORT["height"], min(int(height), 8000))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": tall})
    settle(page)
    # let charts redraw at the new size: two animation frames after fonts are ready
    page.evaluate("() => document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => "
                  "requestAnimationFrame(r))))")
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


def button(page: "sync_api.Page", name: str) -> "sync_api.Locator":
    return page.get_by_role("button", name=name, exact=True)


# ----------------------------------------------------------------------------- the walk-through


def test_home_and_eda(server: str, page: "sync_api.Page") -> None:
    open_page(page, server, "", "Emotion Studio")
    page.get_by_text("Active dataset:").wait_for()
    page.get_by_text("Where to start").wait_for()
    nav = page.locator('[data-testid="stSidebarNav"]')
    for label in ("Home", "EDA", "Train", "Benchmark", "Predict", "Explain"):
        assert nav.get_by_text(label, exact=True).count() == 1, label
    assert nav.get_by_text("app", exact=True).count() == 0  # named for what it is, not after app.py
    no_error_boxes(page)
    assert screenshot(page, "home").stat().st_size > 10_000

    open_page(page, server, "EDA", "Explore the data")
    page.get_by_role("tab", name="Class distribution").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    # the last tab's form (hidden, so not a "button" role yet): the whole page is drawn
    page.locator("button", has_text="Run audit").wait_for(state="attached")
    settle(page)
    no_error_boxes(page)
    screenshot(page, "eda")

    # a fresh machine already shows the study: the shipped results, with their confusion matrices
    open_page(page, server, "Benchmark", "Benchmark")
    page.get_by_role("heading", name="Shipped results").wait_for()
    page.locator(".js-plotly-plot").filter(has_text="Confusion matrix").first.wait_for()
    page.locator(".js-plotly-plot").filter(has_text="Reliability diagram").first.wait_for()
    page.get_by_text("No runs of yours yet").wait_for()  # and says where the user's own runs will appear
    settle(page)
    no_error_boxes(page)
    screenshot(page, "benchmark")


def test_train_a_short_run_from_the_page(server: str, page: "sync_api.Page") -> None:
    from emotion.models import get_model_config

    open_page(page, server, "Train", "Train")
    model = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Model", exact=True))
    model.click()
    page.get_by_role("option", name="vit_custom", exact=True).click()
    page.get_by_text(get_model_config("vit_custom").description).wait_for()  # the page re-ran for it
    settle(page)
    page.wait_for_function("() => document.querySelectorAll('input[aria-label=\"Image size\"]').length === 1")
    # 540 training images in batches of 64: the loss is logged every 2 steps, so 4 steps draw a curve
    for label, value in (("Image size", "48"), ("Batch size", "64")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Tab")
    page.get_by_text("More options", exact=True).click()
    settle(page)
    no_error_boxes(page)
    screenshot(page, "train")  # the form as a user fills it in, not the 4-step test run below (at chance)
    for label, value in (("Max steps (-1 = epochs)", "4"), ("Early-stopping patience", "0")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Tab")
    button(page, "Queue run").click()
    page.get_by_text("Queued").first.wait_for()
    # the job list refreshes every 2 s; a finished run shows its validation and test scores
    page.get_by_text("compare it on the Benchmark page").wait_for(timeout=TRAIN_TIMEOUT_MS)
    assert page.get_by_text("completed", exact=True).count() == 1
    assert "validation accuracy" in page.get_by_text("compare it on the Benchmark page").inner_text()
    page.get_by_text("Curves and log").first.click()
    page.locator(".js-plotly-plot").first.wait_for()  # its loss curve
    no_error_boxes(page)


def test_benchmark_shows_a_confusion_matrix(server: str, page: "sync_api.Page") -> None:
    open_page(page, server, "Benchmark", "Benchmark")
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    button(page, "Evaluate on the test split").first.click()
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first.wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").filter(has_text="Confusion matrix").first.wait_for()
    page.locator(".js-plotly-plot").filter(has_text="Reliability diagram").first.wait_for()
    settle(page)
    no_error_boxes(page)


def test_predict_classifies_the_face_in_an_uploaded_photo(server: str, page: "sync_api.Page",
                                                          tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data as skdata

    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    open_page(page, server, "Predict", "Predict")
    page.get_by_text("Model:").first.wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
    page.get_by_text("astronaut.png · 512×512 · 1 face").wait_for()
    bars = page.locator('[data-testid="stProgress"]')
    bars.nth(1).wait_for()  # one probability bar per class, each with its percentage
    page.get_by_role("button", name="Download the results (JSON)").wait_for()  # the last element drawn
    settle(page)
    assert "%" in bars.first.inner_text()
    no_error_boxes(page)
    screenshot(page, "predict")

    page.get_by_text("Live webcam", exact=True).click()  # streamlit-webrtc's player, or a note why not
    if importlib.util.find_spec("streamlit_webrtc") is not None:
        page.frame_locator('iframe[title*="webrtc"]').get_by_role("button", name="START").wait_for()
    else:
        page.get_by_text("pip install streamlit-webrtc").wait_for()
    settle(page)
    no_error_boxes(page)


def test_explain_the_sample_photo_and_compare_methods(server: str, page: "sync_api.Page") -> None:
    open_page(page, server, "Explain", "Explain")
    page.get_by_text("public domain", exact=False).first.wait_for()  # a real face first: the astronaut
    page.locator('[data-testid="stMetric"]').filter(has_text="ROAD score").wait_for()
    button(page, "Compare all methods").click()
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=120_000)
    page.get_by_text("Feature maps", exact=True).last.wait_for()  # the overlays under the ROAD table
    settle(page)
    no_error_boxes(page)
    screenshot(page, "explain")
