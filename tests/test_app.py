"""The Streamlit app, headless: every page renders on the synthetic dataset and its main flows work.

Pages run inside the app (``switch_page``) as they do in the browser, with
``EMOTION_RUNS_DIR`` pointing at a temporary folder so the user's runs, job
queue and exclusion lists are never seen or touched.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders, save_tiny_run
from PIL import Image
from skimage import data as skdata
from streamlit.testing.v1 import AppTest

from emotion import jobs, paths
from emotion.config import QUICK_IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]
TINY = "synthetic:n=24,test=6,size=48"


@pytest.fixture(autouse=True)
def _run_from_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(paths.RUNS_DIR_ENV, str(tmp_path / "runs"))
    monkeypatch.delenv(paths.JOBS_DIR_ENV, raising=False)
    # whether or not checkpoints/default ships a model, these tests start with none
    monkeypatch.setenv(paths.DEFAULT_MODEL_ENV, str(tmp_path / "no-shipped-model"))
    yield
    queue = jobs.JobQueue()
    for job in queue.jobs():  # never leave a training process behind
        if job.state in jobs.ACTIVE:
            queue.stop(job.id, grace_s=5)


def _page(name: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    for key, value in state.items():
        at.session_state[key] = value
    if name is not None:
        at.switch_page(f"app_pages/{name}.py")
    return at.run()


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _texts(at: AppTest) -> str:
    kinds = (at.markdown, at.caption, at.info, at.success, at.warning, at.error)
    return "\n".join(str(e.value) for kind in kinds for e in kind)


@pytest.fixture
def tiny_runs() -> tuple[Path, Path]:
    """Two finished vit_custom runs (two steps each) in the test's runs folder."""
    from emotion.config import TrainConfig
    from emotion.training import train

    out = []
    for name, lr in (("tiny-a", 1e-3), ("tiny-b", 2e-3)):
        config = TrainConfig(model="vit_custom", from_scratch=True, data=TINY, image_size=48, max_steps=2,
                             batch_size=12, output_dir=str(paths.runs_dir() / name),
                             early_stopping_patience=0, warmup_ratio=0.0, learning_rate=lr)
        train(config)
        out.append(Path(config.output_dir))
    return out[0], out[1]


# ----------------------------------------------------------------------------- home

def test_home_shows_synthetic_dataset_counts_and_where_to_start() -> None:
    at = _page()
    assert not at.exception, at.exception
    assert any("Active dataset" in s.value for s in at.subheader)
    df = at.dataframe[0].value
    assert list(df.index) == ["angry", "happy", "sad"]
    assert (df["train"] > 0).all() and (df["test"] > 0).all()
    links = [p.proto.label for p in at.get("page_link")]
    assert {"EDA", "Train", "Benchmark"} <= set(links)
    assert "No model yet" in _texts(at)  # fresh machine: no shipped model, no runs


def test_navigation_lists_every_page_and_opens_on_home() -> None:
    from ui.navigation import PAGES

    assert PAGES[0].title == "Home"  # the first menu entry is named for what it is, not after app.py
    assert [p.path for p in PAGES] == sorted(f"app_pages/{f.name}" for f in (REPO / "app_pages").glob("*.py"))
    assert len({p.title for p in PAGES}) == len(PAGES)


def test_home_reports_a_missing_folder_without_crashing(tmp_path: Path) -> None:
    at = _page(dataset_spec=str(tmp_path / "nowhere"))
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_home_quick_model_is_one_click() -> None:
    at = _page()
    _button(at, "Train a quick model").click().run()
    assert not at.exception, at.exception
    queued = jobs.JobQueue().jobs()
    assert len(queued) == 1 and queued[0].name.startswith("quick-efficientnet_lite0")
    assert queued[0].config["data"] == "synthetic" and queued[0].config["image_size"] == QUICK_IMAGE_SIZE
    at = _page()
    assert "quick model is training" in _texts(at)
    assert not [b for b in at.button if b.label == "Train a quick model"]


def test_home_lists_trained_runs(tiny_runs: tuple[Path, Path]) -> None:
    at = _page()
    assert not at.exception, at.exception
    runs_table = at.dataframe[1].value
    assert set(runs_table["run"]) == {"tiny-a", "tiny-b"}
    assert at.dataframe[1].proto.placeholder == "–"  # a score not measured reads as a dash, not "None"
    assert "2 trained run(s) ready" in _texts(at)


# ----------------------------------------------------------------------------- EDA

def test_eda_page_shows_distribution_samples_mean_faces_and_sizes() -> None:
    at = _page("1_EDA")
    assert not at.exception, at.exception
    assert [t.label for t in at.tabs] == ["Class distribution", "Samples", "Mean faces", "Sizes and modes",
                                          "Audit"]
    assert list(at.dataframe[0].value.index) == ["angry", "happy", "sad"]
    images = at.get("image")
    assert len(images) >= 3 + 3  # a sample grid and a mean face per class at least
    labels = [m.label for m in at.metric]
    assert "Images inspected" in labels and "Median size" in labels
    assert next(m for m in at.metric if m.label == "Median size").value == "96×96"
    assert len(at.get("plotly_chart")) >= 4


def test_eda_audit_flags_and_saves_an_exclusion_list(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "faces", {"angry": 6, "happy": 6, "sad": 6})
    Image.new("RGB", (32, 32)).save(data / "sad" / "black.png")  # a blank image for the audit to flag
    at = _page("1_EDA", dataset_spec=str(data))
    assert not at.exception, at.exception
    _button(at, "Run audit").click().run()
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert "corrupt" in labels and "leakage" in labels
    assert next(m for m in at.metric if m.label == "blank").value == "1"
    assert any("1 file(s) would be left out" in m.value for m in at.markdown)
    _button(at, "Save exclusion list").click().run()
    assert not at.exception, at.exception
    target = paths.exclusion_file("faces")
    assert json.loads(target.read_text())["files"] == [str((data / "sad" / "black.png").resolve())]
    assert target.parent == paths.runs_dir().parent / "exclusions"  # beside the runs, not in the repository
    assert (data / "sad" / "black.png").exists()  # never deleted
    train = _page("2_Train", dataset_spec=str(data))
    box = train.checkbox(key="train_exclusions")
    assert not box.disabled and box.value is True
    # a second save adds to the list (it may hold another audit's files); removing it keeps a copy
    other = str((data / "angry" / "0.png").resolve())
    target.write_text(json.dumps({"reason": "by hand", "files": [other]}))
    at = _page("1_EDA", dataset_spec=str(data))
    _button(at, "Run audit").click().run()
    _button(at, "Save exclusion list").click().run()
    assert not at.exception, at.exception
    blank = str((data / "sad" / "black.png").resolve())
    assert json.loads(target.read_text())["files"] == sorted([other, blank])
    _button(at, "Remove exclusion list").click().run()
    assert not at.exception, at.exception
    assert not target.exists()
    (kept,) = target.parent.glob("faces.removed-*.json")
    assert len(json.loads(kept.read_text())["files"]) == 2


# ----------------------------------------------------------------------------- Train

def test_train_page_queues_a_run_that_trains_in_the_background() -> None:
    at = _page("2_Train", dataset_spec=TINY)
    assert not at.exception, at.exception
    at.selectbox(key="train_model").set_value("vit_custom").run()
    assert at.checkbox(key="train_scratch_vit_custom").value is True  # no pretrained weights exist
    at.number_input(key="train_size_vit_custom").set_value(48)
    at.number_input(key="train_batch").set_value(12)
    at.number_input(key="train_max_steps").set_value(2)
    at.number_input(key="train_patience").set_value(0)
    at.text_input(key="train_run_name").set_value("from-the-page")
    _button(at, "Queue run").click().run()
    assert not at.exception, at.exception
    assert any("from-the-page" in s.value for s in at.success)
    queue = jobs.JobQueue()
    (job,) = queue.jobs()
    assert (job.config["model"], job.config["image_size"], job.config["data"]) == ("vit_custom", 48, TINY)
    assert job.run_dir == (paths.runs_dir() / "from-the-page").resolve()
    assert "from-the-page" in _texts(at)
    job = queue.wait(job.id, timeout=240)
    assert job.state == jobs.COMPLETED, (job.error, job.log_tail())
    at = _page("2_Train", dataset_spec=TINY)  # a fresh session (another tab, a reload) sees it
    assert not at.exception, at.exception
    text = _texts(at)
    assert "from-the-page" in text and "**completed**" in text and "validation accuracy" in text
    assert [b.label for b in at.button if b.key == f"forget_{job.id}"] == ["Remove"]
    assert len(at.get("plotly_chart")) == 2  # loss and accuracy curves


def test_train_page_queues_a_distillation_from_a_trained_run() -> None:
    teacher = save_tiny_run(paths.runs_dir() / "teacher-vit", "vit_custom")
    at = _page("2_Train", dataset_spec=TINY)
    at.selectbox(key="train_model").set_value("vit_custom").run()
    assert at.selectbox(key="train_teacher").options == ["none", "teacher-vit"]
    at.selectbox(key="train_teacher").set_value("teacher-vit")
    at.number_input(key="train_distill_weight").set_value(0.7)
    at.number_input(key="train_max_steps").set_value(2)
    _button(at, "Queue run").click().run()
    assert not at.exception, at.exception
    (job,) = jobs.JobQueue().jobs()
    assert Path(job.config["distill_from"]) == teacher and job.config["distill_weight"] == 0.7


def test_train_page_shows_a_failed_run_with_its_error_and_log(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "gone", {"angry": 4, "happy": 4, "sad": 4})
    at = _page("2_Train", dataset_spec=str(data))
    at.selectbox(key="train_model").set_value("vit_custom").run()
    at.number_input(key="train_max_steps").set_value(2)
    shutil.rmtree(data)  # the data disappears after the page read it: the run fails when it starts
    _button(at, "Queue run").click().run()
    assert not at.exception, at.exception
    (job,) = jobs.JobQueue().jobs()
    job = jobs.JobQueue().wait(job.id, timeout=120)
    assert job.state == jobs.FAILED and "does not exist" in job.error
    at = _page("2_Train")
    assert not at.exception, at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert any("does not exist" in c.value for c in at.code)  # the log tail
    assert [b.label for b in at.button if b.key == f"resume_{job.id}"] == ["Resume"]


def test_train_page_reports_an_invalid_config_without_queueing() -> None:
    import importlib.util

    from emotion.config import TRACKERS

    missing = [t for t in TRACKERS if t != "none" and importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("every tracker package is installed")
    at = _page("2_Train", dataset_spec=TINY)
    at.selectbox(key="train_tracker").set_value(missing[0])
    _button(at, "Queue run").click().run()
    assert not at.exception, at.exception
    assert any(f"pip install {missing[0]}" in e.value for e in at.error)
    assert jobs.JobQueue().jobs() == []


# ----------------------------------------------------------------------------- Benchmark

def test_benchmark_page_without_runs_says_where_to_train() -> None:
    at = _page("3_Benchmark")
    assert not at.exception, at.exception
    assert any("No runs" in i.value for i in at.info)


def test_benchmark_page_shows_the_shipped_results_on_a_fresh_machine(tmp_path: Path) -> None:
    from emotion.evaluation import evaluate_run
    from emotion.results import save_shipped_result

    run = save_tiny_run(tmp_path / "study-vit", "vit_custom")
    result = evaluate_run(run, TINY, split="test", save=False)
    save_shipped_result(result, ["python", "benchmarks/ship_results.py", "--run", str(run)],
                        out_dir=paths.shipped_results_dir(), root=tmp_path)
    at = _page("3_Benchmark")  # no runs of the user's own
    assert not at.exception, at.exception
    assert [s.value for s in at.subheader][:2] == ["Shipped results", "Your runs"]
    table = at.dataframe[0].value
    assert list(table["model"]) == ["study-vit"] and table["accuracy"][0] == pytest.approx(result["accuracy"])
    assert all(d.proto.placeholder == "–" for d in at.dataframe)
    assert len(at.get("plotly_chart")) == 3  # confusion matrix, recall per class, reliability curve
    assert any(c.value.startswith("shipped · `python benchmarks/ship_results.py") for c in at.caption)
    assert str(tmp_path) not in json.dumps(table.to_dict())  # paths are stored relative, never temporary
    assert any("No runs" in i.value for i in at.info)


def test_benchmark_page_table_evaluation_comparison_and_ensemble(tiny_runs: tuple[Path, Path]) -> None:
    at = _page("3_Benchmark")
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["run"]) == {"tiny-a", "tiny-b"}
    for column in ("model", "status", "accuracy", "macro_f1", "recall_angry", "ece", "latency_ms", "run_dir"):
        assert column in table.columns, column
    assert at.get("download_button")

    _button(at, "Evaluate on the test split").click().run()
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert {"Accuracy", "Macro-F1", "ECE"} <= set(labels)
    assert len(at.get("plotly_chart")) == 3  # confusion matrix, recall, reliability
    first = at.selectbox(key="bench_run_a").value
    assert list((paths.runs_dir() / first / "evaluations").glob("*-test.json"))

    other = "tiny-b" if first == "tiny-a" else "tiny-a"
    at.selectbox(key="bench_run_b").set_value(other).run()
    at.button(key="bench_eval_b").click().run()
    at.toggle(key="bench_normalized").set_value(False).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 6  # two panels side by side
    table = at.dataframe[0].value
    assert table["ece"].notna().all()  # the stored evaluations now fill the table

    at.multiselect(key="ens_members").set_value(["tiny-a", "tiny-b"])
    at.text_input(key="ens_name").set_value("ens-ab")
    _button(at, "Build and evaluate").click().run()
    assert not at.exception, at.exception
    assert any("ens-ab" in s.value for s in at.success)
    assert "ens-ab" in set(at.dataframe[0].value["run"])
    assert at.selectbox(key="bench_run_a").value == "ens-ab"
    assert list((paths.runs_dir() / "ens-ab" / "evaluations").glob("*.json"))


# ----------------------------------------------------------------------------- Predict

def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


ASTRONAUT = Image.fromarray(skdata.astronaut())  # one face
BLANK = Image.new("RGB", (160, 120), (128, 128, 128))  # no face


@pytest.fixture
def tiny_model() -> Path:
    """A finished tiny vit_custom run (random weights: the plumbing, not accuracy)."""
    return save_tiny_run(paths.runs_dir() / "tiny-vit", "vit_custom", val_accuracy=0.5)


@pytest.mark.parametrize("page", ["4_Predict", "5_Explain"])
def test_predict_and_explain_without_a_model_offer_the_one_click_quick_model(page: str) -> None:
    at = _page(page)
    assert not at.exception, at.exception
    assert any("No model yet" in w.value for w in at.warning)
    assert [b.label for b in at.button if b.key.endswith("_run_quick")] == ["Train a quick model"]
    assert not at.get("file_uploader")  # nothing to predict with yet


def test_predict_page_says_which_run_and_classifies_uploads(tiny_model: Path) -> None:
    at = _page("4_Predict")
    assert not at.exception, at.exception
    assert "tiny-vit" in _texts(at) and "best validation accuracy" in _texts(at)
    assert at.file_uploader(key="predict_files").accept_multiple_files
    big = b"\x89PNG" + bytes(11 * 2 ** 20)  # over the page's 10 MB limit
    at.file_uploader(key="predict_files").set_value([
        ("astronaut.png", _png(ASTRONAUT), "image/png"),
        ("broken.png", b"not an image at all", "image/png"),
        ("huge.png", big, "image/png"),
        ("blank.png", _png(BLANK), "image/png"),
    ]).run()
    assert not at.exception, at.exception
    text = _texts(at)
    assert "**astronaut.png** · 512×512 · 1 face" in text
    bars = [p.proto.text for p in at.get("progress")]
    assert len(bars) == 3 and [b.split()[0] for b in bars] == ["angry", "happy", "sad"]  # one bar per class
    errors = " ".join(e.value for e in at.error)
    assert "**broken.png** could not be read as an image" in errors
    assert "**huge.png** is 11.0 MB, more than the 10 MB" in errors
    assert any("No face found in **blank.png**" in w.value for w in at.warning)
    assert at.get("download_button")

    _button(at, "Classify the whole image").click().run()  # the offer on the face-less image
    assert not at.exception, at.exception
    assert at.toggle(key="predict_whole").value is True
    assert any("whole image" in i.value for i in at.info)
    assert len(at.get("progress")) == 6  # now the blank image has its bars too


def test_predict_page_classifies_the_sample_photo(tiny_model: Path) -> None:
    at = _page("4_Predict")
    at.radio(key="predict_source").set_value("Sample photo").run()
    assert not at.exception, at.exception
    assert "**astronaut.png** · 512×512 · 1 face" in _texts(at)  # a real face, no upload needed
    assert len(at.get("progress")) == 3


def test_predict_page_offers_the_shipped_seven_class_model(tiny_model: Path, tmp_path: Path) -> None:
    fer7 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    save_tiny_run(tmp_path / "fer7", "vit_custom", labels=fer7)  # beside the (absent) default model
    at = _page("4_Predict")
    picker = at.selectbox(key="predict_run")
    assert "shipped: fer7 · vit_custom 32px · 7 classes" in picker.options
    assert picker.index == 0  # the automatic choice stays the default
    picker.select_index(picker.options.index("shipped: fer7 · vit_custom 32px · 7 classes")).run()
    assert not at.exception, at.exception
    assert any("**fer7**" in c.value and "a shipped model" in c.value and "surprise" in c.value
               for c in at.caption)
    at.file_uploader(key="predict_files").set_value([("astronaut.png", _png(ASTRONAUT), "image/png")]).run()
    assert len(at.get("progress")) == 7  # one bar per class of the chosen model


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_predict_page_runs_the_classifier_with_onnxruntime_when_asked(tiny_model: Path) -> None:
    at = _page("4_Predict")
    at.radio(key="predict_run_backend").set_value("onnx").run()
    assert not at.exception, at.exception
    assert any("run by onnxruntime" in c.value for c in at.caption)
    at.file_uploader(key="predict_files").set_value([("astronaut.png", _png(ASTRONAUT), "image/png")]).run()
    assert not at.exception, at.exception
    assert "**astronaut.png** · 512×512 · 1 face" in _texts(at)
    assert len(at.get("progress")) == 3


def test_predict_page_run_choice_and_webcam_modes(tiny_model: Path) -> None:
    save_tiny_run(paths.runs_dir() / "tiny-lite", "efficientnet_lite0", val_accuracy=0.4)
    at = _page("4_Predict")
    picker = at.selectbox(key="predict_run")
    assert picker.options[0].startswith("automatic") and len(picker.options) == 3
    assert "tiny-vit" in _texts(at)  # automatic: the better validation accuracy
    picker.select_index(next(i for i, o in enumerate(picker.options) if o.startswith("tiny-lite"))).run()
    assert not at.exception, at.exception
    assert any("**tiny-lite**" in c.value and "chosen above" in c.value for c in at.caption)

    at.radio(key="predict_source").set_value("Webcam snapshot").run()
    buf = io.BytesIO()
    ASTRONAUT.save(buf, format="JPEG")
    at.camera_input(key="predict_camera").set_value(("shot.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert "**snapshot** · 512×512 · 1 face" in _texts(at)

    at.radio(key="predict_source").set_value("Live webcam").run()
    assert not at.exception, at.exception  # streamlit-webrtc, or a clear note where it cannot run
    if importlib.util.find_spec("streamlit_webrtc") is None:
        assert any("pip install streamlit-webrtc" in i.value for i in at.info)
    else:  # the settings, then the streamer (AppTest has no real runtime: there it says it cannot start)
        assert {"predict_live_alpha", "predict_live_every"} <= {s.key for s in at.slider}


def test_predict_page_video_upload_shows_a_timeline_per_face_and_the_csv(tiny_model: Path, tmp_path: Path) -> None:
    import av

    clip = tmp_path / "clip.mp4"  # the astronaut's face drifting right for 1 s at 10 fps
    face = ASTRONAUT.crop((140, 20, 316, 216)).resize((88, 98))
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(10):
            canvas = Image.new("RGB", (160, 120), (90, 90, 90))
            canvas.paste(face, (20 + 2 * i, 8))
            for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    at = _page("4_Predict")
    at.radio(key="predict_source").set_value("Video").run()
    assert not at.exception, at.exception
    assert any("Upload a video" in i.value for i in at.info)
    at.number_input(key="predict_video_every").set_value(2)
    at.file_uploader(key="predict_video_file").set_value(("clip.mp4", clip.read_bytes(), "video/mp4")).run()
    assert not at.exception, at.exception
    assert "**clip.mp4** · 5 frames analysed (one in 2) · 5 face rows · 1 face track" in _texts(at)
    assert len(at.get("plotly_chart")) == 1  # one timeline: one face
    assert "Download the rows (CSV)" in [b.proto.label for b in at.get("download_button")]
    assert at.dataframe[0].value["frames"].tolist() == [5]  # the track table

    at.file_uploader(key="predict_video_file").set_value(("broken.mp4", b"not a video", "video/mp4")).run()
    assert not at.exception, at.exception
    assert any("**broken.mp4** could not be read as a video" in e.value for e in at.error)


def test_upload_checks_and_labelled_faces() -> None:
    from emotion.faces import Face
    from emotion.inference import FacePrediction, ImagePrediction
    from ui.predict import annotate, check_upload

    image, problem = check_upload("a.png", _png(ASTRONAUT))
    assert problem == "" and image.size == (512, 512)
    assert check_upload("a.png", _png(ASTRONAUT), max_mb=0.01)[1].startswith("**a.png** is 0.")
    assert "could not be read" in check_upload("b.jpg", b"\xff\xd8 truncated")[1]
    assert "could not be read" in check_upload("empty.png", b"")[1]
    face = FacePrediction(Face((100, 100, 200, 220), (), 0.99), {"angry": 0.1, "happy": 0.8, "sad": 0.1})
    out = np.asarray(annotate(BLANK.resize((400, 300)), ImagePrediction([face], (400, 300), ["angry", "happy",
                                                                                             "sad"])))
    assert out.shape == (300, 400, 3)
    assert (out[150, 100] != 128).any() and (out[150, 150] == 128).all()  # a box edge, untouched inside


def test_webrtc_settings_come_from_the_environment() -> None:
    from ui.webcam import rtc_configuration

    assert rtc_configuration({}) is None  # streamlit-webrtc's own choice (HF_TOKEN, Twilio, Cloudflare, STUN)
    cfg = rtc_configuration({"EMOTION_TURN_URL": "turn:t.example:3478,turns:t.example:5349",
                             "EMOTION_TURN_USERNAME": "u", "EMOTION_TURN_CREDENTIAL": "p"})
    assert cfg["iceServers"][1] == {"urls": ["turn:t.example:3478", "turns:t.example:5349"], "username": "u",
                                    "credential": "p"}
    servers = [{"urls": ["turn:x:3478"], "username": "a", "credential": "b"}]
    assert rtc_configuration({"EMOTION_ICE_SERVERS": json.dumps(servers)}) == {"iceServers": servers}
    with pytest.raises(ValueError, match="EMOTION_ICE_SERVERS is not valid JSON"):
        rtc_configuration({"EMOTION_ICE_SERVERS": "[{"})
    with pytest.raises(ValueError, match="needs both"):
        rtc_configuration({"EMOTION_TURN_URL": "turn:x:3478"})


def test_live_annotator_tracks_and_draws_smoothed_labels(tiny_model: Path) -> None:
    from emotion.inference import Predictor
    from emotion.video import VideoConfig
    from ui.webcam import LiveAnnotator

    live = LiveAnnotator(Predictor.from_run(tiny_model), VideoConfig(redetect_every=3, ema_alpha=0.5))
    frame = np.asarray(ASTRONAUT.resize((320, 320)))
    outs = [live.process(frame) for _ in range(4)]
    assert live.frames == 4 and live.video.detections == 2  # frames 0 and 3
    assert [f.track_id for f in live.last.faces] == [1]  # one face, the same track throughout
    assert all(o.shape == frame.shape and (o != frame).any() for o in outs)  # box and label drawn


# ----------------------------------------------------------------------------- Explain

def test_explain_page_on_a_dataset_sample_of_a_vit(tiny_model: Path) -> None:
    from emotion import runs
    from emotion.explain import METHODS
    from ui.explain import METHOD_HELP

    assert set(METHOD_HELP) == set(METHODS)
    # a fitted temperature: the page must show the calibrated probabilities everywhere, as Predict does
    runs.write_json(tiny_model / runs.TEMPERATURE_FILE, {"temperature": 0.2})
    at = _page("5_Explain", dataset_spec=TINY)
    assert not at.exception, at.exception
    shown = at.selectbox(key="explain_target").options[0]  # "predicted: LABEL (NN%)"
    label, percent = re.fullmatch(r"predicted: (\S+) \((\d+%)\)", shown).groups()
    assert next(m.value for m in at.metric if m.label == "Predicted") == f"{label} · {percent}"
    assert at.radio(key="explain_source").value == "Sample photo"  # a real face first, whatever the data
    assert at.toggle(key="explain_detect_Sample photo").value is True
    assert any("astronaut" in c.value and "public domain" in c.value for c in at.caption)
    assert any(s.value.startswith("Grad-CAM for") for s in at.subheader)
    at.radio(key="explain_source").set_value("Dataset sample").run()
    assert not at.exception, at.exception
    assert at.toggle(key="explain_detect_Dataset sample").value is False  # dataset images are face crops
    heads = [s.value for s in at.subheader]
    assert heads[0].startswith("Grad-CAM for")
    assert any("attention rollout beside Grad-CAM" in h for h in heads)
    assert {"Predicted", "ROAD score"} <= {m.label for m in at.metric}
    assert len(at.get("image")) == 5  # view, overlay, rollout, Grad-CAM, patch grid
    assert "4×4 patches of 8 px" in " ".join(i.proto.imgs[0].caption for i in at.get("image"))
    assert at.selectbox(key="explain_method").options == ["Grad-CAM", "Grad-CAM++", "EigenCAM", "Score-CAM",
                                                           "Attention rollout", "Feature maps"]

    at.selectbox(key="explain_target").select_index(3).run()  # "sad", whatever was predicted
    assert at.subheader[0].value == "Grad-CAM for “sad”"
    _button(at, "Compare all methods").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == 6 and list(table.columns[:4]) == ["method", "ROAD", "MoRF", "LeRF"]
    assert table["ROAD"].is_monotonic_decreasing

    at.selectbox(key="explain_method").select_index(5).run()  # feature maps
    assert not at.exception, at.exception
    assert any(s.value.startswith("Feature maps: early, middle and deep") for s in at.subheader)


def test_explain_page_finds_the_face_in_an_upload(tiny_model: Path) -> None:
    at = _page("5_Explain")
    at.radio(key="explain_source").set_value("Upload").run()
    assert any("Upload an image" in i.value for i in at.info)
    at.file_uploader(key="explain_file").set_value(("astronaut.png", _png(ASTRONAUT), "image/png")).run()
    assert not at.exception, at.exception
    assert at.toggle(key="explain_detect_Upload").value is True
    assert at.selectbox(key="explain_face").value == 0  # the one face
    assert {"Predicted", "ROAD score"} <= {m.label for m in at.metric}
    at.file_uploader(key="explain_file").set_value(("broken.png", b"nope", "image/png")).run()
    assert not at.exception, at.exception
    assert any("could not be read" in e.value for e in at.error)


# ----------------------------------------------------------------------------- Spaces

def test_docker_image_starts_the_app_the_way_spaces_expect() -> None:
    import re

    docker = (REPO / "Dockerfile").read_text()
    front = (REPO / "README.md").read_text().split("---")[1]
    assert re.search(r"^sdk: docker$", front, re.M) and re.search(r"^app_port: 8501$", front, re.M)
    assert "EXPOSE 8501" in docker and "--uid 1000" in docker and "\nUSER user" in docker
    cmd = docker[docker.index("CMD"):]
    for part in ('"streamlit", "run", "app.py"', '"--server.port", "8501"', '"--server.address", "0.0.0.0"'):
        assert part in cmd, part
    assert "pip install -r /tmp/requirements.txt" in docker and "EMOTION_CACHE_DIR=" in docker
    assert "EMOTION_DATA_ROOTS=/home/user/app/data" in docker  # a public Space reads no other folder
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"checkpoints/runs", "checkpoints/jobs", ".git"} <= set(ignored)
    assert "checkpoints/default" not in ignored and "checkpoints/fer7" not in ignored  # shipped models ship
    assert re.search(r"^maxUploadSize = \d+$", (REPO / ".streamlit" / "config.toml").read_text(), re.M)
    import tomllib

    # no full garbage collection after every rerun: it starved the live webcam (config.toml says why)
    assert tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["runner"]["postScriptGC"] is False
