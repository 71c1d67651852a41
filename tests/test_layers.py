"""Straight layers: no import cycle among the project's modules, the library never imports the page
or gradio, and no import hides behind a guard (every import, also inside functions, is counted)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "app")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text()) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Project modules a module imports anywhere in its body (`from a import b` counts a.b when it is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, with the packages whose __init__ that import runs first
    (except the importer's own packages, which are already loading when it runs)."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, tree in modules.items():
        deps = set()
        for dep in _imports(tree, known):
            parts = dep.split(".")
            ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            deps |= {a for a in ancestors if a in known and not (name + ".").startswith(a + ".")}
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_among_project_modules() -> None:
    assert _cycle(_graph()) is None, f"import cycle: {' -> '.join(_cycle(_graph()) or [])}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_page_or_gradio() -> None:
    for name, tree in _modules().items():
        if name.startswith("core"):
            imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not {m for m in imported if m.split(".")[0] in ("app", "gradio")}, name


def test_no_project_import_behind_a_guard() -> None:
    """A project import inside `try` (an ImportError guard) hides a layer problem; optional third-party
    extras (flash-attn, triton) may be guarded."""
    modules = _modules()
    known = set(modules)
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                body = ast.Module(body=node.body, type_ignores=[])
                dynamic = [n for n in ast.walk(body) if isinstance(n, ast.Attribute) and n.attr == "import_module"]
                assert not _imports(body, known) and not dynamic, f"{name}:{node.lineno} imports inside try"
