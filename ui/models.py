"""Which model answers: the model status with the one-click quick run, and the run picker.

Home, Predict and Explain share these so the "no model yet" flow (one click queues
a quick EfficientNet-Lite0 run on the active dataset through ``emotion.jobs``)
exists once.  Predictors come from ``emotion.inference.get_predictor``, which
keeps one shared, read-only predictor per run folder and weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st

from emotion import jobs, paths
from emotion.config import QUICK_EPOCHS, QUICK_IMAGE_SIZE, quick_train_config
from emotion.data.sources import DatasetSplits
from emotion.fileio import read_json_or_none
from emotion.inference import (Predictor, PredictorConfig, RunChoice, get_predictor, recommended_backend,
                               resolve_run)
from emotion.runs import RunError, describe_run, is_complete, list_runs
from ui.state import active_spec, dataset_sidebar

AUTO = "automatic"


def ready_shipped_models() -> dict[str, Path]:
    """The shipped models (``default``, ``fer7``) whose folders hold a complete model, by name."""
    return {name: folder for name, folder in paths.shipped_model_dirs().items() if is_complete(folder)}


def shipped_model_ready() -> bool:
    """Whether the shipped model (``checkpoints/default`` or ``$EMOTION_DEFAULT_MODEL_DIR``) is complete."""
    return "default" in ready_shipped_models()


def ready_runs() -> list[dict]:
    """Runs whose weights are saved and not being rewritten (newest first).

    A run killed after it saved its weights reads ``interrupted`` and can still predict.
    """
    return [r for r in list_runs() if r["ready"] and r["state"] != "running"]


def teacher_choices() -> dict[str, Path]:
    """Models a new run can learn from (distillation): the shipped ones and every ready run, by name."""
    out = {f"shipped: {name}": folder for name, folder in ready_shipped_models().items()}
    out.update({r["name"]: Path(r["path"]) for r in ready_runs()})
    return out


def queue_quick_model(spec: str, classes: Optional[str], dataset: DatasetSplits) -> Optional[jobs.Job]:
    """Queue the quick EfficientNet-Lite0 run on the active dataset; shows the outcome."""
    try:
        job = jobs.JobQueue().submit(quick_train_config(spec, classes, len(dataset.train)))
    except (ValueError, OSError) as exc:
        st.error(str(exc))
        return None
    st.success(f"Queued **{job.name}**; follow it on the Train page.")
    return job


def model_status(dataset: Optional[DatasetSplits], spec: str, classes: Optional[str], key: str) -> bool:
    """Say which model Predict and Explain will use, or how to get one in one click.

    Returns True when a model is ready.  Without one: the state of a quick run in
    progress, or the last one's error, and the **Train a quick model** button
    (``key`` keeps the button unique per page).
    """
    runs = [r for r in list_runs() if r["ready"]]
    default_dir = paths.default_model_dir()
    quick_jobs = [j for j in jobs.JobQueue().jobs() if j.name.startswith("quick-")]
    quick = [j for j in quick_jobs if j.active]
    if shipped_model_ready():
        st.success(f"The shipped model in `{default_dir}` is ready: Predict and Explain use it unless you "
                   "pick a run.")
        return True
    if runs:
        st.success(f"{len(runs)} trained run(s) ready in `{paths.runs_dir()}`: Predict and Explain can use "
                   "them.")
        return True
    if quick:
        progress = quick[0].progress()
        st.info(f"A quick model is training ({quick[0].state}): step {progress['step']}/"
                f"{progress['max_steps'] or '?'}. Follow it on the Train page; this page uses it as soon "
                "as it finishes.")
        return False
    st.warning(f"No model yet: no shipped model in `{default_dir}` and no trained run in "
               f"`{paths.runs_dir()}`.")
    if quick_jobs and quick_jobs[-1].state == jobs.FAILED:
        st.error(f"The last quick run failed: {quick_jobs[-1].error} (its log is on the Train page)")
    if dataset is None:
        st.info("Choose a dataset in the sidebar (e.g. `synthetic`) to train a quick model on it.")
        return False
    st.markdown(f"One click trains a small EfficientNet-Lite0 ({QUICK_IMAGE_SIZE} px, ImageNet "
                f"weights that ship with the package, ≤ {QUICK_EPOCHS} epochs) on **`{spec}`** "
                "in the background; on the synthetic set that takes a few minutes on a CPU.")
    if st.button("Train a quick model", type="primary", key=key):
        queue_quick_model(spec, classes, dataset)
    return False


def run_picker(key: str) -> Optional[RunChoice]:
    """A select box of runs (default: the shipped model or the best run); says which one answers.

    Returns None (after saying why) when there is no model at all.
    """
    runs = ready_runs()
    extras = {f"shipped: {name}": folder for name, folder in ready_shipped_models().items() if name != "default"}
    names = [AUTO] + list(extras) + [r["name"] for r in runs]
    by_name = {r["name"]: r for r in runs}
    shipped = shipped_model_ready()

    def label(name: str) -> str:
        if name in extras:
            info = describe_run(extras[name]) or {}
            labels = info.get("labels") or []
            return f"{name} · {info.get('model')} {info.get('input_size') or ''}px · {len(labels)} classes"
        if name != AUTO:
            r = by_name[name]
            return f"{name} · {r['model']} {r['input_size'] or ''}px"
        return (f"automatic: the shipped model ({paths.default_model_dir()})" if shipped
                else "automatic: the run with the best validation accuracy")

    if st.session_state.get(key) not in names:
        st.session_state.pop(key, None)
    name = st.selectbox("Model run", names, format_func=label, key=key,
                        help="Which trained model answers. Automatic: the shipped model in "
                             "checkpoints/default, else the finished run with the best validation accuracy.")
    try:
        if name in extras:
            return RunChoice(extras[name], "shipped")
        return resolve_run(None if name == AUTO else by_name[name]["path"])
    except RunError as exc:
        if name != AUTO:
            st.error(str(exc))
            return None
        if runs:  # finished runs, but none records a validation accuracy (e.g. copied model folders)
            return RunChoice(Path(runs[0]["path"]), "the newest finished run (none records a validation "
                                                    "accuracy to rank them)")
        return None


def shown_path(path: Path) -> str:
    """``path`` as the app shows it: relative to the app's folder when it lies inside it (shipped models)."""
    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    return str(resolved.relative_to(here)) if resolved.is_relative_to(here) else str(path)


def describe_choice(choice: RunChoice, predictor: Predictor) -> str:
    """One line saying which model answers and why."""
    why = {"given": "chosen above", "default": "the shipped model",
           "shipped": "a shipped model, chosen above"}.get(choice.reason, choice.reason)
    cfg = predictor.model_config
    grey = " · faces greyed as in its training data" if getattr(predictor, "grayscale", False) else ""
    mirror = " · each face averaged with its mirror image" if getattr(predictor, "tta", False) else ""
    onnx = {"onnx": " · run by onnxruntime", "onnx-int8": " · run by onnxruntime in 8 bits"}.get(
        str(getattr(predictor, "backend", None)), "")
    return (f"Model: **{Path(choice.path).name}** (`{shown_path(choice.path)}`) · {cfg.name} at "
            f"{cfg.input_size} px · classes {', '.join(predictor.labels)}{grey}{mirror}{onnx} · {why}")


def load_predictor(choice: RunChoice, backend: Optional[str] = None) -> Optional[Predictor]:
    """The shared predictor of a run (loaded once per run, weights version and backend); errors are shown.

    ``backend`` None: what the run recommends (``config.json`` ``"inference"``), else torch.
    """
    hint = recommended_backend(read_json_or_none(Path(choice.path) / "config.json"))
    onnx = backend in ("onnx", "onnx-int8") or (backend is None and hint in ("onnx", "onnx-int8"))
    try:
        spinner = f"Loading {Path(choice.path).name}" + (
            " (the first onnx load exports the network: seconds, about 20 for the shipped ensemble)…"
            if onnx else "…")
        with st.spinner(spinner):
            predictor = get_predictor(choice.path, PredictorConfig(backend=backend))
    except Exception as exc:  # noqa: BLE001 - a damaged run folder explains itself
        st.error(f"Cannot load `{choice.path}`: {exc}")
        return None
    return predictor


def pick_model(dataset: Optional[DatasetSplits], spec: str, classes: Optional[str], key: str,
               backend: Optional[str] = None) -> Optional[Predictor]:
    """Run picker plus loading; without any model, the quick-model flow.  None: nothing to use yet."""
    choice = run_picker(key)
    if choice is None:
        if not ready_runs() and not shipped_model_ready():
            model_status(dataset, spec, classes, key=f"{key}_quick")
        return None
    predictor = load_predictor(choice, backend)
    if predictor is not None:
        st.caption(describe_choice(choice, predictor))
    return predictor


def model_page(key: str, choose_backend: bool = False
               ) -> tuple[Optional[DatasetSplits], str, Optional[str], Predictor]:
    """The start every page that uses a model shares (Predict, Explain): data sidebar, model picker.

    Returns (dataset, spec, classes, predictor); stops the page, with the quick-model
    offer, while there is no model to use.
    """
    dataset = dataset_sidebar()
    spec, classes = active_spec()
    backend: Optional[str] = None
    if choose_backend:
        picked = str(st.sidebar.radio(
            "Classifier backend", ["recommended", "torch", "onnx", "onnx-int8"], horizontal=True,
            key=f"{key}_backend",
            help="onnx: the same network run by onnxruntime on the CPU, about 3x faster per face for the "
                 "shipped model (same probabilities within 1e-4); onnx-int8: 8-bit weights and activations, "
                 "about 2x faster again, 1 to 2 faces in 100 answered differently (the model needs "
                 "int8_calibration.json: `python -m emotion quantize`); recommended: what the model's "
                 "config.json says, else torch"))
        backend = None if picked == "recommended" else picked
    predictor = pick_model(dataset, spec, classes, key=key, backend=backend)
    if predictor is None:
        st.stop()
    return dataset, spec, classes, predictor
