"""Every image flavour datasets throw at us decodes to 8-bit RGB; broken input raises ImageLoadError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion.images import ImageLoadError, is_image_file, load_image, load_image_array


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I;16", "I", "F"])
def test_modes_load_as_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).convert("RGB")
    if mode == "I;16":
        img = Image.fromarray((np.tile(np.arange(64, dtype=np.uint16), (64, 1)) * 1000).astype(np.uint16))
    else:
        img = base.convert(mode)
    ext = {"CMYK": ".jpg", "I;16": ".png", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    path = _save(img, tmp_path / f"img{ext}")
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (64, 64)
    arr = np.asarray(out)
    assert arr.dtype == np.uint8
    if mode not in ("1",):
        # a horizontal gradient survives the conversion (left darker than right)
        assert arr[:, :8].mean() < arr[:, -8:].mean()


def test_sixteen_bit_uses_full_range(tmp_path: Path) -> None:
    arr16 = np.full((8, 8), 65535, dtype=np.uint16)
    arr16[:, :4] = 0
    path = _save(Image.fromarray(arr16), tmp_path / "a.png")
    out = load_image_array(path)
    assert out[:, :4].max() == 0 and out[:, 4:].min() == 255


def test_rgba_transparent_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    out = load_image_array(_save(img, tmp_path / "t.png"))
    assert (out == 255).all()


def test_exif_rotation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    path = _save(img, tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)  # portrait after transpose
    arr = np.asarray(out).mean(axis=(1, 2))
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50  # white half now on top


def test_bytes_pil_and_array_inputs() -> None:
    img = Image.new("L", (5, 7), 128)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert load_image(buf.getvalue()).size == (5, 7)
    assert load_image(img).mode == "RGB"
    assert load_image(np.zeros((7, 5), dtype=np.uint8)).size == (5, 7)
    assert load_image(np.ones((7, 5, 3), dtype=np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((7, 5, 4), dtype=np.uint8)).mode == "RGB"


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"not an image at all", "not a recognised"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "unreadable|not a recognised")],
)
def test_broken_files_raise_clear_error(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=match) as info:
        load_image(path)
    assert "bad.png" in str(info.value)


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    good = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                 tmp_path / "g.jpg")
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageLoadError):
        load_image(bad)


def test_missing_file_and_bad_types(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ImageLoadError):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(ImageLoadError, match="is a folder, not an image file"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "ICO"])
def test_damaged_files_only_ever_raise_image_load_error(fmt: str) -> None:
    """Random byte flips and cuts: every failure is an ImageLoadError, and no warning leaks out."""
    import io
    import random
    import warnings

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(buf, fmt)
    data, rng, failures = buf.getvalue(), random.Random(fmt), 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(150):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            if rng.random() < 0.3:
                damaged = damaged[: rng.randrange(1, len(damaged))]
            try:
                assert load_image(bytes(damaged)).mode == "RGB"
            except ImageLoadError:
                failures += 1
    assert failures > 0  # the damage was real for at least some files


def test_is_image_file() -> None:
    assert is_image_file("a/B.JPG") and is_image_file("x.webp")
    assert not is_image_file("notes.txt") and not is_image_file(".DS_Store") and not is_image_file("._a.jpg")
