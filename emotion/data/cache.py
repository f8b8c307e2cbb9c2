"""Decoded-image cache, keyed by file content.

Decoding and resizing JPEG/PNG files dominates a CPU epoch on small face
images, so every image is decoded once: later epochs read it from memory and
later runs (or other processes) read a ``.npy`` from the disk cache.  Keys are
the SHA-256 of the file bytes plus the stored size, so a renamed or copied file
is a hit and an edited file is a miss.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
from PIL import Image

from emotion.fileio import atomic_write
from emotion.images import ImageLoadError, file_digest, load_image

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


class DecodedImageCache:
    """Memory and/or disk cache of HxWx3 uint8 arrays.

    ``size`` given to :meth:`get` resizes to ``size x size`` before storing, so
    the cache holds what training actually reads (a 48x48 FER face upscaled to
    the model's input once, not every epoch).
    """

    def __init__(
        self,
        disk_dir: Optional[Union[str, Path]] = None,
        memory: bool = True,
        max_memory_bytes: int = 4 << 30,
    ) -> None:
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.memory = memory
        self.max_memory_bytes = max_memory_bytes
        self._mem: dict[str, np.ndarray] = {}
        self._mem_bytes = 0
        self._digests: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def digest(self, path: Union[str, Path]) -> str:
        """Content hash of ``path``, remembered per (path, mtime, size)."""
        path = Path(path)
        try:
            st = path.stat()
        except OSError as exc:
            raise ImageLoadError(f"{path}: cannot read ({exc.strerror})") from None
        stamp = (str(path), st.st_mtime_ns, st.st_size)
        digest = self._digests.get(stamp)
        if digest is None:
            digest = file_digest(path)
            self._digests[stamp] = digest
        return digest

    def _disk_path(self, key: str) -> Optional[Path]:
        if self.disk_dir is None:
            return None
        return self.disk_dir / key[:2] / f"{key}.npy"

    def get(self, path: Union[str, Path], size: Optional[int] = None) -> np.ndarray:
        """The decoded RGB image at ``path`` (resized to ``size`` if given).

        Raises ``ImageLoadError`` for unreadable files; failures are not cached
        so a repaired file is picked up.
        """
        key = f"{self.digest(path)}_{size or 'orig'}"
        arr = self._mem.get(key)
        if arr is not None:
            self.hits += 1
            return arr
        disk = self._disk_path(key)
        if disk is not None and disk.exists():
            try:
                arr = np.load(disk, allow_pickle=False)
                self.hits += 1
            except (OSError, ValueError):
                logger.warning("discarding damaged cache entry %s", disk)
                disk.unlink(missing_ok=True)
                arr = None
        if arr is None:
            self.misses += 1
            img = load_image(path)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            arr = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
            if disk is not None:
                self._write_disk(disk, arr)
        self._remember(key, arr)
        return arr

    def _write_disk(self, target: Path, arr: np.ndarray) -> None:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a path
                np.save(fh, arr, allow_pickle=False)

        try:
            atomic_write(target, save)  # readers never see half a file
        except OSError as exc:
            logger.warning("could not write decoded-image cache %s (%s); continuing without it",
                           target, exc)

    def _remember(self, key: str, arr: np.ndarray) -> None:
        if not self.memory:
            return
        with self._lock:
            if key in self._mem or self._mem_bytes + arr.nbytes > self.max_memory_bytes:
                return
            arr.setflags(write=False)  # shared between epochs and workers: never mutate
            self._mem[key] = arr
            self._mem_bytes += arr.nbytes

    def warm(
        self,
        paths: Iterable[Union[str, Path]],
        size: Optional[int] = None,
        progress: Optional[ProgressFn] = None,
    ) -> dict[str, str]:
        """Decode every path once; returns ``{path: error}`` for the unreadable ones."""
        paths = list(paths)
        failed: dict[str, str] = {}
        for i, p in enumerate(paths, 1):
            try:
                self.get(p, size)
            except ImageLoadError as exc:
                failed[str(p)] = str(exc)
            if progress is not None:
                progress(i, len(paths))
        return failed

    def __len__(self) -> int:
        return len(self._mem)
