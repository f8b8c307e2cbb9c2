"""Emotion Studio — home page.  Run with: streamlit run app.py"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from ui.state import dataset_sidebar

st.set_page_config(page_title="Emotion Studio", page_icon="🙂", layout="wide")

st.title("Emotion Studio")
st.markdown(
    "Train, compare, explain and demo facial-emotion classifiers. "
    "Pick a dataset in the sidebar: the **synthetic** demo set works with no data at all; "
    "point at a folder of class folders (the Human Emotions Dataset layout, FER2013, …) "
    "for real faces."
)

dataset = dataset_sidebar()
if dataset is None:
    st.info("Choose a dataset in the sidebar to begin.")
    st.stop()

st.subheader(f"Active dataset: `{dataset.name}`")
st.caption(f"source: {dataset.source} · root: {dataset.root} · classes: {', '.join(dataset.classes)}")
for note in dataset.notes:
    st.caption(f"ℹ️ {note}")

counts = dataset.counts()
table = pd.DataFrame(counts).rename_axis("class")
table["total"] = table.sum(axis=1)
col_table, col_chart = st.columns([1, 2])
col_table.dataframe(table, width="stretch")
long = table.drop(columns="total").reset_index().melt(id_vars="class", var_name="split", value_name="images")
col_chart.plotly_chart(
    px.bar(long, x="class", y="images", color="split", barmode="group", title="Images per class"),
    width="stretch",
)
st.markdown("Next: the **Data audit** page checks this dataset for corrupt, blank, duplicate and leaked images.")
