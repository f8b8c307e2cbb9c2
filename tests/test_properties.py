"""Property-based tests (hypothesis): whatever arrives, the loaders answer or refuse in words.

- any bytes given to the image loader give an RGB image or an ``ImageLoadError``;
- any valid image, in any mode, size and format, loads as RGB of its own size;
- any string given as a run name gives a folder directly inside the runs folder, or is refused;
- any class-folder tree with broken files in it loads, and its audit accounts for every file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emotion.audit import audit_dataset
from emotion.data.sources import DatasetError, load_dataset_spec
from emotion.images import ImageLoadError, load_image
from emotion.names import InvalidNameError, child_folder

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP",
           b"II*\0", b"P5\n4 4\n255\n"]


@settings(max_examples=150, **SETTINGS)
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=600))
def test_any_bytes_load_as_rgb_or_fail_with_image_load_error(header: bytes, body: bytes) -> None:
    try:
        img = load_image(header + body)
    except ImageLoadError as exc:
        assert str(exc)  # a message, never an empty error
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0


def _valid_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))  # mode I;16
    if mode == "F":
        return Image.fromarray(rng.standard_normal((height, width)).astype(np.float32))  # mode F
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), mode="RGBA")
    return rgba.convert(mode)


FORMATS = {  # format -> modes it can store
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "BMP": ("1", "L", "P", "RGB"),
    "GIF": ("L", "P"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"),
    "WEBP": ("RGB", "RGBA"),
}


@settings(max_examples=80, **SETTINGS)
@given(fmt_mode=st.sampled_from([(f, m) for f, modes in FORMATS.items() for m in modes]),
       width=st.integers(1, 48), height=st.integers(1, 48), seed=st.integers(0, 2 ** 16))
def test_any_valid_image_loads_as_rgb_of_its_size(fmt_mode: tuple[str, str], width: int, height: int,
                                                  seed: int) -> None:
    fmt, mode = fmt_mode
    buf = io.BytesIO()
    _valid_image(mode, width, height, seed).save(buf, format=fmt)
    img = load_image(buf.getvalue())
    assert img.mode == "RGB" and img.size == (width, height)


@settings(max_examples=300, **SETTINGS)
@given(name=st.text(max_size=130))
def test_any_run_name_lands_inside_the_runs_folder_or_is_refused(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        (root / "existing").mkdir()
        try:
            folder = child_folder(root, name)
        except InvalidNameError as exc:
            assert str(exc)
            return
        assert folder.parent == root and folder.resolve().parent == root.resolve()
        assert folder.name not in ("", ".", "..") and not folder.name.startswith(".")
        assert len(folder.name) <= 100 and "/" not in folder.name and "\0" not in folder.name


BROKEN_KINDS = ("good", "good", "good", "empty", "truncated", "random", "text", "pipe", "folder", "loop",
                "dangling")


def _make_file(path: Path, kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "good":
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "random":
        path.write_bytes(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "pipe":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        os.symlink(path, path)
    elif kind == "dangling":
        os.symlink(path.parent / "missing-target.png", path)


@pytest.mark.timeout(300)
@settings(max_examples=25, **SETTINGS)
@given(tree=st.dictionaries(st.sampled_from(["angry", "happy", "sad", "Neutral face"]),
                            st.lists(st.sampled_from(BROKEN_KINDS), min_size=1, max_size=6),
                            min_size=1, max_size=3),
       split=st.booleans())
def test_any_tree_with_broken_files_loads_and_the_audit_accounts_for_every_file(
        tree: dict[str, list[str]], split: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        made: dict[str, str] = {}
        for c, (cls, kinds) in enumerate(tree.items()):
            for i, kind in enumerate(kinds):
                parts = ("train" if i % 2 == 0 else "test", cls) if split else (cls,)
                folder = root.joinpath(*parts)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{kind}_{c}_{i}.png"
                _make_file(path, kind, seed=c * 100 + i)
                made[str(path)] = kind
        try:
            splits = load_dataset_spec(root)
        except DatasetError as exc:  # e.g. no class folder with a listable image, or an empty train split
            assert str(exc)
            return
        listed = {str(s.path) for v in splits.splits.values() for s in v}
        skipped = {d["file"] for d in splits.skipped}
        for path in listed:
            assert made[path] in ("good", "empty", "truncated", "random", "text")
        for path in skipped:
            assert made[path] in ("pipe", "loop", "dangling")
        report = audit_dataset(splits, workers=1)
        corrupt = {r["file"] for r in report.corrupt}
        bad_listed = {p for p in listed if made[p] != "good"}
        assert bad_listed | skipped <= corrupt
        assert not {p for p in listed if made[p] == "good"} & corrupt
