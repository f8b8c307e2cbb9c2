"""Live webcam path on a CPU: server time per frame and the frame rate it sustains.

The page's own frame callback (``ui.webcam.LiveAnnotator``, what streamlit-webrtc
calls for every frame: av frame to RGB, detect every k frames or follow the
tracks, classify, smooth, draw, RGB back to an av frame) runs on 640x480 frames
of scikit-image's astronaut moving a little from frame to frame (the clip the
browser test feeds Chromium's fake camera; ``--faces 2`` adds her mirror image),
handed over as aiortc hands them (decoded VP8: 4:2:0), with the shipped model and
the app's face detector.  Reported per setting:

* ``ms_per_frame``: median, 95th percentile and mean wall-clock milliseconds the
  callback adds to each frame on the server, and the median process CPU time;
* ``sustainable_fps``: ``1000 / mean ms``, the rate at which frames come back
  annotated when the camera sends faster (streamlit-webrtc drops what it cannot
  process; the browser keeps showing the last annotated frame);
* ``detector_runs`` and ``faces`` (a check that every frame found them).

Not included: VP8 decoding of the browser's video and encoding of the reply
(aiortc, about as costly again at 640x480), and the network.  ``--browser``
also measures end to end: the app served by ``streamlit run`` on 127.0.0.1,
headless Chromium's fake camera playing the clip, and the frames per second
and server milliseconds the page's live status reports, sampled for
``--browser`` seconds once faces are boxed (needs Playwright and Chromium).

Timings mean something only on a quiet machine.  ``--threads`` sets torch's
threads and the detector's (BlazeFace's LiteRT; MTCNN runs on torch's).

    OMP_NUM_THREADS=2 python benchmarks/webcam_fps.py --run checkpoints/default \\
        --detectors mtcnn,blazeface_short --backends torch,onnx --threads 2 --frames 300 --faces 1,2 \\
        --browser 30 --json benchmarks/webcam_fps_cpu.json

``--frames 6 --warmup 1`` is a smoke run (seconds; add ``--browser 5`` for the page).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("webcam_fps")

WIDTH, HEIGHT = 640, 480
GREY = (96, 96, 96)
PAN_X, PAN_Y = 24, 8  # pixels the face drifts left/right and up/down over one loop of the clip
CLIP_FPS = 30  # frames per second of the fake camera's file (a webcam's usual rate; --camera-fps)


def _offsets(i: int, n: int) -> tuple[int, int]:
    """Where frame ``i`` of an ``n``-frame loop sits: a smooth figure-of-eight that loops seamlessly."""
    t = 2 * math.pi * i / n
    return round(PAN_X * math.sin(t)), round(PAN_Y * math.sin(2 * t))


def moving_frames(n: int = 40, faces: int = 1) -> list[np.ndarray]:
    """``n`` 640x480 RGB frames of the astronaut (``faces=1``) or her and her mirror image (``faces=2``).

    One face: the photo pans a little (at most ~4 px a frame).  Two faces: the left
    half holds her face, the right half its mirror image, so the two move in
    opposite directions and cross nothing.  The last frame leads smoothly into the
    first (Chromium loops a fake camera's file).
    """
    from skimage import data  # ships inside the wheel: no download

    if faces not in (1, 2):
        raise ValueError(f"faces={faces!r}: the clip has 1 or 2 faces")
    if n < 2:
        raise ValueError(f"n={n!r}: a moving clip needs at least 2 frames")
    photo = Image.fromarray(data.astronaut())  # 512x512, her face near (225, 119)
    frames = []
    for i in range(n):
        dx, dy = _offsets(i, n)
        if faces == 1:
            canvas = Image.new("RGB", (WIDTH, HEIGHT), GREY)
            canvas.paste(photo, (64 + dx, -16 + dy))
            frames.append(np.asarray(canvas))
        else:
            half = Image.new("RGB", (WIDTH // 2, HEIGHT), GREY)
            half.paste(photo, (-65 + dx, -16 + dy))  # her face centred in the left half
            left = np.asarray(half)
            frames.append(np.concatenate([left, left[:, ::-1]], axis=1))
    return frames


def blank_frames(n: int = 10, value: int = 0) -> list[np.ndarray]:
    """``n`` uniform 640x480 frames (black by default): a camera that shows nothing."""
    return [np.full((HEIGHT, WIDTH, 3), value, dtype=np.uint8) for _ in range(n)]


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """One frame as planar 4:2:0 YUV (BT.601, video range: how Chromium reads a y4m)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] % 2 or rgb.shape[1] % 2:
        raise ValueError(f"need an HxWx3 frame with even sides, got shape {rgb.shape}")
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b

    def sub(c: np.ndarray) -> np.ndarray:  # average each 2x2 block
        return (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) / 4

    planes = [y, sub(u), sub(v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def write_y4m(path: Path, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """A YUV4MPEG2 (C420) file of RGB frames: what ``--use-file-for-fake-video-capture`` plays in a loop."""
    if not frames:
        raise ValueError("write_y4m needs at least one frame")
    h, w = frames[0].shape[:2]
    path = Path(path)
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{int(fps)}:1 Ip A1:1 C420\n".encode())
        for frame in frames:
            if frame.shape[:2] != (h, w):
                raise ValueError(f"every frame must be {w}x{h}, got {frame.shape[1]}x{frame.shape[0]}")
            out.write(b"FRAME\n")
            out.write(rgb_to_i420(frame))
    return path


# ----------------------------------------------------------------------------- server-side timing


def _stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    ordered = sorted(wall)
    mean = statistics.fmean(ordered)
    return {"median_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 2),
            "mean_ms": round(mean, 2), "cpu_median_ms": round(statistics.median(cpu), 2),
            "sustainable_fps": round(1000.0 / mean, 1) if mean > 0 else None, "n": len(ordered)}


def build_predictor(run: Optional[str], detector: str, backend: str, threads: int) -> Any:
    """The predictor as the Predict page builds it (``PredictorConfig(backend=...)``), on ``threads``."""
    from emotion.faces import DetectorConfig
    from emotion.inference import Predictor, PredictorConfig

    try:
        det = DetectorConfig(model=detector, threads=threads)
    except ValueError as exc:
        raise SystemExit(f"--detectors {detector!r}: {exc}") from None
    return Predictor.from_run(run, PredictorConfig(detector=det, backend=backend))


def measure_callback(predictor: Any, faces: int, frames: int, warmup: int, redetect_every: int,
                     smoothing: float) -> dict[str, Any]:
    """Time ``LiveAnnotator.__call__`` on the moving clip, frame after frame, as a stream would call it."""
    import av

    from emotion.video import VideoConfig
    from ui.webcam import LiveAnnotator

    clip = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            for f in moving_frames(40, faces)]
    live = LiveAnnotator(predictor, VideoConfig(redetect_every=redetect_every, ema_alpha=smoothing))
    live.start_stream()
    wall, cpu, found = [], [], []
    for i in range(warmup + frames):
        start, start_cpu = time.perf_counter(), time.process_time()
        live(clip[i % len(clip)])
        if i >= warmup:
            wall.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
            found.append(len(live.last.faces) if live.last is not None else 0)
    if live.error:
        raise SystemExit(f"the frame callback failed: {live.error}")
    return {"faces_in_clip": faces, "frames_with_all_faces": sum(n == faces for n in found),
            "detector_runs": live.video.detections, "ms_per_frame": _stats(wall, cpu)}


# ----------------------------------------------------------------------------- end to end in a browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_browser(seconds: float, faces: int, chromium: str, workdir: Path,
                    camera_fps: int = CLIP_FPS) -> dict[str, Any]:
    """Frames per second and server ms the live status reports, with Chromium's fake camera on the clip."""
    from playwright.sync_api import sync_playwright

    clip = write_y4m(workdir / f"faces{faces}.y4m", moving_frames(40, faces), fps=camera_fps)
    port, log = _free_port(), workdir / "streamlit.log"
    env = {**os.environ, "EMOTION_RUNS_DIR": str(workdir / "runs"), "HF_HUB_OFFLINE": "1",
           "EMOTION_CACHE_DIR": str(workdir / "cache")}
    for name in ("EMOTION_ICE_SERVERS", "EMOTION_TURN_URL"):
        env.pop(name, None)
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"streamlit did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(180_000)
            page.goto(f"{url}/Predict")
            page.get_by_text("Model:").first.wait_for()
            page.get_by_text("Live webcam", exact=True).click()
            player = page.frame_locator('iframe[title*="webrtc"]')
            player.get_by_role("button", name="START").click()
            status = page.get_by_text(re.compile(rf"^Live · {faces} faces?:")).first
            status.wait_for()
            samples: list[tuple[float, float, str]] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(1.0)
                try:
                    text = page.get_by_text(re.compile(r"^Live · ")).first.inner_text(timeout=5000)
                except Exception:  # noqa: BLE001 - a fragment redrawing the line: sample again
                    continue
                found = re.search(r"(\d+)×(\d+) at ([\d.]+) fps · (\d+) ms", text)
                if found:
                    samples.append((float(found.group(3)), float(found.group(4)),
                                    f"{found.group(1)}x{found.group(2)}"))
            player.get_by_role("button", name="STOP").click()
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if not samples:
        raise SystemExit("the page never reported a frame rate")
    return {"faces_in_clip": faces, "seconds": seconds, "camera_fps": camera_fps, "samples": len(samples),
            "status_fps_median": round(statistics.median(s[0] for s in samples), 1),
            "status_server_ms_median": round(statistics.median(s[1] for s in samples), 1),
            "frame_sizes_seen": sorted({s[2] for s in samples})}


def main() -> None:
    from emotion.faces import DetectorConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="checkpoints/default", help="the model (default: %(default)s)")
    p.add_argument("--detectors", default=DetectorConfig().model,
                   help="comma-separated face detectors (default: the app's, %(default)s)")
    p.add_argument("--backends", default="torch", help="comma-separated classifier backends: torch, onnx")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default: %(default)s)")
    p.add_argument("--faces", default="1,2", help="faces in the clip, 1 and/or 2 (default: %(default)s)")
    p.add_argument("--frames", type=int, default=300, help="timed frames per setting (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed frames first (default: %(default)s)")
    p.add_argument("--redetect-every", type=int, default=5, help="the page's default: %(default)s")
    p.add_argument("--smoothing", type=float, default=0.4, help="the page's default: %(default)s")
    p.add_argument("--browser", type=float, default=0.0, metavar="SECONDS",
                   help="also sample the page's live status for this long, end to end (0: skip)")
    p.add_argument("--camera-fps", type=int, default=CLIP_FPS,
                   help="frame rate of the fake camera for --browser (default: %(default)s)")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
                   or "/usr/bin/chromium", help="Chromium for --browser (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # this script's progress; the libraries' warnings only
    if args.frames < 1 or args.warmup < 0:
        raise SystemExit(f"--frames {args.frames} must be >= 1 and --warmup {args.warmup} >= 0")
    faces = [int(f) for f in args.faces.split(",")]
    from emotion.fileio import utc_now
    from emotion.profiling import machine_record, speed_settings

    load_before = os.getloadavg()
    rows = []
    for detector, backend, threads in speed_settings(args.detectors, args.backends, args.threads):
        predictor = build_predictor(args.run, detector, backend, threads)
        for n in faces:
            row = {"detector": detector, "backend": backend, "threads": threads,
                   **measure_callback(predictor, n, args.frames, args.warmup, args.redetect_every,
                                      args.smoothing)}
            rows.append(row)
            logger.info("%s", json.dumps(row))
    browser_rows = []
    if args.browser > 0:
        with tempfile.TemporaryDirectory(prefix="webcam_fps_") as tmp:
            for n in faces:
                browser_rows.append(measure_browser(args.browser, n, args.chromium, Path(tmp),
                                                    args.camera_fps))
                logger.info("%s", json.dumps(browser_rows[-1]))
    doc = {
        "command": " ".join(["python", *sys.argv]),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "created": utc_now(), "model": args.run, "frame": "640x480 skimage astronaut, moving (yuv420p in)",
        "redetect_every": args.redetect_every, "smoothing": args.smoothing,
        **machine_record(load_before), "server_callback": rows, "browser": browser_rows,
    }
    text = json.dumps(doc, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
