"""The live webcam's server side without a browser: WebRTC settings, the frame callback and its status.

``tests/test_webcam_browser.py`` drives the same code through Chromium's fake camera;
these run everywhere in seconds.  Frames come from ``benchmarks/webcam_fps.py`` (the
astronaut moving a little, the clip the browser test plays), the model is a tiny
random one (the plumbing, not accuracy).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, save_tiny_run

_spec = importlib.util.spec_from_file_location("webcam_fps", REPO_ROOT / "benchmarks" / "webcam_fps.py")
clips = sys.modules.setdefault("webcam_fps", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(clips)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory):
    from emotion.inference import Predictor

    return Predictor.from_run(save_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", "efficientnet_lite0"))


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_a_loopback_server_needs_no_stun_or_turn_server(address: str) -> None:
    from ui.webcam import rtc_configuration

    assert rtc_configuration({}, address) == {"iceServers": []}  # works offline: host candidates only


@pytest.mark.parametrize("address", [None, "", "0.0.0.0", "192.168.1.5", "example.org"])
def test_other_servers_let_streamlit_webrtc_choose(address: str | None) -> None:
    from ui.webcam import rtc_configuration

    assert rtc_configuration({}, address) is None


def test_configured_servers_win_over_the_loopback_default() -> None:
    from ui.webcam import rtc_configuration

    turn = {"EMOTION_TURN_URL": "turn:t.example:3478", "EMOTION_TURN_USERNAME": "u",
            "EMOTION_TURN_CREDENTIAL": "p"}
    assert rtc_configuration(turn, "127.0.0.1")["iceServers"][1]["urls"] == ["turn:t.example:3478"]
    assert rtc_configuration({"EMOTION_ICE_SERVERS": "[]"}, "0.0.0.0") == {"iceServers": []}  # offline, a LAN


def test_the_clip_files_chromium_plays(tmp_path: Path) -> None:
    frames = clips.moving_frames(6, faces=2)
    assert len(frames) == 6 and frames[0].shape == (480, 640, 3)
    assert (frames[0][:, :320] == frames[0][:, 320:][:, ::-1]).all()  # the right half mirrors the left
    assert not (frames[0] == frames[1]).all()  # it moves
    path = clips.write_y4m(tmp_path / "c.y4m", frames, fps=10)
    header, _, rest = path.read_bytes().partition(b"\n")
    assert header == b"YUV4MPEG2 W640 H480 F10:1 Ip A1:1 C420"
    assert len(rest) == 6 * (len(b"FRAME\n") + 640 * 480 * 3 // 2)
    black = clips.rgb_to_i420(clips.blank_frames(1)[0])
    assert black[0] == 16 and black[640 * 480] == 128  # video-range black: Y 16, neutral chroma
    with pytest.raises(ValueError, match="1 or 2 faces"):
        clips.moving_frames(4, faces=3)


def test_tracks_survive_a_change_of_resolution(predictor) -> None:
    """WebRTC lowers a camera's resolution when the CPU is busy: the face keeps its track id."""
    from PIL import Image

    from emotion.video import VideoConfig, VideoPredictor

    video = VideoPredictor(predictor, VideoConfig(redetect_every=5))
    frames = clips.moving_frames(8, faces=2)
    first = video.update(frames[0])
    assert [f.track_id for f in first.faces] == [1, 2]
    for i, size in enumerate([(640, 480), (480, 360), (320, 240), (320, 240), (640, 480)], start=1):
        frame = np.asarray(Image.fromarray(frames[i]).resize(size, Image.Resampling.BILINEAR))
        result = video.update(frame)
        assert [f.track_id for f in result.faces] == [1, 2], (size, result.faces)
        assert result.size == size and result.faces[1].box[2] <= size[0] + 2  # boxes in this frame's pixels
    assert video.detections >= 4  # each size change detected again at once


def _halves_shifted(frame: np.ndarray, shift: int) -> np.ndarray:
    """The two-face frame with her face moved ``shift`` px right in the left half and its mirror image
    ``shift`` px left in the right half (grey fills the gap)."""
    left = np.roll(frame[:, :320], shift, axis=1)
    left[:, :shift] = frame[0, 0]
    return np.concatenate([left, left[:, ::-1]], axis=1)


def test_tracks_survive_frames_dropped_by_a_stalled_stream(predictor) -> None:
    """A busy server skips frames, so between two detections a face can move farther than its box
    overlaps (the CI failure of 2026-12-07: both faces moved 50 px and got new ids). The nearest
    face within match_distance face sizes continues the track; a face far away starts a new one."""
    from emotion.video import VideoConfig, VideoPredictor, box_iou

    base = clips.moving_frames(8, faces=2)[0]
    shifted = [_halves_shifted(base, s) for s in (0, 60, 0, 60)]
    for match_distance, expected in ((0.75, [[1, 2]] * 4), (0.0, [[1, 2], [3, 4], [5, 6], [7, 8]])):
        video = VideoPredictor(predictor, VideoConfig(redetect_every=1, match_distance=match_distance))
        results = [video.update(frame) for frame in shifted]
        assert [[f.track_id for f in r.faces] for r in results] == expected, match_distance
        for before, after in zip(results, results[1:]):  # IoU alone would lose each face at every step
            for a, b in zip(before.faces, after.faces):
                assert box_iou(a.box, b.box) < VideoConfig().match_iou, (a.box, b.box)
    video = VideoPredictor(predictor, VideoConfig(redetect_every=1))
    one = clips.moving_frames(8, faces=1)[0]
    assert [f.track_id for f in video.update(one).faces] == [1]
    far = np.roll(one, 250, axis=1)  # the face jumped about three face widths: someone else
    assert [f.track_id for f in video.update(far).faces] == [2]
    with pytest.raises(ValueError, match="match_distance"):
        VideoConfig(match_distance=-1)


def test_the_frame_callback_reports_faces_rate_and_a_new_stream(predictor) -> None:
    import av

    from ui.webcam import LiveAnnotator

    live = LiveAnnotator(predictor)
    assert live.status().text() == "Live · waiting for the first video frame…"
    live.start_stream()
    frames = clips.moving_frames(6, faces=1)
    for rgb in frames:  # as aiortc hands them over: decoded VP8, 4:2:0
        out = live(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
        assert out.width == 640 and out.height == 480
    status = live.status()
    assert status.frames == 6 and status.size == (640, 480) and status.fps > 0 and status.ms_per_frame > 0
    assert [f.id for f in status.faces] == [1] and status.faces[0].label in predictor.labels
    assert status.text().startswith(f"Live · 1 face: #1 {status.faces[0].label} ")
    assert "640×480 at" in status.text() and "6 frames, detector ran" in status.text()
    assert status.stalled_s is None

    live.start_stream()  # STOP, then START again
    again = live.status()
    assert again.frames == 0 and again.faces == () and again.idle_s is None
    assert again.text() == "Live · waiting for the first video frame…"
    live(av.VideoFrame.from_ndarray(frames[0], format="rgb24"))
    assert [f.id for f in live.status().faces] == [2]  # a new stream, a new track


def test_a_silent_camera_is_noticed_after_a_few_seconds(predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import webcam

    live = webcam.LiveAnnotator(predictor)
    clock = [1000.0]
    monkeypatch.setattr(webcam.time, "monotonic", lambda: clock[0])
    live.start_stream()
    clock[0] += webcam.NO_FRAME_WARN_S - 1
    assert live.status().stalled_s is None
    clock[0] += 2
    assert live.status().stalled_s == pytest.approx(webcam.NO_FRAME_WARN_S + 1)
