"""The import map of ``wingclr``: no circle, no arrow back up between stages, few flat modules.

Every module's imports are read with :mod:`ast` (those inside functions too), so an import that
only runs on one path still counts. Stages in pipeline order: a stage may import a lower stage and
the shared low modules (everything directly in ``wingclr/`` and ``wingclr/weights/``), never a
higher stage; a shared module imports only shared modules. The weights catalogue and its command\nline sit above every stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wingclr"
# stage -> the modules (dotted prefixes) that belong to it, in pipeline order
STAGES = [
    ("segment", ("wingclr.segment",)),
    ("cluster", ("wingclr.cluster",)),
    ("dataset", ("wingclr.dataset",)),
    ("train", ("wingclr.train",)),
    ("embed", ("wingclr.embed",)),
    ("evaluate", ("wingclr.evaluate",)),
]
# above every stage: the weights catalogue names each stage's files (no stage imports it)
TOOLS = ("wingclr.weights.catalog", "wingclr.weights.__main__")
MAX_FLAT = 20


def _modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the wingclr modules it imports anywhere in its file (``from a import b`` counts
    ``a.b`` when ``b`` is a module)."""
    modules = _modules(package)
    graph = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def stage_rank(module: str) -> int:
    """0 for shared low modules, 1 + the stage's place in the pipeline, or above all for tools."""
    if module in TOOLS:
        return len(STAGES) + 1
    for rank, (_, prefixes) in enumerate(STAGES, start=1):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return 0


def arrows_back_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower stage (or a shared module) into a higher stage."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if stage_rank(a) < stage_rank(b))


def flat_modules(package: Path = PACKAGE) -> list[str]:
    return sorted(p.name for p in package.glob("*.py"))


def test_the_graph_sees_imports_inside_functions(tmp_path):
    package = tmp_path / "wingclr"
    (package / "train").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train" / "__init__.py").write_text("")
    (package / "cli.py").write_text("def f():\n    from .train import loss\n")
    (package / "train" / "loss.py").write_text("from .. import cli\n")
    graph = import_graph(package)
    assert graph["wingclr.cli"] == {"wingclr.train", "wingclr.train.loss"}
    assert cycles(graph) == [["wingclr.cli", "wingclr.train.loss"]]
    assert arrows_back_up(graph) == [("wingclr.cli", "wingclr.train"), ("wingclr.cli", "wingclr.train.loss")]


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_arrow_runs_back_up_between_stages():
    assert arrows_back_up(import_graph()) == []


@pytest.mark.parametrize("stage", [s for s, _ in STAGES])
def test_every_stage_has_modules(stage):
    prefixes = dict(STAGES)[stage]
    assert any(stage_rank(m) and any(m.startswith(p) for p in prefixes) for m in import_graph())


def test_few_flat_modules():
    assert len(flat_modules()) <= MAX_FLAT, flat_modules()
