"""Robust image decoding: every input becomes an 8-bit RGB ``PIL.Image``.

Face datasets mix grayscale (FER2013), RGBA and palette PNGs, CMYK JPEGs,
16-bit TIFFs and phone photos whose pixels are stored sideways with an EXIF
orientation tag.  Models want one thing, so this module is the single place
where that conversion happens.  Unreadable input raises ``ImageLoadError``
(never a bare PIL exception) so callers can skip and report it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Refuse absurd images before decoding them into memory (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000

ImageInput = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray]


class ImageLoadError(ValueError):
    """An input could not be decoded as an image; the message names it and why."""


def is_image_file(path: Union[str, Path]) -> bool:
    """True when ``path`` has an image extension and is not a hidden/metadata file."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def regular_file_problem(path: Union[str, Path]) -> Optional[str]:
    """Why ``path`` cannot be read as a file's bytes (None when it is a regular file).

    Opening a named pipe blocks forever and a device never ends, so every
    reader checks this first; symbolic links are followed, and a loop or a
    dangling link is named as such rather than reported as "no such file".
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symbolic link (not a regular file)" if os.path.islink(path) else "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (not a regular file)"
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(st.st_mode)), "a special file")
    return f"not a regular file ({kind})"


def _pixel_limit_message(name: str, exc: BaseException) -> str:
    """Pillow's "could be decompression bomb DOS attack" said as what to do about it."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(found.group(1)):,} pixels)" if found else ""
    return (f"{name}: the image{size} is larger than the {MAX_IMAGE_PIXELS:,}-pixel limit; "
            "downscale it first (for example to 4000 pixels on its longer side)")


def _describe(source: ImageInput) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    return f"<{type(source).__name__}>"


def _high_bit_depth_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float images to 8 bits using their real range."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return img
    arr = arr.astype(np.float64)
    if img.mode.startswith("I;16") or (arr.max(initial=0) > 255 and arr.max() <= 65535 and img.mode != "F"):
        arr = arr / 257.0  # full 16-bit range onto 0..255
    elif img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    arr = np.nan_to_num(np.clip(arr, 0, 255))
    return Image.fromarray(arr.round().astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on white, EXIF rotation applied."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF blocks must not lose the pixels
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_bit_depth_to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def _array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageLoadError(
            f"array of shape {arr.shape} is not an image: expected HxW, HxWx3 or HxWx4"
        )
    if arr.size == 0:
        raise ImageLoadError("array image is empty (zero pixels)")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            scale = 255.0 if np.nanmax(arr) <= 1.0 else 1.0
            arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr / 257.0).round().astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(source: ImageInput) -> Image.Image:
    """Decode a path, encoded bytes, PIL image or numpy array into an RGB PIL image.

    Raises ``ImageLoadError`` naming the input when it is missing, truncated,
    not an image, empty or unreasonably large.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return to_rgb(_array_to_image(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("empty upload: 0 bytes")
        fp: Union[io.BytesIO, Path] = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        fp = Path(source)
        if fp.is_dir():
            raise ImageLoadError(f"{fp}: is a folder, not an image file")
        problem = regular_file_problem(fp)
        if problem is not None:
            raise ImageLoadError(f"{fp}: {problem}")
        if fp.stat().st_size == 0:
            raise ImageLoadError(f"{fp}: empty file (0 bytes)")
    else:
        raise ImageLoadError(f"cannot read an image from {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # damaged metadata: the pixels decide
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ImageLoadError(
                        f"{_describe(source)}: {img.width}x{img.height} is larger than the "
                        f"{MAX_IMAGE_PIXELS:,}-pixel limit; downscale it first"
                    )
                if img.width == 0 or img.height == 0:
                    raise ImageLoadError(f"{_describe(source)}: image has zero size")
                img.load()
                return to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{_describe(source)}: not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(_pixel_limit_message(_describe(source), exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"{_describe(source)}: unreadable image ({exc})") from None
    except Exception as exc:  # a decoder plugin failing in its own way on a damaged file
        raise ImageLoadError(f"{_describe(source)}: unreadable image ({type(exc).__name__}: {exc})") from None


def load_image_array(source: ImageInput) -> np.ndarray:
    """``load_image`` as an HxWx3 uint8 array."""
    return np.asarray(load_image(source), dtype=np.uint8)


def image_header(path: Union[str, Path]) -> tuple[str, Optional[str], int, int]:
    """(mode, format, width, height) from the file's header, without decoding the pixels.

    Raises ``ImageLoadError`` for anything that is not a readable image header
    (non-regular files, decompression bombs and decoder failures included), so
    no header read can stop a dataset scan or lose a trained model.
    """
    problem = regular_file_problem(path)
    if problem is not None:
        raise ImageLoadError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.mode, img.format, int(img.width), int(img.height)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(_pixel_limit_message(str(path), exc)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not a recognised image format") from None
    except Exception as exc:  # noqa: BLE001 - plugins raise odd types on malformed headers
        raise ImageLoadError(f"{path}: unreadable image header ({type(exc).__name__}: {exc})") from None


def file_digest(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes: the content key for caches and exact duplicates.

    Raises ``OSError`` (with the reason as ``strerror``) for a named pipe,
    device or symbolic-link loop instead of blocking on it.
    """
    problem = regular_file_problem(path)
    if problem is not None:
        raise OSError(errno.EINVAL, problem, str(path))
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
