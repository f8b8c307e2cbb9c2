"""Home page: the active dataset, the model in use, the runs, and where to go next."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from emotion.runs import list_runs
from ui.charts import counts_figure
from ui.models import model_status
from ui.navigation import PAGES
from ui.state import active_spec, dataset_sidebar
from ui.tables import MISSING

st.set_page_config(page_title="Emotion Studio", page_icon="🙂", layout="wide")

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
    where = ("generated on this machine (kept in the cache folder)" if dataset.source == "synthetic"
             else f"root: {dataset.root}")
    st.caption(f"source: {dataset.source} · {where} · classes: {', '.join(dataset.classes)}")
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
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", placeholder=MISSING,
                 column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                                for c in ("val macro-F1", "test accuracy")})
else:
    st.caption("No runs of yours yet: the Train page starts one; the shipped models and the study's results "
               "are on Predict, Explain and Benchmark already.")

# ----------------------------------------------------------------------------- pages
st.subheader("Where to start")
for page in PAGES[1:]:
    c1, c2 = st.columns([1, 4])
    with c1:
        st.page_link(page.path, label=page.title, icon=page.icon)
    c2.markdown(page.purpose)
