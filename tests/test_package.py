"""``pip install .`` gives a working package.

The wheel holds the ``emotion`` console script, every module of the package, the
shipped models and results (so the command predicts from any folder), and nothing
from training output, the tests or the app; its dependencies are requirements.txt.
The full check (a real prediction with the installed command) is ``.ci/check_install.sh``.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from emotion import __version__, paths

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("default", "fer7")  # the shipped models (emotion.paths.shipped_model_dirs)
MODEL_FILES = ("config.json", "labels.json", "temperature.json", "README.md")


def model_files(name: str) -> list[str]:
    """A shipped model's files, relative to checkpoints/: its own and, for an ensemble, its packed members'."""
    folder = REPO / "checkpoints" / name
    members = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("members/*/*"))
               if p.suffix in (".json", ".safetensors")]
    weights = ["model.safetensors"] if (folder / "model.safetensors").is_file() else []
    assert weights or members, f"checkpoints/{name} has neither weights nor packed members"
    return [f"{name}/{f}" for f in (*MODEL_FILES, *weights, *members)]
# Left out of the copy the wheel is built from: version control, caches, build artefacts, local output.
NOT_COPIED = {".git", ".pytest_cache", ".ruff_cache", "build", "dist", "outputs", "wandb", "mlruns", ".whl",
              ".gl", ".venv", "venv"}
# Training output that must never be packaged: the build copy gets a file in each.
SENTINELS = ("checkpoints/runs/sentinel-run/model.safetensors", "checkpoints/runs/sentinel-run/config.json",
             "checkpoints/jobs/sentinel.json", "checkpoints/exclusions/sentinel.json",
             "checkpoints/default/evaluations/sentinel.json", "checkpoints/fer7/evaluations/sentinel.json")
BUILD_BACKEND_MIN = Version("70.1")  # [build-system] requires in pyproject.toml


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``command`` and keep its output, for the assertion message when it fails."""
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                          **kwargs)  # type: ignore[call-overload]


def _copy_checkout(dest: Path) -> None:
    """The checkout without caches or local output; checkpoints/ with the shipped folders only."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for entry in REPO.iterdir():
        if entry.name in NOT_COPIED or entry.name.endswith(".egg-info"):
            continue
        if entry.name == "checkpoints":
            (dest / "checkpoints").mkdir(parents=True)
            shutil.copy2(entry / "README.md", dest / "checkpoints" / "README.md")
            for name in (*SHIPPED, "results"):
                shutil.copytree(entry / name, dest / "checkpoints" / name,
                                ignore=shutil.ignore_patterns("evaluations", "__pycache__"))
        elif entry.is_dir():
            shutil.copytree(entry, dest / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, dest / entry.name)


def _setuptools_builds_offline() -> bool:
    """Whether this environment's setuptools can build the wheel itself (else pip fetches one)."""
    try:
        return Version(metadata.version("setuptools")) >= BUILD_BACKEND_MIN
    except metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built like ``pip install .`` builds it, from a copy of the checkout.

    A copy, so the build leaves no build/ or egg-info in the checkout, and so it can hold a file of
    training output in every folder that must stay out of the package.
    """
    root = tmp_path_factory.mktemp("package")
    src, out = root / "src", root / "wheel"
    _copy_checkout(src)
    for sentinel in SENTINELS:
        (src / sentinel).parent.mkdir(parents=True, exist_ok=True)
        (src / sentinel).write_text("{}")
    command = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(out)]
    if _setuptools_builds_offline():
        command += ["--no-build-isolation", "--no-index"]
    done = _run(command, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    wheels = list(out.glob("emotion_studio-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(wheel_path: Path) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(wheel_path) as zf:
        yield zf


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    return wheel.read(f"emotion_studio-{__version__}.dist-info/{name}").decode()


def test_the_wheel_declares_the_emotion_console_script(wheel: zipfile.ZipFile) -> None:
    from emotion.cli import main

    entry_points = _dist_info(wheel, "entry_points.txt")
    assert re.search(r"^\[console_scripts\]\s*\nemotion = emotion\.cli:main$", entry_points, flags=re.MULTILINE), \
        entry_points
    assert callable(main)


def test_the_wheel_holds_every_module_of_the_package(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "emotion").rglob("*.py")
               if "__pycache__" not in p.parts}
    packages = {m.rsplit("/", 1)[0] for m in modules if m.endswith("/__init__.py")}
    assert {"emotion", "emotion/data", "emotion/models", "emotion/explain"} <= packages
    missing = sorted(modules - names)
    assert not missing, f"not in the wheel (add the subpackage to [tool.setuptools] packages): {missing}"


def test_the_wheel_holds_the_shipped_models_and_results(wheel: zipfile.ZipFile) -> None:
    sizes = {info.filename: info.file_size for info in wheel.infolist()}
    required = [f for name in SHIPPED for f in model_files(name)]
    required += [p.relative_to(REPO / "checkpoints").as_posix()
                 for p in sorted((REPO / "checkpoints" / "results").glob("*.json"))]
    assert len(required) > len(SHIPPED) * len(MODEL_FILES)  # the results are there too
    for rel in required:
        packaged = f"emotion/checkpoints/{rel}"
        assert packaged in sizes, f"{packaged} (from checkpoints/{rel}) is not in the wheel"
        assert sizes[packaged] == (REPO / "checkpoints" / rel).stat().st_size, f"{packaged} differs"


def test_the_wheel_leaves_out_training_output_tests_and_the_app(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"emotion", f"emotion_studio-{__version__}.dist-info"}, tops
    assert not [n for n in names if "sentinel" in n or "/runs/" in n or "/evaluations/" in n]
    for name in names:
        if name.startswith("emotion/checkpoints/"):
            rel = name.removeprefix("emotion/checkpoints/")
            # only checkpoints/README.md, {default,fer7,results}/<file> and a packed ensemble's members
            top = rel.split("/")[0]
            assert (rel == "README.md" or (rel.count("/") == 1 and top in (*SHIPPED, "results"))
                    or (rel.count("/") == 3 and top in SHIPPED and rel.split("/")[1] == "members")), name
            assert (REPO / "checkpoints" / rel).is_file(), f"{name} has no source in checkpoints/"


def test_the_wheel_metadata_come_from_requirements_and_the_package(wheel: zipfile.ZipFile) -> None:
    meta = email.message_from_string(_dist_info(wheel, "METADATA"))
    assert meta["Version"] == __version__
    lines = [ln.split("#", 1)[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    expected = sorted(str(Requirement(ln)) for ln in lines if ln)
    assert sorted(str(Requirement(r)) for r in meta.get_all("Requires-Dist")) == expected


def test_the_installed_package_finds_its_models_from_any_folder(wheel_path: Path, tmp_path: Path) -> None:
    """Installed with its files (no dependencies), the command starts and the shipped models resolve
    from a folder that has no checkpoints/ (the prediction itself: .ci/check_install.sh)."""
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
               str(wheel_path)]
    done = _run(install)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    env["PYTHONPATH"] = str(target)
    script = ("import emotion, emotion.paths as p; from pathlib import Path; "
              "print(Path(emotion.__file__).parent); print(*p.shipped_model_dirs().values(), sep='\\n'); "
              "print(p.shipped_results_dir())")
    done = _run([sys.executable, "-c", script], cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    package, *folders = (Path(line) for line in done.stdout.splitlines())
    assert package == (target / "emotion").resolve()
    for name, folder in zip((*SHIPPED, "results"), folders):
        assert folder == package / "checkpoints" / name and folder.is_dir(), folder
    assert all((package / "checkpoints" / f).is_file() for name in SHIPPED for f in model_files(name))
    done = _run([str(target / "bin" / "emotion"), "--help"], cwd=elsewhere, env=env)
    assert done.returncode == 0 and "predict" in done.stdout, done.stderr


def test_a_checkout_and_the_environment_still_come_first(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoints/default in the working directory, or $EMOTION_DEFAULT_MODEL_DIR, wins over the
    installed copy; with neither and no installed copy (a checkout) the path stays relative."""
    installed = tmp_path / "site" / "emotion" / "checkpoints"
    (installed / "default").mkdir(parents=True)
    monkeypatch.delenv(paths.DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(paths, "INSTALLED_CHECKPOINTS_DIR", installed)
    monkeypatch.chdir(tmp_path)
    assert paths.default_model_dir() == installed / "default"
    assert paths.shipped_model_dirs()["fer7"] == installed / "fer7"
    assert paths.shipped_results_dir() == installed / "results"
    (tmp_path / "checkpoints" / "default").mkdir(parents=True)
    assert paths.default_model_dir() == Path("checkpoints") / "default"
    monkeypatch.setenv(paths.DEFAULT_MODEL_ENV, str(tmp_path / "mine"))
    assert paths.default_model_dir() == tmp_path / "mine"
    monkeypatch.delenv(paths.DEFAULT_MODEL_ENV)
    monkeypatch.chdir(tmp_path / "site")
    monkeypatch.setattr(paths, "INSTALLED_CHECKPOINTS_DIR", tmp_path / "no-such-folder")
    assert paths.default_model_dir() == Path("checkpoints") / "default"
