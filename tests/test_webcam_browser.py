"""The webcam end to end: headless Chromium's fake camera plays a real face to the Predict page.

Chromium reads its camera from a YUV4MPEG2 file built here from scikit-image's
astronaut photo, moving a little from frame to frame (``benchmarks/webcam_fps.py``
makes the frames; Chromium loops the file), with ``--use-fake-ui-for-media-stream``
granting the camera.  ``streamlit run app.py`` runs on 127.0.0.1, so the live
mode's WebRTC connection needs no STUN/TURN server (``ui.webcam.rtc_configuration``):
the test runs offline.

What is checked, and how:

* snapshot mode: ``st.camera_input`` takes a picture and the page classifies one face;
* live mode: after START the status line under the video (``ui.webcam.LiveStatus``,
  refreshed every second) reports one face, and the video the page plays carries the
  box and label the server drew: the frame the <video> element shows, copied to a
  canvas, has around the reported face's box at least a few hundred pixels of that
  face's class colour (``ui.predict.PALETTE``), three times more than the camera's
  own frames hold anywhere; STOP ends it ("Live stopped"), a second START works the
  same;
* two faces: two boxes and labels, two track ids that stay the same (each on its
  own side of the frame) for longer than a loop of the clip while both faces move,
  also when Chromium lowers the video's resolution under CPU load;
* failures: a tab closed mid-stream, a browser killed mid-stream (a dropped
  connection), a camera that delivers no frame (the page says so after 5 s) and no
  camera at all (the player says so) leave no "Traceback" in the server log (checked
  after every test) and no thread behind: the server runs under a boot line whose
  SIGUSR1 handler writes every Python thread's name and stack, so the test sees the
  threads streamlit-webrtc starts for a stream (``async_media_processor_N``,
  ``ShutdownPolling_…``, aiortc's decoder) while it plays and checks they end; then
  the threads with no Python stack (the codecs') go back to their count between
  streams.  A vanished browser's stream ends when ICE consent expires (~30 s); its
  codec threads stay referenced by its Streamlit session until Streamlit forgets the
  session (``server.disconnectedSessionTTL``: 120 s by default, 5 s here).

Waits are for conditions (texts, pixels, thread counts) with deadlines, never fixed
sleeps.  Skipped, saying why, without Playwright, Chromium or streamlit-webrtc.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np
import pytest

from conftest import REPO_ROOT, save_tiny_run
from test_browser import (CHROMIUM, PAGE_TIMEOUT_MS, VIEWPORT, _free_port, _wait_healthy, no_error_boxes,
                          settle)

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if importlib.util.find_spec("streamlit_webrtc") is None:
    pytest.skip("streamlit-webrtc is not installed (pip install streamlit-webrtc): no live mode to test",
                allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

logger = logging.getLogger(__name__)

T = TypeVar("T")
LIVE_TIMEOUT_S = 90.0  # START to the first annotated frame on a busy 2-core machine (first stream loads more)
THREADS_TIMEOUT_S = 90.0  # a stream's threads end: at once on STOP, on ICE consent expiry (~30 s) on a drop
NATIVE_TIMEOUT_S = 45.0  # then the codecs' threads: at once, or once Streamlit forgets a vanished session
SESSION_TTL_S = 5  # server.disconnectedSessionTTL here (default 120 s): a vanished tab's session kept so long
# Native server threads allowed above the quiet count: one starting or ending meanwhile, and a native pool
# that grows once under load (on a loaded 2-core box, two threads of one library, parked in
# pthread_cond_wait, appeared during the two-face stream and stayed; the count did not grow over the
# later streams; eu-stack and a CI run on 2026-12-07). The quiet count is fixed at the first STOP, so a stream that leaks
# threads still fails once its leaks add up past this, a few streams later at most.
THREAD_SLACK = 2
# The server starts under this boot line: on SIGUSR1 its main thread (a Python-level handler, so
# safe) collects garbage (a stream's objects are cyclic: what is left after is kept alive by a
# reference) and writes every thread's name and stack to $EMOTION_TEST_THREAD_DUMP.
SERVER_BOOT = """
import gc, os, runpy, signal, sys, threading, traceback

def dump_threads(signum, frame):
    gc.collect()
    stacks, path = sys._current_frames(), os.environ["EMOTION_TEST_THREAD_DUMP"]
    blocks = [f"=== {t.name}\\n" + "".join(traceback.format_stack(stacks[t.ident])
                                            if t.ident in stacks else []) for t in threading.enumerate()]
    with open(path + ".tmp", "w") as out:
        out.write("\\n".join(blocks))
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR1, dump_threads)
sys.argv[0] = "streamlit"
runpy.run_module("streamlit", run_name="__main__", alter_sys=True)
"""
STREAM_THREADS = ("async_media_processor", "ShutdownPolling")  # threads streamlit-webrtc starts per stream
STREAM_CODE = ("streamlit_webrtc/", "aiortc/", "aioice/", "/ui/webcam.py", "/emotion/")  # and their code
TRACK_WATCH_S = 6.0  # two faces watched for longer than the clip's 4 s loop
COLOR_TOLERANCE = 40  # per channel: the label colour after VP8 both ways and 4:2:0 chroma
MIN_LABEL_PIXELS = 400  # label background + box outline of a ~100 px face in a 640x480 frame: a few thousand
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
BROWSER_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]

_clips_spec = importlib.util.spec_from_file_location("webcam_fps", REPO_ROOT / "benchmarks" / "webcam_fps.py")
clips = sys.modules.setdefault("webcam_fps", importlib.util.module_from_spec(_clips_spec))
_clips_spec.loader.exec_module(clips)  # type: ignore[union-attr]

# a camera whose track is live but never delivers a frame (a covered, frozen or busy webcam)
SILENT_CAMERA_JS = """
navigator.mediaDevices.getUserMedia = async () => {
  const canvas = document.createElement('canvas');
  canvas.width = 640; canvas.height = 480;
  return canvas.captureStream(0);  // frames only on requestFrame(), which nobody calls
};
"""

# the frame the <video> element shows, as PNG (a canvas copy: the video's own pixels, 640x480)
GRAB_FRAME_JS = """(v) => {
  if (!v.videoWidth || v.readyState < 2) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return c.toDataURL('image/png');
}"""


# ----------------------------------------------------------------------------- the server


@dataclass
class LiveApp:
    """The app under test: its URL, process, log and model labels, and its thread count between streams."""

    url: str
    proc: subprocess.Popen
    log: Path
    labels: list[str]
    thread_dump: str = ""  # where the server writes its threads on SIGUSR1
    quiet_native: Optional[int] = None  # threads without a Python stack (codecs, pools) between streams
    log_checked: int = 0  # characters of the log already checked for tracebacks

    def census(self) -> "Census":
        """Every server thread: each Python thread's name and stack, and how many threads have none."""
        dump = Path(self.thread_dump)
        dump.unlink(missing_ok=True)
        total = len(os.listdir(f"/proc/{self.proc.pid}/task"))
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not dump.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"the server (pid {self.proc.pid}, exit code {self.proc.poll()}) wrote no thread "
                            f"dump to {dump} after SIGUSR1")
            time.sleep(0.1)
        blocks = dump.read_text().split("=== ")[1:]
        return Census(total, [tuple(b.split("\n", 1)) for b in blocks])  # type: ignore[misc]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Census:
    """The server's threads at one moment."""

    total: int
    stacks: list[tuple[str, str]]  # each Python thread's name and stack

    @property
    def stream(self) -> list[str]:
        """Threads a stream started, or any but the server's loop in streamlit-webrtc/aiortc/frame code."""
        return [f"{name}\n{stack}" for name, stack in self.stacks
                if name.startswith(STREAM_THREADS)
                or (name != "MainThread" and any(code in stack for code in STREAM_CODE))]

    @property
    def native(self) -> int:
        """Threads with no Python stack: libvpx/FFmpeg codecs, torch and LiteRT pools."""
        return self.total - len(self.stacks)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """``streamlit run app.py`` on 127.0.0.1 with the shipped model (a tiny random one when none ships)."""
    from emotion import paths
    from emotion.runs import is_complete

    root = tmp_path_factory.mktemp("webcam")
    runs = root / "runs"
    shipped = paths.default_model_dir()
    if is_complete(shipped):
        labels = json.loads((shipped / "labels.json").read_text())
    else:  # the plumbing is what is tested: a random model still gets its label drawn
        labels = ["angry", "happy", "sad"]
        save_tiny_run(runs / "tiny-lite", "efficientnet_lite0", labels=tuple(labels))
    env = {**os.environ, "EMOTION_RUNS_DIR": str(runs), "EMOTION_CACHE_DIR": str(root / "cache"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "EMOTION_TEST_THREAD_DUMP": str(root / "threads.txt")}
    env.setdefault("OMP_NUM_THREADS", "1")  # the server's torch threads: no oversubscription on a small box
    for name in ("EMOTION_JOBS_DIR", "EMOTION_ICE_SERVERS", "EMOTION_TURN_URL"):
        env.pop(name, None)  # loopback: no STUN/TURN server, whatever this shell has configured
    port = _free_port()
    log = root / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_BOOT, "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false", "--server.disconnectedSessionTTL", str(SESSION_TTL_S)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield LiveApp(url, proc, log, labels, env["EMOTION_TEST_THREAD_DUMP"])
    finally:
        proc.terminate()
        began = time.monotonic()
        try:
            proc.wait(timeout=20)
            logger.info("the server exited %.1f s after SIGTERM", time.monotonic() - began)
        except subprocess.TimeoutExpired:
            logger.warning("the server ignored SIGTERM for 20 s: killed")
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_traceback_in_the_server_log(app: LiveApp) -> Iterator[None]:
    """Whatever a test does to the stream, the server logs no traceback meanwhile."""
    yield
    text = app.log_text()
    new, app.log_checked = text[app.log_checked:], len(text)
    assert "Traceback" not in new, f"the server logged a traceback:\n{new[-6000:]}"


# ----------------------------------------------------------------------------- browsers and clips


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@dataclass
class Clip:
    """A fake camera's file and its frames (for the colours the camera itself shows)."""

    path: Path
    frames: list[np.ndarray] = field(repr=False)


@pytest.fixture(scope="module")
def one_face(clip_dir: Path) -> Clip:
    frames = clips.moving_frames(40, faces=1)  # 4 s at 10 fps, the face drifting ±24 px
    return Clip(clips.write_y4m(clip_dir / "one_face.y4m", frames, fps=10), frames)


@pytest.fixture(scope="module")
def two_faces(clip_dir: Path) -> Clip:
    frames = clips.moving_frames(40, faces=2)  # her face and its mirror image, moving apart and together
    return Clip(clips.write_y4m(clip_dir / "two_faces.y4m", frames, fps=10), frames)


@pytest.fixture(scope="module")
def pw() -> Iterator["sync_api.Playwright"]:
    with sync_api.sync_playwright() as p:
        yield p


def launch(pw: "sync_api.Playwright", clip: Optional[Clip]) -> "sync_api.Browser":
    """Headless Chromium whose camera plays ``clip`` (None: the default fake camera's test pattern)."""
    args = BROWSER_ARGS + FAKE_CAMERA
    if clip is not None:
        args.append(f"--use-file-for-fake-video-capture={clip.path}")
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


@pytest.fixture(scope="module")
def one_face_browser(pw: "sync_api.Playwright", one_face: Clip) -> Iterator["sync_api.Browser"]:
    browser = launch(pw, one_face)
    yield browser
    browser.close()


def new_page(browser: "sync_api.Browser", init_script: Optional[str] = None) -> "sync_api.Page":
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    if init_script:
        context.add_init_script(init_script)
    return context.new_page()


# ----------------------------------------------------------------------------- the page


def wait_until(what: str, check: Callable[[], Optional[T]], timeout: float, every: float = 0.25) -> T:
    """Poll ``check`` until it returns neither None nor False; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Optional[T] = None
    while True:
        last = check()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(every)


def open_live(page: "sync_api.Page", url: str) -> "sync_api.FrameLocator":
    """The Predict page in live mode; returns the streamer's iframe, START showing."""
    page.goto(f"{url}/Predict")
    page.get_by_role("heading", name="Predict", exact=True).first.wait_for()
    page.get_by_text("Model:").first.wait_for()
    settle(page)
    page.get_by_text("Live webcam", exact=True).click()
    player = page.frame_locator('iframe[title*="webrtc"]')
    player.get_by_role("button", name="START").wait_for()
    settle(page)
    no_error_boxes(page)
    return player


@dataclass
class Status:
    """What the status line and the track table under the video say."""

    text: str
    frames: int
    size: Optional[tuple[int, int]]  # the frame size the server got (WebRTC lowers it when the CPU is busy)
    tracks: dict[int, tuple[str, tuple[int, int, int, int]]]  # id -> (label, box in frame pixels)

    def side(self, track: int) -> str:
        """Which half of the frame the track's face is in."""
        box, width = self.tracks[track][1], (self.size or (640, 480))[0]
        return "left" if box[0] + box[2] < width else "right"


def read_status(page: "sync_api.Page") -> Optional[Status]:
    """The live status, or None while there is none (not playing yet, or a fragment run redrawing it)."""
    try:
        line = page.get_by_text(re.compile(r"^Live · ")).first
        if not line.count():
            return None
        text = line.inner_text(timeout=2000)
        rows = page.locator('[data-testid="stTable"] tbody tr')
        cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
    except sync_api.Error:  # an element replaced while read: read again
        return None
    frames = re.search(r"(\d+) frames, detector", text)
    size = re.search(r"(\d+)×(\d+) at", text)
    tracks = {}
    for row in cells:
        if len(row) >= 4 and row[0].startswith("#"):
            tracks[int(row[0][1:])] = (row[1], tuple(int(v) for v in row[3].split(",")))  # type: ignore[misc]
    return Status(text, int(frames.group(1)) if frames else 0,
                  (int(size.group(1)), int(size.group(2))) if size else None, tracks)


def status_with_faces(page: "sync_api.Page", n: int, after_frames: int = 0,
                      timeout: float = LIVE_TIMEOUT_S) -> Status:
    """Wait until the status reports ``n`` tracked faces (table rows too) after more than ``after_frames``."""
    def check() -> Optional[Status]:
        s = read_status(page)
        ok = s is not None and f"Live · {n} face" in s.text and len(s.tracks) == n and s.frames > after_frames
        return s if ok else None
    try:
        return wait_until(f"the status reporting {n} face(s)", check, timeout)
    except pytest.fail.Exception as exc:
        raise AssertionError(f"{exc}; the page: {snapshot(page)}") from None


def snapshot(page: "sync_api.Page") -> Path:
    """A screenshot of the page as it is, next to the server log, to look at after a failure."""
    path = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT", "/tmp")) / f"webcam-failure-{time.time():.0f}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def grab_frame(player: "sync_api.FrameLocator") -> Optional[np.ndarray]:
    """The RGB frame the page's <video> shows now (None before it plays)."""
    from PIL import Image

    url = player.locator("video").first.evaluate(GRAB_FRAME_JS)
    if not url:
        return None
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def color_pixels(rgb: np.ndarray, color: tuple[int, int, int],
                 region: Optional[tuple[int, int, int, int]] = None) -> int:
    """How many pixels (in ``region``, left/top/right/bottom) are within COLOR_TOLERANCE of ``color``."""
    if region is not None:
        h, w = rgb.shape[:2]
        left, top = max(0, region[0]), max(0, region[1])
        rgb = rgb[top:min(h, region[3]), left:min(w, region[2])]
    diff = np.abs(rgb.astype(np.int16) - np.asarray(color, dtype=np.int16)).max(axis=-1)
    return int((diff <= COLOR_TOLERANCE).sum())


def label_color(app: LiveApp, label: str) -> tuple[int, int, int]:
    """The colour ``ui.predict.annotate`` draws a face of this class in."""
    from ui.predict import PALETTE

    return PALETTE[app.labels.index(label) % len(PALETTE)]


def around(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The region a face's drawing covers: its box, the label above it, room for motion since the status."""
    left, top, right, bottom = box
    return left - 40, top - 60, right + 40, bottom + 30


def drawn_faces(app: LiveApp, page: "sync_api.Page", player: "sync_api.FrameLocator", clip: Clip, n: int,
                timeout: float = 30.0) -> np.ndarray:
    """Wait for a video frame with each of the ``n`` tracked faces' box and label drawn around it.

    Each face the status reports must have, around its box, at least MIN_LABEL_PIXELS (scaled to the
    frame's width) of its class colour, and three times what the camera's own frames hold anywhere.
    Returns the frame.
    """
    baseline: dict[tuple[int, int, int], int] = {}  # per colour: the most any camera frame has, undrawn
    seen: dict[str, object] = {}

    def check() -> Optional[np.ndarray]:
        status = read_status(page)
        frame = grab_frame(player)
        if status is None or status.size is None or len(status.tracks) != n or frame is None:
            return None
        h, w = frame.shape[:2]
        sx, sy = w / status.size[0], h / status.size[1]  # the video may lag the status by a resize
        counts = {}
        for tid, (label, box) in status.tracks.items():
            color = label_color(app, label)
            if color not in baseline:
                baseline[color] = max(color_pixels(f, color) for f in clip.frames)
            region = around((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)))
            counts[tid] = (color_pixels(frame, color, region), max(MIN_LABEL_PIXELS * w / 640,
                                                                   3 * baseline[color]))
        seen.update(counts=counts, tracks=status.tracks, video=(w, h), status=status.size)
        return frame if all(got >= need for got, need in counts.values()) else None

    try:
        return wait_until("every face boxed and labelled in the video", check, timeout)
    except pytest.fail.Exception as exc:
        raise AssertionError(f"{exc}; (label-colour pixels, needed) per track and what the status and video "
                             f"showed: {seen}") from None


def start(player: "sync_api.FrameLocator") -> None:
    """Press START; the player offers STOP once the connection is being set up (the click took)."""
    player.get_by_role("button", name="START").click()
    player.get_by_role("button", name="STOP").wait_for(timeout=LIVE_TIMEOUT_S * 1000)


def stop(page: "sync_api.Page", player: "sync_api.FrameLocator") -> None:
    player.get_by_role("button", name="STOP").click()
    page.get_by_text(re.compile(r"^Live stopped · \d+ frames")).first.wait_for()
    player.get_by_role("button", name="START").wait_for()


def streaming_threads(app: LiveApp) -> Census:
    """The census while a stream plays: its threads are visible (what the checks after it rely on)."""
    census = app.census()
    assert census.stream, "no server thread runs streamlit-webrtc/aiortc code while the video plays"
    return census


def threads_back_to_quiet(app: LiveApp, what: str, poke: Optional[Callable[[], None]] = None) -> None:
    """Nothing left running after ``what``: no thread in a stream's code, then no more native threads.

    First every thread streamlit-webrtc started for the stream must end (at once on STOP; after ICE
    consent expires, ~30 s, when the browser vanished).  Then the threads without a Python stack (the
    codecs') must go back to their count between streams: a vanished browser's codecs stay referenced by
    its Streamlit session until Streamlit forgets it (``server.disconnectedSessionTTL``, 5 s here, checked
    when another session comes or goes: ``poke`` opens and closes a page for that).  Idle workers of the
    web server's thread pools are not counted (they come and go with load).
    """
    seen: list[Census] = []

    def no_stream_thread() -> bool:
        seen.append(app.census())
        return not seen[-1].stream

    try:
        wait_until(f"the stream's threads ended after {what}", no_stream_thread, THREADS_TIMEOUT_S, every=1.0)
    except pytest.fail.Exception:
        raise AssertionError(f"{what}: {len(seen[-1].stream)} server thread(s) still in stream code after "
                             f"{THREADS_TIMEOUT_S:.0f} s; the first:\n{seen[-1].stream[0]}") from None

    def natives_back() -> bool:
        seen.append(app.census())
        if app.quiet_native is None:  # the first quiet moment sets the reference: 3 equal counts in a row
            if len(seen) < 3 or len({c.native for c in seen[-3:]}) > 1:
                return False
            app.quiet_native = seen[-1].native
        if seen[-1].native <= app.quiet_native + THREAD_SLACK:
            return True
        if poke is not None and len(seen) % 5 == 0:
            poke()
        return False

    try:
        wait_until(f"the native threads back to their count between streams after {what}", natives_back,
                   NATIVE_TIMEOUT_S, every=1.0)
    except pytest.fail.Exception:
        raise AssertionError(f"{what}: {seen[-1].native} threads without a Python stack after "
                             f"{NATIVE_TIMEOUT_S:.0f} s, {app.quiet_native} between streams (last counts "
                             f"{[c.native for c in seen[-8:]]})") from None


def start_and_see_one_face(app: LiveApp, page: "sync_api.Page", player: "sync_api.FrameLocator",
                           clip: Clip) -> Status:
    start(player)
    status = status_with_faces(page, 1)
    drawn_faces(app, page, player, clip, 1)
    return status


@pytest.fixture
def poke(app: LiveApp, one_face_browser: "sync_api.Browser") -> Callable[[], None]:
    """Open and close a page: a session comes and goes, so Streamlit drops the sessions it has to forget."""
    def visit() -> None:
        page = new_page(one_face_browser)
        page.goto(app.url)
        page.get_by_role("heading", name="Emotion Studio", exact=True).first.wait_for()
        page.context.close()
    return visit


@pytest.fixture
def quiet(app: LiveApp, one_face_browser: "sync_api.Browser", one_face: Clip) -> int:
    """The server's native thread count between streams, once a stream has run (lazy pools exist by then)."""
    if app.quiet_native is None:
        page = new_page(one_face_browser)
        player = open_live(page, app.url)
        start_and_see_one_face(app, page, player, one_face)
        stop(page, player)
        page.context.close()
        threads_back_to_quiet(app, "the first STOP")
    assert app.quiet_native is not None
    return app.quiet_native


# ----------------------------------------------------------------------------- one face


def test_snapshot_mode_takes_a_picture_and_classifies_the_face(app: LiveApp,
                                                              one_face_browser: "sync_api.Browser") -> None:
    page = new_page(one_face_browser)
    page.goto(f"{app.url}/Predict")
    page.get_by_text("Model:").first.wait_for()
    settle(page)
    page.get_by_text("Webcam snapshot", exact=True).click()
    shutter = page.get_by_role("button", name="Take Photo")
    shutter.wait_for()
    preview = page.locator('[data-testid="stCameraInput"] video')
    wait_until("the camera preview playing",
               lambda: preview.evaluate("v => v.readyState >= 2 && v.videoWidth > 0"), 30)
    shutter.click()
    page.get_by_text(re.compile(r"snapshot · 640×480 · 1 face")).wait_for()
    page.get_by_role("button", name="Download the results (JSON)").wait_for()
    settle(page)
    heading = page.get_by_text(re.compile(r"^1: \w+ · \d+%$"))
    assert heading.count() == 1, "one face, numbered 1, with its label and confidence"
    label = heading.inner_text().split(":")[1].split("·")[0].strip()
    assert label in app.labels
    assert page.locator('[data-testid="stProgress"]').count() == len(app.labels)  # one bar per class
    no_error_boxes(page)
    page.context.close()


def test_live_video_comes_back_boxed_and_labelled_stops_and_starts_again(
        app: LiveApp, one_face_browser: "sync_api.Browser", one_face: Clip, tmp_path: Path) -> None:
    page = new_page(one_face_browser)
    player = open_live(page, app.url)

    start(player)
    first = status_with_faces(page, 1)
    frame = drawn_faces(app, page, player, one_face, 1)
    from PIL import Image

    Image.fromarray(frame).save(tmp_path / "live_frame.png")  # for a look when this fails
    later = wait_until("more frames coming back", lambda: (s := read_status(page)) and s.frames > first.frames
                       and s, 30)
    assert re.search(r"\d+\.\d fps · \d+ ms a frame on the server", later.text), later.text
    streaming_threads(app)  # the stream runs on threads of its own...
    stop(page, player)
    threads_back_to_quiet(app, "STOP")  # ...which end with it

    # a second START works the same: a new stream, its own tracks
    start(player)
    status_with_faces(page, 1)
    drawn_faces(app, page, player, one_face, 1)
    stop(page, player)
    threads_back_to_quiet(app, "the second STOP")
    no_error_boxes(page)
    page.context.close()


# ----------------------------------------------------------------------------- two faces


def test_two_faces_get_two_boxes_and_keep_their_tracks_while_moving(
        app: LiveApp, pw: "sync_api.Playwright", two_faces: Clip, quiet: int) -> None:
    browser = launch(pw, two_faces)
    try:
        page = new_page(browser)
        player = open_live(page, app.url)
        start(player)
        status = status_with_faces(page, 2)
        drawn_faces(app, page, player, two_faces, 2)  # a box and a label, in its class colour, on each face

        ids = sorted(status.tracks)
        sides = {tid: status.side(tid) for tid in ids}  # her face on the left, its mirror image on the right
        assert sorted(sides.values()) == ["left", "right"], status.tracks
        xs: dict[int, list[float]] = {tid: [] for tid in ids}  # each face's left edge, in frame widths
        began = time.monotonic()

        def moved_under_the_same_tracks() -> bool:
            s = read_status(page)
            if s is None or s.size is None or len(s.tracks) != 2:
                return False
            assert sorted(s.tracks) == ids, f"the tracks changed identity: {status.tracks}, then {s.tracks}"
            for tid, (_, box) in s.tracks.items():
                assert s.side(tid) == sides[tid], f"track #{tid} jumped to the other face: {s.tracks}"
                xs[tid].append(box[0] / s.size[0])
            moved = all(max(v) - min(v) >= 0.015 for v in xs.values())  # ~10 px of 640 and more
            return moved and time.monotonic() - began > TRACK_WATCH_S  # and more than one loop of the clip

        try:
            wait_until("both faces moving under the same two track ids", moved_under_the_same_tracks,
                       TRACK_WATCH_S + 40, every=0.5)
        except pytest.fail.Exception as exc:
            raise AssertionError(f"{exc}; left edges seen (frame widths) {xs}, the status now "
                                 f"{read_status(page)}") from None
        stop(page, player)
        page.context.close()
    finally:
        browser.close()
    threads_back_to_quiet(app, "STOP with two faces")


# ----------------------------------------------------------------------------- failures


def test_a_tab_closed_mid_stream_leaves_nothing_running(app: LiveApp, one_face_browser: "sync_api.Browser",
                                                       one_face: Clip, quiet: int,
                                                       poke: Callable[[], None]) -> None:
    page = new_page(one_face_browser)
    player = open_live(page, app.url)
    start_and_see_one_face(app, page, player, one_face)
    streaming_threads(app)
    page.close()  # the tab, mid-stream; the browser stays
    threads_back_to_quiet(app, "closing the tab mid-stream", poke)
    page.context.close()


def _chromium_with_devtools(clip: Clip, profile: Path) -> tuple[subprocess.Popen, str]:
    """Chromium started here (so it can be killed like a crash or a pulled cable), and its DevTools URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "--no-first-run", *BROWSER_ARGS, *FAKE_CAMERA,
         f"--use-file-for-fake-video-capture={clip.path}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"Chromium exited with {proc.returncode} before its DevTools port opened")
        try:
            with urllib.request.urlopen(f"{endpoint}/json/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until("Chromium's DevTools endpoint", up, 60)
    return proc, endpoint


def test_a_dropped_connection_leaves_nothing_running(app: LiveApp, pw: "sync_api.Playwright", one_face: Clip,
                                                     quiet: int, poke: Callable[[], None],
                                                     tmp_path: Path) -> None:
    proc, endpoint = _chromium_with_devtools(one_face, tmp_path / "profile")
    try:
        browser = pw.chromium.connect_over_cdp(endpoint)
        page = new_page(browser)
        player = open_live(page, app.url)
        start_and_see_one_face(app, page, player, one_face)
        streaming_threads(app)
        os.killpg(proc.pid, signal.SIGKILL)  # no goodbye: no WebSocket close, no DTLS alert, no RTCP BYE
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    threads_back_to_quiet(app, "a browser gone mid-stream", poke)


def test_a_camera_that_delivers_nothing_is_reported_and_stops_cleanly(
        app: LiveApp, one_face_browser: "sync_api.Browser", quiet: int) -> None:
    page = new_page(one_face_browser, init_script=SILENT_CAMERA_JS)
    player = open_live(page, app.url)
    start(player)
    page.get_by_text("Live · waiting for the first video frame…").wait_for(timeout=LIVE_TIMEOUT_S * 1000)
    warning = page.get_by_text(re.compile(r"No video frame has come from the camera for \d+ s"))
    warning.wait_for(timeout=30_000)
    player.get_by_role("button", name="STOP").click()
    player.get_by_role("button", name="START").wait_for()
    status_line = page.get_by_text(re.compile(r"^Live · "))
    wait_until("the status gone after STOP", lambda: status_line.count() == 0, 30)
    threads_back_to_quiet(app, "STOP on a camera that sent nothing")
    page.context.close()


def test_no_camera_at_all_is_reported(app: LiveApp, pw: "sync_api.Playwright") -> None:
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
    try:  # no fake device: headless Chromium has no camera, getUserMedia fails
        page = new_page(browser)
        player = open_live(page, app.url)
        player.get_by_role("button", name="START").click()
        message = player.get_by_text(re.compile(r"not (found|available)|NotFoundError|denied", re.I)).first
        try:
            message.wait_for(timeout=30_000)
        except sync_api.Error:
            raise AssertionError(f"no message about the missing camera; the page: {snapshot(page)}, the "
                                 f"player says {player.locator('body').inner_text()!r}") from None
        logger.info("no camera: the player says %r", message.inner_text())
        assert page.get_by_text(re.compile(r"^Live · ")).count() == 0
        no_error_boxes(page)
    finally:
        browser.close()
