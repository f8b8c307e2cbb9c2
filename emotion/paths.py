"""Where runs, jobs, exclusion lists and the shipped model live (light: no torch import).

Everything defaults to folders under ``checkpoints/`` relative to the working
directory (the repository root when the app or the CLI runs there).
``EMOTION_RUNS_DIR`` moves the runs folder, and with it the job queue and the
exclusion lists that sit beside it (tests point it at a temporary folder so
they never see the user's runs); ``EMOTION_DEFAULT_MODEL_DIR`` moves the
shipped model's folder.  ``EMOTION_DATA_ROOTS`` (folders separated by
``os.pathsep``) confines dataset folders to those roots, for public
deployments where a browser user must not read arbitrary server folders.

An installed copy (``pip install .``) carries the shipped models and results in
``emotion/checkpoints/``; they answer when the working directory has no
``checkpoints/default``, so the ``emotion`` command works from any folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from emotion.names import slug

DATA_ROOTS_ENV = "EMOTION_DATA_ROOTS"
RUNS_DIR_ENV = "EMOTION_RUNS_DIR"
JOBS_DIR_ENV = "EMOTION_JOBS_DIR"
DEFAULT_MODEL_ENV = "EMOTION_DEFAULT_MODEL_DIR"
DEFAULT_RUNS_DIR = Path("checkpoints") / "runs"
DEFAULT_MODEL_DIR = Path("checkpoints") / "default"
# Where `pip install .` puts the repository's checkpoints/{default,fer7,results} (see pyproject.toml);
# a checkout has no such folder, so there the relative paths above are all there is.
INSTALLED_CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"


def runs_dir() -> Path:
    """The folder that holds one subfolder per run: ``$EMOTION_RUNS_DIR`` or ``checkpoints/runs``."""
    env = os.environ.get(RUNS_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_RUNS_DIR


def jobs_dir() -> Path:
    """The background-job queue: ``$EMOTION_JOBS_DIR``, else ``jobs/`` beside the runs folder."""
    env = os.environ.get(JOBS_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else runs_dir().parent / "jobs"


def exclusions_dir() -> Path:
    """Lists of images to leave out of training (written by the EDA page), beside the runs folder."""
    return runs_dir().parent / "exclusions"


def exclusion_file(dataset_name: str) -> Path:
    """The exclusion list of one dataset (by its name, e.g. ``fer2013`` or ``synthetic``)."""
    return exclusions_dir() / f"{slug(Path(dataset_name).name or dataset_name, fallback='dataset')}.json"


def default_model_dir() -> Path:
    """The shipped model: ``$EMOTION_DEFAULT_MODEL_DIR`` or ``checkpoints/default``.

    Prediction uses it when no run is named.  When the working directory has no
    ``checkpoints/default`` and this is an installed copy, it is the copy installed
    with the package (so ``emotion predict`` works from any folder).
    """
    env = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    installed = INSTALLED_CHECKPOINTS_DIR / DEFAULT_MODEL_DIR.name
    if not DEFAULT_MODEL_DIR.is_dir() and installed.is_dir():
        return installed
    return DEFAULT_MODEL_DIR


def shipped_model_dirs() -> dict[str, Path]:
    """The models that ship with the project, by name: ``default`` (angry, happy, sad) and ``fer7``
    (FER2013's seven classes), which sits beside the default model's folder."""
    default = default_model_dir()
    return {"default": default, "fer7": default.parent / "fer7"}


def shipped_results_dir() -> Path:
    """Evaluation results that ship with the project (``results/`` beside the shipped models): the
    study's numbers and the shipped models' scores, browseable on a machine that has trained nothing."""
    return default_model_dir().parent / "results"


def is_shipped_model(folder: Path) -> bool:
    """Whether ``folder`` is one of the shipped models (evaluating them writes nothing unless asked)."""
    target = Path(folder).expanduser().resolve()
    return any(target == d.expanduser().resolve() for d in shipped_model_dirs().values())


def data_roots() -> list[Path]:
    """The folders datasets must lie in (``$EMOTION_DATA_ROOTS``), resolved; empty: anywhere."""
    env = os.environ.get(DATA_ROOTS_ENV, "")
    return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]


def outside_data_roots(folder: Path) -> bool:
    """Whether ``folder`` (symbolic links resolved) lies outside every configured data root."""
    roots = data_roots()
    if not roots:
        return False
    target = Path(folder).expanduser().resolve()
    return not any(target == root or root in target.parents for root in roots)
