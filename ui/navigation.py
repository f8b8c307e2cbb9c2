"""The app's pages, in menu order: file, menu label, icon, and what each is for (the home page lists them)."""

from __future__ import annotations

from typing import NamedTuple


class PageInfo(NamedTuple):
    path: str  # relative to the repository root, where app.py is
    title: str
    icon: str
    purpose: str


HOME = PageInfo("app_pages/0_Home.py", "Home", ":material/home:",
                "the active dataset, the model in use, your runs, and where to go next")
PAGES = (
    HOME,
    PageInfo("app_pages/1_EDA.py", "EDA", ":material/query_stats:",
             "class balance, sample faces, mean faces, sizes, and the data audit (corrupt, blank, duplicate and "
             "leaked images; exclude them from training)"),
    PageInfo("app_pages/2_Train.py", "Train", ":material/model_training:",
             "train any registered model in the background, with live curves, stop/resume and a queue"),
    PageInfo("app_pages/3_Benchmark.py", "Benchmark", ":material/leaderboard:",
             "compare runs: table, confusion matrices, recall, calibration, ensembles, CSV"),
    PageInfo("app_pages/4_Predict.py", "Predict", ":material/mood:",
             "upload photos or use the webcam (snapshots or live video): every face found and classified"),
    PageInfo("app_pages/5_Explain.py", "Explain", ":material/psychology:",
             "why the model decided: Grad-CAM family, attention rollout, feature maps, and a ROAD score to "
             "compare them"),
)
