"""Emotion Studio — home page.  Run with: streamlit run app.py"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from emotion import jobs, paths
from emotion.runs import list_runs
from ui.charts import counts_figure
from ui.state import active_spec, dataset_sidebar

st.set_page_config(page_title="Emotion Studio", page_icon="🙂", layout="wide")

HERE = Path(__file__).resolve().parent
# page file -> (label, icon, what it is for); pages that are not there yet are skipped
PAGES = {
    "pages/1_EDA.py": ("EDA", "🔎", "class balance, sample faces, mean faces, sizes, and the data audit "
                       "(corrupt, blank, duplicate and leaked images; exclude them from training)"),
    "pages/2_Train.py": ("Train", "🏋️", "train any registered model in the background, with live curves, "
                         "stop/resume and a queue"),
    "pages/3_Benchmark.py": ("Benchmark", "📊", "compare runs: table, confusion matrices, recall, "
                             "calibration, ensembles, CSV"),
    "pages/4_Predict.py": ("Predict", "🙂", "upload photos or use the webcam: faces found and classified"),
    "pages/5_Explain.py": ("Explain", "🧠", "why the model decided: Grad-CAM, attention and feature maps"),
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
ready = [r for r in runs if r["ready"]]
default_dir = paths.default_model_dir()
queue = jobs.JobQueue()
quick_jobs = [j for j in queue.jobs() if j.name.startswith("quick-")]
quick = [j for j in quick_jobs if j.active]
if (default_dir / "config.json").exists():
    st.success(f"The shipped model in `{default_dir}` is ready: Predict and Explain use it unless you pick "
               "a run.")
elif ready:
    st.success(f"{len(ready)} trained run(s) ready in `{paths.runs_dir()}`: Predict and Explain can use "
               "them.")
elif quick:
    progress = quick[0].progress()
    st.info(f"A quick model is training ({quick[0].state}): step {progress['step']}/"
            f"{progress['max_steps'] or '?'}. Follow it on the Train page.")
else:
    st.warning("No model yet: no shipped model in `checkpoints/default` and no trained run.")
    if quick_jobs and quick_jobs[-1].state == jobs.FAILED:
        st.error(f"The last quick run failed: {quick_jobs[-1].error} (its log is on the Train page)")
    if dataset is not None:
        st.markdown(f"One click trains a small EfficientNet-Lite0 ({jobs.QUICK_IMAGE_SIZE} px, ImageNet "
                    f"weights that ship with the package, ≤ {jobs.QUICK_EPOCHS} epochs) on **`{spec}`** "
                    "in the background; on the synthetic set that takes a few minutes on a CPU.")
        if st.button("Train a quick model", type="primary", key="home_quick"):
            try:
                job = queue.submit(jobs.quick_train_config(spec, classes, len(dataset.train)))
            except (ValueError, OSError) as exc:
                st.error(str(exc))
            else:
                st.success(f"Queued **{job.name}**; follow it on the Train page.")

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
