"""The README's commands are the ones CI runs; the package stays free of Streamlit."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    readme = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    ci_lines = [ln.strip() for ln in ci.splitlines()]
    for command in ("pip install -r requirements.txt", "pip install -r requirements-dev.txt",
                    "python -m pytest"):
        assert command in readme, f"README lost {command!r}"
        assert command in ci_lines, f".ci/run does not run {command!r}"
    assert "streamlit run app.py" in readme
    assert "venv" in ci


def test_emotion_package_never_imports_streamlit() -> None:
    for path in (REPO / "emotion").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "streamlit" for n in names), f"{path} imports streamlit"


def test_requirements_pin_facenet_and_leave_torch_to_pypi() -> None:
    reqs = (REPO / "requirements.txt").read_text()
    assert "facenet-pytorch==2.5.3" in reqs
    assert "torch==2.13.0" not in reqs
