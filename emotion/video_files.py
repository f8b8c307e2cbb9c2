"""Emotions in video files and folders: streaming decode, tracked faces, rows out.

``python -m emotion predict`` and the Predict page share this module:

* :func:`expand_inputs` turns files and folders (searched recursively) into a
  sorted list of images and videos, chosen by extension;
* :class:`VideoReader` decodes a video with PyAV one frame at a time (a
  10-minute video is never held in memory), keeps every N-th frame and stamps
  it with its presentation time; a damaged or truncated file ends in
  :class:`VideoDecodeError` *after* the frames decoded before the damage;
* :func:`predict_video` runs those frames through the webcam's
  :class:`~emotion.video.VideoPredictor` (same face tracks, same smoothing),
  optionally writing an annotated copy of the video as it goes;
* :func:`prediction_rows` flattens a result to one row per face (source, frame,
  time, track, box, score, label, ``p_<class>``) and :class:`RowWriter` streams
  rows to CSV or JSON Lines, flushing after every frame so an interrupted run
  keeps what it wrote.

Anchors: ``fer``'s ``Video`` class and py-feat's ``detect_video`` give the same
one-row-per-face-per-frame table.  PyAV is imported only when a video is
actually read (the command line imports this module only for ``predict``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TextIO, Union

from PIL import Image

from emotion.fileio import keep_earlier
from emotion.images import IMAGE_EXTENSIONS, ImageLoadError, regular_file_problem
from emotion.inference import ImagePrediction, Predictor
from emotion.video import VideoConfig, VideoPredictor

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v"})
ROW_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ROW_COLUMNS = ("source", "frame", "time_s", "track", "face_source", "x0", "y0", "x1", "y1", "score", "label",
               "confidence")
# encoders tried in order for each container of an annotated video (the first this PyAV build has wins)
VIDEO_ENCODERS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".m4v": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4", "libvpx-vp9"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".avi": ("mpeg4", "mjpeg", "libx264"),
}
# a file is called truncated when it ends this many frames short of what its header announces
_TRUNCATION_SLACK_FRAMES = 2

ProgressFn = Callable[[int, Optional[int]], None]  # (frames decoded so far, frames expected or None)


class VideoError(ImageLoadError):
    """A video could not be opened or decoded; the message names the file and what to do."""


class VideoDecodeError(VideoError):
    """Decoding stopped early (damaged or truncated file); the frames before it were delivered."""

    def __init__(self, message: str, path: str, frames_decoded: int, time_s: Optional[float]) -> None:
        super().__init__(message)
        self.path = path
        self.frames_decoded = frames_decoded
        self.time_s = time_s


class InputError(ValueError):
    """A command-line input (file or folder) that holds nothing to predict on."""


def supported_extensions() -> str:
    """The extensions inputs are recognised by, for error messages."""
    return (f"images {' '.join(sorted(IMAGE_EXTENSIONS))}; videos {' '.join(sorted(VIDEO_EXTENSIONS))}; "
            "or a folder of them")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class MediaInput:
    """One thing to predict on: a path and whether it is read as an image or a video."""

    path: Path
    kind: str  # "image" or "video"


def media_kind(path: Union[str, Path]) -> Optional[str]:
    """'image' or 'video' by extension, None for anything else."""
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_EXTENSIONS else "image" if suffix in IMAGE_EXTENSIONS else None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def expand_inputs(paths: Sequence[Union[str, Path]]) -> list[MediaInput]:
    """Files as given (in order), folders replaced by their images and videos (recursive, sorted).

    A named file keeps its place even when it is missing or has an odd extension:
    its reader then says what is wrong with it, and the other inputs still run.
    Hidden files and folders (``.git``, ``.DS_Store``) are skipped.  Raises
    :class:`InputError` for a folder that holds no image or video.
    """
    out: list[MediaInput] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            out.append(MediaInput(path, media_kind(path) or "image"))  # Pillow reads more than the list
            continue
        found = sorted((p for p in path.rglob("*") if media_kind(p) and not _hidden(p, path) and p.is_file()),
                       key=lambda p: p.relative_to(path).as_posix())
        if not found:
            raise InputError(f"folder {path} holds no images or videos (searched recursively for "
                             f"{supported_extensions().removesuffix('; or a folder of them')})")
        logger.debug("%s: %d images and videos", path, len(found))
        out.extend(MediaInput(p, media_kind(p) or "image") for p in found)
    return out


# --------------------------------------------------------------------------- decoding


@dataclass
class VideoInfo:
    """What a video's header says (``frames`` is an estimate from the duration when not stored)."""

    path: str
    width: int
    height: int
    fps: Optional[Fraction]
    frames: Optional[int]
    duration_s: Optional[float]
    codec: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height,
                "fps": float(self.fps) if self.fps else None, "frames": self.frames,
                "duration_s": self.duration_s, "codec": self.codec}


@dataclass
class DecodedFrame:
    """One kept frame: its index among all decoded frames, its time and its pixels (RGB)."""

    index: int
    time_s: float
    image: Image.Image


def _not_a_video(path: Path, exc: BaseException) -> VideoError:
    reason = getattr(exc, "strerror", None) or str(exc)
    hint = (" (an .mp4 or .mov cut short loses the index stored at its end and cannot be opened at all)"
            if path.suffix.lower() in (".mp4", ".mov", ".m4v") else "")
    return VideoError(f"{path}: not a readable video, or a damaged one: {reason}{hint}; supported videos: "
                      f"{' '.join(sorted(VIDEO_EXTENSIONS))} (any codec FFmpeg decodes)")


class VideoReader:
    """A video opened with PyAV, read frame by frame; use as a context manager.

    Only the frame being handed out is held (plus what FFmpeg's decoder keeps
    internally), so memory does not grow with the video's length.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        import av

        self.path = Path(path)
        problem = regular_file_problem(self.path)
        if problem is not None:
            raise VideoError(f"{self.path}: {problem}")
        if self.path.stat().st_size == 0:
            raise VideoError(f"{self.path}: empty file (0 bytes)")
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise _not_a_video(self.path, exc) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: has no video stream (audio only?); supported videos: "
                             f"{' '.join(sorted(VIDEO_EXTENSIONS))}")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threads: faster, and FFmpeg bounds what they hold
        self._frames_stored = bool(self._stream.frames)
        self.info = self._info()

    def _info(self) -> VideoInfo:
        s, c = self._stream, self._container
        fps = s.average_rate or s.guessed_rate or None
        duration = (float(s.duration * s.time_base) if s.duration and s.time_base
                    else c.duration / 1_000_000 if c.duration else None)
        frames = int(s.frames) if s.frames else (round(duration * float(fps)) if duration and fps else None)
        ctx = s.codec_context
        return VideoInfo(str(self.path), int(ctx.width or 0), int(ctx.height or 0),
                         Fraction(fps) if fps else None, frames or None, duration, ctx.name or "?")

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def frames(self, every: int = 1, on_decoded: Optional[Callable[[int], None]] = None) -> Iterator[DecodedFrame]:
        """Every ``every``-th frame (0, every, 2*every, ...), decoded one at a time.

        ``on_decoded(n)`` is told after each decoded frame (kept or not), for
        progress bars.  A decode failure, or a file ending well before the
        length its header announces, raises :class:`VideoDecodeError` after
        the frames that could be read.
        """
        import av

        if isinstance(every, bool) or int(every) < 1:
            raise ValueError(f"every={every!r} must be an integer >= 1 (1 analyses every frame)")
        every = int(every)
        s = self._stream
        start = s.start_time or 0
        fps = float(self.info.fps) if self.info.fps else None
        decoded, last_time, error = 0, None, None
        frames = self._container.decode(s)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
                error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                break
            index = decoded
            decoded += 1
            if frame.pts is not None and s.time_base is not None:
                last_time = max(0.0, float((frame.pts - start) * s.time_base))
            else:
                last_time = index / fps if fps else float(index)
            if on_decoded is not None:
                on_decoded(decoded)
            if index % every == 0:
                yield DecodedFrame(index, round(last_time, 4), _upright(frame))
        self._check_complete(decoded, last_time, error)

    def _check_complete(self, decoded: int, last_time: Optional[float], error: Optional[str]) -> None:
        info, where = self.info, self._where(decoded, last_time)
        if error is not None:
            raise VideoDecodeError(f"{self.path}: decoding failed after {where} ({error}); the file is damaged "
                                   "or truncated, and the rows up to there are kept", str(self.path), decoded,
                                   last_time)
        if decoded == 0:
            raise VideoDecodeError(f"{self.path}: no frame could be decoded; the file is empty, damaged or "
                                   "truncated", str(self.path), 0, None)
        fps = float(info.fps) if info.fps else 25.0
        if self._frames_stored:  # mp4, mov, avi: the header counts the frames
            short = decoded + _TRUNCATION_SLACK_FRAMES < int(info.frames or 0)
            announced = f"{info.frames} frames"
        else:  # webm, mkv: only a duration; compare times (robust to a variable frame rate)
            short = bool(info.duration_s and last_time is not None
                         and last_time + 1 / fps < info.duration_s - max(_TRUNCATION_SLACK_FRAMES / fps, 0.5))
            announced = f"{info.duration_s:.2f} s" if info.duration_s else ""
        if short:
            raise VideoDecodeError(f"{self.path}: the video ended after {where} but its header announces "
                                   f"{announced}; the file looks truncated, and the rows up to there are kept",
                                   str(self.path), decoded, last_time)

    def _where(self, decoded: int, last_time: Optional[float]) -> str:
        at = f" ({last_time:.2f} s)" if last_time is not None else ""
        return f"{decoded} frame{'s' if decoded != 1 else ''}{at}"


def _upright(frame: Any) -> Image.Image:
    """An RGB image of a decoded frame as it is meant to be seen.

    Phones store portrait video sideways with a display matrix saying how to
    turn it; a face lying on its side is one most detectors miss.
    """
    image = frame.to_image()  # rgb24, a copy: the decoder's frame can go
    rotation = round(float(getattr(frame, "rotation", 0) or 0)) % 360  # counter-clockwise degrees
    return image.rotate(rotation, expand=True) if rotation else image


def probe_video(path: Union[str, Path]) -> VideoInfo:
    """The header of a video (raises :class:`VideoError` when it cannot be opened)."""
    with VideoReader(path) as reader:
        return reader.info


# --------------------------------------------------------------------------- annotated video


def check_video_output(path: Union[str, Path]) -> Path:
    """``path`` as a Path if its extension names a container an annotated video can be written to."""
    out = Path(path)
    if out.suffix.lower() not in VIDEO_ENCODERS:
        raise ValueError(f"{path}: an annotated video needs one of the extensions "
                         f"{' '.join(sorted(VIDEO_ENCODERS))}, e.g. out.mp4")
    return out


def pick_encoder(path: Union[str, Path]) -> str:
    """The first encoder for ``path``'s container that this PyAV build has (libx264 for .mp4 when present)."""
    import av

    suffix = check_video_output(path).suffix.lower()
    for name in VIDEO_ENCODERS[suffix]:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError, KeyError):
            continue
        return name
    raise VideoError(f"{path}: this PyAV build has none of the encoders {', '.join(VIDEO_ENCODERS[suffix])} "
                     f"for {suffix}; try another extension ({' '.join(sorted(VIDEO_ENCODERS))})")


class AnnotatedVideoWriter:
    """Frames in, a video file out: opened on the first frame (its size), encoded as they come."""

    def __init__(self, path: Union[str, Path], fps: Union[Fraction, float, None]) -> None:
        self.path = check_video_output(path)
        self.codec = pick_encoder(self.path)
        fps = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)
        self.fps = fps if fps > 0 else Fraction(25)
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._size: Optional[tuple[int, int]] = None

    def _open(self, width: int, height: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep_earlier(self.path)
        self._container = av.open(str(self.path), "w")
        stream = self._container.add_stream(self.codec, rate=self.fps)
        formats = [f.name for f in (stream.codec_context.codec.video_formats or [])]
        stream.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        # 4:2:0 chroma needs even sides: drop the last row/column of an odd-sized frame
        self._size = (max(2, width - width % 2), max(2, height - height % 2))
        stream.width, stream.height = self._size
        if self.codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        self._stream = stream

    def write(self, image: Image.Image) -> None:
        import av

        if self._container is None:
            self._open(*image.size)
        assert self._size is not None
        if image.size != self._size:
            image = image.crop((0, 0, *self._size)) if image.width >= self._size[0] and \
                image.height >= self._size[1] else image.resize(self._size)
        frame = av.VideoFrame.from_image(image.convert("RGB"))
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (a video with no frame writes nothing)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "AnnotatedVideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- predictions


@dataclass
class FrameResult:
    """One analysed frame of a video: where it is in the video and its (tracked, smoothed) faces."""

    source: str
    index: int
    time_s: float
    prediction: ImagePrediction

    def rows(self) -> list[dict[str, Any]]:
        return prediction_rows(self.source, self.prediction, frame=self.index, time_s=self.time_s)

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.source, "frame": self.index, "time_s": self.time_s, **self.prediction.to_dict()}


def file_video_config(every: int = 1, ema_alpha: Optional[float] = None,
                      redetect_every: Optional[int] = None) -> VideoConfig:
    """The webcam's tracking and smoothing, detecting at the predictor's own resolution.

    The webcam detects at 320 px to keep up with the camera; a file has no
    deadline, so its faces are found at the predictor's ``max_side`` (``--max-side``).
    """
    base = VideoConfig()
    every_k = redetect_every if redetect_every is not None else base.redetect_every
    return replace(base, max_side=None, redetect_every=every_k,
                   ema_alpha=ema_alpha if ema_alpha is not None else base.ema_alpha)


def predict_video(predictor: Predictor, path: Union[str, Path], every: int = 1,
                  config: Optional[VideoConfig] = None, annotate: Union[str, Path, None] = None,
                  progress: Optional[ProgressFn] = None) -> Iterator[FrameResult]:
    """Every ``every``-th frame of a video with its tracked, smoothed faces, one frame at a time.

    A generator: frames are decoded, predicted and (with ``annotate``) drawn and
    encoded one by one, so memory stays flat however long the video is.  Raises
    :class:`VideoError` when the file cannot be opened, and
    :class:`VideoDecodeError` after the last good frame when it is damaged or
    truncated (the annotated video is still finished up to there).
    """
    if isinstance(every, bool) or int(every) < 1:
        raise ValueError(f"every={every!r} must be an integer >= 1 (1 analyses every frame)")
    every = int(every)
    writer_out = check_video_output(annotate) if annotate is not None else None
    with VideoReader(path) as reader:
        info = reader.info
        tracker = VideoPredictor(predictor, config if config is not None else file_video_config())
        writer = AnnotatedVideoWriter(writer_out, info.fps / every if info.fps else None) if writer_out else None
        on_decoded = (lambda n: progress(n, info.frames)) if progress is not None else None
        try:
            for frame in reader.frames(every, on_decoded=on_decoded):
                prediction = tracker.update(frame.image)
                if writer is not None:
                    writer.write(predictor.annotate(frame.image, prediction))
                yield FrameResult(str(path), frame.index, frame.time_s, prediction)
        finally:
            if writer is not None:
                writer.close()


def prediction_rows(source: str, prediction: ImagePrediction, frame: Optional[int] = None,
                    time_s: Optional[float] = None) -> list[dict[str, Any]]:
    """One flat row per face (``ROW_COLUMNS`` then ``p_<class>``); images have no frame, time or track."""
    rows = []
    for face in prediction.faces:
        x0, y0, x1, y1 = (round(float(v), 1) for v in face.box)
        row: dict[str, Any] = {
            "source": source, "frame": frame, "time_s": time_s, "track": face.track_id,
            "face_source": face.source, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
            "score": round(float(face.face.score), 4) if face.source == "face" else None,
            "label": face.label, "confidence": round(face.confidence, 5),
        }
        row.update({f"p_{name}": round(float(p), 5) for name, p in face.probabilities.items()})
        rows.append(row)
    return rows


def row_columns(labels: Sequence[str]) -> list[str]:
    return list(ROW_COLUMNS) + [f"p_{name}" for name in labels]


def row_format(path: Union[str, Path], fmt: Optional[str] = None) -> str:
    """'csv' or 'jsonl': ``fmt`` when given, else from the extension (.csv, .jsonl, .ndjson)."""
    if fmt is not None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"format {fmt!r} must be csv or jsonl")
        return fmt
    found = ROW_FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise ValueError(f"{path}: cannot tell the format from the extension; name it .csv or .jsonl, or pass "
                         "--format csv|jsonl")
    return found


class RowWriter:
    """One row per face to a CSV or JSON Lines stream, flushed after each batch (a frame or an image).

    The CSV header is written first, from the model's labels, so every row has
    the same columns; JSON Lines rows carry the same keys (null for no value).
    """

    def __init__(self, stream: TextIO, labels: Sequence[str], fmt: str = "csv") -> None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"format {fmt!r} must be csv or jsonl")
        self.stream, self.fmt, self.columns = stream, fmt, row_columns(labels)
        self.rows = 0
        self._owned = False
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=self.columns, extrasaction="ignore", restval="")
            self._csv.writeheader()
            stream.flush()

    @classmethod
    def open(cls, path: Union[str, Path], labels: Sequence[str], fmt: Optional[str] = None) -> "RowWriter":
        """A writer on a new file at ``path`` (parent folders made; a file already there is kept aside, see
        :func:`emotion.fileio.keep_earlier`); format from ``fmt`` or the extension."""
        kind = row_format(path, fmt)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_earlier(path)
        writer = cls(open(path, "w", newline="", encoding="utf-8"), labels, kind)  # noqa: SIM115 - closed by close()
        writer._owned = True
        return writer

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            if self.fmt == "csv":
                self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
            else:
                self.stream.write(json.dumps({c: row.get(c) for c in self.columns}) + "\n")
            self.rows += 1
        self.stream.flush()

    def close(self) -> None:
        if self._owned and not self.stream.closed:
            self.stream.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rows_to_text(rows: Iterable[dict[str, Any]], labels: Sequence[str], fmt: str = "csv") -> str:
    """Rows as a CSV or JSON Lines string (the app's download button)."""
    buffer = io.StringIO()
    RowWriter(buffer, labels, fmt).write(rows)
    return buffer.getvalue()


class TrackSummary:
    """Per source and track, built row by row (a long video's rows need not be kept): frames seen,
    first and last time, the most frequent label and the mean probabilities."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.rows = 0
        self._tracks: dict[tuple[str, Any], dict[str, Any]] = {}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.rows += 1
            t = self._tracks.setdefault((row["source"], row.get("track")), {
                "frames": 0, "start_s": None, "end_s": None, "labels": Counter(),
                "sums": dict.fromkeys(self.labels, 0.0)})
            t["frames"] += 1
            t["labels"][row["label"]] += 1
            if row.get("time_s") is not None:
                t["start_s"] = row["time_s"] if t["start_s"] is None else min(t["start_s"], row["time_s"])
                t["end_s"] = row["time_s"] if t["end_s"] is None else max(t["end_s"], row["time_s"])
            for c in self.labels:
                t["sums"][c] += float(row[f"p_{c}"])

    def result(self) -> list[dict[str, Any]]:
        out = []
        for (source, track), t in self._tracks.items():
            label, n = t["labels"].most_common(1)[0]
            out.append({"source": source, "track": track, "frames": t["frames"], "start_s": t["start_s"],
                        "end_s": t["end_s"], "label": label, "label_share": round(n / t["frames"], 4),
                        **{f"mean_p_{c}": round(t["sums"][c] / t["frames"], 5) for c in self.labels}})
        return out


def track_summary(rows: Iterable[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """:class:`TrackSummary` of a list of rows, one entry per source and track in order of appearance."""
    summary = TrackSummary(labels)
    summary.add(rows)
    return summary.result()


def progress_bar(desc: str, disable: bool = False) -> tuple[ProgressFn, Callable[[], None]]:
    """A tqdm bar on stderr as a ``(progress, close)`` pair; hidden when stderr is not a terminal."""
    import sys

    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="frame", file=sys.stderr, leave=False, disable=True if disable else None,
               dynamic_ncols=True)

    def progress(done: int, total: Optional[int]) -> None:
        if total and bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return progress, bar.close


__all__ = [
    "AnnotatedVideoWriter", "DecodedFrame", "FrameResult", "InputError", "MediaInput", "RowWriter", "TrackSummary",
    "VideoDecodeError", "VideoError", "VideoInfo", "VideoReader", "check_video_output", "expand_inputs",
    "file_video_config", "media_kind", "pick_encoder", "predict_video", "prediction_rows", "probe_video",
    "row_columns", "row_format", "rows_to_text", "supported_extensions", "track_summary",
]
