"""The active dataset, chosen in the sidebar and kept across pages in ``st.session_state``."""

from __future__ import annotations

from typing import Optional

import streamlit as st

from emotion.data.sources import DEFAULT_CLASSES, DatasetError, DatasetSplits, load_dataset_spec

DATA_KEY = "dataset_spec"
CLASSES_KEY = "dataset_classes"


@st.cache_resource(show_spinner="Reading dataset…", max_entries=8)
def _load(spec: str, classes: Optional[str]) -> DatasetSplits:
    # DatasetSplits is treated as read-only by every page, so sharing it is safe.
    return load_dataset_spec(spec, classes=classes)


def dataset_sidebar() -> Optional[DatasetSplits]:
    """Sidebar widgets for the dataset; returns it, or shows the error and returns None."""
    st.session_state.setdefault(DATA_KEY, "synthetic")
    st.session_state.setdefault(CLASSES_KEY, ",".join(DEFAULT_CLASSES))
    with st.sidebar:
        st.header("Dataset")
        st.text_input(
            "Data source",
            key=DATA_KEY,
            help="'synthetic' (generated demo faces), a folder of class folders "
                 "(e.g. the Human Emotions Dataset or FER2013), or 'hf:<dataset id>'.",
        )
        st.text_input(
            "Classes",
            key=CLASSES_KEY,
            help="Comma-separated class folders to use, e.g. angry,happy,sad. Empty = all.",
        )
    spec = st.session_state[DATA_KEY].strip()
    classes = st.session_state[CLASSES_KEY].strip() or None
    try:
        return _load(spec, classes)
    except DatasetError as exc:
        st.sidebar.error(str(exc))
        return None


def dataset_key(dataset: DatasetSplits) -> str:
    """A short string that changes when the active dataset does (for ``st.cache_data`` keys)."""
    total = sum(len(v) for v in dataset.splits.values())
    return f"{dataset.name}|{dataset.root}|{','.join(dataset.classes)}|{total}"


def active_spec() -> tuple[str, Optional[str]]:
    """What the sidebar holds: (data source, classes or None for all)."""
    spec = str(st.session_state.get(DATA_KEY, "synthetic")).strip()
    classes = str(st.session_state.get(CLASSES_KEY, "")).strip() or None
    return spec, classes
