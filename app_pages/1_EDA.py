"""EDA page: class balance, sample images, mean faces, image sizes and modes, and the data audit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from emotion import eda, paths
from emotion.audit import audit_dataset
from emotion.data.sources import DatasetSplits, load_exclusions, save_exclusions
from emotion.fileio import unused_path, utc_stamp
from ui.charts import counts_figure
from ui.state import dataset_key, dataset_sidebar

st.set_page_config(page_title="EDA · Emotion Studio", page_icon="🔎", layout="wide")
st.title("Explore the data")
st.caption("What the active dataset holds, what its faces look like, and what silently misleads training or "
           "inflates test scores. Nothing is moved or deleted.")

dataset = dataset_sidebar()
if dataset is None:
    st.info("Choose a dataset in the sidebar.")
    st.stop()
KEY = dataset_key(dataset)
SPLITS = list(dataset.splits)


@st.cache_data(show_spinner="Averaging faces…", max_entries=16)
def _mean_faces(key: str, _ds: DatasetSplits, split: str, size: int, per_class: int) -> list[eda.MeanFace]:
    return eda.mean_faces(_ds, split, size=size, per_class=per_class)


@st.cache_data(show_spinner="Averaging batches…", max_entries=16)
def _batch_faces(key: str, _ds: DatasetSplits, split: str, batch: int, batches: int, shuffle: bool,
                 size: int) -> list[eda.MeanFace]:
    return eda.batch_mean_faces(_ds, split, batch_size=batch, batches=batches, shuffle=shuffle, size=size)


@st.cache_data(show_spinner="Reading image headers…", max_entries=8)
def _properties(key: str, _ds: DatasetSplits, max_images: int) -> pd.DataFrame:
    return pd.DataFrame(eda.image_properties(_ds, max_images=max_images))


tab_dist, tab_samples, tab_mean, tab_props, tab_audit = st.tabs(
    ["Class distribution", "Samples", "Mean faces", "Sizes and modes", "Audit"])

# ----------------------------------------------------------------------------- distribution
with tab_dist:
    counts = dataset.counts()
    table = pd.DataFrame(counts).rename_axis("class")
    table["total"] = table.sum(axis=1)
    left, right = st.columns([1, 2])
    left.dataframe(table, width="stretch")
    train = counts.get("train", {})
    if train and min(train.values()) > 0:
        ratio = max(train.values()) / min(train.values())
        left.metric("Imbalance (largest / smallest train class)", f"{ratio:.2f}×")
    right.plotly_chart(counts_figure(counts), width="stretch")
    for note in dataset.notes:
        st.caption(f"ℹ️ {note}")

# ----------------------------------------------------------------------------- samples
with tab_samples:
    c1, c2, c3 = st.columns([1, 1, 1])
    split = c1.selectbox("Split", SPLITS, key="eda_sample_split")
    per_class = c2.slider("Images per class", 4, 24, 8, 4, key="eda_per_class")
    st.session_state.setdefault("eda_seed", 0)
    if c3.button("Show other images", key="eda_shuffle"):
        st.session_state["eda_seed"] += 1
    grid = eda.sample_grid(dataset, split, per_class, seed=st.session_state["eda_seed"])
    for name, files in grid.items():
        st.markdown(f"**{name}** · {len(files)} shown")
        if files:
            st.image([str(f) for f in files], width=96, caption=[f.name for f in files])

# ----------------------------------------------------------------------------- mean faces
with tab_mean:
    c1, c2, c3 = st.columns(3)
    split = c1.selectbox("Split", SPLITS, key="eda_mean_split")
    cap = c2.select_slider("Images per class (at most)", [50, 100, 300, 1000, 3000], 300, key="eda_mean_cap")
    size = c3.select_slider("Resolution", [32, 48, 64, 96], 64, key="eda_mean_size")
    faces = _mean_faces(KEY, dataset, split, size, cap)
    st.markdown("**Per class** — sharp features mean aligned crops; a class with a different overall "
                "brightness or colour hints at a shortcut a model could learn instead of the expression.")
    cols = st.columns(max(1, len(faces)))
    for col, face in zip(cols, faces):
        col.image(face.image, caption=f"{face.label} ({face.count} images)", width="stretch")
    st.markdown("**Per batch** — in file order, a batch unlike its neighbours reveals a sub-collection "
                "(another source or crop style); shuffled, what one training batch averages to.")
    c1, c2, c3 = st.columns(3)
    batch = c1.select_slider("Batch size", [16, 32, 64, 128, 256], 64, key="eda_batch")
    batches = c2.slider("Batches", 2, 16, 8, key="eda_batches")
    shuffle = c3.toggle("Shuffle first", False, key="eda_batch_shuffle")
    bfaces = _batch_faces(KEY, dataset, split, batch, batches, shuffle, size)
    cols = st.columns(max(1, min(8, len(bfaces))))
    for i, face in enumerate(bfaces):
        cols[i % len(cols)].image(face.image, caption=face.label, width="stretch")

# ----------------------------------------------------------------------------- sizes and modes
with tab_props:
    limit = st.select_slider("Images to inspect (random subset)", [1000, 5000, 20000, 100000], 5000,
                             key="eda_props_limit")
    props = _properties(KEY, dataset, limit)
    summary = eda.summarize_properties(props.to_dict("records"))
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Images inspected", summary["images"])
    m2.metric("Distinct sizes", len(summary["sizes"]))
    m3.metric("Median size", f"{summary['median_width'] or 0:.0f}×{summary['median_height'] or 0:.0f}")
    m4.metric("Unreadable headers", summary["unreadable"])
    readable = props[props["mode"] != "unreadable"]
    c1, c2 = st.columns(2)
    c1.plotly_chart(px.histogram(readable, x="width", color="split", barmode="overlay", nbins=40,
                                 title="Width (pixels)"), width="stretch")
    c2.plotly_chart(px.histogram(readable, x="height", color="split", barmode="overlay", nbins=40,
                                 title="Height (pixels)"), width="stretch")
    c1, c2 = st.columns(2)
    modes = props.groupby(["mode", "split"]).size().reset_index(name="images")
    c1.plotly_chart(px.bar(modes, x="mode", y="images", color="split", barmode="group",
                           title="Colour modes as stored (all load as RGB)"), width="stretch")
    c2.plotly_chart(px.histogram(props, x="bytes", color="class", nbins=40, title="File size (bytes)"),
                    width="stretch")

# ----------------------------------------------------------------------------- audit
with tab_audit:
    with st.form("audit"):
        c1, c2 = st.columns(2)
        blank_std = c1.number_input("Blank if pixel std below", 0.0, 50.0, 5.0, 0.5)
        # drawn demo faces share framing and layout, so at 4 bits different faces look alike
        near = c2.number_input("Near duplicate if pHash distance ≤", 0, 16,
                               2 if dataset.source == "synthetic" else 4,
                               help="4 suits photos (see docs/DATA_AUDIT.md); 2 for the synthetic demo set")
        run = st.form_submit_button("Run audit", type="primary")

    key = f"audit::{dataset.name}::{','.join(dataset.classes)}::{blank_std}::{near}"
    if run:
        bar = st.progress(0.0, text="Decoding images…")
        st.session_state[key] = audit_dataset(
            dataset, blank_std=blank_std, near_distance=int(near),
            progress=lambda done, total: bar.progress(done / max(total, 1), text=f"{done}/{total} images"))
        bar.empty()
    report = st.session_state.get(key)
    target = paths.exclusion_file(dataset.name)
    current: list[str] = []
    if target.exists():
        current = load_exclusions(target)
        c1, c2 = st.columns([3, 1])
        c1.info(f"Training leaves out the {len(current)} image(s) listed in `{target}` (Train page).")
        if c2.button("Remove exclusion list", key="eda_drop_exclusions"):
            # kept beside it under another name: runs trained with it can still be traced
            target.rename(unused_path(target.with_name(f"{target.stem}.removed-{utc_stamp()}.json")))
            st.rerun()
    if report is None:
        st.info("Press **Run audit** to scan every image once: corrupt, blank, duplicate and leaked images.")
    else:
        flagged = report.flagged_files()
        cols = st.columns(len(flagged))
        for col, (kind, files) in zip(cols, flagged.items()):
            col.metric(kind.replace("_", " "), len(files))

        st.subheader("Images per class")
        st.dataframe(pd.DataFrame(report.counts), width="stretch")

        kind = st.selectbox("Show flagged images",
                            [k for k, v in flagged.items() if v] or ["(nothing flagged)"])
        files = flagged.get(kind, [])
        if files:
            shown = files[:24]
            grid_cols = st.columns(8)
            for i, f in enumerate(shown):
                with grid_cols[i % 8]:
                    if kind == "corrupt":
                        st.caption(f"⚠️ {Path(f).name}")
                    else:
                        st.image(f, caption=Path(f).name, width="stretch")
            if len(files) > len(shown):
                st.caption(f"… and {len(files) - len(shown)} more (see `python -m emotion audit --json`).")

        st.subheader("Exclude flagged images from training")
        kinds = st.multiselect("Leave out", list(flagged),
                               default=["corrupt", "blank", "leakage", "label_conflicts"])
        candidates = report.exclusion_candidates(kinds) if kinds else []
        new = {str(Path(c).resolve()) for c in candidates} - set(current)
        st.write(f"{len(candidates)} file(s) would be left out of the **train** split "
                 "(your files stay where they are)"
                 + (f"; added to the {len(current)} already listed ({len(new)} new)." if current else "."))
        if st.button("Save exclusion list", disabled=not candidates):
            # added to the list, never replacing it: it may hold other classes' or another audit's files
            path = save_exclusions(target, [*current, *candidates], reason=", ".join(kinds))
            st.success(f"Saved to `{path}`; the Train page uses it (or `--exclude-file {path}`).")
