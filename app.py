"""Emotion Studio — home page.  Run with: streamlit run app.py"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from emotion import paths
from emotion.runs import list_runs
from ui.charts import counts_figure
from ui.models import model_status
from ui.state import active_spec, dataset_sidebar

st.set_page_config(page_title="Emotion Studio", page_icon="🙂", layout="wide")

HERE = Path(__file__).resolve().parent
# page file -> (label, icon, what it is for); pages that are not there yet are skipped
PAGES = {
    "pages/1_EDA.py": ("EDA", ":material/query_stats:",
                       "class balance, sample faces, mean faces, sizes, and the data audit "
                       "(corrupt, blank, duplicate and leaked images; exclude them from training)"),
    "pages/2_Train.py": ("Train", ":material/model_training:",
                         "train any registered model in the background, with live curves, stop/resume "
                         "and a queue"),
    "pages/3_Benchmark.py": ("Benchmark", ":material/leaderboard:",
                             "compare runs: table, confusion matrices, recall, calibration, ensembles, CSV"),
    "pages/4_Predict.py": ("Predict", ":material/mood:",
                           "upload photos or use the webcam (snapshots or live video): every face found and "
                           "classified"),
    "pages/5_Explain.py": ("Explain", ":material/psychology:",
                           "why the model decided: Grad-CAM family, attention rollout, feature maps, and "
                           "a ROAD score to compare them"),
}

st.title("Emotion Studio")
st.markdown(
    "Train, compare, explain and demo facial-emotion classifiers. "
    "Pick a dataset in the sidebar: the **synthetic** demo set works with no data at all; "
    "point at a folder of class folders (the Human Emotions Dataset layout, FER2013, …), "
    "or `hf:<user>/<dataset>` for a Hugging Face dataset. The choice is kept across pages."
)

dataset = dataset_sidebar()
spec, classes = active_spec()

# ----------------------------------------------------------------------------- dataset
if dataset is None:
    st.info("Choose a dataset in the sidebar to begin.")
else:
    st.subheader(f"Active dataset: `{dataset.name}`")
    st.caption(f"source: {dataset.source} · root: {dataset.root} · classes: {', '.join(dataset.classes)}")
    for note in dataset.notes:
        st.caption(f"ℹ️ {note}")
    table = pd.DataFrame(dataset.counts()).rename_axis("class")
    table["total"] = table.sum(axis=1)
    col_table, col_chart = st.columns([1, 2])
    col_table.dataframe(table, width="stretch")
    col_chart.plotly_chart(counts_figure(dataset.counts()), width="stretch")

# ----------------------------------------------------------------------------- model
st.subheader("Model")
runs = list_runs()
model_status(dataset, spec, classes, key="home_quick")

# ----------------------------------------------------------------------------- runs
st.subheader("Runs")
if runs:
    rows = [{"run": r["name"], "model": r["model"], "state": r["state"], "input": r["input_size"],
             "data": r["data"],
             "val macro-F1": ((r["metrics"] or {}).get("val") or {}).get("macro_f1"),
             "test accuracy": ((r["metrics"] or {}).get("test") or {}).get("accuracy"),
             "created": r["created"]} for r in runs]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
else:
    st.caption(f"No runs in `{paths.runs_dir()}` yet.")

# ----------------------------------------------------------------------------- pages
st.subheader("Where to start")
for page, (label, icon, what) in PAGES.items():
    if (HERE / page).exists():
        c1, c2 = st.columns([1, 4])
        with c1:
            st.page_link(page, label=label, icon=icon)
        c2.markdown(what)
