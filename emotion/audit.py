"""Data audit: find what would silently corrupt training or inflate test scores.

Face-expression datasets scraped from the web (FER2013 above all) contain
unreadable files, blank frames, the same face saved several times, copies of
test images inside the training split and copies that carry different labels.
None of that makes training crash; it makes the numbers wrong.  The audit
decodes every image exactly once (``emotion.images.load_image``) and checks:

* **corrupt**: the file cannot be decoded (0-byte, truncated, not an image);
* **blank**: the largest per-channel pixel standard deviation is below
  ``blank_std`` (0..255 scale); fully constant images are marked as such;
* **exact duplicates**: identical *decoded pixels* (SHA-256 of the RGB array),
  so a PNG re-saved as another PNG or a lossless re-encode still counts; the
  file-byte SHA-256 tells byte-identical copies apart from re-encoded ones;
* **near duplicates**: 64-bit DCT perceptual hashes (pHash) within
  ``near_distance`` bits, found with multi-index hashing instead of an O(n^2)
  Python loop; pairs that are already exact duplicates and blank images
  (whose hash is noise) are left out;
* **leakage**: exact and near duplicates whose members sit in different splits;
* **label conflicts**: exact or near duplicate groups whose members carry
  different class labels.

Copies of a blank image stay in ``duplicates`` (marked ``blank``) but are not
counted as leakage or label conflicts: they are already flagged as blank.

Every finding names the files involved so the app can show them and build an
exclusion list (:func:`emotion.data.sources.save_exclusions`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import imagehash
import numpy as np
from PIL import Image, ImageStat

from emotion.data.sources import DatasetSplits, load_dataset_spec
from emotion.images import ImageLoadError, file_digest, image_header, load_image

logger = logging.getLogger(__name__)

HASH_NAME = "phash-dct-64"
PHASH_SIZE = 32  # grayscale thumbnail side the DCT is taken over
PHASH_LOW = 8  # 8x8 lowest frequencies -> 64 bits
PARALLEL_MIN_IMAGES = 1000  # below this a process pool costs more than it saves
MIH_MIN_BAND_BITS = 10  # narrower bands make buckets too full: use brute force instead
BRUTE_FORCE_BLOCK = 1 << 22  # hash comparisons per numpy block in the brute-force search
TABLE_LIMIT = 10  # files listed per section in the table (the JSON lists all)

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class ImageRecord:
    """What one decode of one file tells the audit."""

    path: str
    split: str
    label: str
    error: Optional[str] = None
    mode: Optional[str] = None
    format: Optional[str] = None
    width: int = 0
    height: int = 0
    byte_sha: Optional[str] = None
    pixel_sha: Optional[str] = None
    mean: float = 0.0
    std: float = 0.0
    constant: bool = False
    phash: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def phash64(img: Image.Image) -> int:
    """64-bit DCT perceptual hash (``imagehash.phash``) as an integer, for XOR-and-popcount distances.

    Grayscale, resize to 32x32, 2-D DCT-II, keep the 8x8 lowest frequencies and
    set a bit where a coefficient is above their median.  Brightness, contrast,
    mild blur, JPEG re-compression and resizing move few bits.
    """
    return int(str(imagehash.phash(img, hash_size=PHASH_LOW, highfreq_factor=PHASH_SIZE // PHASH_LOW)), 16)


def _scan_file(path: str) -> tuple:
    """Decode one file once and return everything the audit needs, as a small picklable tuple.

    Top-level so that pool workers can run it.  Any decoding failure becomes
    an error string: an audit reports unreadable files, it does not stop at them.
    """
    try:
        byte_sha = file_digest(path)
    except OSError as exc:
        return (f"{path}: cannot read file ({exc.strerror or exc})",)
    try:
        img = load_image(path)
    except ImageLoadError as exc:
        return (str(exc), byte_sha)
    except Exception as exc:  # noqa: BLE001 - PIL plugins raise odd types on malformed files
        return (f"{path}: unreadable image ({type(exc).__name__}: {exc})", byte_sha)
    mode, fmt = None, None
    try:  # header only: the original mode before RGB conversion
        mode, fmt, _, _ = image_header(path)
    except ImageLoadError:  # it decoded above; the header is only informative
        logger.debug("could not re-read header of %s", path, exc_info=True)
    pixel_sha = hashlib.sha256(f"{img.width}x{img.height}:".encode() + img.tobytes()).hexdigest()
    stat = ImageStat.Stat(img)  # per-channel, from the histogram: cheap for small images
    std = float(max(stat.var)) ** 0.5 if max(stat.var) > 0 else 0.0  # var can round below 0
    constant = all(lo == hi for lo, hi in stat.extrema)
    mean = float(sum(stat.mean) / len(stat.mean))
    return (None, byte_sha, mode, fmt, img.width, img.height, pixel_sha, mean, std, constant,
            phash64(img))


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` from a single-threaded process (fast, no re-import of ``__main__``);
    otherwise ``forkserver``/``spawn``, because forking a threaded host such as the
    Streamlit app can deadlock."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _scan_all(paths: Sequence[str], workers: int, progress: Optional[ProgressFn]) -> list[tuple]:
    """Scan every file, in a process pool when it pays off; results keep the input order."""
    total = len(paths)
    results: list[tuple] = []

    def _tick() -> None:
        if progress is not None:
            progress(len(results), total)

    if workers > 1 and total >= PARALLEL_MIN_IMAGES:
        chunksize = max(1, min(256, total // (workers * 8)))
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                for res in pool.map(_scan_file, paths, chunksize=chunksize):
                    results.append(res)
                    _tick()
            return results
        except (OSError, BrokenProcessPool) as exc:
            logger.warning("process pool failed (%s); scanning in this process instead", exc)
            results = []
    for p in paths:
        results.append(_scan_file(p))
        _tick()
    return results


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# ------------------------------------------------------------------ near-duplicate search


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (``np.bitwise_count`` on numpy 2, a byte table before)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1)


def _pairs_brute_force(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j) within ``max_distance``: vectorised XOR+popcount in row blocks."""
    n = len(hashes)
    out = []
    rows = max(1, BRUTE_FORCE_BLOCK // max(n, 1))
    for start in range(0, n, rows):
        block = hashes[start:start + rows]
        dist = _popcount64(block[:, None] ^ hashes[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
        out.append(np.stack([ii, jj, dist[ii - start, jj]], axis=1))
    return _sorted_pairs(np.concatenate(out) if out else np.empty((0, 3), np.int64))


def _band_layout(n_bands: int) -> list[tuple[int, int]]:
    """(shift, width) of ``n_bands`` contiguous bands covering 64 bits, widths differing by <= 1."""
    base, extra = divmod(64, n_bands)
    layout, shift = [], 0
    for b in range(n_bands):
        width = base + (1 if b < extra else 0)
        layout.append((shift, width))
        shift += width
    return layout


def _pairs_multi_index(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs within ``max_distance`` by multi-index hashing.

    The 64 bits are cut into ``max_distance + 1`` bands; by pigeonhole two hashes
    that differ in at most ``max_distance`` bits agree exactly on at least one
    band.  Per band the hashes are sorted by band value, so candidates are
    neighbours in runs of equal keys; they are verified with a popcount.  Work
    grows with the number of candidates, not with n^2.
    """
    n = len(hashes)
    found = []
    for shift, width in _band_layout(max_distance + 1):
        mask = np.uint64((1 << width) - 1)
        keys = (hashes >> np.uint64(shift)) & mask
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        # end (exclusive) of the run of equal keys each sorted position belongs to
        change = np.flatnonzero(sk[1:] != sk[:-1]) + 1
        bounds = np.concatenate([change, [n]])
        run_end = np.repeat(bounds, np.diff(np.concatenate([[0], bounds])))
        active = np.flatnonzero(run_end - np.arange(n) > 1)
        offset = 1
        while active.size:
            a, b = order[active], order[active + offset]
            dist = _popcount64(hashes[a] ^ hashes[b])
            hit = dist <= max_distance
            if hit.any():
                lo, hi = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
                found.append(np.stack([lo, hi, dist[hit]], axis=1))
            offset += 1
            active = active[run_end[active] - active > offset]
    if not found:
        return np.empty((0, 3), np.int64)
    pairs = np.concatenate(found)
    _, first = np.unique(pairs[:, 0] * n + pairs[:, 1], return_index=True)
    return _sorted_pairs(pairs[first])


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    pairs = pairs.astype(np.int64).reshape(-1, 3)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def find_near_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs ``(i, j, distance)`` with i < j whose 64-bit hashes differ in <= ``max_distance`` bits.

    Multi-index hashing when the bands stay wide enough to be selective,
    otherwise (large distances, or few hashes) a blocked numpy brute force.
    """
    h = np.asarray([int(x) for x in hashes] if not isinstance(hashes, np.ndarray) else hashes,
                   dtype=np.uint64)
    if max_distance < 0 or len(h) < 2:
        return np.empty((0, 3), np.int64)
    if len(h) <= 2048 or 64 // (max_distance + 1) < MIH_MIN_BAND_BITS:
        return _pairs_brute_force(h, max_distance)
    return _pairs_multi_index(h, max_distance)


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (of size >= 2) of the graph on n nodes given by ``pairs``."""
    if len(pairs) == 0:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = defaultdict(list)
    for node in np.unique(pairs[:, :2]):
        groups[int(labels[node])].append(int(node))
    return [sorted(g) for g in groups.values() if len(g) > 1]


# ----------------------------------------------------------------------------- report


@dataclass
class AuditReport:
    """Everything the audit found; ``to_dict()`` is the ``--json`` output."""

    dataset: dict[str, Any]
    settings: dict[str, Any]
    counts: dict[str, dict[str, int]]
    sizes: dict[str, dict[str, int]]
    modes: dict[str, dict[str, int]]
    corrupt: list[dict[str, Any]]
    blank: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    near_duplicates: list[dict[str, Any]]
    leakage: list[dict[str, Any]]
    label_conflicts: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time; kept out of to_dict() so the JSON is reproducible

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with sorted keys and lists: two runs on the same data are identical."""
        return json.loads(json.dumps({
            "dataset": self.dataset,
            "settings": self.settings,
            "summary": self.summary,
            "counts": self.counts,
            "sizes": self.sizes,
            "modes": self.modes,
            "corrupt": self.corrupt,
            "blank": self.blank,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "leakage": self.leakage,
            "label_conflicts": self.label_conflicts,
        }, sort_keys=True))

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def flagged_files(self) -> dict[str, list[str]]:
        """Every file named by each check (for the app's "show me" lists)."""
        return {
            "corrupt": sorted(r["file"] for r in self.corrupt),
            "blank": sorted(r["file"] for r in self.blank),
            "duplicates": sorted({f for g in self.duplicates for f in g["files"]}),
            "near_duplicates": sorted({f for g in self.near_duplicates for f in g["files"]}),
            "leakage": sorted({f for p in self.leakage for f in p["files"]}),
            "label_conflicts": sorted({f for g in self.label_conflicts for f in g["files"]}),
        }

    def exclusion_candidates(
        self, kinds: Iterable[str] = ("corrupt", "blank", "duplicates", "leakage", "label_conflicts"),
    ) -> list[str]:
        """Files to leave out of training under a conservative policy, per kind of finding.

        corrupt/blank: all of them.  duplicates/near_duplicates: all but one copy
        per group (an eval-split copy is kept, so leaks are removed from train).
        leakage: the train-side files.  label_conflicts: every member, since the
        right label is unknown.  Files are only listed, never touched.
        """
        kinds = set(kinds)
        unknown = kinds - set(self.flagged_files())
        if unknown:
            raise ValueError(f"unknown finding kind(s) {sorted(unknown)}")
        drop: set[str] = set()
        if "corrupt" in kinds:
            drop.update(r["file"] for r in self.corrupt)
        if "blank" in kinds:
            drop.update(r["file"] for r in self.blank)
        for kind in ("duplicates", "near_duplicates"):
            if kind in kinds:
                for g in getattr(self, kind):
                    members = list(zip(g["files"], g["splits"]))
                    keep = next((f for f, s in members if s != "train"), members[0][0])
                    drop.update(f for f, _ in members if f != keep)
        if "leakage" in kinds:
            for p in self.leakage:
                drop.update(f for f, s in zip(p["files"], p["splits"]) if s == "train")
        if "label_conflicts" in kinds:
            drop.update(f for g in self.label_conflicts for f in g["files"])
        return sorted(drop)

    # -------------------------------------------------------------------- table output

    def format_table(self, limit: int = TABLE_LIMIT) -> str:
        """Human-readable report: summary tables first, then up to ``limit`` files per finding."""
        lines: list[str] = []
        ds, st, sm = self.dataset, self.settings, self.summary
        lines.append(f"Data audit: {ds['name']} ({ds['source']}) at {ds.get('root')}")
        lines.append(f"classes: {', '.join(ds['classes'])}")
        lines.append(
            f"checks: blank = pixel std < {st['blank_std']:g}; near duplicate = {st['hash']} "
            f"Hamming distance <= {st['near_distance']}; {sm['images']} images in {self.seconds:.1f} s"
        )
        splits = list(self.counts)
        classes = list(ds["classes"])

        lines.append("")
        lines.append("Images per class")
        rows = [[s] + [str(self.counts[s].get(c, 0)) for c in classes]
                + [str(sum(self.counts[s].values()))] for s in splits]
        lines.extend(_grid(["split"] + classes + ["total"], rows))

        lines.append("")
        lines.append("Sizes and modes")
        rows = [[s, _top(self.sizes.get(s, {})), _top(self.modes.get(s, {}))] for s in splits]
        lines.extend(_grid(["split", "sizes (WxH: n)", "modes (original: n)"], rows))

        lines.append("")
        lines.append("Findings")
        per = sm["per_split"]
        checks = [
            ("corrupt files", "corrupt"),
            ("blank images", "blank"),
            ("  of which constant", "constant"),
            ("exact duplicate groups", "duplicate_groups"),
            ("  redundant copies", "duplicate_extra_files"),
            ("near-duplicate pairs", "near_duplicate_pairs"),
        ]
        rows = [[label] + [str(per[s][key]) for s in splits] for label, key in checks]
        lines.extend(_grid(["check (within split)"] + splits, rows))
        lk = sm["leakage"]
        lines.append(
            f"leakage across splits: {lk['exact_pairs']} exact pair(s), {lk['near_pairs']} near "
            f"pair(s); {lk['eval_files_exact']} exact / {lk['eval_files_any']} exact-or-near "
            f"held-out file(s) have a copy in train"
        )
        lc = sm["label_conflicts"]
        lines.append(f"label conflicts: {lc['exact']} exact group(s), {lc['near']} near group(s)")

        def _section(title: str, items: list, render: Callable[[Any], str]) -> None:
            if not items:
                return
            lines.append("")
            lines.append(f"{title} ({len(items)})")
            for it in items[:limit]:
                lines.append("  " + render(it))
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more (use --json for the full list)")

        rel = self._relative
        _section("Corrupt", self.corrupt, lambda r: f"{rel(r['file'])}: {r['error']}")
        _section("Blank", self.blank, lambda r: (
            f"{rel(r['file'])}  std={r['std']:.2f} mean={r['mean']:.1f}"
            + (" (constant)" if r["constant"] else "")))
        _section("Exact duplicates", self.duplicates, lambda g: (
            " = ".join(f"{rel(f)} [{lab}]" for f, lab in zip(g["files"], g["labels"]))
            + ("" if g["byte_identical"] else "  (re-encoded)")))
        _section("Near duplicates", self.near_duplicates, lambda g: (
            " ~ ".join(f"{rel(f)} [{lab}]" for f, lab in zip(g["files"], g["labels"]))
            + f"  (max distance {g['max_distance']})"))
        _section("Leakage", self.leakage, lambda p: (
            f"{p['kind']:5s} d={p['distance']}  " + "  <->  ".join(
                f"{rel(f)} [{lab}]" for f, lab in zip(p["files"], p["labels"]))))
        _section("Label conflicts", self.label_conflicts, lambda g: (
            f"{g['kind']:5s} " + ", ".join(f"{rel(f)} [{lab}]" for f, lab in zip(g["files"], g["labels"]))))
        if not any([self.corrupt, self.blank, self.duplicates, self.near_duplicates,
                    self.leakage, self.label_conflicts]):
            lines.append("")
            lines.append("No problems found.")
        return "\n".join(lines)

    def _relative(self, path: str) -> str:
        root = self.dataset.get("root")
        if root:
            try:
                return str(Path(path).relative_to(root))
            except ValueError:
                pass
        return path


def _top(counter: dict[str, int], k: int = 3) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{key}: {n}" for key, n in items[:k])
    return text + (f", +{len(items) - k} more" if len(items) > k else "") if items else "-"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain-text table: numeric columns right-aligned, text columns left-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    numeric = [all(str(r[i]).isdigit() for r in rows) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(str(x).rjust(w) if num else str(x).ljust(w)
                         for x, w, num in zip(row, widths, numeric)).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


# ------------------------------------------------------------------------------ audit


def _split_order(split: str) -> tuple[int, str]:
    """Train first, so pairs read "train file <-> test file"."""
    return (0 if split == "train" else 1, split)


def audit_dataset(
    splits: DatasetSplits,
    blank_std: float = 5.0,
    near_distance: int = 4,
    progress: Optional[ProgressFn] = None,
    workers: Optional[int] = None,
) -> AuditReport:
    """Decode every image of every split once and report what would mislead training.

    ``progress(done, total)`` is called after each image.  ``workers`` > 1 uses a
    process pool for large datasets (default: CPU count, capped at 8).
    """
    if near_distance > 32:
        raise ValueError(f"near_distance {near_distance} is meaningless for 64-bit hashes (max 32)")
    t0 = time.perf_counter()
    items = [(str(s.path), split, splits.classes[s.label])
             for split, samples in splits.splits.items() for s in samples]
    workers = _default_workers() if workers is None else max(1, int(workers))
    logger.info("auditing %d images in %d split(s) with %d worker(s)", len(items),
                len(splits.splits), workers if len(items) >= PARALLEL_MIN_IMAGES else 1)
    raw = _scan_all([p for p, _, _ in items], workers, progress)
    records = [_make_record(p, sp, lab, res) for (p, sp, lab), res in zip(items, raw)]
    t_scan = time.perf_counter() - t0

    ok = [r for r in records if r.ok]
    split_names = list(splits.splits)

    # files that are no regular file (pipes, devices, link loops) were never opened: corrupt too
    unopened = [{"file": d["file"], "split": d["split"], "label": d["class"], "error": d["error"]}
                for d in splits.skipped]
    corrupt = sorted([*({"file": r.path, "split": r.split, "label": r.label, "error": r.error}
                        for r in records if not r.ok), *unopened], key=lambda d: d["file"])
    blank_recs = [r for r in ok if r.std < blank_std]
    blank = sorted(({"file": r.path, "split": r.split, "label": r.label, "std": round(r.std, 3),
                     "mean": round(r.mean, 2), "constant": r.constant} for r in blank_recs),
                   key=lambda d: d["file"])
    blank_paths = {r.path for r in blank_recs}

    sizes: dict[str, Counter] = {s: Counter() for s in split_names}
    modes: dict[str, Counter] = {s: Counter() for s in split_names}
    for r in ok:
        sizes[r.split][f"{r.width}x{r.height}"] += 1
        modes[r.split][r.mode or "?"] += 1

    # exact duplicates: identical decoded pixels
    by_pixels: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in ok:
        by_pixels[r.pixel_sha].append(r)
    for group in by_pixels.values():
        group.sort(key=lambda r: (_split_order(r.split), r.path))
    duplicates = [_group_entry(g, blank_paths) for g in by_pixels.values() if len(g) > 1]
    duplicates.sort(key=lambda g: g["files"][0])

    # near duplicates: one representative per distinct pixel content, blank images left out
    reps = sorted((g for g in by_pixels.values() if g[0].path not in blank_paths),
                  key=lambda g: g[0].path)
    t1 = time.perf_counter()
    pairs = find_near_pairs(np.array([g[0].phash for g in reps], dtype=np.uint64), near_distance)
    t_near = time.perf_counter() - t1
    near_duplicates = []
    pair_by_node: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for i, j, d in pairs.tolist():
        pair_by_node[i].append((i, j, d))
    for comp in _components(len(reps), pairs):
        members = sorted((r for node in comp for r in reps[node]),
                         key=lambda r: (_split_order(r.split), r.path))
        comp_pairs = sorted(
            [reps[i][0].path, reps[j][0].path, d] for node in comp for i, j, d in pair_by_node[node])
        entry = _group_entry(members, blank_paths)
        entry.pop("byte_identical")
        entry.pop("blank")  # blank images never enter the near search
        entry["max_distance"] = max(p[2] for p in comp_pairs)
        entry["pairs"] = comp_pairs
        entry["distinct_images"] = len(comp)
        near_duplicates.append(entry)
    near_duplicates.sort(key=lambda g: g["files"][0])

    # leakage: duplicates whose members sit in different splits, as file pairs.  Copies of a
    # blank image are reported as blank (and in `duplicates`), not as leaks or label conflicts:
    # an empty frame carries no face to leak and no expression to disagree about.
    leakage = []
    for g in by_pixels.values():
        if g[0].path in blank_paths:
            continue
        for a, b in combinations(g, 2):
            if a.split != b.split:
                leakage.append(_pair_entry("exact", 0, a, b))
    for i, j, d in pairs.tolist():
        for a in reps[i]:
            for b in reps[j]:
                if a.split != b.split:
                    leakage.append(_pair_entry("near", d, a, b))
    leakage.sort(key=lambda p: (p["kind"], p["files"]))

    label_conflicts = []
    for g in duplicates:
        if g["label_conflict"] and not g["blank"]:
            label_conflicts.append({"kind": "exact", "files": g["files"], "splits": g["splits"],
                                    "labels": g["labels"]})
    for g in near_duplicates:
        # distinct images of one near group disagree (exact conflicts are also listed above)
        if g["label_conflict"]:
            label_conflicts.append({"kind": "near", "files": g["files"], "splits": g["splits"],
                                    "labels": g["labels"]})
    label_conflicts.sort(key=lambda g: (g["kind"], g["files"]))

    summary = _summarise(records, split_names, blank, duplicates, near_duplicates, pairs, reps,
                         leakage, label_conflicts)
    seconds = time.perf_counter() - t0
    logger.info("audit done in %.1f s (decode %.1f s, near-duplicate search %.2f s)",
                seconds, t_scan, t_near)

    return AuditReport(
        dataset={"name": splits.name, "source": splits.source,
                 "root": str(splits.root) if splits.root else None,
                 "classes": list(splits.classes), "notes": list(splits.notes)},
        settings={"blank_std": blank_std, "near_distance": near_distance, "hash": HASH_NAME,
                  "exact_key": "sha256 of decoded RGB pixels"},
        counts=splits.counts(),
        sizes={s: dict(sorted(c.items())) for s, c in sizes.items()},
        modes={s: dict(sorted(c.items())) for s, c in modes.items()},
        corrupt=corrupt,
        blank=blank,
        duplicates=duplicates,
        near_duplicates=near_duplicates,
        leakage=leakage,
        label_conflicts=label_conflicts,
        summary=summary,
        seconds=round(seconds, 2),
    )


def _make_record(path: str, split: str, label: str, res: tuple) -> ImageRecord:
    if res[0] is not None:
        return ImageRecord(path, split, label, error=res[0],
                           byte_sha=res[1] if len(res) > 1 else None)
    _, byte_sha, mode, fmt, w, h, pixel_sha, mean, std, constant, ph = res
    return ImageRecord(path, split, label, None, mode, fmt, w, h, byte_sha, pixel_sha, mean, std,
                       constant, ph)


def _group_entry(group: Sequence[ImageRecord], blank_paths: set[str]) -> dict[str, Any]:
    labels = [r.label for r in group]
    splits = [r.split for r in group]
    return {
        "files": [r.path for r in group],
        "splits": splits,
        "labels": labels,
        "byte_identical": len({r.byte_sha for r in group}) == 1,
        "cross_split": len(set(splits)) > 1,
        "label_conflict": len(set(labels)) > 1,
        "blank": any(r.path in blank_paths for r in group),
    }


def _pair_entry(kind: str, distance: int, a: ImageRecord, b: ImageRecord) -> dict[str, Any]:
    a, b = sorted((a, b), key=lambda r: (_split_order(r.split), r.path))
    return {"kind": kind, "distance": int(distance), "files": [a.path, b.path],
            "splits": [a.split, b.split], "labels": [a.label, b.label],
            "same_label": a.label == b.label}


def _summarise(records, split_names, blank, duplicates, near_duplicates, pairs, reps, leakage,
               label_conflicts) -> dict[str, Any]:
    """Headline numbers per split and overall (what the table and the docs quote)."""
    per: dict[str, dict[str, int]] = {}
    for s in split_names:
        recs = [r for r in records if r.split == s]
        groups = [[f for f, sp in zip(g["files"], g["splits"]) if sp == s] for g in duplicates]
        groups = [g for g in groups if len(g) > 1]
        near_pairs = 0
        for i, j, _ in pairs.tolist():
            near_pairs += sum(1 for a in reps[i] for b in reps[j] if a.split == b.split == s)
        per[s] = {
            "images": len(recs),
            "decoded": sum(r.ok for r in recs),
            "corrupt": sum(not r.ok for r in recs),
            "blank": sum(b["split"] == s for b in blank),
            "constant": sum(b["split"] == s and b["constant"] for b in blank),
            "duplicate_groups": len(groups),
            "duplicate_extra_files": sum(len(g) - 1 for g in groups),
            "near_duplicate_pairs": near_pairs,
        }
    eval_exact = {f for p in leakage if p["kind"] == "exact"
                  for f, s in zip(p["files"], p["splits"]) if s != "train"}
    eval_any = {f for p in leakage for f, s in zip(p["files"], p["splits"]) if s != "train"}
    return {
        "images": len(records),
        "per_split": per,
        "corrupt": sum(not r.ok for r in records),
        "blank": len(blank),
        "constant": sum(b["constant"] for b in blank),
        "duplicate_groups": len(duplicates),
        "duplicate_files": sum(len(g["files"]) for g in duplicates),
        "blank_duplicate_groups": sum(g["blank"] for g in duplicates),
        "near_duplicate_groups": len(near_duplicates),
        "near_duplicate_image_pairs": len(pairs),
        "leakage": {
            "exact_pairs": sum(p["kind"] == "exact" for p in leakage),
            "near_pairs": sum(p["kind"] == "near" for p in leakage),
            "eval_files_exact": len(eval_exact),
            "eval_files_any": len(eval_any),
        },
        "label_conflicts": {
            "exact": sum(g["kind"] == "exact" for g in label_conflicts),
            "near": sum(g["kind"] == "near" for g in label_conflicts),
        },
    }


# ------------------------------------------------------------------------------- CLI


def run_audit_command(args: argparse.Namespace) -> int:
    """``python -m emotion audit``: print the table (or JSON); problems found still exit 0."""
    ds = load_dataset_spec(args.data, classes=args.classes, seed=getattr(args, "seed", 0))
    total = sum(len(v) for v in ds.splits.values())
    bar = None
    progress: Optional[ProgressFn] = None
    if not getattr(args, "no_progress", False):
        from tqdm import tqdm

        bar = tqdm(total=total, desc="audit", unit="img", file=sys.stderr, leave=False)

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

    try:
        report = audit_dataset(ds, blank_std=getattr(args, "blank_std", 5.0),
                               near_distance=getattr(args, "near_distance", 4),
                               progress=progress, workers=getattr(args, "workers", None))
    finally:
        if bar is not None:
            bar.close()
    if getattr(args, "json", False):
        print(report.to_json())
    else:
        print(report.format_table())
    return 0
