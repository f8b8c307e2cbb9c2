"""Train page: queue training runs on the active dataset and follow them live.

Runs are background processes (``emotion.jobs``): they keep going when the page
reloads or the browser closes, and the list below picks them up again.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import streamlit as st

from emotion import jobs, paths, progress
from emotion.benchmark import SCRATCH_ONLY
from emotion.data.sources import load_exclusions
from emotion.models import get_model_config, list_models
from emotion.config import TRACKERS, TrainConfig
from emotion.data.transforms import AUGMENTATION_BOUNDS
from ui.charts import curves_figure
from ui.models import teacher_choices
from ui.state import active_spec, dataset_sidebar

st.set_page_config(page_title="Train · Emotion Studio", page_icon="🏋️", layout="wide")
st.title("Train")
st.caption("Each run trains in a background process: reload the page or close the browser, it keeps going. "
           "Queued runs start one after another.")

HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
DEFAULTS = TrainConfig(output_dir="unused")
STATE_ICONS = {"queued": "⏳", "running": "🏃", "completed": "✅", "failed": "❌", "stopped": "⏹️",
               "cancelled": "🚫"}


def _augmentation_input(column, label: str, name: str, step: float) -> float:
    """A number input over the range the augmentation config accepts (one statement of each bound)."""
    low, high, high_included = AUGMENTATION_BOUNDS[name]
    return column.number_input(label, low, high if high_included else high - step, getattr(DEFAULTS, name), step,
                               key=f"train_{name}", help=HELP[name])


def _queue() -> jobs.JobQueue:
    return jobs.JobQueue(paths.jobs_dir())


def _duration(seconds) -> str:
    return "–" if seconds is None else str(timedelta(seconds=int(seconds)))


dataset = dataset_sidebar()

# ----------------------------------------------------------------------------- new run
st.subheader("New run")
if dataset is None:
    st.info("Choose a dataset in the sidebar to train on it.")
else:
    spec, classes = active_spec()
    st.markdown(f"Data: **`{spec}`** · classes: {', '.join(dataset.classes)} · "
                f"{len(dataset.train)} training images (a stratified {DEFAULTS.val_fraction:.0%} of them "
                "validate, unless the data has a val split)")
    models = list_models()
    model = st.selectbox("Model", models, index=models.index(DEFAULTS.model), key="train_model",
                         help=HELP["model"])
    mcfg = get_model_config(model)
    st.caption(f"{mcfg.description} · native input {mcfg.input_size}px · weights: "
               f"{' → '.join(mcfg.weight_sources)}")
    scratch_only = model in SCRATCH_ONLY
    exclusions = paths.exclusion_file(dataset.name)
    with st.form("train_form"):
        c1, c2, c3, c4 = st.columns(4)
        image_size = c1.number_input("Image size", 16, 1024, mcfg.input_size, 8, key=f"train_size_{model}",
                                     help=HELP["image_size"] + "; smaller trains much faster on a CPU")
        epochs = c2.number_input("Epochs", 0.1, 500.0, float(DEFAULTS.epochs), 1.0, key="train_epochs",
                                 help=HELP["epochs"])
        batch_size = c3.number_input("Batch size", 1, 1024, DEFAULTS.batch_size, 8, key="train_batch",
                                     help=HELP["batch_size"])
        lr = c4.number_input("Learning rate (0 = default)", 0.0, 0.5, 0.0, 1e-4, format="%.5f",
                             key="train_lr",
                             help=f"{HELP['learning_rate']}; this model: {mcfg.finetune_lr:g} to fine-tune")
        c1, c2, c3, c4 = st.columns(4)
        class_weights = c1.checkbox("Class weights", DEFAULTS.class_weights, key="train_class_weights",
                                    help=HELP["class_weights"])
        augment = c2.checkbox("Augmentation", DEFAULTS.augment, key="train_augment", help=HELP["augment"])
        from_scratch = c3.checkbox("From scratch", scratch_only, disabled=scratch_only,
                                   key=f"train_scratch_{model}",
                                   help=HELP["from_scratch"] + (" (this model has no pretrained weights)"
                                                                if scratch_only else ""))
        tracker = c4.selectbox("Tracker", TRACKERS, key="train_tracker", help=HELP["report_to"])
        with st.expander("Augmentation details"):
            a1, a2, a3, a4, a5 = st.columns(5)
            rotation = _augmentation_input(a1, "Rotation (°)", "rotation_degrees", 1.0)
            brightness = _augmentation_input(a2, "Brightness", "brightness", 0.05)
            contrast = _augmentation_input(a3, "Contrast", "contrast", 0.05)
            crop = _augmentation_input(a4, "Min crop area", "crop_scale_min", 0.05)
            flip = a5.checkbox("Horizontal flips", DEFAULTS.horizontal_flip, key="train_flip",
                               help=HELP["horizontal_flip"])
            b1, b2, _ = st.columns([1, 1, 3])
            blur = _augmentation_input(b1, "Blur / sharpen", "blur_sharpen", 0.05)
            erasing = _augmentation_input(b2, "Erasing", "erasing", 0.05)
        with st.expander("More options"):
            o1, o2, o3, o4 = st.columns(4)
            max_steps = o1.number_input("Max steps (-1 = epochs)", -1, 10_000_000, -1, key="train_max_steps",
                                        help=HELP["max_steps"])
            patience = o2.number_input("Early-stopping patience", 0, 100, DEFAULTS.early_stopping_patience,
                                       key="train_patience", help=HELP["early_stopping_patience"])
            smoothing = o3.number_input("Label smoothing", 0.0, 0.5, DEFAULTS.label_smoothing, 0.05,
                                        key="train_smoothing", help=HELP["label_smoothing"])
            seed = o4.number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed, key="train_seed", help=HELP["seed"])
            o1, o2, o3 = st.columns([2, 1, 1])
            run_name = o1.text_input("Run name (empty = model and time)", key="train_run_name",
                                     help=HELP["run_name"])
            face_crop = o2.checkbox("Crop faces first", DEFAULTS.face_crop, key="train_face_crop",
                                    help=HELP["face_crop"])
            use_exclusions = o3.checkbox(
                "Leave out flagged images", exclusions.exists(), disabled=not exclusions.exists(),
                key="train_exclusions",
                help=(f"{len(load_exclusions(exclusions))} file(s) listed in {exclusions} by the EDA page"
                      if exclusions.exists() else "the EDA page's audit writes an exclusion list"))
        with st.expander("Distillation (learn from a trained model too)"):
            teachers = teacher_choices()
            d1, d2, d3 = st.columns([2, 1, 1])
            teacher = d1.selectbox("Teacher run", ["none", *teachers], key="train_teacher",
                                   help=HELP["distill_from"] + " (its classes must be this run's, in order)")
            distill_weight = d2.number_input("Teacher's share of the loss", 0.0, 1.0, DEFAULTS.distill_weight,
                                             0.05, key="train_distill_weight", help=HELP["distill_weight"])
            distill_t = d3.number_input("Temperature", 0.1, 20.0, DEFAULTS.distill_temperature, 0.5,
                                        key="train_distill_t", help=HELP["distill_temperature"])
        submitted = st.form_submit_button("Queue run", type="primary")

    if submitted:
        try:
            config = TrainConfig(
                model=model, data=spec, classes=classes or "", image_size=int(image_size),
                epochs=float(epochs), max_steps=int(max_steps), batch_size=int(batch_size),
                learning_rate=float(lr) or None, class_weights=class_weights, augment=augment,
                rotation_degrees=rotation, brightness=brightness, contrast=contrast, horizontal_flip=flip,
                crop_scale_min=crop, blur_sharpen=blur, erasing=erasing, label_smoothing=smoothing,
                early_stopping_patience=int(patience), from_scratch=from_scratch or scratch_only,
                report_to=tracker, seed=int(seed), run_name=run_name.strip() or None, face_crop=face_crop,
                exclude_file=str(exclusions.resolve()) if use_exclusions and exclusions.exists() else None,
                distill_from=str(teachers[teacher]) if teacher != "none" else None,
                distill_weight=float(distill_weight), distill_temperature=float(distill_t),
            )
            job = _queue().submit(config)
        except (ValueError, OSError) as exc:  # TrainConfig and JobError both explain themselves
            st.error(str(exc))
        else:
            st.success(f"Queued **{job.name}** ({job.state}).")

# ----------------------------------------------------------------------------- jobs
st.subheader("Runs")
with st.expander("Queue settings"):
    queue = _queue()
    # written only when changed here, so a stale tab never reverts another tab's setting
    st.number_input("Runs at a time", 1, 8, queue.max_running, key="train_max_running",
                    on_change=lambda: _queue().set_max_running(int(st.session_state["train_max_running"])),
                    help="How many trainings run together; on a CPU, one at a time is fastest overall.")
    st.caption(f"Queue file: `{queue.root / jobs.QUEUE_FILE}` · logs: `<run folder>/{jobs.LOG_FILE}`")


def _job_panel(queue: jobs.JobQueue, job: jobs.Job) -> None:
    cfg = job.config
    with st.container(border=True):
        head, buttons = st.columns([4, 2])
        head.markdown(f"{STATE_ICONS.get(job.state, '')} **{job.name}** · `{cfg.get('model')}` "
                      f"{cfg.get('image_size') or ''}px · data `{cfg.get('data')}` · **{job.state}**"
                      + (f" · attempt {job.attempts}" if job.attempts > 1 else ""))
        b1, b2 = buttons.columns(2)
        if job.state in jobs.ACTIVE:
            if b1.button("Stop" if job.state == jobs.RUNNING else "Cancel", key=f"stop_{job.id}"):
                try:
                    queue.stop(job.id)
                except jobs.JobError as exc:
                    st.error(str(exc))
                st.rerun(scope="fragment")
        else:
            if job.state in jobs.RESUMABLE and b1.button("Resume", key=f"resume_{job.id}",
                                                        help="continue from the last checkpoint"):
                try:
                    queue.resume(job.id)
                except (jobs.JobError, ValueError) as exc:
                    st.error(str(exc))
                st.rerun(scope="fragment")
            if b2.button("Remove", key=f"forget_{job.id}", help="drop from this list; the run folder stays"):
                queue.forget(job.id)
                st.rerun(scope="fragment")
        records = job.progress_records() if job.state != jobs.QUEUED else []
        summary = progress.progress_summary(records)
        if job.state == jobs.RUNNING:
            total = summary["max_steps"]
            text = (f"step {summary['step']}/{total} · epoch {summary['epoch'] or 0:.2f} · "
                    f"elapsed {_duration(summary['elapsed_s'])} · ETA {_duration(summary['eta_s'])}"
                    if total else "starting (loading data and model)…")
            st.progress(summary["fraction"], text=text)
        elif job.state == jobs.COMPLETED:
            status = job.run_status() or {}
            scores = (status.get("metrics") or {})
            val, test = scores.get("val") or {}, scores.get("test") or {}
            parts = [f"validation accuracy {val['accuracy']:.3f}, macro-F1 {val['macro_f1']:.3f}"
                     if "accuracy" in val else None,
                     f"test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}"
                     if "accuracy" in test else None]
            st.caption(" · ".join(p for p in parts if p) + f" · run folder `{job.run_dir}` "
                       "(compare it on the Benchmark page)")
        elif job.state == jobs.FAILED:
            st.error(job.error or "failed")
        elif job.state == jobs.STOPPED:
            st.caption(f"stopped at step {summary['step']}; Resume continues from the last saved checkpoint")
        curves = progress.training_curves(records)
        if curves["train"] or job.state == jobs.FAILED:
            with st.expander("Curves and log", expanded=job.state in (jobs.RUNNING, jobs.FAILED)):
                c1, c2 = st.columns(2)
                for col, metric in ((c1, "loss"), (c2, "accuracy")):
                    fig = curves_figure(curves, metric)
                    if fig is not None:
                        col.plotly_chart(fig, width="stretch", key=f"{metric}_{job.id}")
                st.code(job.log_tail() or "(no log yet)", language="text")


@st.fragment(run_every=timedelta(seconds=2))
def job_list() -> None:
    queue = _queue()
    listed = list(reversed(queue.refresh()))  # newest first
    if not listed:
        st.info("No runs yet: queue one above.")
        return
    active = sum(j.state in jobs.ACTIVE for j in listed)
    st.caption(f"{active} active · {len(listed) - active} finished · updates every 2 s")
    for job in listed[:30]:
        _job_panel(queue, job)
    if len(listed) > 30:
        st.caption(f"… and {len(listed) - 30} older runs (remove finished ones to see them)")


job_list()
