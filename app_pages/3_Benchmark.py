"""Benchmark page: every run in one sortable table, confusion matrices, recall, calibration, ensembles."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from emotion import paths
from emotion.benchmark import runs_table, table_csv
from emotion.ensembles import create_ensemble
from emotion.evaluation import evaluate_run, saved_evaluations
from emotion.names import child_folder, slug
from emotion.results import result_title, shipped_results, shipped_row
from emotion.runs import list_runs
from ui.charts import confusion_figure, recall_figure, reliability_figure
from ui.state import active_spec, dataset_sidebar
from ui.tables import MISSING

st.set_page_config(page_title="Benchmark · Emotion Studio", page_icon="📊", layout="wide")
st.title("Benchmark")
st.caption("Compare trained runs on their test split: accuracy, macro-F1, per-class recall, calibration, "
           "size and speed (the same columns as `python -m emotion benchmark`).")


def _result_view(result: dict, slot: str, normalized: bool) -> None:
    """Metrics, confusion matrix, recall per class and reliability curve of one evaluation result."""
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Accuracy", f"{result['accuracy']:.3f}")
    m2.metric("Macro-F1", f"{result['macro_f1']:.3f}")
    calibrated = (f"; {result['ece_calibrated']:.3f} after temperature scaling"
                  if "ece_calibrated" in result else "")
    m3.metric("ECE", f"{result['ece']:.3f}", help="expected calibration error (lower is better)" + calibrated)
    m4.metric("Images", (result.get("data") or {}).get("images", result.get("n")))
    matrix = result["confusion_matrix_normalized"] if normalized else result["confusion_matrix"]
    st.plotly_chart(confusion_figure(matrix, result["classes"], normalized), width="stretch",
                    key=f"bench_cm_{slot}")
    st.plotly_chart(recall_figure(result["per_class"]), width="stretch", key=f"bench_recall_{slot}")
    st.plotly_chart(reliability_figure(result["calibration"]), width="stretch", key=f"bench_rel_{slot}")
    if result.get("speed"):
        s = result["speed"]
        st.caption(f"{s['latency_ms']:.1f} ms per image at batch 1 · {s['throughput_ips']:.0f} images/s at "
                   f"batch {s['batch_size']} ({s['device']}, {s['threads']} threads)")
    for note in result.get("notes", []):
        st.caption(f"ℹ️ {note}")


dataset_sidebar()  # keeps the active dataset in view; runs can also be scored on it

# ----------------------------------------------------------------------------- shipped results
shipped = shipped_results()
if shipped:
    st.subheader("Shipped results")
    st.caption("Measured by the project and shipped with it, so they show on any machine: the shipped models "
               "and the study's architectures, each with the data, split, command, machine and date that "
               "produced it.")
    st.dataframe(pd.DataFrame([shipped_row(r) for r in shipped]), hide_index=True, width="stretch",
                 placeholder=MISSING,
                 column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                                for c in ("accuracy", "macro_f1", "macro_recall", "ece")})
    c1, c2 = st.columns([4, 1])
    chosen = c1.selectbox("Shipped result", range(len(shipped)), format_func=lambda i: result_title(shipped[i]),
                          key="bench_shipped")
    shipped_normalized = c2.toggle("Normalised", True, key="bench_shipped_normalized",
                                   help="confusion matrices as shares of each true class (else image counts)")
    _result_view(shipped[chosen], "shipped", shipped_normalized)
    made = shipped[chosen]["provenance"]
    st.caption(f"shipped · `{made['command']}` · {made['machine']} · {made['software']} · {made['date']}")

# ----------------------------------------------------------------------------- your runs
st.subheader("Your runs")
RUNS_DIR = paths.runs_dir()
runs = list_runs(RUNS_DIR)
if not runs:
    st.info("No runs of yours yet: train one on the Train page and it appears here (runs are kept in "
            "`checkpoints/runs`, or in the folder `EMOTION_RUNS_DIR` names).")
    st.page_link("app_pages/2_Train.py", label="Train a model", icon=":material/model_training:")
    st.stop()

# ----------------------------------------------------------------------------- table
table = runs_table(runs)
df = pd.DataFrame(table["rows"], columns=table["columns"])
score_cols = [c for c in df.columns if c in ("accuracy", "macro_f1", "macro_recall", "ece", "ece_calibrated",
                                              "val_macro_f1") or c.startswith("recall_")]
st.dataframe(
    df, hide_index=True, width="stretch", placeholder=MISSING,
    column_config={**{c: st.column_config.NumberColumn(c, format="%.3f") for c in score_cols},
                   "parameters": st.column_config.NumberColumn("parameters", format="%d"),
                   "size_mb": st.column_config.NumberColumn("MB", format="%.1f"),
                   "latency_ms": st.column_config.NumberColumn("latency ms", format="%.1f"),
                   "throughput_ips": st.column_config.NumberColumn("img/s", format="%.0f"),
                   "train_time_s": st.column_config.NumberColumn("train s", format="%.0f")},
)
st.download_button("Download the table (CSV)", table_csv(table), file_name="runs.csv", mime="text/csv",
                   key="bench_csv")
st.caption(f"Click a column header to sort; {MISSING} marks a value not measured yet. `scored_on` says where the scores come from: an evaluation "
           "stored in the run folder, or the test split scored when training ended. Evaluate a run below to "
           "fill in calibration, per-class recall, size and speed.")

# ----------------------------------------------------------------------------- per-run views
by_name = {r["name"]: r for r in runs}
ready = [r["name"] for r in runs if r["ready"]]
if not ready:
    st.info("No run has finished yet: the views below need a trained model.")
    st.stop()

st.subheader("Inspect and compare")
if "bench_flash" in st.session_state:
    st.success(st.session_state.pop("bench_flash"))
if st.session_state.get("bench_pending_a") in ready:
    st.session_state["bench_run_a"] = st.session_state.pop("bench_pending_a")
spec, classes = active_spec()
c1, c2, c3 = st.columns([2, 2, 1])
first = c1.selectbox("Run", ready, key="bench_run_a")
second = c2.selectbox("Side by side with", ["(none)"] + [n for n in ready if n != first], key="bench_run_b")
normalized = c3.toggle("Normalised", True, key="bench_normalized",
                       help="confusion matrices as shares of each true class (else image counts)")
where = st.radio("Score on", ["each run's own data", f"the active dataset (`{spec}`)"], horizontal=True,
                 key="bench_where", help="the test split; an unsplit folder is split as the run was trained")
speed = st.checkbox("Also time it (batch-1 latency, throughput)", False, key="bench_speed")


def _message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"


def _data_for(run: dict) -> tuple[Optional[str], Optional[str]]:
    if where.startswith("each"):
        return run.get("data"), run.get("classes") or None
    return spec, classes


def _evaluate(run: dict) -> None:
    data, cls = _data_for(run)
    if not data:
        st.error(f"{run['name']} does not record its training data: choose 'the active dataset'.")
        return
    with st.spinner(f"Scoring {run['name']} on the test split of {data}…"):
        try:
            evaluate_run(run["path"], data, split="test", classes=cls, speed=speed, latency_repeats=10)
        except Exception as exc:  # noqa: BLE001 - shown on the page; dataset/run errors explain themselves
            st.error(_message(exc))
            return
    st.rerun()


def _run_panel(run: dict, slot: str) -> None:
    st.markdown(f"#### {run['name']}")
    st.caption(f"{run.get('model')} · {run.get('input_size') or '?'}px · {run['state']} · "
               f"trained on `{run.get('data')}`")
    results = saved_evaluations(run["path"], split="test")
    if st.button("Evaluate on the test split", key=f"bench_eval_{slot}",
                 type="secondary" if results else "primary"):
        _evaluate(run)
    if not results:
        st.info("Not evaluated yet: press **Evaluate on the test split**.")
        return
    labels = [f"{(r.get('data') or {}).get('spec')} · {r.get('created', '')}"
              + (" · TTA" if r.get("tta") else "") for r in results]
    pick = st.selectbox("Evaluation", range(len(results)), format_func=lambda i: labels[i],
                        key=f"bench_pick_{slot}")
    _result_view(results[pick], slot, normalized)


shown = [first] + ([second] if second != "(none)" else [])
for col, (slot, name) in zip(st.columns(len(shown)), zip("ab", shown)):
    with col:
        _run_panel(by_name[name], slot)

# ----------------------------------------------------------------------------- ensembles
st.subheader("Build an ensemble")
candidates = [r["name"] for r in runs if r["ready"] and not r["is_ensemble"]]
if len(candidates) < 2:
    st.info("An ensemble averages the probabilities of two or more trained runs: train another run first.")
    st.stop()
with st.form("ensemble_form"):
    members = st.multiselect("Member runs (same classes)", candidates, key="ens_members")
    c1, c2 = st.columns([2, 1])
    ens_name = c1.text_input("Ensemble name (empty = ensemble-<members>)", key="ens_name")
    fit = c2.checkbox("Fit weights on validation images", key="ens_fit",
                      help="grid search over member weights on the members' validation images (never the "
                           "test split); otherwise equal weights")
    build = st.form_submit_button("Build and evaluate", type="primary")
if build:
    if len(members) < 2:
        st.error("Pick at least two member runs.")
    else:
        member_runs = [by_name[m] for m in members]
        data, cls = _data_for(member_runs[0])
        try:
            out = (child_folder(RUNS_DIR, ens_name, "ensemble name") if ens_name.strip()
                   else RUNS_DIR / slug("ensemble-" + "+".join(members)))
            if out.exists() and any(out.iterdir()):
                raise ValueError(f"{out} already exists: choose another name")
            with st.spinner("Building the ensemble" + (" and fitting its weights" if fit else "") + "…"):
                made = create_ensemble([Path(r["path"]) for r in member_runs], out,
                                       fit_data=data if fit else None, classes=cls if fit else None)
            with st.spinner("Scoring it on the test split…"):
                evaluate_run(out, data, split="test", classes=cls, speed=speed, latency_repeats=10)
        except Exception as exc:  # noqa: BLE001 - shown on the page
            st.error(_message(exc))
        else:
            weights = made["weights"] or [1 / len(members)] * len(members)
            st.session_state["bench_flash"] = (f"Built **{out.name}** with weights "
                                               + ", ".join(f"{m} {w:.2f}" for m, w in zip(members, weights))
                                               + "; it is in the table and shown below.")
            st.session_state["bench_pending_a"] = out.name  # selected on the next run (widget already drawn)
            st.rerun()
