"""Data audit page: corrupt, blank, duplicate and leaked images in the active dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from emotion.audit import audit_dataset
from emotion.data.sources import save_exclusions
from ui.state import dataset_sidebar

st.set_page_config(page_title="Data audit · Emotion Studio", page_icon="🔎", layout="wide")
st.title("Data audit")
st.caption("Finds what silently misleads training or inflates test scores. Nothing is moved or deleted.")

dataset = dataset_sidebar()
if dataset is None:
    st.info("Choose a dataset in the sidebar.")
    st.stop()

with st.form("audit"):
    c1, c2 = st.columns(2)
    blank_std = c1.number_input("Blank if pixel std below", 0.0, 50.0, 5.0, 0.5)
    # drawn demo faces share framing and layout, so at 4 bits different faces look alike
    near = c2.number_input("Near duplicate if pHash distance ≤", 0, 16, 2 if dataset.source == "synthetic" else 4,
                           help="4 suits photos (see docs/DATA_AUDIT.md); 2 for the synthetic demo set")
    run = st.form_submit_button("Run audit", type="primary")

key = f"audit::{dataset.name}::{','.join(dataset.classes)}::{blank_std}::{near}"
if run:
    bar = st.progress(0.0, text="Decoding images…")
    report = audit_dataset(dataset, blank_std=blank_std, near_distance=int(near),
                           progress=lambda done, total: bar.progress(done / max(total, 1),
                                                                     text=f"{done}/{total} images"))
    bar.empty()
    st.session_state[key] = report
report = st.session_state.get(key)
if report is None:
    st.info("Press **Run audit** to scan every image once.")
    st.stop()

flagged = report.flagged_files()
cols = st.columns(len(flagged))
for col, (kind, files) in zip(cols, flagged.items()):
    col.metric(kind.replace("_", " "), len(files))

st.subheader("Images per class")
st.dataframe(pd.DataFrame(report.counts), width="stretch")

kind = st.selectbox("Show flagged images", [k for k, v in flagged.items() if v] or ["(nothing flagged)"])
files = flagged.get(kind, [])
if files:
    shown = files[:24]
    grid = st.columns(8)
    for i, f in enumerate(shown):
        with grid[i % 8]:
            if kind == "corrupt":
                st.caption(f"⚠️ {Path(f).name}")
            else:
                st.image(f, caption=Path(f).name, width="stretch")
    if len(files) > len(shown):
        st.caption(f"… and {len(files) - len(shown)} more (see `python -m emotion audit --json`).")

st.subheader("Exclude flagged images from training")
kinds = st.multiselect("Leave out", list(flagged), default=["corrupt", "blank", "leakage", "label_conflicts"])
candidates = report.exclusion_candidates(kinds) if kinds else []
target = Path("checkpoints") / "exclusions" / f"{Path(dataset.name).name or 'dataset'}.json"
st.write(f"{len(candidates)} file(s) would be left out of the **train** split (your files stay where they are).")
if st.button("Save exclusion list", disabled=not candidates):
    path = save_exclusions(target, candidates, reason=", ".join(kinds))
    st.success(f"Saved to `{path}`; train with `--exclude-file {path}`.")
