"""The README's commands are the ones CI runs; the package stays free of Streamlit."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    readme = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    ci_lines = [ln.strip() for ln in ci.splitlines()]
    commands = ("pip install -r requirements.txt", "pip install -r requirements-dev.txt", "python -m pytest",
                "pip install .")
    for command in commands:
        assert command in readme, f"README lost {command!r}"
        assert command in ci_lines, f".ci/run does not run {command!r}"
    # in this order: install, test, then the package install (the dependencies are there by then),
    # which .ci/check_install.sh checks from outside the checkout
    assert [ci_lines.index(c) for c in commands] == sorted(ci_lines.index(c) for c in commands)
    assert ci_lines.index(".ci/check_install.sh") > ci_lines.index("pip install .")
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


def _emotion_imports() -> dict[str, dict[str, bool]]:
    """``{module: {imported emotion module: imported inside a function?}}`` for every module of the package."""
    modules = {}
    for path in (REPO / "emotion").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        edges: dict[str, bool] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges[target] = edges.get(target, True) and id(node) not in top_level
        graph[name] = edges
    return graph


def test_the_package_import_graph_has_no_cycle() -> None:
    """Shared types live in leaf modules, so no module imports another inside a function to dodge a cycle.

    (A package importing its own submodules is how ``emotion.models`` and ``emotion.explain``
    assemble themselves, and does not count.)  Only the command line imports lazily: each
    command loads its modules when it runs, so ``--help`` and ``audit`` start without torch.
    """
    graph = _emotion_imports()
    lazy = sorted(f"{m} -> {t}" for m, edges in graph.items() for t, inside in edges.items()
                  if inside and m != "emotion.cli")
    assert not lazy, f"imports inside functions: {lazy}"

    def is_own_submodule(module: str, target: str) -> bool:
        return target.startswith(module + ".")

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, {}):
            if is_own_submodule(module, target) or is_own_submodule(target, module):
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_shipped_results_are_complete_and_name_no_temporary_or_home_paths() -> None:
    import json

    from emotion.results import shipped_results

    folder = REPO / "checkpoints" / "results"
    found = shipped_results(folder)
    assert len(found) == len(list(folder.glob("*.json"))) >= 2  # every file is a readable result
    for result in found:
        text = json.dumps({k: v for k, v in result.items() if k != "file"})
        assert "/tmp" not in text and "/home/" not in text and "/root/" not in text, result["file"]
        assert not Path(result["run"]["path"]).is_absolute()
        made = result["provenance"]
        assert made["command"].startswith("python benchmarks/ship_results.py") and made["machine"] and made["date"]
        matrix = result["confusion_matrix"]
        assert sum(map(sum, matrix)) == result["data"]["images"] == result["n"]
        assert len(matrix) == len(result["classes"]) == len(result["per_class"])
