"""Video files and folders through ``predict``: streaming decode, tracks, rows, annotated video, damage.

Small videos are made here with PyAV: the astronaut's face (scikit-image)
drifting right on a grey background, or a blank grey frame.  A tiny
efficientnet_lite0 with random weights stands in for a trained model: these
tests check the plumbing (frames, times, tracks, files, errors), not accuracy.
"""

from __future__ import annotations

import csv
import inspect
import itertools
import json
import weakref
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import save_tiny_run
from PIL import Image
from skimage import data as skdata

from emotion.cli import main
from emotion.inference import Predictor
from emotion.video_files import (
    ROW_COLUMNS,
    InputError,
    VideoDecodeError,
    VideoError,
    VideoReader,
    expand_inputs,
    pick_encoder,
    predict_video,
    row_columns,
    rows_to_text,
    track_summary,
)

LABELS = ["angry", "happy", "sad"]
FACE = Image.fromarray(skdata.astronaut()).crop((140, 20, 316, 216)).resize((88, 98))
CODECS = {".mp4": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}
FRAMES = 20  # 2 s at 10 fps


def make_video(path: Path, frames: int = FRAMES, fps: int = 10, size: tuple[int, int] = (160, 120),
               face: bool = True, options: dict | None = None) -> Path:
    """A short video: the face moves 2 px right per frame (or a blank grey frame); a key frame every 5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = 5
        for i in range(frames):
            canvas = Image.new("RGB", size, (90, 90, 90))
            if face:
                canvas.paste(FACE, (20 + 2 * i, 8))
            for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        sizes = [(f.width, f.height) for f in container.decode(video=0)]
    return len(sizes), sizes[0]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> None:
    """Tiny per-frame batches: one thread is as fast, and far faster when the CPUs are busy elsewhere."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", "efficientnet_lite0", labels=tuple(LABELS))


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the index at the front (faststart), as phones and web exports write it: a cut file still opens
    return make_video(tmp_path_factory.mktemp("videos") / "clip.mp4", options={"movflags": "+faststart"})


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- inputs


def test_folders_are_searched_recursively_for_images_and_videos(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    FACE.save(tmp_path / "b" / "one.png")
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "a" / "deeper" / "clip.webm").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not media")
    (tmp_path / ".hidden").mkdir()
    FACE.save(tmp_path / ".hidden" / "skip.png")
    found = expand_inputs([tmp_path, tmp_path / "missing.mov", tmp_path / "readme.txt"])
    assert [(p.path.relative_to(tmp_path).as_posix(), p.kind) for p in found] == [
        ("a/deeper/clip.webm", "video"), ("b/one.png", "image"),
        ("missing.mov", "video"),  # a named file keeps its place: its reader says what is wrong
        ("readme.txt", "image"),  # Pillow reads more formats than the extension list
    ]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match=r"holds no images or videos.*\.png.*\.mp4"):
        expand_inputs([tmp_path / "empty"])


# --------------------------------------------------------------------------- decoding and tracking


def test_one_row_per_frame_with_increasing_times_and_one_track(predictor: Predictor, clip: Path) -> None:
    results = list(predict_video(predictor, clip))
    assert [r.index for r in results] == list(range(FRAMES))
    times = [r.time_s for r in results]
    assert times[0] == 0.0 and all(b > a for a, b in itertools.pairwise(times))
    assert times[-1] == pytest.approx((FRAMES - 1) / 10, abs=1e-3)
    assert all(len(r.prediction.faces) == 1 for r in results)
    assert {f.track_id for r in results for f in r.prediction.faces} == {1}  # one moving face, one track
    rows = [row for r in results for row in r.rows()]
    assert list(rows[0]) == row_columns(LABELS)
    assert all(sum(row[f"p_{c}"] for c in LABELS) == pytest.approx(1.0, abs=1e-4) for row in rows)
    xs = [row["x0"] for row in rows]
    assert xs[-1] > xs[0] + 20  # the box follows the face (detector re-run every few frames)
    (summary,) = track_summary(rows, LABELS)
    assert summary["track"] == 1 and summary["frames"] == FRAMES and summary["end_s"] == times[-1]


def test_every_third_frame(predictor: Predictor, clip: Path) -> None:
    results = list(predict_video(predictor, clip, every=3))
    assert [r.index for r in results] == list(range(0, FRAMES, 3))  # 7 of 20
    assert [r.time_s for r in results] == pytest.approx([i / 10 for i in range(0, FRAMES, 3)], abs=1e-3)
    with pytest.raises(ValueError, match="every=0"):
        next(predict_video(predictor, clip, every=0))


def test_decoding_streams_one_frame_at_a_time(predictor: Predictor, tmp_path: Path) -> None:
    """A long video is never held whole: each frame is decoded when asked for and dropped after."""
    long = make_video(tmp_path / "long.mp4", frames=150, size=(64, 48), face=False)
    decoded: list[int] = []
    images: list[weakref.ref] = []  # every frame handed out, without keeping it alive

    def alive() -> int:
        return sum(ref() is not None for ref in images)

    peak = 0
    with VideoReader(long) as reader:
        frames = reader.frames(on_decoded=decoded.append)
        assert inspect.isgenerator(frames) and not decoded  # nothing decoded before the first frame is asked
        first = next(frames)
        assert len(decoded) == 1  # no read-ahead of the rest
        images.append(weakref.ref(first.image))
        del first
        for frame in frames:
            images.append(weakref.ref(frame.image))
            peak = max(peak, alive())
            del frame
    assert len(decoded) == 150 and peak <= 2  # collecting the frames first would keep all 150 alive

    progress: list[int] = []
    results = predict_video(predictor, long, every=5, progress=lambda done, total: progress.append(done))
    assert inspect.isgenerator(results)
    next(results)
    assert progress == [1]  # the first prediction comes after one decoded frame, not the whole file
    results.close()


def test_phone_videos_stored_sideways_come_out_upright(tmp_path: Path) -> None:
    upright = Image.new("RGB", (160, 120), (90, 90, 90))
    upright.paste(FACE, (20, 8))
    path = tmp_path / "portrait.mov"
    with av.open(str(path), "w") as container:  # pixels turned clockwise, the display matrix turns them back
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 120, 160, "yuv420p"
        stream.set_display_rotation(90)
        for packet in [*stream.encode(av.VideoFrame.from_image(upright.rotate(-90, expand=True))),
                       *stream.encode()]:
            container.mux(packet)
    with VideoReader(path) as reader:
        (frame,) = list(reader.frames())
    assert frame.image.size == (160, 120)
    diff = np.abs(np.asarray(frame.image, dtype=float) - np.asarray(upright, dtype=float)).mean()
    assert diff < 8  # the same picture, up to compression


# --------------------------------------------------------------------------- command line


def test_cli_writes_csv_and_jsonl_rows(run_dir: Path, clip: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    out_csv = tmp_path / "out" / "rows.csv"
    assert main(["predict", str(clip), "--run", str(run_dir), "--every", "2", "--out", str(out_csv),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"{clip}: 10 of 20 frames analysed (one in 2), 10 face rows in 1 track" in text
    assert "track #1 (0.00-1.80 s, 10 frames)" in text
    rows = _read_csv(out_csv)
    assert list(rows[0]) == list(ROW_COLUMNS) + [f"p_{c}" for c in LABELS]
    assert [int(r["frame"]) for r in rows] == list(range(0, FRAMES, 2))
    assert {r["source"] for r in rows} == {str(clip)} and {r["track"] for r in rows} == {"1"}
    assert all(abs(sum(float(r[f"p_{c}"]) for c in LABELS) - 1) < 1e-4 for r in rows)
    assert all(r["label"] == max(LABELS, key=lambda c: float(r[f"p_{c}"])) for r in rows)

    out_jsonl = tmp_path / "rows.jsonl"
    assert main(["predict", str(clip), "--run", str(run_dir), "--every", "5", "--out", str(out_jsonl),
                 "--json", "--no-progress"]) == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["frame"] for d in frames] == [0, 5, 10, 15] and frames[0]["video"] == str(clip)
    assert frames[0]["faces"][0]["track_id"] == 1 and frames[0]["run"] == str(run_dir)
    rows = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["time_s"] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert all(abs(sum(r[f"p_{c}"] for c in LABELS) - 1) < 1e-4 for r in rows)
    assert rows_to_text(rows, LABELS).splitlines()[0] == ",".join(row_columns(LABELS))


def test_cli_annotates_a_video(run_dir: Path, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "ann" / "annotated.mp4"
    assert main(["predict", str(clip), "--run", str(run_dir), "--every", "3", "--annotate", str(out),
                 "--no-progress"]) == 0
    assert count_frames(out) == (7, (160, 120))  # one frame per analysed frame, same size
    with pytest.raises(SystemExit):  # not a container it can write
        main(["predict", str(clip), "--format", "xml"])
    assert main(["predict", str(clip), "--annotate", str(tmp_path / "x.notavideo")]) == 2


def test_annotated_video_falls_back_to_an_encoder_this_pyav_has(monkeypatch: pytest.MonkeyPatch) -> None:
    real = av.codec.Codec

    def without_h264(name: str, mode: str = "r"):
        if name in ("libx264", "h264"):
            raise av.codec.codec.UnknownCodecError(name)
        return real(name, mode)

    assert pick_encoder("out.mp4") == "libx264"
    monkeypatch.setattr(av.codec, "Codec", without_h264)
    assert pick_encoder("out.mp4") == "mpeg4" and pick_encoder("out.avi") == "mpeg4"
    with pytest.raises(VideoError, match="none of the encoders libx264, h264, mpeg4"):
        monkeypatch.setattr(av.codec, "Codec", lambda name, mode="r": without_h264("h264"))
        pick_encoder("out.mov")


def test_cli_folder_of_images_and_videos_in_subfolders(run_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "media"
    (folder / "stills").mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).resize((256, 256)).save(folder / "stills" / "face.jpg")
    make_video(folder / "clips" / "deep" / "moving.avi", frames=10)
    make_video(folder / "clips" / "blank.webm", frames=10, face=False)
    out = tmp_path / "rows.jsonl"
    assert main(["predict", str(folder), "--run", str(run_dir), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "blank.webm: 10 of 10 frames analysed, 0 face rows in 0 tracks" in text
    assert "face.jpg: 1 face" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sources = [Path(r["source"]).relative_to(folder).as_posix() for r in rows]
    assert sources == ["clips/deep/moving.avi"] * 10 + ["stills/face.jpg"]  # sorted; the blank video adds none
    assert rows[-1]["frame"] is None and rows[-1]["time_s"] is None and rows[-1]["track"] is None
    assert [r["frame"] for r in rows[:10]] == list(range(10))


def test_truncated_video_keeps_earlier_rows_and_fails_at_the_end(run_dir: Path, clip: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    good = make_video(tmp_path / "after.avi", frames=5)
    out = tmp_path / "rows.csv"
    with caplog.at_level("WARNING"):
        assert main(["predict", str(cut), str(good), "--run", str(run_dir), "--out", str(out),
                     "--no-progress"]) == 2
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    # FFmpeg either fails on the cut packet or stops early: both are named, with the frame reached
    assert f"{cut}: " in warning and "truncated" in warning and "rows up to there are kept" in warning
    assert any(f"after {n} frame" in warning for n in range(1, FRAMES))
    rows = _read_csv(out)
    kept = [r for r in rows if r["source"] == str(cut)]
    assert 0 < len(kept) < FRAMES and [int(r["frame"]) for r in kept] == list(range(len(kept)))
    assert len([r for r in rows if r["source"] == str(good)]) == 5  # the next input still ran
    assert "(stopped early)" in capsys.readouterr().out

    # a container without a frame count (WebM) that just ends early is caught by its duration
    webm = make_video(tmp_path / "full.webm")
    short = tmp_path / "short.webm"
    short.write_bytes(webm.read_bytes()[: webm.stat().st_size // 2])
    predictor = Predictor.from_run(run_dir)
    seen = []
    with pytest.raises(VideoDecodeError, match=r"short\.webm: the video ended after \d+ frames .*truncated"):
        for result in predict_video(predictor, short):
            seen.append(result.index)
    assert 0 < len(seen) < FRAMES


def test_not_a_video_is_named_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is text, not a video")
    assert main(["predict", str(fake), "--run", str(tmp_path / "no-run")]) == 2  # the video is checked first
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {fake}: not a readable video") and ".webm" in err[0]
    (tmp_path / "empty.mov").touch()
    with pytest.raises(VideoError, match="empty file"):
        VideoReader(tmp_path / "empty.mov")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["predict", str(notes)]) == 2
    assert "supported inputs: images" in capsys.readouterr().err


def test_interrupted_run_keeps_the_rows_written(run_dir: Path, clip: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from emotion.video import VideoPredictor

    update, calls = VideoPredictor.update, []

    def interrupt_on_the_sixth(self, frame):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return update(self, frame)

    monkeypatch.setattr(VideoPredictor, "update", interrupt_on_the_sixth)
    out = tmp_path / "rows.csv"
    assert main(["predict", str(clip), "--run", str(run_dir), "--out", str(out), "--no-progress"]) == 130
    assert [int(r["frame"]) for r in _read_csv(out)] == [0, 1, 2, 3, 4]
